//! What every contract version's bindings share. The types and interfaces of 0.1.0 are
//! unchanged in later versions, but each `bindgen!` makes its own Rust types, so their
//! translation is written once here and expanded in each version's module.

/// Expands, in a bindings module, the linking and instantiation of its world and the
/// translation of the hooks and host interfaces every version has. The module provides `host_error` and `plugin_failure` (their variants differ by version) and
/// `call_schedule` (the hook is not in every version).
macro_rules! shared_bindings {
    () => {
        pub(crate) struct Pre(PluginPre<HostState>);

        impl Pre {
            pub(crate) fn new(
                linker: &Linker<HostState>,
                component: &Component,
            ) -> wasmtime::Result<Pre> {
                Ok(Pre(PluginPre::new(linker.instantiate_pre(component)?)?))
            }
        }

        pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
            Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
        }

        /// Instantiate and call one hook. The outer error is a trap; the inner one the plugin's
        /// own answer.
        pub(crate) fn call(
            pre: &Pre,
            store: &mut Store<HostState>,
            call: Call,
        ) -> wasmtime::Result<Result<Reply, Failure>> {
            let plugin = pre.0.instantiate(&mut *store)?;
            call_on(&plugin, store, call)
        }

        pub(crate) fn instantiate(
            pre: &Pre,
            store: &mut Store<HostState>,
        ) -> wasmtime::Result<Plugin> {
            pre.0.instantiate(store)
        }

        /// Calls a hook on an instance that already exists.
        pub(crate) fn call_on(
            plugin: &Plugin,
            store: &mut Store<HostState>,
            call: Call,
        ) -> wasmtime::Result<Result<Reply, Failure>> {
            Ok(match call {
                Call::ScoreLead(lead) => plugin
                    .streamflow_plugin_scoring()
                    .call_score_lead(&mut *store, &record_to_wit(lead))?
                    .map(|s| {
                        Reply::Score(host::Score {
                            value: s.value.min(100),
                            temperature: match s.temperature {
                                types::Temperature::Hot => host::Temperature::Hot,
                                types::Temperature::Warm => host::Temperature::Warm,
                                types::Temperature::Cold => host::Temperature::Cold,
                            },
                            confidence: if s.confidence.is_finite() {
                                s.confidence.clamp(0.0, 1.0)
                            } else {
                                0.0
                            },
                            reasons: s.reasons,
                        })
                    })
                    .map_err(plugin_failure),
                Call::OnEvent(e) => plugin
                    .streamflow_plugin_event_handler()
                    .call_on_event(
                        &mut *store,
                        &types::Event {
                            id: e.id,
                            kind: e.kind,
                            record_type: e.record_type,
                            record_id: e.record_id,
                            payload: e.payload,
                            at: e.at,
                        },
                    )?
                    .map(|()| Reply::Done)
                    .map_err(plugin_failure),
                Call::RunAction { name, input } => plugin
                    .streamflow_plugin_actions()
                    .call_run_action(&mut *store, &name, &input)?
                    .map(Reply::Output)
                    .map_err(plugin_failure),
                Call::HandleWebhook(r) => plugin
                    .streamflow_plugin_webhooks()
                    .call_handle_webhook(
                        &mut *store,
                        &types::HttpRequest {
                            method: r.method,
                            path: r.path,
                            headers: r.headers,
                            body: r.body,
                        },
                    )?
                    .map(|r| {
                        Reply::Webhook(host::HttpResponse {
                            status: r.status,
                            headers: r.headers,
                            body: r.body,
                        })
                    })
                    .map_err(plugin_failure),
                Call::OnSchedule(tick) => call_schedule(plugin, store, tick)?,
            })
        }

        fn record_to_wit(r: host::PluginRecord) -> types::Record {
            types::Record {
                id: r.id,
                record_type: r.record_type,
                stage: r.stage,
                version: r.version,
                data: r.data,
                created_at: r.created_at,
                updated_at: r.updated_at,
            }
        }

        impl types::Host for HostState {}

        impl streamflow::plugin::log::Host for HostState {
            fn log(&mut self, level: streamflow::plugin::log::Level, message: String) {
                use streamflow::plugin::log::Level;
                let level = match level {
                    Level::Trace => LogLevel::Trace,
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                };
                HostState::log(self, level, &message);
            }
        }

        impl streamflow::plugin::config::Host for HostState {
            fn get(&mut self) -> String {
                self.config()
            }
        }

        impl streamflow::plugin::kv::Host for HostState {
            fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, types::HostError> {
                self.kv_get(&key).map_err(host_error)
            }

            fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), types::HostError> {
                self.kv_set(&key, &value).map_err(host_error)
            }

            fn delete(&mut self, key: String) -> Result<(), types::HostError> {
                self.kv_delete(&key).map_err(host_error)
            }
        }

        impl streamflow::plugin::records::Host for HostState {
            fn get(
                &mut self,
                record_type: String,
                id: String,
            ) -> Result<Option<types::Record>, types::HostError> {
                self.record_get(&record_type, &id)
                    .map(|r| r.map(record_to_wit))
                    .map_err(host_error)
            }

            fn list(
                &mut self,
                record_type: String,
                stage: Option<String>,
                limit: u32,
            ) -> Result<Vec<types::Record>, types::HostError> {
                self.record_list(&record_type, stage.as_deref(), limit)
                    .map(|v| v.into_iter().map(record_to_wit).collect())
                    .map_err(host_error)
            }

            fn create(
                &mut self,
                record_type: String,
                stage: Option<String>,
                data: String,
            ) -> Result<types::Record, types::HostError> {
                self.record_create(&record_type, stage.as_deref(), &data)
                    .map(record_to_wit)
                    .map_err(host_error)
            }

            fn update(
                &mut self,
                record_type: String,
                id: String,
                stage: Option<String>,
                data: String,
                expected_version: Option<u64>,
            ) -> Result<types::Record, types::HostError> {
                self.record_update(&record_type, &id, stage.as_deref(), &data, expected_version)
                    .map(record_to_wit)
                    .map_err(host_error)
            }
        }

        impl streamflow::plugin::events::Host for HostState {
            fn emit(&mut self, kind: String, payload: String) -> Result<(), types::HostError> {
                self.emit_event(&kind, &payload).map_err(host_error)
            }
        }
    };
}
