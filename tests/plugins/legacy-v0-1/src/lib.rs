//! A plugin built against `streamflow:plugin@0.1.0` with wit-bindgen and nothing else (no
//! SDK, which follows the newest contract). It scores every lead 42, warm, and keeps one
//! value in `kv` through its actions, so the suite can check that a 0.1.0 package runs
//! unrebuilt beside 0.2.0 ones: hooks, host calls and errors.

#[cfg(target_family = "wasm")]
mod component {
    wit_bindgen::generate!({
        path: "../../../plugin-sdk/wit/0.1.0",
        world: "plugin",
    });

    use exports::streamflow::plugin::{actions, event_handler, scoring, webhooks};
    use streamflow::plugin::types::{
        Event, HostError, HttpRequest, HttpResponse, PluginError, Record, Score, Temperature,
    };
    use streamflow::plugin::{kv, log};

    struct Legacy;

    fn host_failure(e: HostError) -> PluginError {
        PluginError::Failed(match e {
            HostError::Denied(m) => format!("denied: {m}"),
            HostError::Invalid(m) => format!("invalid: {m}"),
            HostError::Limit(m) => format!("limit: {m}"),
            HostError::Conflict(m) => format!("conflict: {m}"),
            HostError::Unavailable(m) => format!("unavailable: {m}"),
        })
    }

    impl scoring::Guest for Legacy {
        fn score_lead(lead: Record) -> Result<Score, PluginError> {
            log::log(log::Level::Info, &format!("legacy scorer saw {}", lead.id));
            Ok(Score {
                value: 42,
                temperature: Temperature::Warm,
                confidence: 0.5,
                reasons: vec!["scored by a contract 0.1.0 plugin".to_string()],
            })
        }
    }

    impl actions::Guest for Legacy {
        fn run_action(name: String, input: String) -> Result<String, PluginError> {
            match name.as_str() {
                "remember" => {
                    kv::set("remembered", input.as_bytes()).map_err(host_failure)?;
                    Ok("{\"stored\":true}".to_string())
                }
                "recall" => {
                    let value = kv::get("remembered").map_err(host_failure)?;
                    Ok(value
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_else(|| "null".to_string()))
                }
                other => Err(PluginError::InvalidInput(format!("no action {other}"))),
            }
        }
    }

    impl event_handler::Guest for Legacy {
        fn on_event(_: Event) -> Result<(), PluginError> {
            Err(PluginError::NotSupported)
        }
    }

    impl webhooks::Guest for Legacy {
        fn handle_webhook(_: HttpRequest) -> Result<HttpResponse, PluginError> {
            Err(PluginError::NotSupported)
        }
    }

    export!(Legacy);
}
