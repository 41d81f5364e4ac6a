//! StreamFlow as a client sees it, over HTTP: the same steps run against the in-process
//! test server, the `streamflow` binary, or a benchmark's server. No test harness here, so
//! the benchmarks include this file too.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

/// The public address the test servers are told they have.
pub const PUBLIC: &str = "https://sf.example.test";

/// The grants of a plugin that imports records from a service (no events of its own).
pub const IMPORT_GRANTS: [&str; 5] = [
    "http",
    "kv",
    "records:read",
    "records:read-pii",
    "records:write",
];

/// The password of the users [`Api::tenant`] makes.
pub const PASSWORD: &str = "correct-horse-battery";

/// A server and the fake as a client of StreamFlow talks to them: over HTTP, so the same
/// steps run against the in-process server or the `streamflow` binary.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    pub async fn ok(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(method, path, Some(token), body).await;
        assert!((200..300).contains(&status), "{path}: {status} {body}");
        body
    }

    pub async fn provider(&self, email: &str, password: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/provider/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// A tenant on the HVAC template with an owner; returns the owner's token.
    pub async fn tenant(&self, provider: &str, slug: &str) -> String {
        self.tenant_on(provider, slug, "hvac").await
    }

    /// A tenant on `template` with an owner; returns the owner's token.
    pub async fn tenant_on(&self, provider: &str, slug: &str, template: &str) -> String {
        self.ok(
            Method::POST,
            "/provider/tenants",
            provider,
            Some(json!({"slug": slug, "name": format!("Tenant {slug}")})),
        )
        .await;
        self.ok(
            Method::POST,
            &format!("/provider/tenants/{slug}/template"),
            provider,
            Some(json!({"id": template})),
        )
        .await;
        let email = format!("owner-{}@{slug}.test", uuid::Uuid::new_v4().simple());
        self.ok(
            Method::POST,
            &format!("/provider/tenants/{slug}/users"),
            provider,
            Some(json!({"email": email, "password": PASSWORD, "role": "owner"})),
        )
        .await;
        let (status, body) = self
            .call(
                Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"tenant": slug, "email": email, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn install(
        &self,
        provider: &str,
        slug: &str,
        plugin: &str,
        grants: &[&str],
        config: Value,
    ) {
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("/provider/tenants/{slug}/plugins/{plugin}"),
                Some(provider),
                Some(json!({"grants": grants, "config": config})),
            )
            .await;
        assert!(status == 200 || status == 201, "{body}");
    }

    /// The authorization code flow through the real authorize and callback routes, as an
    /// admin's browser runs it: the consent screen (a fake that approves at once, reached
    /// on loopback whatever its host name) redirects to the callback, whose public address
    /// is this server. `consent` adds query parameters the fake reads (the account).
    pub async fn connect_oauth(
        &self,
        token: &str,
        plugin: &str,
        connection: &str,
        public: &str,
        consent: &[(&str, &str)],
    ) -> (u16, String) {
        let body = self
            .ok(
                Method::POST,
                &format!("/api/connections/{plugin}/{connection}/authorize"),
                token,
                Some(json!({})),
            )
            .await;
        let mut authorize = reqwest::Url::parse(body["authorize_url"].as_str().unwrap()).unwrap();
        let redirect = authorize
            .query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned());
        assert_eq!(redirect, Some(format!("{public}/oauth/callback")));
        authorize.query_pairs_mut().extend_pairs(consent);
        authorize.set_host(Some("127.0.0.1")).unwrap();
        let sent = self.http.get(authorize).send().await.unwrap();
        assert_eq!(sent.status().as_u16(), 303, "{:?}", sent.text().await);
        let location = sent.headers()["location"].to_str().unwrap().to_string();
        let callback = location.replace(public, &self.base);
        let answer = self.http.get(callback).send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    /// Every record of a type, page after page.
    pub async fn records(&self, token: &str, record_type: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/records/{record_type}?limit=200&cursor={c}"),
                None => format!("/api/records/{record_type}?limit=200"),
            };
            let page = self.ok(Method::GET, &path, token, None).await;
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    /// Runs a plugin's schedule now, as the scheduler would; the run's answer.
    pub async fn run_schedule(&self, token: &str, plugin: &str, schedule: &str) -> Value {
        self.ok(
            Method::POST,
            &format!("/api/plugins/{plugin}/schedules/{schedule}/run"),
            token,
            None,
        )
        .await
    }

    /// A plugin action's output.
    pub async fn action_output(
        &self,
        token: &str,
        plugin: &str,
        action: &str,
        input: Value,
    ) -> Value {
        self.ok(
            Method::POST,
            &format!("/api/plugins/{plugin}/actions/{action}"),
            token,
            Some(json!({"input": input})),
        )
        .await["output"]
            .clone()
    }

    /// Runs a plugin's `import` schedule until its `import-status` action shows a newly
    /// completed sweep (`cursor.last_completed` changed), at most `runs` times, each run
    /// `ok`; returns how many runs it took.
    pub async fn import_until_done(&self, token: &str, plugin: &str, runs: usize) -> usize {
        self.sweep_until_done(token, plugin, "import", runs).await
    }

    /// [`Api::import_until_done`] for a schedule of another name.
    pub async fn sweep_until_done(
        &self,
        token: &str,
        plugin: &str,
        schedule: &str,
        runs: usize,
    ) -> usize {
        let last = |status: Value| status["cursor"]["last_completed"].clone();
        let before = last(
            self.action_output(token, plugin, "import-status", json!({}))
                .await,
        );
        for n in 1..=runs {
            let run = self.run_schedule(token, plugin, schedule).await;
            assert_eq!(run["status"], "ok", "{run}");
            let status = self
                .action_output(token, plugin, "import-status", json!({}))
                .await;
            if last(status) != before {
                return n;
            }
        }
        let status = self
            .action_output(token, plugin, "import-status", json!({}))
            .await;
        panic!("the {plugin} import did not complete in {runs} runs: {status}");
    }

    pub async fn record(&self, token: &str, record_type: &str, id: &str) -> Value {
        self.ok(
            Method::GET,
            &format!("/api/records/{record_type}/{id}"),
            token,
            None,
        )
        .await
    }

    pub async fn runs(&self, token: &str) -> Vec<Value> {
        let body = self
            .ok(Method::GET, "/api/automation-runs", token, None)
            .await;
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `check` passes on the tenant's automation runs.
    pub async fn wait_runs(
        &self,
        token: &str,
        what: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let runs = self.runs(token).await;
            if check(&runs) {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "waited 30 s for {what}; runs: {runs:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The runs of the plugin's target about one record's events, newest first.
pub fn runs_of<'a>(runs: &'a [Value], plugin: &str) -> Vec<&'a Value> {
    runs.iter()
        .filter(|r| r["target"].as_str().is_some_and(|t| t.contains(plugin)))
        .collect()
}

pub fn config_for(fake_port: u16, hosts: &[&str]) -> impl FnOnce(&mut streamflow::config::Config) {
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    move |c: &mut streamflow::config::Config| {
        let localhost: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        c.bundled_plugins = true;
        c.public_url = Some(PUBLIC.into());
        c.http_allow_hosts = hosts.iter().map(|h| (h.clone(), fake_port)).collect();
        c.http_resolve = hosts.iter().map(|h| (h.clone(), localhost)).collect();
        c.scheduler_poll = Duration::from_millis(100);
    }
}

pub fn env_for(fake_port: u16, hosts: &[&str]) -> (String, String) {
    let allow = hosts
        .iter()
        .map(|h| format!("{h}:{fake_port}"))
        .collect::<Vec<_>>()
        .join(",");
    let resolve = hosts
        .iter()
        .map(|h| format!("{h}=127.0.0.1"))
        .collect::<Vec<_>>()
        .join(",");
    (allow, resolve)
}
