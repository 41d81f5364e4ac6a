//! Calendar arithmetic on plain dates (UTC): work weeks, adding work days, adding months
//! with the day clamped to the month's end, and reading and writing `YYYY-MM-DD`.
//!
//! Nothing here reads a clock: every date starts from an event's time or a record field.

pub use streamflow_plugin_sdk::calendar::WorkWeek;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, Duration, Month, OffsetDateTime};

/// `months` calendar months after `start`, the day clamped to the end of the month:
/// 31 January plus one month is 28 February (29 in a leap year). `None` past year 9999.
pub fn add_months(start: Date, months: u32) -> Option<Date> {
    let index = start.year() as i64 * 12 + (start.month() as i64 - 1) + months as i64;
    let year = i32::try_from(index.div_euclid(12)).ok()?;
    let month = Month::try_from((index.rem_euclid(12) + 1) as u8).ok()?;
    let day = start.day().min(month.length(year));
    Date::from_calendar_date(year, month, day).ok()
}

/// `days` days after `start`; `None` past the calendar's range.
pub fn add_days(start: Date, days: i64) -> Option<Date> {
    start.checked_add(Duration::days(days))
}

/// The UTC date of a time in microseconds since the Unix epoch.
pub fn date_of_micros(micros: i64) -> Option<Date> {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .ok()
        .map(OffsetDateTime::date)
}

/// A date written `YYYY-MM-DD`, or the UTC date of an RFC 3339 date-time
/// (`2026-03-02T14:00:00Z`).
pub fn parse_date(text: &str) -> Option<Date> {
    let text = text.trim();
    if text.len() > 64 {
        return None;
    }
    if let Ok(date) = Date::parse(text, format_description!("[year]-[month]-[day]")) {
        return Some(date);
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(|t| t.to_offset(time::UtcOffset::UTC).date())
}

/// `YYYY-MM-DD`.
pub fn format_date(date: Date) -> String {
    date.format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_else(|_| date.to_string())
}

#[cfg(test)]
mod tests {
    use time::Weekday;
    use time::macros::date;

    use super::*;

    #[test]
    fn work_days_skip_weekends() {
        let week = WorkWeek::MON_FRI;
        // 2026-03-06 is a Friday.
        assert_eq!(
            week.add_work_days(date!(2026 - 03 - 06), 0),
            date!(2026 - 03 - 06)
        );
        assert_eq!(
            week.add_work_days(date!(2026 - 03 - 06), 1),
            date!(2026 - 03 - 09)
        );
        assert_eq!(
            week.add_work_days(date!(2026 - 03 - 06), 3),
            date!(2026 - 03 - 11)
        );
        // From a Saturday: 0 days is Monday, 1 day is Monday too (the first work day after).
        assert_eq!(
            week.add_work_days(date!(2026 - 03 - 07), 0),
            date!(2026 - 03 - 09)
        );
        assert_eq!(
            week.add_work_days(date!(2026 - 03 - 07), 1),
            date!(2026 - 03 - 09)
        );
        assert_eq!(
            week.add_work_days(date!(2026 - 03 - 07), 2),
            date!(2026 - 03 - 10)
        );
        // Ten work days is two weeks.
        assert_eq!(
            week.add_work_days(date!(2026 - 03 - 02), 10),
            date!(2026 - 03 - 16)
        );
    }

    #[test]
    fn work_days_across_month_and_year_ends() {
        let week = WorkWeek::MON_FRI;
        // Thursday 2026-12-31 + 2 work days: Fri 1 Jan, Mon 4 Jan.
        assert_eq!(
            week.add_work_days(date!(2026 - 12 - 31), 2),
            date!(2027 - 01 - 04)
        );
        // Friday 2026-01-30 + 1: Monday 2 February.
        assert_eq!(
            week.add_work_days(date!(2026 - 01 - 30), 1),
            date!(2026 - 02 - 02)
        );
        // Leap year: Monday 2028-02-28 + 1 is Tuesday 29 February, + 2 is 1 March.
        assert_eq!(
            week.add_work_days(date!(2028 - 02 - 28), 1),
            date!(2028 - 02 - 29)
        );
        assert_eq!(
            week.add_work_days(date!(2028 - 02 - 28), 2),
            date!(2028 - 03 - 01)
        );
    }

    #[test]
    fn unusual_work_weeks() {
        let weekends = WorkWeek::new(&[Weekday::Saturday, Weekday::Sunday]).unwrap();
        // Monday 2026-03-02 → Saturday 7th, Sunday 8th, Saturday 14th.
        assert_eq!(
            weekends.add_work_days(date!(2026 - 03 - 02), 0),
            date!(2026 - 03 - 07)
        );
        assert_eq!(
            weekends.add_work_days(date!(2026 - 03 - 02), 2),
            date!(2026 - 03 - 08)
        );
        assert_eq!(
            weekends.add_work_days(date!(2026 - 03 - 02), 3),
            date!(2026 - 03 - 14)
        );
        let every_day = WorkWeek::new(&[
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
            Weekday::Saturday,
            Weekday::Sunday,
        ])
        .unwrap();
        assert_eq!(
            every_day.add_work_days(date!(2026 - 03 - 07), 3),
            date!(2026 - 03 - 10)
        );
        assert!(WorkWeek::new(&[]).is_none());
    }

    #[test]
    fn moving_to_a_work_day_is_idempotent() {
        let week = WorkWeek::new(&[Weekday::Tuesday, Weekday::Saturday]).unwrap();
        // Across a year end and into a leap year.
        let mut day = date!(2027 - 12 - 20);
        for _ in 0..90 {
            let moved = week.on_or_after(day);
            assert!(week.is_work_day(moved), "{day}");
            assert_eq!(week.on_or_after(moved), moved, "{day}");
            assert!((0..7).contains(&(moved - day).whole_days()), "{day}");
            assert_eq!(week.add_work_days(moved, 0), moved);
            day = day.next_day().unwrap();
        }
    }

    #[test]
    fn months_clamp_to_the_end_of_the_month() {
        assert_eq!(
            add_months(date!(2026 - 01 - 31), 1),
            Some(date!(2026 - 02 - 28))
        );
        assert_eq!(
            add_months(date!(2028 - 01 - 31), 1),
            Some(date!(2028 - 02 - 29))
        );
        assert_eq!(
            add_months(date!(2026 - 01 - 31), 2),
            Some(date!(2026 - 03 - 31))
        );
        assert_eq!(
            add_months(date!(2026 - 08 - 31), 1),
            Some(date!(2026 - 09 - 30))
        );
        assert_eq!(
            add_months(date!(2026 - 11 - 15), 3),
            Some(date!(2027 - 02 - 15))
        );
        assert_eq!(
            add_months(date!(2026 - 12 - 31), 6),
            Some(date!(2027 - 06 - 30))
        );
        assert_eq!(
            add_months(date!(2027 - 08 - 29), 6),
            Some(date!(2028 - 02 - 29))
        );
        assert_eq!(
            add_months(date!(2026 - 05 - 10), 0),
            Some(date!(2026 - 05 - 10))
        );
        assert_eq!(add_months(date!(9999 - 12 - 01), 1), None);
    }

    #[test]
    fn dates_read_and_written() {
        assert_eq!(parse_date("2026-03-02"), Some(date!(2026 - 03 - 02)));
        assert_eq!(parse_date(" 2028-02-29 "), Some(date!(2028 - 02 - 29)));
        assert_eq!(parse_date("2026-02-29"), None);
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("03/02/2026"), None);
        assert_eq!(parse_date("tomorrow"), None);
        assert_eq!(parse_date(""), None);
        assert_eq!(
            parse_date("2026-03-02T23:30:00-05:00"),
            Some(date!(2026 - 03 - 03))
        );
        assert_eq!(
            parse_date("2026-03-02T14:00:00Z"),
            Some(date!(2026 - 03 - 02))
        );
        assert_eq!(format_date(date!(2026 - 03 - 02)), "2026-03-02");
        // 2026-03-02T14:00:00Z
        assert_eq!(
            date_of_micros(1_772_460_000_000_000),
            Some(date!(2026 - 03 - 02))
        );
        assert_eq!(date_of_micros(0), Some(date!(1970 - 01 - 01)));
        assert_eq!(date_of_micros(-1), Some(date!(1969 - 12 - 31)));
        assert_eq!(date_of_micros(i64::MAX), None);
    }
}
