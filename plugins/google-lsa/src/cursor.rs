//! Where the lead search is. Leads come oldest first (`creation_date_time`, then `id`), in
//! searches of at most `limit` leads (what one call's quotas can store); the cursor moves
//! past a page only once its leads are stored.
//!
//! A sweep starts an overlap before the newest lead seen and searches forward until a search
//! comes back short. Each search starts at (`>=`) the last stored lead's time, so the leads
//! of that second are read again (and found stored); should one second hold a whole search
//! of leads, the rest of that second is searched by id, and then the search goes on strictly
//! after it.

use serde::{Deserialize, Serialize};

use crate::ads::Filter;
use crate::clock;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The newest `creation_date_time` stored (account time, as Google wrote it).
    pub newest: Option<String>,
    /// The sweep in progress: where its next search starts. None between sweeps.
    pub from: Option<String>,
    /// The next search asks for leads after `from`, not at or after it.
    #[serde(default)]
    pub strict: bool,
    /// The next search reads the second `from` itself, ids after this one.
    #[serde(default)]
    pub after_id: Option<String>,
    /// Leads this sweep created and updated.
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub updated: u64,
    /// When the last sweep finished (UTC).
    #[serde(default)]
    pub last_completed: Option<String>,
    /// Why the last run stopped before the sweep's end, if it did.
    #[serde(default)]
    pub paused: Option<String>,
}

/// One search as it goes: where it started and what it returned so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub limit: u32,
    started: (Option<String>, bool, Option<String>),
    rows: u32,
    last: Option<(String, String)>,
}

impl Cursor {
    /// Starts a sweep if none is in progress: an overlap before the newest lead, or, the first
    /// time, the lookback (`first`).
    pub fn begin(&mut self, overlap_minutes: i64, first: impl FnOnce() -> String) {
        if self.from.is_some() {
            return;
        }
        self.from = Some(
            self.newest
                .as_deref()
                .and_then(|n| clock::minus_minutes(n, overlap_minutes))
                .unwrap_or_else(first),
        );
        self.strict = false;
        self.after_id = None;
        self.created = 0;
        self.updated = 0;
    }

    /// The filter of the next search (a sweep is in progress).
    pub fn filter(&self) -> Filter<'_> {
        let at = self.from.as_deref().unwrap_or_default();
        match &self.after_id {
            Some(after_id) => Filter::Within { at, after_id },
            None => Filter::Since {
                at,
                strict: self.strict,
            },
        }
    }

    pub fn search(&self, limit: u32) -> Search {
        Search {
            limit,
            started: (self.from.clone(), self.strict, self.after_id.clone()),
            rows: 0,
            last: None,
        }
    }

    /// A page of the search is stored: `rows` holds its leads' `(creation_date_time, id)`
    /// in the order Google returned them (rows it could not read count, without a time).
    pub fn page_stored(&mut self, search: &mut Search, rows: &[Option<(String, String)>]) {
        search.rows += rows.len() as u32;
        let Some((at, id)) = rows.iter().rev().flatten().next().cloned() else {
            return;
        };
        self.newest = Some(clock::later(self.newest.as_deref(), &at));
        if self.after_id.is_some() {
            self.after_id = Some(id.clone());
        } else {
            self.from = Some(at.clone());
            self.strict = false;
        }
        search.last = Some((at, id));
    }

    /// The search has no more pages. True when the sweep is complete; otherwise the cursor
    /// says where the next search starts.
    pub fn search_done(&mut self, search: &Search) -> bool {
        let full = search.rows >= search.limit;
        let (from, strict, after_id) = &search.started;
        if after_id.is_some() {
            if !full || search.last.is_none() {
                // That second is read: on after it.
                self.after_id = None;
                self.strict = true;
            }
            return false;
        }
        if !full {
            return true;
        }
        // A whole search none of whose leads could be read would only be read again.
        if search.last.is_none() {
            return true;
        }
        // A whole search in the second it started from: the rest of that second by id.
        if !strict
            && let Some((at, id)) = &search.last
            && Some(at) == from.as_ref()
        {
            self.after_id = Some(id.clone());
        }
        false
    }

    /// The sweep is complete: only what the next one needs is kept.
    pub fn complete(&mut self, now: String) {
        *self = Cursor {
            newest: self.newest.take(),
            created: self.created,
            updated: self.updated,
            last_completed: Some(now),
            ..Cursor::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(list: &[(&str, &str)]) -> Vec<Option<(String, String)>> {
        list.iter()
            .map(|(t, i)| Some((t.to_string(), i.to_string())))
            .collect()
    }

    #[test]
    fn a_sweep_starts_an_overlap_before_the_newest_lead_or_at_the_lookback() {
        let mut c = Cursor::default();
        c.begin(120, || "2026-11-06 22:51:08".into());
        assert_eq!(c.from.as_deref(), Some("2026-11-06 22:51:08"));
        c.complete("t".into());
        assert_eq!(c.from, None);
        c.newest = Some("2027-01-01 01:00:00".into());
        c.begin(120, || unreachable!());
        assert_eq!(c.from.as_deref(), Some("2026-12-31 23:00:00"));
        assert_eq!(
            c.filter(),
            Filter::Since {
                at: "2026-12-31 23:00:00",
                strict: false
            }
        );
        // A sweep in progress is not restarted.
        c.from = Some("2027-01-01 00:30:00".into());
        c.begin(120, || unreachable!());
        assert_eq!(c.from.as_deref(), Some("2027-01-01 00:30:00"));
    }

    #[test]
    fn pages_move_the_cursor_and_a_short_search_ends_the_sweep() {
        let mut c = Cursor::default();
        c.begin(120, || "2026-12-01 00:00:00".into());
        let mut s = c.search(3);
        c.page_stored(
            &mut s,
            &rows(&[("2026-12-01 08:00:00", "1"), ("2026-12-01 09:00:00", "2")]),
        );
        assert_eq!(c.from.as_deref(), Some("2026-12-01 09:00:00"));
        assert_eq!(c.newest.as_deref(), Some("2026-12-01 09:00:00"));
        c.page_stored(&mut s, &rows(&[("2026-12-01 10:00:00", "3")]));
        // Full: the sweep goes on from the last lead's second.
        assert!(!c.search_done(&s));
        assert_eq!(
            c.filter(),
            Filter::Since {
                at: "2026-12-01 10:00:00",
                strict: false
            }
        );
        let mut s = c.search(3);
        c.page_stored(&mut s, &rows(&[("2026-12-01 10:00:00", "3")]));
        assert!(c.search_done(&s), "a short search ends the sweep");
        c.complete("now".into());
        assert_eq!(c.newest.as_deref(), Some("2026-12-01 10:00:00"));
        assert_eq!(c.last_completed.as_deref(), Some("now"));
    }

    #[test]
    fn a_second_with_more_leads_than_a_search_is_read_by_id() {
        let t = "2026-12-01 10:00:00";
        let mut c = Cursor {
            from: Some(t.into()),
            ..Cursor::default()
        };
        let mut s = c.search(2);
        c.page_stored(&mut s, &rows(&[(t, "5"), (t, "7")]));
        assert!(!c.search_done(&s));
        assert_eq!(
            c.filter(),
            Filter::Within {
                at: t,
                after_id: "7"
            }
        );
        let mut s = c.search(2);
        c.page_stored(&mut s, &rows(&[(t, "8"), (t, "9")]));
        assert!(!c.search_done(&s));
        assert_eq!(
            c.filter(),
            Filter::Within {
                at: t,
                after_id: "9"
            }
        );
        let mut s = c.search(2);
        c.page_stored(&mut s, &rows(&[(t, "11")]));
        assert!(!c.search_done(&s), "the sweep goes on after that second");
        assert_eq!(
            c.filter(),
            Filter::Since {
                at: t,
                strict: true
            }
        );
        // Strictly after it: a full search of one later second is progress, then by id.
        let later = "2026-12-01 10:00:01";
        let mut s = c.search(2);
        c.page_stored(&mut s, &rows(&[(later, "12"), (later, "13")]));
        assert!(!c.search_done(&s));
        assert_eq!(
            c.filter(),
            Filter::Since {
                at: later,
                strict: false
            }
        );
        let mut s = c.search(2);
        c.page_stored(&mut s, &rows(&[(later, "12"), (later, "13")]));
        assert!(!c.search_done(&s));
        assert_eq!(
            c.filter(),
            Filter::Within {
                at: later,
                after_id: "13"
            }
        );
        let mut s = c.search(2);
        c.page_stored(&mut s, &[]);
        assert!(!c.search_done(&s));
        let mut s = c.search(2);
        c.page_stored(&mut s, &[]);
        assert!(c.search_done(&s), "nothing after it: done");
    }

    #[test]
    fn unreadable_rows_count_but_do_not_move_the_cursor() {
        let mut c = Cursor {
            from: Some("2026-12-01 00:00:00".into()),
            ..Cursor::default()
        };
        let mut s = c.search(3);
        c.page_stored(&mut s, &[None, None]);
        c.page_stored(&mut s, &rows(&[("2026-12-01 09:00:00", "4")]));
        c.page_stored(&mut s, &[None]);
        assert_eq!(c.from.as_deref(), Some("2026-12-01 09:00:00"));
        assert!(!c.search_done(&s), "full");
        // A full search of nothing readable is not asked again.
        let mut s = c.search(2);
        c.page_stored(&mut s, &[None, None]);
        assert!(c.search_done(&s));
    }
}
