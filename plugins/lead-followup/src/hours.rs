//! Working hours in the tenant's local time: a fixed UTC offset, the days of the week work
//! is done on and the hours of the working day. [`WorkingHours::shift`] moves a due time
//! into them.
//!
//! Nothing here reads a clock: every time starts from an event's time.

pub use streamflow_plugin_sdk::calendar::WorkWeek;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, Time, UtcOffset};

/// When the tenant works, in its local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkingHours {
    pub offset: UtcOffset,
    pub week: WorkWeek,
    /// 0 to 23.
    pub start_hour: u8,
    /// `start_hour + 1` to 24.
    pub end_hour: u8,
}

impl WorkingHours {
    /// Checks the hours and the offset (in hours, quarter hours allowed, -12 to +14).
    pub fn new(
        utc_offset_hours: f64,
        week: WorkWeek,
        start_hour: u32,
        end_hour: u32,
    ) -> Result<WorkingHours, String> {
        if !(utc_offset_hours.is_finite() && (-12.0..=14.0).contains(&utc_offset_hours)) {
            return Err(format!(
                "utc_offset_hours: from -12 to 14, not {utc_offset_hours}"
            ));
        }
        let minutes = (utc_offset_hours * 60.0).round() as i32;
        let offset = UtcOffset::from_whole_seconds(minutes * 60)
            .map_err(|e| format!("utc_offset_hours: {e}"))?;
        if start_hour > 23 {
            return Err(format!("day_start_hour: from 0 to 23, not {start_hour}"));
        }
        if !(1..=24).contains(&end_hour) || end_hour <= start_hour {
            return Err(format!(
                "day_end_hour: from day_start_hour + 1 ({}) to 24, not {end_hour}",
                start_hour + 1
            ));
        }
        Ok(WorkingHours {
            offset,
            week,
            start_hour: start_hour as u8,
            end_hour: end_hour as u8,
        })
    }

    /// `due` moved into working hours, in UTC: before the day's start → the start of that
    /// day; after its end, or on a day off → the start of the next work day. A time inside
    /// working hours (the end included) stays as it is.
    pub fn shift(&self, due: OffsetDateTime) -> OffsetDateTime {
        let local = due.to_offset(self.offset);
        let date = local.date();
        let seconds =
            local.hour() as u32 * 3600 + local.minute() as u32 * 60 + local.second() as u32;
        let after_end = seconds > self.end_hour as u32 * 3600
            || (seconds == self.end_hour as u32 * 3600 && local.nanosecond() > 0);
        let day = if !self.week.is_work_day(date) || after_end {
            self.week.next_after(date)
        } else if local.hour() < self.start_hour {
            date
        } else {
            return due.to_offset(UtcOffset::UTC);
        };
        let start = Time::from_hms(self.start_hour, 0, 0).unwrap_or(Time::MIDNIGHT);
        day.with_time(start)
            .assume_offset(self.offset)
            .to_offset(UtcOffset::UTC)
    }
}

/// A time in microseconds since the Unix epoch, truncated to the second.
pub fn from_micros(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000)).ok()
}

/// `hours` (at most a year, to the second) after `at`.
pub fn add_hours(at: OffsetDateTime, hours: f64) -> Option<OffsetDateTime> {
    if !(hours.is_finite() && (0.0..=24.0 * 366.0).contains(&hours)) {
        return None;
    }
    at.checked_add(Duration::seconds((hours * 3600.0).round() as i64))
}

/// RFC 3339 in UTC, to the second: `2026-03-02T14:00:00Z`.
pub fn format_utc(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use time::Weekday;
    use time::macros::datetime;

    use super::*;

    fn hours(offset: f64, start: u32, end: u32) -> WorkingHours {
        WorkingHours::new(offset, WorkWeek::MON_FRI, start, end).unwrap()
    }

    fn shifted(h: &WorkingHours, due: OffsetDateTime) -> String {
        format_utc(h.shift(due))
    }

    #[test]
    fn inside_working_hours_stays() {
        let h = hours(0.0, 8, 18);
        // Monday 2026-03-02.
        assert_eq!(
            shifted(&h, datetime!(2026-03-02 14:00 UTC)),
            "2026-03-02T14:00:00Z"
        );
        assert_eq!(
            shifted(&h, datetime!(2026-03-02 08:00 UTC)),
            "2026-03-02T08:00:00Z"
        );
        assert_eq!(
            shifted(&h, datetime!(2026-03-02 18:00 UTC)),
            "2026-03-02T18:00:00Z"
        );
    }

    #[test]
    fn before_start_moves_to_start() {
        let h = hours(0.0, 8, 18);
        assert_eq!(
            shifted(&h, datetime!(2026-03-03 06:30 UTC)),
            "2026-03-03T08:00:00Z"
        );
        assert_eq!(
            shifted(&h, datetime!(2026-03-03 00:00 UTC)),
            "2026-03-03T08:00:00Z"
        );
    }

    #[test]
    fn after_end_moves_to_next_work_day() {
        let h = hours(0.0, 8, 18);
        assert_eq!(
            shifted(&h, datetime!(2026-03-03 18:00:01 UTC)),
            "2026-03-04T08:00:00Z"
        );
        assert_eq!(
            shifted(&h, datetime!(2026-03-03 23:59 UTC)),
            "2026-03-04T08:00:00Z"
        );
        // Friday evening → Monday.
        assert_eq!(
            shifted(&h, datetime!(2026-03-06 19:00 UTC)),
            "2026-03-09T08:00:00Z"
        );
    }

    #[test]
    fn weekends_move_to_monday() {
        let h = hours(0.0, 8, 18);
        assert_eq!(
            shifted(&h, datetime!(2026-03-07 11:00 UTC)),
            "2026-03-09T08:00:00Z"
        );
        assert_eq!(
            shifted(&h, datetime!(2026-03-08 05:00 UTC)),
            "2026-03-09T08:00:00Z"
        );
        assert_eq!(
            shifted(&h, datetime!(2026-03-08 23:00 UTC)),
            "2026-03-09T08:00:00Z"
        );
    }

    #[test]
    fn local_time_decides() {
        // New York in winter (UTC-5): 8:00-18:00 local is 13:00-23:00 UTC.
        let ny = hours(-5.0, 8, 18);
        // Tuesday 02:00 UTC is Monday 21:00 local: after hours → Tuesday 08:00 local.
        assert_eq!(
            shifted(&ny, datetime!(2026-03-03 02:00 UTC)),
            "2026-03-03T13:00:00Z"
        );
        // Tuesday 12:00 UTC is 07:00 local: before hours.
        assert_eq!(
            shifted(&ny, datetime!(2026-03-03 12:00 UTC)),
            "2026-03-03T13:00:00Z"
        );
        // Saturday 03:00 UTC is Friday 22:00 local → Monday 08:00 local.
        assert_eq!(
            shifted(&ny, datetime!(2026-03-07 03:00 UTC)),
            "2026-03-09T13:00:00Z"
        );
        // Sydney (UTC+10): Sunday 23:00 UTC is Monday 09:00 local, inside hours.
        let sydney = hours(10.0, 8, 18);
        assert_eq!(
            shifted(&sydney, datetime!(2026-03-08 23:00 UTC)),
            "2026-03-08T23:00:00Z"
        );
        // Friday 09:00 UTC is Friday 19:00 local → Monday 08:00 local = Sunday 22:00 UTC.
        assert_eq!(
            shifted(&sydney, datetime!(2026-03-06 09:00 UTC)),
            "2026-03-08T22:00:00Z"
        );
        // India (UTC+5:30).
        let india = hours(5.5, 9, 17);
        assert_eq!(
            shifted(&india, datetime!(2026-03-02 02:00 UTC)),
            "2026-03-02T03:30:00Z"
        );
    }

    #[test]
    fn month_and_year_ends_and_leap_days() {
        let h = hours(0.0, 8, 18);
        // Friday 2026-01-30 evening → Monday 2 February.
        assert_eq!(
            shifted(&h, datetime!(2026-01-30 20:00 UTC)),
            "2026-02-02T08:00:00Z"
        );
        // Thursday 2026-12-31 evening → Friday 1 January 2027.
        assert_eq!(
            shifted(&h, datetime!(2026-12-31 20:00 UTC)),
            "2027-01-01T08:00:00Z"
        );
        // Monday 2028-02-28 evening → Tuesday the leap day.
        assert_eq!(
            shifted(&h, datetime!(2028-02-28 20:00 UTC)),
            "2028-02-29T08:00:00Z"
        );
        // Tuesday 2028-02-29 evening → 1 March.
        assert_eq!(
            shifted(&h, datetime!(2028-02-29 20:00 UTC)),
            "2028-03-01T08:00:00Z"
        );
    }

    #[test]
    fn shifting_is_idempotent() {
        let h = hours(-7.0, 8, 18);
        let mut due = datetime!(2026-03-06 00:00 UTC);
        for _ in 0..(24 * 14) {
            let once = h.shift(due);
            assert_eq!(h.shift(once), once, "{due}");
            assert!(once >= due, "{due}");
            due += Duration::hours(1);
        }
    }

    #[test]
    fn whole_day_and_unusual_weeks() {
        let weekends =
            WorkingHours::new(0.0, WorkWeek::new(&[Weekday::Saturday]).unwrap(), 0, 24).unwrap();
        assert_eq!(
            shifted(&weekends, datetime!(2026-03-07 23:59 UTC)),
            "2026-03-07T23:59:00Z"
        );
        assert_eq!(
            shifted(&weekends, datetime!(2026-03-08 00:00 UTC)),
            "2026-03-14T00:00:00Z"
        );
    }

    #[test]
    fn bad_hours() {
        let w = WorkWeek::MON_FRI;
        assert!(
            WorkingHours::new(0.0, w, 18, 8)
                .unwrap_err()
                .starts_with("day_end_hour")
        );
        assert!(
            WorkingHours::new(0.0, w, 8, 8)
                .unwrap_err()
                .starts_with("day_end_hour")
        );
        assert!(
            WorkingHours::new(0.0, w, 24, 25)
                .unwrap_err()
                .starts_with("day_start_hour")
        );
        assert!(
            WorkingHours::new(15.0, w, 8, 18)
                .unwrap_err()
                .starts_with("utc_offset_hours")
        );
        assert!(WorkingHours::new(f64::NAN, w, 8, 18).is_err());
        assert!(WorkingHours::new(-12.0, w, 0, 1).is_ok());
    }

    #[test]
    fn times() {
        // 2026-03-02T14:00:00.123456Z
        let at = from_micros(1_772_460_000_123_456).unwrap();
        assert_eq!(format_utc(at), "2026-03-02T14:00:00Z");
        assert_eq!(
            format_utc(add_hours(at, 1.5).unwrap()),
            "2026-03-02T15:30:00Z"
        );
        assert_eq!(
            format_utc(add_hours(at, 48.0).unwrap()),
            "2026-03-04T14:00:00Z"
        );
        assert!(add_hours(at, -1.0).is_none());
        assert!(add_hours(at, f64::INFINITY).is_none());
        assert_eq!(format_utc(from_micros(-1).unwrap()), "1969-12-31T23:59:59Z");
        assert!(from_micros(i64::MAX).is_none());
        let week: WorkWeek = serde_json::from_str(r#"["Mon","friday"]"#).unwrap();
        assert_eq!(week.names(), ["mon", "fri"]);
        assert!(serde_json::from_str::<WorkWeek>("[]").is_err());
        assert!(serde_json::from_str::<WorkWeek>(r#"["xyz"]"#).is_err());
    }
}
