//! Intuit's webhook payloads, in both formats: the legacy `eventNotifications` object and
//! the CloudEvents array. The host has verified the signature and routed the delivery by
//! company, so what arrives here is this business's part of it.

use serde_json::Value;

/// One changed entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// As QuickBooks names it: `Invoice`, `Payment`, `Customer`...
    pub entity: String,
    pub id: String,
    /// `Create`, `Update`, `Delete`, `Merge`, `Void`, `Emailed`.
    pub operation: String,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The changes a delivery reports; an unknown shape reports none.
pub fn changes(body: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    if let Some(notifications) = body.get("eventNotifications").and_then(Value::as_array) {
        for n in notifications {
            let entities = n
                .pointer("/dataChangeEvent/entities")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for e in entities {
                if let (Some(entity), Some(id)) = (text(e.get("name")), text(e.get("id"))) {
                    out.push(Change {
                        entity,
                        id,
                        operation: text(e.get("operation")).unwrap_or_default(),
                    });
                }
            }
        }
    } else if let Some(events) = body.as_array() {
        for e in events {
            // `qbo.<entity>.<operation>.v1`
            let Some(kind) = text(e.get("type")) else {
                continue;
            };
            let parts: Vec<&str> = kind.split('.').collect();
            let (["qbo", entity, operation, _version], Some(id)) =
                (parts.as_slice(), text(e.get("intuitentityid")))
            else {
                continue;
            };
            out.push(Change {
                entity: canonical_entity(entity),
                id,
                operation: canonical_operation(operation),
            });
        }
    }
    out
}

/// `invoice` → `Invoice`, `salesreceipt` → `SalesReceipt` (the entities this plugin reads
/// by name; others keep a capitalised form).
fn canonical_entity(lower: &str) -> String {
    match lower {
        "invoice" => "Invoice".into(),
        "payment" => "Payment".into(),
        "customer" => "Customer".into(),
        "salesreceipt" => "SalesReceipt".into(),
        "creditmemo" => "CreditMemo".into(),
        other => {
            let mut chars = other.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
    }
}

fn canonical_operation(past: &str) -> String {
    match past {
        "created" => "Create",
        "updated" => "Update",
        "deleted" => "Delete",
        "merged" => "Merge",
        "voided" => "Void",
        "emailed" => "Emailed",
        other => other,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_legacy_format() {
        let body = json!({"eventNotifications": [{"realmId": "310687", "dataChangeEvent": {"entities": [
            {"id": "130", "operation": "Update", "name": "Invoice", "lastUpdated": "2025-09-08T20:52:31.657Z"},
            {"id": 9, "operation": "Create", "name": "Payment"},
            {"operation": "Create", "name": "Payment"}
        ]}}]});
        assert_eq!(
            changes(&body),
            vec![
                Change {
                    entity: "Invoice".into(),
                    id: "130".into(),
                    operation: "Update".into()
                },
                Change {
                    entity: "Payment".into(),
                    id: "9".into(),
                    operation: "Create".into()
                },
            ]
        );
    }

    #[test]
    fn reads_cloudevents() {
        let body = json!([
            {"specversion": "1.0", "id": "88cd", "type": "qbo.payment.created.v1", "intuitentityid": "77", "intuitaccountid": "310687", "data": {}},
            {"specversion": "1.0", "id": "88ce", "type": "qbo.salesreceipt.updated.v1", "intuitentityid": "5", "intuitaccountid": "310687"},
            {"specversion": "1.0", "id": "88cf", "type": "something.else", "intuitentityid": "5"}
        ]);
        assert_eq!(
            changes(&body),
            vec![
                Change {
                    entity: "Payment".into(),
                    id: "77".into(),
                    operation: "Create".into()
                },
                Change {
                    entity: "SalesReceipt".into(),
                    id: "5".into(),
                    operation: "Update".into()
                },
            ]
        );
    }

    #[test]
    fn an_unknown_shape_reports_nothing() {
        assert!(changes(&json!({"hello": 1})).is_empty());
        assert!(changes(&json!("x")).is_empty());
        assert!(changes(&json!([1, 2])).is_empty());
    }
}
