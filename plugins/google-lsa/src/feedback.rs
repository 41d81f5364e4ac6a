//! Lead feedback to Google (`LocalServicesLeadService.ProvideLeadFeedback`): a lead the plugin
//! imported that reaches a won or lost stage is reported once. Google's own view is read
//! first: a lead Google says has feedback (`lead_feedback_submitted`) is not reported again,
//! which is also how a retry after a lost answer finds that its report went through. A kv
//! note held while a report is in flight keeps a second delivery from sending it twice.

use serde_json::{Value, json};
use streamflow_plugin_sdk::text::clip;
use streamflow_plugin_sdk::{Error, HostError, kv, log, records};

use crate::ads::{self, AdsError, Filter};

/// How long a report sent and not confirmed holds off another (longer than a request's
/// timeout, so the first has had its answer by then).
const IN_FLIGHT_MICROS: i64 = 45_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Won,
    Lost,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Won => "won",
            Outcome::Lost => "lost",
        }
    }
}

/// Google's dissatisfied reason for a lead's `lost_reason`, where one fits.
fn dissatisfied_reason(lost_reason: &str) -> Option<&'static str> {
    match lost_reason {
        "out_of_area" => Some("GEO_MISMATCH"),
        "not_a_fit" | "wrong_service" => Some("JOB_TYPE_MISMATCH"),
        "postponed" | "not_ready" => Some("NOT_READY_TO_BOOK"),
        "spam" => Some("SPAM"),
        "duplicate" => Some("DUPLICATE"),
        "solicitation" => Some("SOLICITATION"),
        _ => None,
    }
}

/// The request body: won is a satisfied survey (a booked customer); lost a dissatisfied
/// one, with the reason the lead's `lost_reason` maps to, else "other" and the reason in
/// words.
pub fn body(outcome: Outcome, lost_reason: Option<&str>) -> Value {
    match outcome {
        Outcome::Won => json!({
            "surveyAnswer": "VERY_SATISFIED",
            "surveySatisfied": {"surveySatisfiedReason": "BOOKED_CUSTOMER"},
        }),
        Outcome::Lost => {
            let reason = lost_reason.map(str::trim).filter(|r| !r.is_empty());
            let details = match reason.and_then(dissatisfied_reason) {
                Some(code) => json!({"surveyDissatisfiedReason": code}),
                None => json!({
                    "surveyDissatisfiedReason": "OTHER_DISSATISFIED_REASON",
                    "otherReasonComment": clip(
                        &format!(
                            "Lost in StreamFlow: {}",
                            reason.map(|r| r.replace('_', " ")).unwrap_or_else(|| "no reason given".into())
                        ),
                        200
                    ),
                }),
            };
            json!({"surveyAnswer": "DISSATISFIED", "surveyDissatisfied": details})
        }
    }
}

/// Reports a lead's outcome, once.
pub fn report(lead_id: &str, outcome: Outcome, version: &str) -> Result<(), Error> {
    let Some(lead) = records::get("lead", lead_id)? else {
        return Ok(());
    };
    let data = lead.json()?;
    let Some(google_id) = data
        .pointer("/google_lsa/id")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Ok(());
    };
    // Only a lead this plugin imported (its key holds this very record).
    if records::get_keyed("lead", &google_id)?.is_none_or(|r| r.id != lead.id) {
        return Ok(());
    }
    if data.pointer("/google_lsa/feedback_sent").is_some() {
        log::info(&format!(
            "Google lead {google_id} was reported already; not again"
        ));
        return Ok(());
    }
    let account = ads::account(version)?;
    let found = account.search(&ads::query(&Filter::Id(&google_id), 1)?, None)?;
    let Some(current) = found
        .pointer("/results/0/localServicesLead")
        .filter(|l| l.get("id").is_some())
    else {
        let why = format!(
            "Google has no lead {google_id} for customer {}",
            account.customer_id
        );
        write(lead_id, |lsa| lsa["feedback_error"] = json!(why))?;
        return Err(Error::Failed(why));
    };
    let pending = format!("feedback:pending:{google_id}");
    let now = streamflow_plugin_sdk::now_micros();
    if current
        .get("leadFeedbackSubmitted")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        // Ours, whose answer was lost, or given in Google's own screens: either way,
        // Google has it.
        let sent = json!({"outcome": outcome.as_str(), "at": crate::clock::rfc3339(now), "already_submitted": true});
        write(lead_id, |lsa| {
            lsa["feedback_sent"] = sent.clone();
            lsa["feedback_submitted"] = json!(true);
        })?;
        kv::delete(&pending)?;
        return Ok(());
    }
    if let Some(at) = kv::get_json::<i64>(&pending)?
        && now - at < IN_FLIGHT_MICROS
    {
        return Err(Error::RetryLater(format!(
            "a report of Google lead {google_id} was sent moments ago and Google does not show it yet"
        )));
    }
    let resource = current
        .get("resourceName")
        .and_then(Value::as_str)
        .or_else(|| {
            data.pointer("/google_lsa/resource_name")
                .and_then(Value::as_str)
        })
        .filter(|r| r.starts_with("customers/") && !r.contains(['?', '#', ' ']))
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "customers/{}/localServicesLeads/{google_id}",
                account.customer_id
            )
        });
    let lost_reason = data.get("lost_reason").and_then(Value::as_str);
    let request = body(outcome, lost_reason);
    kv::set_json(&pending, &now)?;
    match account.provide_feedback(&resource, &request) {
        Ok(answer) => {
            let mut sent = json!({"outcome": outcome.as_str(), "at": crate::clock::rfc3339(now), "survey_answer": request["surveyAnswer"]});
            let reason = request
                .pointer("/surveySatisfied/surveySatisfiedReason")
                .or(request.pointer("/surveyDissatisfied/surveyDissatisfiedReason"));
            if let Some(reason) = reason {
                sent["reason"] = reason.clone();
            }
            if let Some(decision) = answer.get("creditIssuanceDecision") {
                sent["credit_issuance_decision"] = decision.clone();
            }
            write(lead_id, |lsa| {
                lsa["feedback_sent"] = sent.clone();
                lsa["feedback_submitted"] = json!(true);
                if let Some(o) = lsa.as_object_mut() {
                    o.remove("feedback_error");
                }
            })?;
            kv::delete(&pending)?;
            log::info(&format!(
                "Google lead {google_id} reported {}",
                outcome.as_str()
            ));
            Ok(())
        }
        Err(AdsError::Failed(why)) => {
            // Refused: nothing was recorded at Google, and the same report would be refused
            // again. Said on the lead.
            kv::delete(&pending)?;
            write(lead_id, |lsa| {
                lsa["feedback_error"] = json!(clip(&why, 300))
            })?;
            Err(Error::Failed(why))
        }
        // May pass: the next delivery asks Google whether it arrived before sending again.
        Err(e) => Err(e.into()),
    }
}

/// Changes the lead's `google_lsa` (read again on a concurrent change).
fn write(lead_id: &str, change: impl Fn(&mut Value)) -> Result<(), Error> {
    for _ in 0..4 {
        let Some(lead) = records::get("lead", lead_id)? else {
            return Ok(());
        };
        let mut data = lead.json()?;
        let Some(object) = data.as_object_mut() else {
            return Err(Error::Failed("the lead's data is not an object".into()));
        };
        let lsa = object.entry("google_lsa").or_insert_with(|| json!({}));
        if !lsa.is_object() {
            *lsa = json!({});
        }
        change(lsa);
        match records::update("lead", lead_id, None, &data, Some(lead.version)) {
            Ok(_) => return Ok(()),
            Err(HostError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::RetryLater(format!(
        "lead {lead_id} kept changing while its Google feedback was written"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn won_is_a_booked_customer() {
        assert_eq!(
            body(Outcome::Won, Some("price")),
            json!({"surveyAnswer": "VERY_SATISFIED", "surveySatisfied": {"surveySatisfiedReason": "BOOKED_CUSTOMER"}})
        );
    }

    #[test]
    fn lost_says_why_where_google_has_a_reason_for_it() {
        assert_eq!(
            body(Outcome::Lost, Some("out_of_area")),
            json!({"surveyAnswer": "DISSATISFIED", "surveyDissatisfied": {"surveyDissatisfiedReason": "GEO_MISMATCH"}})
        );
        assert_eq!(
            body(Outcome::Lost, Some("not_a_fit"))["surveyDissatisfied"]["surveyDissatisfiedReason"],
            "JOB_TYPE_MISMATCH"
        );
        assert_eq!(
            body(Outcome::Lost, Some("went_with_competitor")),
            json!({"surveyAnswer": "DISSATISFIED", "surveyDissatisfied": {"surveyDissatisfiedReason": "OTHER_DISSATISFIED_REASON", "otherReasonComment": "Lost in StreamFlow: went with competitor"}})
        );
        assert_eq!(
            body(Outcome::Lost, None)["surveyDissatisfied"]["otherReasonComment"],
            "Lost in StreamFlow: no reason given"
        );
    }
}
