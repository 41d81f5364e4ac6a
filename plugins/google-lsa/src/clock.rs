//! Google's lead times as they are: `YYYY-MM-DD HH:MM:SS` in the Google Ads account's time
//! zone, with no offset. The plugin never converts them to UTC (it does not know the
//! account's zone); it compares and steps them as naive date-times, which is exact for
//! everything except a repeated hour when clocks go back, and the search's overlap covers
//! that.

use time::format_description::BorrowedFormatItem;
use time::{Duration, OffsetDateTime, PrimitiveDateTime};

const FORMAT: &[BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

/// A Google date-time; `None` if it is not exactly that shape.
pub fn parse(text: &str) -> Option<PrimitiveDateTime> {
    PrimitiveDateTime::parse(text, FORMAT).ok()
}

pub fn format(t: PrimitiveDateTime) -> String {
    t.format(FORMAT).unwrap_or_default()
}

/// `text` less `minutes`, as naive date-times (month, year and leap-day boundaries
/// included); `None` if `text` is not a Google date-time.
pub fn minus_minutes(text: &str, minutes: i64) -> Option<String> {
    parse(text)
        .and_then(|t| t.checked_sub(Duration::minutes(minutes)))
        .map(format)
}

/// Where a first search starts: `days` before `now` (microseconds since the epoch, UTC), and
/// one day more, written as an account-time date-time. The account's zone is unknown and at
/// most a day from UTC, so the extra day makes sure the lookback is covered whatever it is;
/// reading a day too much costs nothing (leads are kept under their id).
pub fn lookback_start(now_micros: i64, days: i64) -> String {
    let now = OffsetDateTime::from_unix_timestamp_nanos(now_micros as i128 * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let start = now - Duration::days(days + 1);
    format(PrimitiveDateTime::new(
        start.date(),
        start.time().replace_nanosecond(0).unwrap_or(start.time()),
    ))
}

/// The later of two Google date-times (as text: the fixed-width form orders as it reads).
pub fn later(a: Option<&str>, b: &str) -> String {
    match a {
        Some(a) if a >= b => a.to_string(),
        _ => b.to_string(),
    }
}

/// Now as RFC 3339 UTC, for the plugin's own notes.
pub fn rfc3339(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .ok()
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlap_steps_back_across_days_months_and_years() {
        assert_eq!(
            minus_minutes("2026-12-07 14:30:00", 120).as_deref(),
            Some("2026-12-07 12:30:00")
        );
        assert_eq!(
            minus_minutes("2026-12-07 01:15:09", 120).as_deref(),
            Some("2026-12-06 23:15:09")
        );
        assert_eq!(
            minus_minutes("2026-03-01 00:59:59", 120).as_deref(),
            Some("2026-02-28 22:59:59")
        );
        assert_eq!(
            minus_minutes("2028-03-01 01:00:00", 120).as_deref(),
            Some("2028-02-29 23:00:00"),
            "a leap year"
        );
        assert_eq!(
            minus_minutes("2027-01-01 00:30:00", 120).as_deref(),
            Some("2026-12-31 22:30:00")
        );
        assert_eq!(
            minus_minutes("2026-08-01 00:00:00", 0).as_deref(),
            Some("2026-08-01 00:00:00")
        );
        assert_eq!(minus_minutes("2026-12-07T14:30:00", 120), None);
        assert_eq!(minus_minutes("2026-02-30 10:00:00", 120), None);
    }

    #[test]
    fn a_repeated_hour_is_inside_the_overlap() {
        // Clocks go back at 02:00 on 2026-11-01 in America/Chicago: leads of the second
        // 01:xx hour are written with the same times as the first. A cursor at the end of
        // the second one (01:59:00) steps back to 23:59 the day before, before both.
        let from = minus_minutes("2026-11-01 01:59:00", 120).unwrap();
        assert_eq!(from, "2026-10-31 23:59:00");
        assert!(from.as_str() < "2026-11-01 01:00:00");
    }

    #[test]
    fn the_first_search_looks_back_a_day_more_than_asked() {
        // 2026-12-07 22:51:08.5 UTC.
        let now = 1_796_683_868_500_000;
        assert_eq!(lookback_start(now, 30), "2026-11-06 22:51:08");
        assert_eq!(lookback_start(now, 0), "2026-12-06 22:51:08");
        assert_eq!(rfc3339(now), "2026-12-07T22:51:08Z");
    }

    #[test]
    fn times_order_as_text() {
        assert_eq!(
            later(Some("2026-12-07 10:00:00"), "2026-12-07 09:59:59"),
            "2026-12-07 10:00:00"
        );
        assert_eq!(
            later(Some("2026-12-07 10:00:00"), "2026-12-08 00:00:00"),
            "2026-12-08 00:00:00"
        );
        assert_eq!(later(None, "2026-12-08 00:00:00"), "2026-12-08 00:00:00");
    }
}
