//! A plugin that misbehaves on purpose. Its config `mode` picks how `score-lead` fails;
//! its actions try capabilities the tenant may not have granted, or other tenants' data.
// Natively (cargo test/clippy of the workspace) the hooks are not exported, so nothing
// uses the plugin type.
#![cfg_attr(not(target_family = "wasm"), allow(dead_code))]

use serde::Deserialize;
use serde_json::{Value, json};
use streamflow_plugin_sdk::{
    Error, Event, Lead, Plugin, Score, Temperature, config, events, kv, log, records,
};

#[derive(Deserialize)]
struct Settings {
    #[serde(default)]
    mode: String,
    /// Secrets are not handed to `config.get`; reported so a test can check.
    api_key: Option<String>,
}

struct Hostile;

#[inline(never)]
#[allow(unconditional_recursion)] // the point: recurse until the stack runs out
fn recurse(depth: u64, trail: &mut [u8; 256]) -> u64 {
    trail[(depth % 256) as usize] = depth as u8;
    let below = recurse(depth + 1, trail);
    below + trail[(depth % 7) as usize] as u64
}

impl Plugin for Hostile {
    fn score_lead(lead: Lead) -> Result<Score, Error> {
        let settings: Settings = config::get()?;
        match settings.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                let mut trail = [0u8; 256];
                let depth = recurse(0, &mut trail);
                Ok(Score {
                    value: depth as u8,
                    temperature: Temperature::Cold,
                    confidence: 0.0,
                    reasons: vec![],
                })
            }
            "big" => Ok(Score {
                value: 1,
                temperature: Temperature::Cold,
                confidence: 1.0,
                reasons: (0..1000)
                    .map(|i| format!("{i}: {}", "x".repeat(1000)))
                    .collect(),
            }),
            "panic" => panic!("hostile plugin panics on lead {}", lead.id),
            // Writes a lead of its own while scoring: the host must not score that one (the
            // scorer would call itself without end).
            "spawn" => {
                let spawned = records::create(
                    "lead",
                    None,
                    &json!({"name": format!("spawned while scoring {}", lead.id)}),
                )
                .map_err(|e| Error::Failed(format!("{e:?}")))?;
                Ok(Score {
                    value: 60,
                    temperature: Temperature::Warm,
                    confidence: 0.5,
                    reasons: vec![format!("spawned {}", spawned.id)],
                })
            }
            _ => Ok(Score {
                value: 50,
                temperature: Temperature::Warm,
                confidence: 0.5,
                reasons: vec![format!("secret visible: {}", settings.api_key.is_some())],
            }),
        }
    }

    fn on_event(event: Event) -> Result<(), Error> {
        let host = |e| Error::Failed(format!("{e:?}"));
        match event.kind.as_str() {
            // Three more of its own kind per ping: without a budget, 3^depth deliveries.
            "plugin.hostile.ping" => {
                for n in 0..3 {
                    events::emit("ping", &json!({ "n": n })).map_err(host)?;
                }
                Ok(())
            }
            // Keep what the host delivered, for the test to read back.
            kind => kv::set_json(
                &format!("seen:{kind}"),
                &json!({
                    "kind": kind,
                    "record_type": event.record_type,
                    "record_id": event.record_id,
                    "payload": event.json()?,
                }),
            )
            .map_err(host),
        }
    }

    fn run_action(name: &str, input: Value) -> Result<Value, Error> {
        let text = |key: &str| {
            input
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let outcome = match name {
            "kv-get" => kv::get(&text("key"))
                .map(|v| json!(v.map(|b| String::from_utf8_lossy(&b).into_owned()))),
            "kv-set" => kv::set(&text("key"), text("value").as_bytes()).map(|()| json!("stored")),
            "read-record" => records::get("lead", &text("id")).map(|r| json!(r.map(|r| r.data))),
            "list-records" => records::list("lead", None, 1000).map(|v| json!(v.len())),
            "create-lead" => records::create("lead", None, &json!({"name": text("name")}))
                .map(|r| json!({"id": r.id, "type": r.record_type})),
            "emit" => events::emit("poked", &json!({"by": "hostile"})).map(|()| json!("emitted")),
            "loop" => loop {
                std::hint::black_box(0);
            },
            "seen" => kv::get_json::<Value>(&format!("seen:{}", text("kind"))).map(|v| json!(v)),
            // What an automation handed the action, for the test to read back (`seen`).
            "keep-input" => kv::set_json("seen:action", &input).map(|()| json!("kept")),
            // Two pings from one API call: one chain, one budget.
            "ping" => events::emit("ping", &json!({"n": "start"}))
                .and_then(|()| events::emit("ping", &json!({"n": "start-2"})))
                .map(|()| json!("pinged")),
            // The same refused call, `n` times in one call.
            "deny" => {
                let n = input.get("n").and_then(Value::as_u64).unwrap_or(1);
                let denied = (0..n).filter(|_| kv::get("k").is_err()).count();
                log::info(&format!("denied {denied} times\nINFO forged line"));
                Ok(json!(denied))
            }
            "config" => Ok(serde_json::from_str::<Value>(&config::raw()).unwrap_or_default()),
            _ => return Err(Error::InvalidInput(format!("no action {name}"))),
        };
        // Report host errors as data so the test can read exactly what the host answered.
        Ok(match outcome {
            Ok(v) => json!({ "ok": v }),
            Err(e) => json!({ "host_error": format!("{e:?}") }),
        })
    }
}

streamflow_plugin_sdk::export!(Hostile);
