//! An ADP worker (`/hr/v2/workers`) as a StreamFlow `employee`: the fields this plugin owns,
//! read from ADP's nested codes (`{codeValue, shortName, longName}` everywhere), and the
//! skills and certifications the business maps from its custom fields.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use streamflow_plugin_sdk::text::clip;

/// A custom field of the business's ADP set-up that becomes a skill or certification.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CustomField {
    /// The field's name in ADP (its `nameCode` code value or short name).
    pub name: String,
    /// `skills` or `certifications`.
    pub to: String,
    /// What is added: by default, an indicator field's own name, or the value of a
    /// string or code field (split at commas and semicolons).
    #[serde(default)]
    pub label: Option<String>,
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A code's readable name: its short name, else its long name, else the code.
fn code_name(code: &Value) -> Option<&str> {
    text(code, "/shortName")
        .or_else(|| text(code, "/longName"))
        .or_else(|| text(code, "/codeValue"))
}

/// The worker's primary work assignment (the first when none is marked).
pub fn primary_assignment(worker: &Value) -> Option<&Value> {
    let assignments = worker.get("workAssignments")?.as_array()?;
    assignments
        .iter()
        .find(|a| a.get("primaryIndicator") == Some(&Value::Bool(true)))
        .or_else(|| assignments.first())
}

/// `active`, `on_leave` or `terminated`, from the worker's status and its primary
/// assignment's (`A`, `L`, `T`).
pub fn status(worker: &Value) -> &'static str {
    let worker_status = text(worker, "/workerStatus/statusCode/codeValue")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let assignment = primary_assignment(worker)
        .and_then(|a| text(a, "/assignmentStatus/statusCode/codeValue"))
        .unwrap_or_default()
        .to_ascii_uppercase();
    if worker_status.starts_with("terminated") || assignment == "T" || assignment == "D" {
        "terminated"
    } else if worker_status.contains("leave") || assignment == "L" {
        "on_leave"
    } else {
        "active"
    }
}

fn name(worker: &Value) -> Option<String> {
    let person = worker.get("person")?;
    for at in ["/preferredName", "/legalName"] {
        if let Some(n) = person.pointer(at) {
            let given = text(n, "/nickName").or_else(|| text(n, "/givenName"));
            if let (Some(given), Some(family)) = (given, text(n, "/familyName1")) {
                return Some(format!("{given} {family}"));
            }
            if let Some(formatted) = text(n, "/formattedName") {
                return Some(formatted.to_string());
            }
        }
    }
    None
}

/// The first email, work before personal.
fn email(worker: &Value) -> Option<&str> {
    [
        "/businessCommunication/emails",
        "/person/communication/emails",
    ]
    .iter()
    .filter_map(|p| worker.pointer(p).and_then(Value::as_array))
    .flatten()
    .find_map(|e| text(e, "/emailUri").filter(|e| e.contains('@') && e.len() <= 254))
}

/// The first phone number, work before personal, mobiles before landlines.
fn phone(worker: &Value) -> Option<String> {
    for base in ["/businessCommunication", "/person/communication"] {
        for kind in ["mobiles", "landlines"] {
            let found = worker
                .pointer(&format!("{base}/{kind}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find_map(|p| {
                    text(p, "/formattedNumber").map(str::to_string).or_else(|| {
                        let digits: String = ["/areaDialing", "/dialNumber"]
                            .iter()
                            .filter_map(|k| text(p, k))
                            .collect();
                        (!digits.is_empty()).then_some(digits)
                    })
                });
            if found.is_some() {
                return found;
            }
        }
    }
    None
}

fn department(assignment: &Value) -> Option<&str> {
    for key in ["homeOrganizationalUnits", "assignedOrganizationalUnits"] {
        let found = assignment
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|u| {
                text(u, "/typeCode/codeValue").is_some_and(|t| t.eq_ignore_ascii_case("department"))
            })
            .and_then(|u| u.get("nameCode").and_then(code_name));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// What the business's custom-field mapping finds on a worker: `(skills, certifications)`.
pub fn custom_values(worker: &Value, mapping: &[CustomField]) -> (Vec<String>, Vec<String>) {
    let (mut skills, mut certifications) = (Vec::new(), Vec::new());
    let group = worker.get("customFieldGroup");
    let fields = |kind: &str| -> Vec<&Value> {
        group
            .and_then(|g| g.get(kind))
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    };
    let named = |field: &Value, wanted: &str| {
        let code = field.get("nameCode");
        [
            code.and_then(|c| text(c, "/codeValue")),
            code.and_then(|c| text(c, "/shortName")),
        ]
        .into_iter()
        .flatten()
        .any(|n| n.eq_ignore_ascii_case(wanted))
    };
    for m in mapping {
        let mut values = Vec::new();
        for f in fields("indicatorFields") {
            // An indicator field is listed when set; `indicatorValue: false` says it is not.
            if named(f, &m.name) && f.get("indicatorValue") != Some(&Value::Bool(false)) {
                values.push(m.label.clone().unwrap_or_else(|| m.name.clone()));
            }
        }
        for f in fields("stringFields") {
            if named(f, &m.name) {
                let raw = text(f, "/stringValue").unwrap_or_default();
                match &m.label {
                    Some(label) if !raw.is_empty() => values.push(label.clone()),
                    Some(_) => {}
                    None => values.extend(
                        raw.split([',', ';'])
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string),
                    ),
                }
            }
        }
        for f in fields("codeFields") {
            if named(f, &m.name)
                && let Some(v) = code_name(f)
                    .filter(|_| f.get("codeValue").is_some() || f.get("shortName").is_some())
            {
                values.push(m.label.clone().unwrap_or_else(|| v.to_string()));
            }
        }
        let into = if m.to == "certifications" {
            &mut certifications
        } else {
            &mut skills
        };
        for v in values {
            let v = clip(&v, 100).to_string();
            if !into.contains(&v) && into.len() < 50 {
                into.push(v);
            }
        }
    }
    (skills, certifications)
}

/// The worker's associate OID: its permanent key in ADP.
pub fn aoid(worker: &Value) -> Option<&str> {
    text(worker, "/associateOID").filter(|a| a.len() <= 64)
}

/// The employee fields this plugin owns for a worker (`adp` holds ADP's own keys, which
/// pushing hours needs: the payroll group and file number).
pub fn employee_fields(worker: &Value, mapping: &[CustomField]) -> Map<String, Value> {
    let mut data = Map::new();
    let aoid = aoid(worker).unwrap_or_default();
    let name = name(worker).unwrap_or_else(|| format!("ADP worker {aoid}"));
    data.insert("name".into(), json!(clip(&name, 200)));
    if let Some(e) = email(worker) {
        data.insert("email".into(), json!(e));
    }
    if let Some(p) = phone(worker) {
        data.insert("phone".into(), json!(clip(&p, 40)));
    }
    let status = status(worker);
    data.insert("status".into(), json!(status));
    if let Some(id) = text(worker, "/workerID/idValue") {
        data.insert("worker_id".into(), json!(clip(id, 64)));
    }
    let assignment = primary_assignment(worker);
    if let Some(a) = assignment {
        let title = text(a, "/jobTitle").or_else(|| a.get("jobCode").and_then(code_name));
        if let Some(t) = title {
            data.insert("job_title".into(), json!(clip(t, 200)));
        }
        if let Some(d) = department(a) {
            data.insert("department".into(), json!(clip(d, 200)));
        }
    }
    let hired = text(worker, "/workerDates/rehireDate")
        .or_else(|| text(worker, "/workerDates/originalHireDate"))
        .or_else(|| assignment.and_then(|a| text(a, "/hireDate")));
    if let Some(d) = hired.filter(|d| is_date(d)) {
        data.insert("hired_on".into(), json!(d));
    }
    let terminated = text(worker, "/workerDates/terminationDate")
        .or_else(|| assignment.and_then(|a| text(a, "/terminationDate")));
    // Only a terminated worker has the date (a rehired one no longer does).
    if let Some(d) = terminated.filter(|d| is_date(d) && status == "terminated") {
        data.insert("terminated_on".into(), json!(d));
    }
    let (skills, certifications) = custom_values(worker, mapping);
    if !mapping.is_empty() {
        data.insert("skills".into(), json!(skills));
        data.insert("certifications".into(), json!(certifications));
    }
    let mut adp = Map::new();
    adp.insert("associate_oid".into(), json!(aoid));
    if let Some(a) = assignment {
        for (from, to) in [
            ("/payrollFileNumber", "payroll_file_number"),
            ("/payrollGroupCode", "payroll_group_code"),
            ("/positionID", "position_id"),
            ("/payCycleCode/codeValue", "pay_cycle"),
        ] {
            if let Some(v) = text(a, from) {
                adp.insert(to.into(), json!(clip(v, 64)));
            }
        }
    }
    data.insert("adp".into(), Value::Object(adp));
    data
}

fn is_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminated_worker() -> Value {
        json!({
          "associateOID": "ABCDEFGHIJKLMNOP", "workerID": {"idValue": "CM2UQZLLN"},
          "person": {"legalName": {"givenName": "First", "familyName1": "Last", "formattedName": "Last, First"},
            "communication": {"mobiles": [{"formattedNumber": "(612) 123-4567"}], "emails": [{"emailUri": "first.last@domain.tld"}]}},
          "workerDates": {"originalHireDate": "2020-04-06", "terminationDate": "2023-04-06"},
          "workerStatus": {"statusCode": {"codeValue": "Terminated"}},
          "workAssignments": [{"primaryIndicator": true, "hireDate": "2023-04-06",
            "assignmentStatus": {"statusCode": {"codeValue": "T", "shortName": "Retired"}},
            "jobCode": {"codeValue": "HR DEFAL", "shortName": "HR Default"}, "jobTitle": "HR Default", "positionID": "K4PFAKE0001",
            "homeOrganizationalUnits": [{"nameCode": {"codeValue": "000009", "shortName": "Finance/Accounting"}, "typeCode": {"codeValue": "Department"}}],
            "payCycleCode": {"codeValue": "W"}, "payrollGroupCode": "K4P", "payrollFileNumber": "012345"}],
          "customFieldGroup": {"indicatorFields": [{"nameCode": {"codeValue": "ADA Certificate"}}],
            "stringFields": [{"nameCode": {"codeValue": "Trade skills"}, "stringValue": "Brazing, EPA 608; "}]}
        })
    }

    #[test]
    fn a_terminated_worker_is_marked_with_its_payroll_keys() {
        let mapping = vec![
            CustomField {
                name: "ada certificate".into(),
                to: "certifications".into(),
                label: Some("ADA".into()),
            },
            CustomField {
                name: "Trade skills".into(),
                to: "skills".into(),
                label: None,
            },
        ];
        let data = employee_fields(&terminated_worker(), &mapping);
        assert_eq!(data["name"], "First Last");
        assert_eq!(data["email"], "first.last@domain.tld");
        assert_eq!(data["phone"], "(612) 123-4567");
        assert_eq!(data["status"], "terminated");
        assert_eq!(data["terminated_on"], "2023-04-06");
        assert_eq!(data["hired_on"], "2020-04-06");
        assert_eq!(data["job_title"], "HR Default");
        assert_eq!(data["department"], "Finance/Accounting");
        assert_eq!(data["worker_id"], "CM2UQZLLN");
        assert_eq!(data["skills"], json!(["Brazing", "EPA 608"]));
        assert_eq!(data["certifications"], json!(["ADA"]));
        assert_eq!(
            data["adp"],
            json!({"associate_oid": "ABCDEFGHIJKLMNOP", "payroll_file_number": "012345", "payroll_group_code": "K4P", "position_id": "K4PFAKE0001", "pay_cycle": "W"})
        );
    }

    #[test]
    fn a_sparse_worker_still_maps() {
        let data = employee_fields(
            &json!({"associateOID": "G3GMA28TB2SVJ2TF", "workAssignments": [
            {"assignmentStatus": {"statusCode": {"codeValue": "L"}}}]}),
            &[],
        );
        assert_eq!(data["name"], "ADP worker G3GMA28TB2SVJ2TF");
        assert_eq!(data["status"], "on_leave");
        assert!(data.get("terminated_on").is_none());
        assert!(
            data.get("skills").is_none(),
            "no mapping, skills left to people"
        );
        let active = json!({"workerStatus": {"statusCode": {"codeValue": "Active"}}, "workAssignments": [
            {"assignmentStatus": {"statusCode": {"codeValue": "A"}}}]});
        assert_eq!(status(&active), "active");
    }
}
