//! A Local Services lead as a StreamFlow `lead`: the contact fields at the top, Google's
//! own view under `data.google_lsa`. A lead is kept under its Google id (keyed records), so
//! it is created once; seen again with a changed status, charge, credit or note, only its
//! `google_lsa` part is written (what the business changed on the lead stays).

use serde_json::{Map, Value, json};
use streamflow_plugin_sdk::text::clip;
use streamflow_plugin_sdk::{HostError, kv, log, records};

pub const SKIPPED: &str = "import:skipped";
const MAX_SKIPPED: usize = 100;

/// The keys of `google_lsa` that come from Google (the others, such as `feedback_sent`,
/// are the plugin's own and survive updates).
pub const GOOGLE_KEYS: [&str; 12] = [
    "id",
    "resource_name",
    "lead_type",
    "status",
    "category_id",
    "service_id",
    "charged",
    "credit_state",
    "locale",
    "created_at",
    "feedback_submitted",
    "note",
];

/// What one Google lead becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub id: String,
    /// `creation_date_time` as Google wrote it (account time).
    pub created_at: Option<String>,
    /// What every lead has: a name.
    pub core: Map<String, Value>,
    /// Fields a tenant's record type may refuse (its `source` values, formats).
    pub extra: Map<String, Value>,
    /// `data.google_lsa`.
    pub lsa: Map<String, Value>,
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// An int64 as proto3 JSON writes it (a string), or as a number.
fn int64(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.clone())
        }
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// An address that looks like one (the template checks the format; what it refuses is
/// left off rather than failing the lead).
pub fn plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && email.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// StreamFlow's word for Google's lead type.
pub fn lead_type(google: &str) -> String {
    match google {
        "PHONE_CALL" => "call".into(),
        "MESSAGE" => "message".into(),
        "BOOKING" => "booking".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// One `localServicesLead` of a search result; `None` without an id.
pub fn mapped(lead: &Value) -> Option<Mapped> {
    let id = int64(lead.get("id"))?;
    let created_at = text(lead, "/creationDateTime")
        .filter(|t| crate::clock::parse(t).is_some())
        .map(str::to_string);
    let mut core = Map::new();
    let mut extra = Map::new();
    let name = text(lead, "/contactDetails/consumerName")
        .map(|n| clip(n, 200))
        .unwrap_or_else(|| format!("Google LSA lead {id}"));
    core.insert("name".into(), json!(name));
    if let Some(phone) = text(lead, "/contactDetails/phoneNumber") {
        extra.insert("phone".into(), json!(clip(phone, 40)));
    }
    if let Some(email) = text(lead, "/contactDetails/email").filter(|e| plausible_email(e)) {
        extra.insert("email".into(), json!(email));
    }
    extra.insert("source".into(), json!("google_lsa"));

    let mut lsa = Map::new();
    lsa.insert("id".into(), json!(id));
    let resource = text(lead, "/resourceName")
        .map(|r| clip(r, 200))
        .filter(|r| r.starts_with("customers/"));
    if let Some(r) = resource {
        lsa.insert("resource_name".into(), json!(r));
    }
    if let Some(t) = text(lead, "/leadType") {
        lsa.insert("lead_type".into(), json!(lead_type(t)));
    }
    if let Some(s) = text(lead, "/leadStatus") {
        lsa.insert("status".into(), json!(clip(&s.to_ascii_lowercase(), 40)));
    }
    for (to, from) in [
        ("category_id", "/categoryId"),
        ("service_id", "/serviceId"),
        ("locale", "/locale"),
    ] {
        if let Some(v) = text(lead, from) {
            lsa.insert(to.into(), json!(clip(v, 200)));
        }
    }
    // proto3 JSON leaves out a false bool.
    for (to, from) in [
        ("charged", "leadCharged"),
        ("feedback_submitted", "leadFeedbackSubmitted"),
    ] {
        let value = lead.get(from).and_then(Value::as_bool).unwrap_or(false);
        lsa.insert(to.into(), json!(value));
    }
    if let Some(c) = text(lead, "/creditDetails/creditState") {
        lsa.insert(
            "credit_state".into(),
            json!(clip(&c.to_ascii_lowercase(), 40)),
        );
    }
    if let Some(t) = &created_at {
        lsa.insert("created_at".into(), json!(t));
    }
    if let Some(n) = text(lead, "/note/description") {
        lsa.insert("note".into(), json!(clip(n, 2000)));
    }
    core.insert("google_lsa".into(), Value::Object(lsa.clone()));
    Some(Mapped {
        id,
        created_at,
        core,
        extra,
        lsa,
    })
}

/// Whether the stored `google_lsa` already says what Google says now.
fn same(stored: &Value, new: &Map<String, Value>) -> bool {
    GOOGLE_KEYS.iter().all(|k| stored.get(*k) == new.get(*k))
}

/// How storing one lead went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Created,
    Updated,
    Unchanged,
    /// Refused by the tenant's record type, and listed.
    Skipped,
}

/// Creates the lead under its Google id, or updates its `google_lsa` part. A lead the
/// record type refuses with every field is created with the name alone; refused with that
/// too, it is skipped and listed (`import-status`), so one lead cannot stall the import.
/// A concurrent change is read again, twice at most.
pub fn store(m: &Mapped) -> Result<Stored, HostError> {
    let mut full = m.core.clone();
    full.extend(m.extra.clone());
    for _ in 0..3 {
        match records::get_keyed("lead", &m.id)? {
            None => {
                let created = match records::create_keyed(
                    "lead",
                    &m.id,
                    None,
                    &Value::Object(full.clone()),
                ) {
                    Err(HostError::Invalid(_)) => {
                        records::create_keyed("lead", &m.id, None, &Value::Object(m.core.clone()))
                    }
                    other => other,
                };
                match created {
                    Ok(_) => return Ok(Stored::Created),
                    Err(HostError::Conflict(_)) => continue,
                    Err(HostError::Invalid(why)) => return skip(&m.id, &why),
                    Err(e) => return Err(e),
                }
            }
            Some(lead) => {
                let mut data = lead.json().map_err(|e| HostError::Invalid(e.to_string()))?;
                let stored = data.get("google_lsa").cloned().unwrap_or(Value::Null);
                if same(&stored, &m.lsa) {
                    return Ok(Stored::Unchanged);
                }
                let mut lsa = stored.as_object().cloned().unwrap_or_default();
                for key in GOOGLE_KEYS {
                    match m.lsa.get(key) {
                        Some(v) => lsa.insert(key.into(), v.clone()),
                        None => lsa.remove(key),
                    };
                }
                let Some(object) = data.as_object_mut() else {
                    return skip(&m.id, "the stored lead's data is not an object");
                };
                object.insert("google_lsa".into(), Value::Object(lsa));
                match records::update("lead", &lead.id, None, &data, Some(lead.version)) {
                    Ok(_) => return Ok(Stored::Updated),
                    Err(HostError::Conflict(_)) => continue,
                    Err(HostError::Invalid(why)) => return skip(&m.id, &why),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(HostError::Conflict(format!(
        "the lead of Google lead {} kept changing while it was imported",
        m.id
    )))
}

fn skip(id: &str, why: &str) -> Result<Stored, HostError> {
    log::warn(&format!(
        "Google lead {id} was not imported: {}",
        clip(why, 300)
    ));
    let mut skipped: Vec<Value> = kv::get_json(SKIPPED)?.unwrap_or_default();
    skipped.retain(|s| s["lead_id"] != id);
    skipped.push(json!({"lead_id": id, "error": clip(why, 300)}));
    let from = skipped.len().saturating_sub(MAX_SKIPPED);
    kv::set_json(SKIPPED, &skipped[from..].to_vec())?;
    Ok(Stored::Skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lead_maps_to_its_contact_and_google_lsa() {
        let lead = json!({"resourceName": "customers/1234567890/localServicesLeads/9001", "id": "9001",
            "categoryId": "xcat:service_area_business_hvac", "serviceId": "hvac_repair",
            "contactDetails": {"phoneNumber": "+15125550100", "email": "jane@example.com", "consumerName": " Jane Doe "},
            "leadType": "PHONE_CALL", "leadStatus": "NEW", "creationDateTime": "2026-12-01 09:15:00", "locale": "en",
            "leadCharged": true, "creditDetails": {"creditState": "PENDING"}, "note": {"description": "Call back after 5"}});
        let m = mapped(&lead).unwrap();
        assert_eq!(m.id, "9001");
        assert_eq!(m.created_at.as_deref(), Some("2026-12-01 09:15:00"));
        assert_eq!(m.core["name"], "Jane Doe");
        assert_eq!(m.extra["phone"], "+15125550100");
        assert_eq!(m.extra["email"], "jane@example.com");
        assert_eq!(m.extra["source"], "google_lsa");
        let lsa = &m.core["google_lsa"];
        assert_eq!(lsa["lead_type"], "call");
        assert_eq!(lsa["status"], "new");
        assert_eq!(lsa["charged"], true);
        assert_eq!(lsa["feedback_submitted"], false, "a false bool left out");
        assert_eq!(lsa["credit_state"], "pending");
        assert_eq!(lsa["created_at"], "2026-12-01 09:15:00");
        assert_eq!(lsa["category_id"], "xcat:service_area_business_hvac");
        assert_eq!(
            lsa["resource_name"],
            "customers/1234567890/localServicesLeads/9001"
        );
        assert_eq!(lsa["note"], "Call back after 5");
        assert_eq!(Value::Object(m.lsa.clone()), *lsa);
    }

    #[test]
    fn a_wiped_out_lead_without_contact_details_still_imports() {
        let lead = json!({"resourceName": "customers/1234567890/localServicesLeads/9002", "id": "9002",
            "leadType": "MESSAGE", "leadStatus": "WIPED_OUT", "creationDateTime": "2026-11-02 23:59:59"});
        let m = mapped(&lead).unwrap();
        assert_eq!(m.core["name"], "Google LSA lead 9002");
        assert!(!m.extra.contains_key("phone") && !m.extra.contains_key("email"));
        assert_eq!(m.lsa["status"], "wiped_out");
        assert_eq!(m.lsa["lead_type"], "message");
        assert_eq!(m.lsa["charged"], false);
        // An empty email (proto3's default) and a malformed one are left off.
        let lead = json!({"id": 7, "contactDetails": {"email": "", "phoneNumber": "+1 512 555 0101"}, "leadType": "BOOKING"});
        let m = mapped(&lead).unwrap();
        assert_eq!(m.id, "7");
        assert!(!m.extra.contains_key("email"));
        assert_eq!(m.lsa["lead_type"], "booking");
        assert_eq!(m.created_at, None);
        let lead = json!({"id": "8", "contactDetails": {"email": "not an address"}});
        assert!(!mapped(&lead).unwrap().extra.contains_key("email"));
        assert!(mapped(&json!({"leadType": "MESSAGE"})).is_none(), "no id");
        assert!(mapped(&json!({"id": "12a"})).is_none());
    }

    #[test]
    fn emails_that_look_like_addresses() {
        assert!(plausible_email("a.b+c@example.co.uk"));
        for bad in [
            "",
            "@example.com",
            "jane@",
            "jane@example",
            "jane@.com",
            "jane@example.com.",
            "ja ne@example.com",
            "a@b@c.com",
        ] {
            assert!(!plausible_email(bad), "{bad}");
        }
    }

    #[test]
    fn only_google_fields_decide_whether_a_lead_changed() {
        let lead =
            json!({"id": "1", "leadStatus": "NEW", "creationDateTime": "2026-12-01 09:15:00"});
        let m = mapped(&lead).unwrap();
        let mut stored = Value::Object(m.lsa.clone());
        stored["feedback_sent"] = json!({"outcome": "won"});
        assert!(same(&stored, &m.lsa));
        let changed = mapped(
            &json!({"id": "1", "leadStatus": "BOOKED", "creationDateTime": "2026-12-01 09:15:00"}),
        )
        .unwrap();
        assert!(!same(&stored, &changed.lsa));
        let charged = mapped(&json!({"id": "1", "leadStatus": "NEW", "leadCharged": true, "creationDateTime": "2026-12-01 09:15:00"})).unwrap();
        assert!(!same(&stored, &charged.lsa));
    }
}
