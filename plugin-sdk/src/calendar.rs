//! Work weeks for plugins that schedule: which days of the week a business works, read from
//! a config as `["mon", "tue", ...]`, and the work-day arithmetic on plain dates.
//!
//! Nothing here reads a clock; dates come from an event's time or a record's fields.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{Date, Weekday};

/// The days of the week work is done on. Never empty (see [`WorkWeek::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkWeek {
    /// Indexed by days from Monday.
    days: [bool; 7],
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl WorkWeek {
    /// Monday to Friday.
    pub const MON_FRI: WorkWeek = WorkWeek {
        days: [true, true, true, true, true, false, false],
    };

    /// A work week of the given days; `None` if there are none.
    pub fn new(days: &[Weekday]) -> Option<WorkWeek> {
        let mut week = WorkWeek { days: [false; 7] };
        for day in days {
            week.days[day.number_days_from_monday() as usize] = true;
        }
        week.days.iter().any(|&d| d).then_some(week)
    }

    pub fn is_work_day(&self, date: Date) -> bool {
        self.days[date.weekday().number_days_from_monday() as usize]
    }

    /// `date` itself when it is a work day, else the next work day.
    pub fn on_or_after(&self, date: Date) -> Date {
        let mut date = date;
        // A non-empty week has a work day within any seven days.
        for _ in 0..7 {
            if self.is_work_day(date) {
                break;
            }
            date = next_day(date);
        }
        date
    }

    /// `days` work days after `date`: every following work day counts one, and the answer
    /// is always a work day (0 days from a Saturday is the next Monday).
    pub fn add_work_days(&self, date: Date, days: u32) -> Date {
        let mut date = date;
        for _ in 0..days {
            date = self.on_or_after(next_day(date));
        }
        self.on_or_after(date)
    }

    /// The first work day after `date`.
    pub fn next_after(&self, date: Date) -> Date {
        let mut next = date;
        // A non-empty week has a work day within any seven days.
        for _ in 0..7 {
            next = next.next_day().unwrap_or(next);
            if self.is_work_day(next) {
                break;
            }
        }
        next
    }

    /// The days as their three-letter names, Monday first.
    pub fn names(&self) -> Vec<&'static str> {
        DAY_NAMES
            .iter()
            .zip(self.days)
            .filter_map(|(name, on)| on.then_some(*name))
            .collect()
    }
}

impl Default for WorkWeek {
    fn default() -> Self {
        WorkWeek::MON_FRI
    }
}

/// A day name: "mon".."sun", the full English name or a start of it of three letters or
/// more ("tues"), in any case.
pub fn parse_weekday(name: &str) -> Option<Weekday> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let name = name.trim().to_ascii_lowercase();
    if name.len() < 3 {
        return None;
    }
    let index = FULL.iter().position(|full| full.starts_with(&name))?;
    Some(Weekday::Monday.nth_next(index as u8))
}

impl<'de> Deserialize<'de> for WorkWeek {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut days = Vec::with_capacity(names.len());
        for name in &names {
            days.push(parse_weekday(name).ok_or_else(|| {
                D::Error::custom(format_args!("{name:?} is not a day (mon..sun)"))
            })?);
        }
        WorkWeek::new(&days).ok_or_else(|| D::Error::custom("give at least one work day"))
    }
}

impl Serialize for WorkWeek {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

fn next_day(date: Date) -> Date {
    date.next_day().unwrap_or(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekday_names() {
        assert_eq!(parse_weekday("mon"), Some(Weekday::Monday));
        assert_eq!(parse_weekday("Sunday"), Some(Weekday::Sunday));
        assert_eq!(parse_weekday(" THU "), Some(Weekday::Thursday));
        assert_eq!(parse_weekday("tues"), Some(Weekday::Tuesday));
        assert_eq!(parse_weekday("mo"), None);
        assert_eq!(parse_weekday("monkey"), None);
        assert_eq!(parse_weekday(""), None);
    }

    #[test]
    fn work_week_from_config() {
        let week: WorkWeek = serde_json::from_str(r#"["mon","wed","fri"]"#).unwrap();
        assert_eq!(week.names(), ["mon", "wed", "fri"]);
        assert!(serde_json::from_str::<WorkWeek>("[]").is_err());
        assert!(serde_json::from_str::<WorkWeek>(r#"["funday"]"#).is_err());
        assert_eq!(
            serde_json::to_value(WorkWeek::default()).unwrap(),
            serde_json::json!(["mon", "tue", "wed", "thu", "fri"])
        );
    }
}
