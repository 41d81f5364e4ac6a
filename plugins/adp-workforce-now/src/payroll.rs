//! Hours to payroll: approved time entries grouped per worker and pay period, each group
//! one Payroll Data Input event (`pay-data-input.modify`) appended to the business's pay
//! data batch, with regular and overtime hours per week of the period.

use serde::Deserialize;
use serde_json::{Value, json};
use time::{Date, Duration, Month};

const ISO: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

pub fn parse_date(text: &str) -> Option<Date> {
    Date::parse(text, ISO).ok()
}

pub fn iso(date: Date) -> String {
    date.format(ISO).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    Weekly,
    Biweekly,
    Semimonthly,
    Monthly,
}

/// The business's pay periods: how often, and (weekly, biweekly) a day one period starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayPeriods {
    pub frequency: Frequency,
    pub anchor: Date,
}

/// One pay period, first and last day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: Date,
    pub end: Date,
}

impl PayPeriods {
    pub fn period_of(&self, day: Date) -> Period {
        let weeks = |n: i64| {
            let length = 7 * n;
            let offset = (day - self.anchor).whole_days().rem_euclid(length);
            let start = day - Duration::days(offset);
            Period {
                start,
                end: start + Duration::days(length - 1),
            }
        };
        let month_end = |d: Date| {
            let next = match d.month() {
                Month::December => Date::from_calendar_date(d.year() + 1, Month::January, 1),
                m => Date::from_calendar_date(d.year(), m.next(), 1),
            };
            next.map(|n| n - Duration::days(1)).unwrap_or(d)
        };
        let day_of_month =
            |n: u8| Date::from_calendar_date(day.year(), day.month(), n).unwrap_or(day);
        match self.frequency {
            Frequency::Weekly => weeks(1),
            Frequency::Biweekly => weeks(2),
            Frequency::Semimonthly if day.day() <= 15 => Period {
                start: day_of_month(1),
                end: day_of_month(15),
            },
            Frequency::Semimonthly => Period {
                start: day_of_month(16),
                end: month_end(day),
            },
            Frequency::Monthly => Period {
                start: day_of_month(1),
                end: month_end(day),
            },
        }
    }

    /// The week of its period a day falls in (1 or 2 for biweekly), for overtime, which
    /// is owed per week: only periods made of whole weeks have one.
    pub fn week_of(&self, day: Date) -> Option<u32> {
        match self.frequency {
            Frequency::Weekly | Frequency::Biweekly => {
                let start = self.period_of(day).start;
                Some(((day - start).whole_days() / 7) as u32 + 1)
            }
            Frequency::Semimonthly | Frequency::Monthly => None,
        }
    }
}

/// Hours of one week (or the whole period) of a group.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Hours {
    pub week: Option<u32>,
    pub regular: f64,
    pub overtime: f64,
}

/// Sums hours per week, weeks in order; hours rounded to hundredths.
pub fn sum_hours(entries: &[(Option<u32>, f64, f64)]) -> Vec<Hours> {
    let mut out: Vec<Hours> = Vec::new();
    for &(week, regular, overtime) in entries {
        match out.iter_mut().find(|h| h.week == week) {
            Some(h) => {
                h.regular += regular;
                h.overtime += overtime;
            }
            None => out.push(Hours {
                week,
                regular,
                overtime,
            }),
        }
    }
    for h in &mut out {
        h.regular = (h.regular * 100.0).round() / 100.0;
        h.overtime = (h.overtime * 100.0).round() / 100.0;
    }
    out.sort_by_key(|h| h.week);
    out
}

/// The earning codes of the business's ADP set-up.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct EarningCodes {
    pub regular: String,
    pub overtime: String,
}

impl Default for EarningCodes {
    fn default() -> Self {
        EarningCodes {
            regular: "R".into(),
            overtime: "O".into(),
        }
    }
}

/// Who is paid: the worker's keys in ADP's payroll.
pub struct Payee<'a> {
    pub associate_oid: &'a str,
    pub payroll_group_code: &'a str,
    pub payroll_file_number: &'a str,
}

/// The `pay-data-input.modify` event appending a worker's hours to the batch.
pub fn pay_data_event(
    batch: &str,
    pay_number: &str,
    payee: &Payee,
    hours: &[Hours],
    codes: &EarningCodes,
) -> Value {
    let mut earnings = Vec::new();
    for h in hours {
        for (code, n) in [(&codes.regular, h.regular), (&codes.overtime, h.overtime)] {
            if n <= 0.0 {
                continue;
            }
            let mut line = json!({"earningCode": {"codeValue": code}, "numberOfHours": n});
            if let Some(week) = h.week {
                line["earnedPayPeriodWeekNumber"] = json!(week);
            }
            earnings.push(line);
        }
    }
    json!({"events": [{"data": {
        "eventContext": {
            "payrollGroupCode": {"codeValue": payee.payroll_group_code},
            "payrollProcessingJobID": batch,
        },
        "transform": {"payDataInput": {"payeePayInputs": [{
            "associateOID": payee.associate_oid,
            "payNumber": pay_number,
            "payrollProfilePayInputs": [{
                "payrollFileNumber": payee.payroll_file_number,
                "payInputs": [{"_modificationTypeCode": "Append", "earningInputs": earnings}],
            }],
        }]}},
    }}]})
}

/// What ADP's answer confirms: its confirmation id when it gives one, and the batch
/// (`payrollProcessingJobID`) the hours went to.
pub fn confirmation(answer: &Value) -> Value {
    let id = answer
        .pointer("/confirmMessage/confirmMessageID/idValue")
        .or_else(|| answer.pointer("/events/0/eventID"))
        .cloned()
        .unwrap_or(Value::Null);
    let job = answer
        .pointer("/events/0/data/output/payDataInput/payrollProcessingJobID")
        .cloned()
        .unwrap_or(Value::Null);
    json!({"confirmation_id": id, "processing_job_id": job})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Date {
        parse_date(text).unwrap()
    }

    #[test]
    fn pay_periods() {
        let biweekly = PayPeriods {
            frequency: Frequency::Biweekly,
            anchor: d("2026-11-02"),
        };
        assert_eq!(
            biweekly.period_of(d("2026-11-20")),
            Period {
                start: d("2026-11-16"),
                end: d("2026-11-29")
            }
        );
        assert_eq!(biweekly.week_of(d("2026-11-20")), Some(1));
        assert_eq!(biweekly.week_of(d("2026-11-23")), Some(2));
        // Before the anchor too.
        assert_eq!(biweekly.period_of(d("2026-11-01")).start, d("2026-10-19"));
        let weekly = PayPeriods {
            frequency: Frequency::Weekly,
            ..biweekly
        };
        assert_eq!(weekly.period_of(d("2026-11-08")).start, d("2026-11-02"));
        let semi = PayPeriods {
            frequency: Frequency::Semimonthly,
            ..biweekly
        };
        assert_eq!(
            semi.period_of(d("2028-02-20")),
            Period {
                start: d("2028-02-16"),
                end: d("2028-02-29")
            }
        );
        assert_eq!(semi.week_of(d("2028-02-20")), None);
        let monthly = PayPeriods {
            frequency: Frequency::Monthly,
            ..biweekly
        };
        assert_eq!(monthly.period_of(d("2026-12-31")).end, d("2026-12-31"));
        assert_eq!(monthly.period_of(d("2026-12-31")).start, d("2026-12-01"));
    }

    #[test]
    fn a_weeks_hours_become_one_append_event() {
        let hours = sum_hours(&[
            (Some(2), 8.0, 0.0),
            (Some(1), 8.0, 1.5),
            (Some(1), 7.333, 0.0),
            (Some(1), 0.1, 0.2),
        ]);
        assert_eq!(
            hours,
            vec![
                Hours {
                    week: Some(1),
                    regular: 15.43,
                    overtime: 1.7
                },
                Hours {
                    week: Some(2),
                    regular: 8.0,
                    overtime: 0.0
                },
            ]
        );
        let payee = Payee {
            associate_oid: "G3GMA28TB2SVJ2TF",
            payroll_group_code: "K4P",
            payroll_file_number: "012345",
        };
        let event = pay_data_event("Week 47", "1", &payee, &hours, &EarningCodes::default());
        assert_eq!(
            event["events"][0]["data"]["eventContext"]["payrollProcessingJobID"],
            "Week 47"
        );
        let inputs = &event["events"][0]["data"]["transform"]["payDataInput"]["payeePayInputs"][0];
        assert_eq!(inputs["associateOID"], "G3GMA28TB2SVJ2TF");
        let pay = &inputs["payrollProfilePayInputs"][0];
        assert_eq!(pay["payrollFileNumber"], "012345");
        assert_eq!(pay["payInputs"][0]["_modificationTypeCode"], "Append");
        assert_eq!(
            pay["payInputs"][0]["earningInputs"],
            json!([
                {"earningCode": {"codeValue": "R"}, "numberOfHours": 15.43, "earnedPayPeriodWeekNumber": 1},
                {"earningCode": {"codeValue": "O"}, "numberOfHours": 1.7, "earnedPayPeriodWeekNumber": 1},
                {"earningCode": {"codeValue": "R"}, "numberOfHours": 8.0, "earnedPayPeriodWeekNumber": 2},
            ])
        );
    }
}
