//! Resuming a watch without losing or repeating an event.
//!
//! Several events can share one revision: a batch of writes, or writes the leader coalesced into
//! one log entry. A stream can break between two of them, so resuming "after the last revision
//! seen" would lose the rest of that revision. The rule: resume after the revision *before* it,
//! and drop the events of the last revision that were already delivered. Their order is the
//! same on every server (the order the entry applied them in), so counting them is enough.

/// Where a watch stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResumePoint {
    revision: u64,
    /// Events of `revision` delivered so far; 0 when `revision` is known complete.
    delivered: usize,
}

impl ResumePoint {
    /// Everything through `revision` is known: a list's or snapshot's revision, a bookmark.
    pub fn at(revision: u64) -> ResumePoint {
        ResumePoint {
            revision,
            delivered: 0,
        }
    }

    /// The highest revision seen (complete or not).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// An event of `revision` was delivered.
    pub fn event(&mut self, revision: u64) {
        if revision == self.revision {
            self.delivered += 1;
        } else if revision > self.revision {
            self.revision = revision;
            self.delivered = 1;
        }
    }

    /// A progress notice: every event through `revision` has been sent.
    pub fn bookmark(&mut self, revision: u64) {
        if revision >= self.revision {
            self.revision = revision;
            self.delivered = 0;
        }
    }

    /// The highest revision all of whose events have been delivered.
    pub fn complete_through(&self) -> u64 {
        if self.delivered == 0 {
            self.revision
        } else {
            self.revision - 1
        }
    }

    /// What to ask a server for after a break: the start revision and the events to drop.
    pub fn resume(&self) -> Resume {
        if self.delivered == 0 {
            Resume {
                start_revision: self.revision,
                revision: self.revision,
                skip: 0,
            }
        } else {
            Resume {
                start_revision: self.revision - 1,
                revision: self.revision,
                skip: self.delivered,
            }
        }
    }
}

/// A resumed stream's filter: drops the events already delivered before the break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// `WatchRequest.start_revision` for the new stream.
    pub start_revision: u64,
    revision: u64,
    skip: usize,
}

impl Resume {
    /// True if this event was delivered before the break and must be dropped.
    pub fn already_delivered(&mut self, revision: u64) -> bool {
        if self.skip > 0 && revision == self.revision {
            self.skip -= 1;
            return true;
        }
        // Past the revision (or nothing to skip): deliver from here on.
        self.skip = 0;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream broken after `cut` events of `history`, resumed with the rule, delivers each
    /// event exactly once.
    fn replay(history: &[(u64, &str)], start: u64, cut: usize) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut p = ResumePoint::at(start);
        for (r, k) in history.iter().filter(|(r, _)| *r > start).take(cut) {
            p.event(*r);
            out.push((*r, k.to_string()));
        }
        let mut resume = p.resume();
        let start = resume.start_revision;
        for (r, k) in history.iter().filter(|(r, _)| *r > start) {
            if !resume.already_delivered(*r) {
                out.push((*r, k.to_string()));
            }
        }
        out
    }

    #[test]
    fn a_break_inside_a_revision_loses_and_repeats_nothing() {
        let h = [
            (3, "a"),
            (5, "b"),
            (5, "c"),
            (5, "d"),
            (6, "a"),
            (8, "e"),
            (8, "f"),
        ];
        let all: Vec<(u64, String)> = h.iter().map(|(r, k)| (*r, k.to_string())).collect();
        for cut in 0..=h.len() {
            assert_eq!(replay(&h, 0, cut), all, "break after {cut} events");
        }
        // From a later start too.
        let tail: Vec<(u64, String)> = all.iter().filter(|(r, _)| *r > 3).cloned().collect();
        for cut in 0..=tail.len() {
            assert_eq!(replay(&h, 3, cut), tail);
        }
    }

    #[test]
    fn a_bookmark_completes_its_revision() {
        let mut p = ResumePoint::at(0);
        p.event(5);
        p.event(5);
        assert_eq!(p.resume().start_revision, 4);
        p.bookmark(5);
        assert_eq!(p.resume().start_revision, 5);
        p.bookmark(9);
        assert_eq!(p.revision(), 9);
        // An old bookmark changes nothing.
        p.event(10);
        p.bookmark(9);
        assert_eq!(p.resume().start_revision, 9);
    }
}
