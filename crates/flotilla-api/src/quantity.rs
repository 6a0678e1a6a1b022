//! Kubernetes resource quantities (`500m`, `128Mi`, `1.5Gi`, `2`, `1e3`), parsed exactly into
//! billionths of a unit, so that CPU (millicores) and memory (bytes) compare without rounding.

use std::fmt;

/// A parsed quantity, in nano-units (1 = 10⁻⁹ of the base unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    pub nanos: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$', got {0:?}")]
pub struct QuantityError(pub String);

const NANO: i128 = 1_000_000_000;

impl Quantity {
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let bad = || QuantityError(s.to_string());
        let t = s.trim();
        if t.is_empty() || t.len() > 64 || t != s {
            return Err(bad());
        }
        let (sign, rest) = match t.as_bytes()[0] {
            b'-' => (-1i128, &t[1..]),
            b'+' => (1, &t[1..]),
            _ => (1, t),
        };
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, suffix) = rest.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let digits = format!("{int_part}{frac_part}");
        if digits.len() > 30 {
            return Err(bad());
        }
        let mantissa: i128 = digits.parse().map_err(|_| bad())?;
        // value = mantissa × 10^(exp10 − frac) × 2^exp2
        let frac = frac_part.len() as i32;
        let (exp10, exp2): (i32, u32) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            e if e.starts_with(['e', 'E']) => {
                let n: i32 = e[1..].parse().map_err(|_| bad())?;
                if !(-30..=30).contains(&n) || e[1..].starts_with('+') && e.len() == 2 {
                    return Err(bad());
                }
                (n, 0)
            }
            _ => return Err(bad()),
        };
        // nanos = mantissa × 2^exp2 × 10^(exp10 − frac + 9), exactly or not at all.
        let mut v = mantissa.checked_mul(1i128 << exp2).ok_or_else(bad)?;
        let p = exp10 - frac + 9;
        if p >= 0 {
            v = v
                .checked_mul(10i128.checked_pow(p as u32).ok_or_else(bad)?)
                .ok_or_else(bad)?;
        } else {
            let d = 10i128.checked_pow((-p) as u32).ok_or_else(bad)?;
            if v % d != 0 {
                return Err(QuantityError(format!("{s} (finer than 1n)")));
            }
            v /= d;
        }
        Ok(Quantity { nanos: sign * v })
    }

    /// Thousandths of the unit, rounded up (CPU millicores).
    pub fn millis_ceil(&self) -> i128 {
        let d = NANO / 1000;
        self.nanos.div_euclid(d) + i128::from(self.nanos.rem_euclid(d) != 0)
    }

    /// Whole units, rounded up (memory bytes).
    pub fn units_ceil(&self) -> i128 {
        self.nanos.div_euclid(NANO) + i128::from(self.nanos.rem_euclid(NANO) != 0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANO == 0 {
            write!(f, "{}", self.nanos / NANO)
        } else if self.nanos % (NANO / 1000) == 0 {
            write!(f, "{}m", self.nanos / (NANO / 1000))
        } else {
            write!(f, "{}n", self.nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> i128 {
        Quantity::parse(s).unwrap().nanos
    }

    #[test]
    fn parses_exactly() {
        assert_eq!(q("500m"), 500_000_000);
        assert_eq!(q("2"), 2 * NANO);
        assert_eq!(q("128Mi"), 128 * (1 << 20) * NANO);
        assert_eq!(q("1.5Gi"), 1_610_612_736 * NANO);
        assert_eq!(q("0.1"), 100_000_000);
        assert_eq!(q("1e3"), 1000 * NANO);
        assert_eq!(q("1E-3"), 1_000_000);
        assert_eq!(q("100n"), 100);
        assert_eq!(q("1k"), 1000 * NANO);
        assert_eq!(q("-1"), -NANO);
        assert_eq!(q(".5"), NANO / 2);
        assert_eq!(Quantity::parse("250m").unwrap().millis_ceil(), 250);
        assert_eq!(Quantity::parse("1.5").unwrap().units_ceil(), 2);
        assert_eq!(Quantity::parse("1.5Gi").unwrap().to_string(), "1610612736");
    }

    #[test]
    fn refuses_bad_input() {
        for s in [
            "", "abc", "1.2.3", "12 Mi", "1Mb", "1ii", "1.5x", "0.1n", "m", " 1", "1e", "--1",
        ] {
            assert!(Quantity::parse(s).is_err(), "{s:?} parsed");
        }
        let e = Quantity::parse("1Gb").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("quantities must match the regular expression"));
    }
}
