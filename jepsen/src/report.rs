//! What a run leaves behind: the history, the nemesis schedule, the verdict and a timeline page.

use std::fmt::Write as _;
use std::path::Path;

use crate::history::{write_jsonl, Fault, FaultStatus, Op, Outcome};

/// Ops drawn on the page at most (the JSON history always has them all).
const MAX_DRAWN_OPS: usize = 20_000;

pub fn write_histories(dir: &Path, ops: &[Op], faults: &[Fault]) -> std::io::Result<()> {
    write_jsonl(&dir.join("history.jsonl"), ops)?;
    write_jsonl(&dir.join("nemesis.jsonl"), faults)
}

/// A self-contained HTML page: one row per client slot, one bar per operation coloured by
/// outcome, faults as shaded bands with their description.
pub fn write_timeline(
    path: &Path,
    title: &str,
    verdict: &serde_json::Value,
    ops: &[Op],
    faults: &[Fault],
    slots: usize,
) -> std::io::Result<()> {
    let end_ns = ops
        .iter()
        .map(|o| o.return_ns)
        .chain(faults.iter().map(|f| f.time_ns))
        .max()
        .unwrap_or(1)
        .max(1);
    let width = 1600.0;
    let row = 14.0;
    let top = 20.0;
    let fault_rows = 6.0;
    let height = top + (slots.max(1) as f64) * row + fault_rows * row + 40.0;
    let x = |ns: i64| 60.0 + (ns as f64 / end_ns as f64) * (width - 80.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="10">"#
    );
    // Fault bands: from each start to the next stop of the same nemesis.
    let mut open: Vec<(&Fault, usize)> = Vec::new();
    let mut band = 0usize;
    for f in faults {
        if f.action == "start" && f.status == FaultStatus::Installed {
            open.push((f, band % fault_rows as usize));
            band += 1;
        } else if f.action == "stop" {
            if let Some(i) = open.iter().position(|(s, _)| s.nemesis == f.nemesis) {
                let (s, lane) = open.remove(i);
                let (x0, x1) = (x(s.time_ns), x(f.time_ns));
                let _ = write!(
                    svg,
                    r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#f4d35e" opacity="0.25"><title>{}</title></rect>"##,
                    (x1 - x0).max(1.0),
                    slots as f64 * row,
                    esc(&format!(
                        "{} {}: {} ({:?})",
                        s.nemesis,
                        s.detail,
                        targets(&s.targets),
                        s.status
                    ))
                );
                let y = top + slots as f64 * row + 10.0 + lane as f64 * row;
                let _ = write!(
                    svg,
                    r##"<rect x="{x0:.1}" y="{y}" width="{:.1}" height="{}" fill="#ee964b"><title>{}</title></rect><text x="{:.1}" y="{:.1}">{}</text>"##,
                    (x1 - x0).max(1.0),
                    row - 3.0,
                    esc(&format!("{}: {}", s.nemesis, s.detail)),
                    x0 + 2.0,
                    y + row - 5.0,
                    esc(&format!("{} {}", s.nemesis, targets(&s.targets)))
                );
            }
        }
    }
    for o in ops.iter().take(MAX_DRAWN_OPS) {
        let slot = o.process as usize % slots.max(1);
        let y = top + slot as f64 * row;
        let colour = match o.outcome {
            Outcome::Ok => "#0d3b66",
            Outcome::Fail => "#9c9c9c",
            Outcome::Info => "#d1495b",
        };
        let (x0, x1) = (x(o.call_ns), x(o.return_ns));
        let _ = write!(
            svg,
            r#"<rect x="{x0:.2}" y="{y}" width="{:.2}" height="{}" fill="{colour}"><title>{}</title></rect>"#,
            (x1 - x0).max(0.6),
            row - 4.0,
            esc(&format!(
                "p{} n{} {} {} {} -> {:?} {} {} ({:.1} ms)",
                o.process,
                o.node,
                o.f,
                o.key,
                o.value,
                o.outcome,
                o.result,
                o.error,
                (o.return_ns - o.call_ns) as f64 / 1e6
            ))
        );
    }
    for s in 0..slots {
        let _ = write!(
            svg,
            r#"<text x="2" y="{:.1}">slot {s}</text>"#,
            top + s as f64 * row + row - 5.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="60" y="{:.1}">0 s</text><text x="{:.1}" y="{:.1}">{:.1} s</text></svg>"#,
        height - 10.0,
        width - 60.0,
        height - 10.0,
        end_ns as f64 / 1e9
    );
    let mut faults_table = String::new();
    for f in faults {
        let _ = writeln!(
            faults_table,
            "<tr><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
            f.time_ns as f64 / 1e9,
            esc(&f.nemesis),
            esc(&f.action),
            targets(&f.targets),
            f.status,
            esc(&f.detail)
        );
    }
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif}} td{{padding:0 8px;font-family:monospace}}</style></head><body>\
         <h1>{t}</h1><pre>{v}</pre>\
         <p>Bars: blue ok, grey fail (certainly did not happen), red info (unknown). Yellow bands and orange lanes: faults. Hover for details.</p>\
         {svg}<h2>Nemesis</h2><table><tr><th>t (s)</th><th>nemesis</th><th>action</th><th>targets</th><th>status</th><th>detail</th></tr>{faults_table}</table></body></html>",
        t = esc(title),
        v = esc(&serde_json::to_string_pretty(verdict).unwrap_or_default()),
    );
    std::fs::write(path, page)
}

fn targets(t: &[u64]) -> String {
    t.iter()
        .map(|i| format!("n{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
