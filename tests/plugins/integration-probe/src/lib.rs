//! A contract 0.2.0 test plugin: each action exercises one import and reports what the
//! host answered, so the end-to-end tests can check the host's side (guards, credentials,
//! quotas, audit) from outside.
// Natively (cargo test/clippy of the workspace) the hooks are not exported, so nothing
// uses the plugin type.
#![cfg_attr(not(target_family = "wasm"), allow(dead_code))]

use serde_json::{Value, json};
use streamflow_plugin_sdk::{
    Error, HostError, HttpRequest, HttpResponse, Plugin, ScheduleTick, connections, events,
    host_message, http, kv, limits, records, secrets,
};

struct Probe;

fn text(input: &Value, key: &str) -> String {
    input
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn host_error(e: &HostError) -> Value {
    let kind = match e {
        HostError::Denied(_) => "denied",
        HostError::Invalid(_) => "invalid",
        HostError::Limit(_) => "limit",
        HostError::Conflict(_) => "conflict",
        HostError::Unavailable(_) => "unavailable",
        HostError::Timeout(_) => "timeout",
    };
    json!({"error": kind, "message": host_message(e)})
}

fn request(input: &Value) -> http::Request {
    let method = input.get("method").and_then(Value::as_str).unwrap_or("GET");
    let mut request = http::Request::new(method, &text(input, "url"));
    if let Some(connection) = input.get("connection").and_then(Value::as_str) {
        request = request.connection(connection);
    }
    if let Some(ms) = input.get("timeout_ms").and_then(Value::as_u64) {
        request = request.timeout_ms(ms as u32);
    }
    if input.get("follow").and_then(Value::as_bool) == Some(true) {
        request = request.follow_redirects();
    }
    if let Some(headers) = input.get("headers").and_then(Value::as_object) {
        for (k, v) in headers {
            request = request.header(k, v.as_str().unwrap_or_default());
        }
    }
    if let Some(body) = input.get("body") {
        request = request.json(body);
    }
    request
}

fn fetch(input: &Value) -> Value {
    match request(input).send() {
        Ok(response) => json!({
            "status": response.status,
            "body": String::from_utf8_lossy(&response.body),
            "bytes": response.body.len(),
        }),
        Err(e) => host_error(&e),
    }
}

/// Repeats a call until the host refuses it: how many went through, and why it stopped.
fn until_refused(mut call: impl FnMut(u32) -> Result<(), HostError>) -> Value {
    for n in 0..1000 {
        if let Err(e) = call(n) {
            return json!({"done": n, "stopped": host_error(&e)});
        }
    }
    json!({"done": 1000})
}

impl Plugin for Probe {
    fn run_action(name: &str, input: Value) -> Result<Value, Error> {
        Ok(match name {
            "fetch" => fetch(&input),
            "burst" => until_refused(|_| request(&input).send().map(|_| ())),
            "connections" => match connections::list() {
                Ok(list) => json!(
                    list.iter()
                        .map(|c| json!({
                            "id": c.id,
                            "status": format!("{:?}", c.status),
                            "metadata": c.metadata_json(),
                            "expires_at": c.expires_at,
                        }))
                        .collect::<Vec<_>>()
                ),
                Err(e) => host_error(&e),
            },
            "secret" => match secrets::get(&text(&input, "pointer")) {
                // The value itself is not echoed: a test compares its length and prefix.
                Ok(Some(value)) => {
                    json!({"found": true, "length": value.len(), "prefix": value.chars().take(3).collect::<String>()})
                }
                Ok(None) => json!({"found": false}),
                Err(e) => host_error(&e),
            },
            "limits" => {
                let left = limits::remaining();
                json!({
                    "http_requests": left.http_requests,
                    "http_bytes": left.http_bytes,
                    "record_reads": left.record_reads,
                    "record_writes": left.record_writes,
                    "events": left.events,
                    "wall_ms": left.wall_ms,
                })
            }
            "reads" => until_refused(|_| records::list("lead", None, 1).map(|_| ())),
            "writes" => until_refused(|n| {
                records::create("lead", None, &json!({"name": format!("Probe {n}")})).map(|_| ())
            }),
            "emits" => until_refused(|n| events::emit("probe", &json!({"n": n}))),
            "ticks" => kv::get_json::<Value>("ticks")?.unwrap_or(json!({"count": 0})),
            "webhooks" => kv::get_json::<Value>("webhooks")?.unwrap_or(json!([])),
            // Creates a lead under `key` and reads it back; each step's outcome is shown.
            "keyed" => {
                let key = input["key"].as_str().unwrap_or_default();
                let show = |r: Result<Option<Value>, HostError>| match r {
                    Ok(v) => json!({"ok": v}),
                    Err(e) => json!({"err": host_message(&e)}),
                };
                let created = records::create_keyed("lead", key, None, &input["data"])
                    .map(|r| Some(json!({"id": r.id, "data": r.json().unwrap_or_default()})));
                let found = records::get_keyed("lead", key)
                    .map(|r| r.map(|r| json!({"id": r.id, "data": r.json().unwrap_or_default()})));
                json!({"created": show(created), "found": show(found)})
            }
            other => return Err(Error::InvalidInput(format!("no action {other}"))),
        })
    }

    fn handle_webhook(request: HttpRequest) -> Result<HttpResponse, Error> {
        let mut seen: Vec<Value> = kv::get_json("webhooks")?.unwrap_or_default();
        // The newest 20 are kept (a load of deliveries must not grow one kv value).
        if seen.len() >= 20 {
            seen.remove(0);
        }
        seen.push(json!({
            "path": request.path,
            "body": serde_json::from_slice::<Value>(&request.body).unwrap_or(Value::Null),
        }));
        kv::set_json("webhooks", &seen)?;
        // A delivery whose body asks for it fails after it was seen: the host must let the
        // sender's retry through.
        let marker: &[u8] = b"\"fail\":true";
        if request.body.windows(marker.len()).any(|w| w == marker) {
            return Err(Error::Failed("asked to fail".into()));
        }
        Ok(HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"ok":true}"#.to_vec(),
        })
    }

    fn on_schedule(tick: ScheduleTick) -> Result<(), Error> {
        let mut ticks: Value = kv::get_json("ticks")?.unwrap_or(json!({"count": 0}));
        let count = ticks["count"].as_u64().unwrap_or(0) + 1;
        ticks = json!({"count": count, "id": tick.id, "last_run_at": tick.last_run_at, "now": tick.now});
        kv::set_json("ticks", &ticks)?;
        Ok(())
    }
}

streamflow_plugin_sdk::export!(Probe);
