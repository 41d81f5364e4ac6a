//! Outbound HTTP for plugins and connections, guarded against server-side request forgery.
//!
//! - Only `https`, only to hosts the caller allows (the manifest's `[http] hosts`, a
//!   connection's URLs), and never to an address that is loopback, private, link-local,
//!   unique-local, multicast, unspecified or otherwise not public, in any of its IPv6 forms.
//! - The check is on the resolved address, in the client's resolver: the connection goes to
//!   the address that was checked, so a name that re-resolves elsewhere (DNS rebinding)
//!   gains nothing. An address literal in a URL skips the resolver and is checked here.
//! - Redirects are followed only when asked, at most [`MAX_REDIRECTS`], each hop checked
//!   as the first request was. No proxy, no cookies, a `User-Agent` naming the plugin,
//!   response headers and body capped.
//! - `STREAMFLOW_HTTP_ALLOW_HOSTS` (`host:port`, for tests and on-premises services) lifts
//!   the address check and the `https` rule for exactly those; `STREAMFLOW_HTTP_RESOLVE`
//!   (`name=address`) pins names to addresses, as curl's `--resolve` does.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Most redirects followed when a request asks for them.
pub const MAX_REDIRECTS: usize = 3;
/// Most response headers kept, and most bytes of them.
pub const MAX_RESPONSE_HEADERS: usize = 100;
pub const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
/// The default cap of a response body.
pub const DEFAULT_MAX_RESPONSE: u64 = 4 << 20;

/// How outbound HTTP is set up.
#[derive(Debug, Clone, Default)]
pub struct OutboundConfig {
    /// `host:port` pairs exempt from the address check and the `https` rule.
    pub allow_hosts: Vec<(String, u16)>,
    /// Names pinned to addresses.
    pub resolve: Vec<(String, IpAddr)>,
    /// The largest response body a request may receive (before the call's own quota).
    pub max_response_bytes: u64,
    /// Extra trusted roots (PEM), besides the system's: a private CA on premises, the
    /// suite's test CA.
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl OutboundConfig {
    /// Parses `STREAMFLOW_HTTP_ALLOW_HOSTS`: `host:port` entries, comma-separated.
    pub fn parse_allow_hosts(text: &str) -> Result<Vec<(String, u16)>, String> {
        split_list(text)
            .map(|entry| {
                let (host, port) = entry
                    .rsplit_once(':')
                    .ok_or_else(|| format!("{entry:?}: give host:port, such as 127.0.0.1:8443"))?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| format!("{entry:?}: the port is not a number"))?;
                Ok((normal_host(host), port))
            })
            .collect()
    }

    /// Parses `STREAMFLOW_HTTP_RESOLVE`: `name=address` entries, comma-separated.
    pub fn parse_resolve(text: &str) -> Result<Vec<(String, IpAddr)>, String> {
        split_list(text)
            .map(|entry| {
                let (name, ip) = entry.split_once('=').ok_or_else(|| {
                    format!("{entry:?}: give name=address, such as api.example.test=127.0.0.1")
                })?;
                let ip: IpAddr = ip
                    .trim_matches(['[', ']'])
                    .parse()
                    .map_err(|_| format!("{entry:?}: {ip:?} is not an IP address"))?;
                Ok((normal_host(name), ip))
            })
            .collect()
    }
}

fn split_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Lowercase, without a trailing dot or IPv6 brackets.
fn normal_host(host: &str) -> String {
    host.trim()
        .trim_end_matches('.')
        .trim_matches(['[', ']'])
        .to_ascii_lowercase()
}

/// Why an address may not be reached, or `None` for a public one.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b) {
        (0, _) => "an unspecified (0.0.0.0/8) address",
        (127, _) => "a loopback address",
        (10, _) | (192, 168) => "a private address",
        (172, 16..=31) => "a private address",
        (169, 254) => "a link-local address (cloud metadata lives there)",
        (100, 64..=127) => "a shared (carrier-grade NAT) address",
        (198, 18..=19) => "a benchmarking address",
        (192, 0) if c == 0 || c == 2 => "a reserved address",
        (224..=239, _) => "a multicast address",
        (240..=255, _) => "a reserved or broadcast address",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        // ::ffff:a.b.c.d reaches the IPv4 address; no public service needs that form.
        return Some(forbidden_v4(v4).unwrap_or("an IPv4-mapped address"));
    }
    Some(match s[0] {
        0 if s[..6] == [0; 6] => "an IPv4-compatible address",
        0xfc00..=0xfdff => "a unique-local address",
        0xfe80..=0xfebf => "a link-local address",
        0xfec0..=0xfeff => "a site-local address",
        0xff00..=0xffff => "a multicast address",
        // NAT64 and 6to4 embed an IPv4 address that is checked as such.
        0x0064 if s[1] == 0xff9b => {
            let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            return forbidden_v4(v4).map(|_| "a NAT64 form of a non-public address");
        }
        0x2002 => {
            let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
            return forbidden_v4(v4).map(|_| "a 6to4 form of a non-public address");
        }
        0x2001 if s[1] == 0x0db8 => "a documentation address",
        _ => return None,
    })
}

/// Why an outbound request got no response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutboundError {
    /// The guard refused it (host not listed, address not public, not https).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unreachable(String),
}

/// The resolver error that carries a refusal out of reqwest.
#[derive(Debug)]
struct RefusedAddress(String);

impl std::fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefusedAddress {}

/// Resolves names and refuses them when any address is not public (unless the name is
/// exempt); the client then connects to exactly the addresses returned.
struct GuardedResolver {
    guard: Arc<Guard>,
}

struct Guard {
    /// Exempt `host:port` pairs, and their names.
    allow: HashSet<(String, u16)>,
    allow_names: HashSet<String>,
    pinned: HashMap<String, Vec<IpAddr>>,
}

impl Guard {
    fn exempt(&self, host: &str, port: u16) -> bool {
        self.allow.contains(&(host.to_string(), port))
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = normal_host(name.as_str());
        Box::pin(async move {
            let addrs: Vec<IpAddr> = match guard.pinned.get(&host) {
                Some(pinned) => pinned.clone(),
                None => tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .map(|a| a.ip())
                    .collect(),
            };
            // An exempt name was checked against its port before the request was made
            // (see `Outbound::check_url`).
            if !guard.allow_names.contains(&host)
                && let Some((ip, why)) = addrs.iter().find_map(|ip| forbidden(*ip).map(|w| (ip, w)))
            {
                return Err(Box::new(RefusedAddress(format!(
                    "{host} resolves to {ip}, {why}; plugins may only reach public addresses"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            if addrs.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            let addrs: Vec<SocketAddr> =
                addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A request to make: what a plugin asked, with what its connection adds.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
    pub follow_redirects: bool,
    pub max_response_bytes: u64,
    /// Sent as `User-Agent`.
    pub user_agent: String,
    /// A client certificate and key (PEM) presented on the TLS handshake.
    pub identity: Option<Arc<Identity>>,
    /// Headers that carry credentials (a connection's) besides `Authorization`: dropped,
    /// with the client certificate, when a redirect leaves the first origin.
    pub credential_headers: Vec<String>,
}

/// A client certificate and its key, PEM.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(..)")
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The URL that answered (after redirects).
    pub url: Url,
}

/// The guarded client. Cheap to share.
pub struct Outbound {
    guard: Arc<Guard>,
    config: OutboundConfig,
    client: reqwest::Client,
    /// One client per client certificate (a TLS identity is the client's, not a request's).
    with_identity: Mutex<HashMap<Identity, reqwest::Client>>,
}

impl Outbound {
    pub fn new(config: OutboundConfig) -> anyhow::Result<Outbound> {
        let mut pinned: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in &config.resolve {
            pinned.entry(name.clone()).or_default().push(*ip);
        }
        let guard = Arc::new(Guard {
            allow: config.allow_hosts.iter().cloned().collect(),
            allow_names: config.allow_hosts.iter().map(|(h, _)| h.clone()).collect(),
            pinned,
        });
        let mut outbound = Outbound {
            client: reqwest::Client::new(),
            guard,
            config,
            with_identity: Mutex::new(HashMap::new()),
        };
        outbound.client = outbound.build_client(None)?;
        Ok(outbound)
    }

    pub fn max_response_bytes(&self) -> u64 {
        self.config.max_response_bytes
    }

    fn build_client(&self, identity: Option<&Identity>) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                guard: self.guard.clone(),
            }))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(8)
            .https_only(false);
        if let Some(pem) = &self.config.extra_roots_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| anyhow::anyhow!("extra trusted roots: {e}"))?;
            builder = builder.tls_certs_merge(roots);
        }
        if let Some(identity) = identity {
            builder = builder.identity(
                reqwest::Identity::from_pem(&identity.pem)
                    .map_err(|e| anyhow::anyhow!("client certificate: {e}"))?,
            );
        }
        Ok(builder.build()?)
    }

    fn client_for(&self, identity: Option<&Identity>) -> Result<reqwest::Client, OutboundError> {
        let Some(identity) = identity else {
            return Ok(self.client.clone());
        };
        let mut clients = self.with_identity.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(identity) {
            return Ok(client.clone());
        }
        let client = self.build_client(Some(identity)).map_err(|_| {
            OutboundError::Invalid(
                "the connection's client certificate or key is not valid PEM; the provider or tenant must set it again".into(),
            )
        })?;
        if clients.len() >= 256 {
            clients.clear();
        }
        clients.insert(identity.clone(), client.clone());
        Ok(client)
    }

    /// Checks a URL before any connection: scheme, address literal, exempt ports, and the
    /// caller's host rule (`allowed` gets the lowercase host).
    pub fn check_url(
        &self,
        url: &Url,
        allowed: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(), OutboundError> {
        let host = url
            .host_str()
            .map(normal_host)
            .ok_or_else(|| OutboundError::Invalid(format!("{} has no host", redact(url))))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::Invalid(
                "credentials in the URL are not allowed; use a connection".into(),
            ));
        }
        let port = url.port_or_known_default().unwrap_or(0);
        let exempt = self.guard.exempt(&host, port);
        match url.scheme() {
            "https" => {}
            "http" if exempt => {}
            scheme => {
                return Err(OutboundError::Refused(format!(
                    "{scheme}:// is not allowed: plugins call https:// only"
                )));
            }
        }
        if !exempt && self.guard.allow_names.contains(&host) {
            return Err(OutboundError::Refused(format!(
                "{host}:{port} is not one of the host:port pairs STREAMFLOW_HTTP_ALLOW_HOSTS lists"
            )));
        }
        // The allow list lifts the address and scheme rules, never the manifest's hosts.
        if !allowed(&host) {
            return Err(OutboundError::Refused(format!(
                "{host} is not among the hosts this plugin's manifest lists"
            )));
        }
        if let Ok(ip) = host.parse::<IpAddr>()
            && !exempt
            && let Some(why) = forbidden(ip)
        {
            return Err(OutboundError::Refused(format!(
                "{ip} is {why}; plugins may only reach public addresses"
            )));
        }
        Ok(())
    }

    /// Sends a request, following redirects when asked (each hop checked).
    pub async fn send(
        &self,
        mut request: Request,
        allowed: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Response, OutboundError> {
        let deadline = Instant::now() + request.timeout;
        let mut client = self.client_for(request.identity.as_deref())?;
        let mut hops = 0;
        loop {
            self.check_url(&request.url, allowed)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout(request.timeout));
            }
            let response = self.send_once(&client, &request, left).await?;
            let redirect = (300..400).contains(&response.status) && response.status != 304;
            if !redirect || !request.follow_redirects {
                return Ok(response);
            }
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(OutboundError::Refused(format!(
                    "more than {MAX_REDIRECTS} redirects"
                )));
            }
            let location = response
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.clone())
                .ok_or_else(|| OutboundError::Invalid("a redirect without a Location".into()))?;
            let next = request
                .url
                .join(&location)
                .map_err(|_| OutboundError::Invalid("a redirect to an invalid URL".into()))?;
            if next.origin() != request.url.origin() {
                // Credentials were meant for the first origin only.
                let credential = |k: &str| {
                    k.eq_ignore_ascii_case("authorization")
                        || request
                            .credential_headers
                            .iter()
                            .any(|c| c.eq_ignore_ascii_case(k))
                };
                let kept = request
                    .headers
                    .iter()
                    .filter(|(k, _)| !credential(k))
                    .cloned()
                    .collect();
                request.headers = kept;
                // The certificate is the client's: the next hop gets a client without it.
                if request.identity.take().is_some() {
                    client = self.client_for(None)?;
                }
            }
            if response.status == 303
                || (matches!(response.status, 301 | 302) && request.method == "POST")
            {
                request.method = "GET".into();
                request.body.clear();
            }
            request.url = next;
        }
    }

    async fn send_once(
        &self,
        client: &reqwest::Client,
        request: &Request,
        timeout_left: Duration,
    ) -> Result<Response, OutboundError> {
        let method = match request.method.to_ascii_uppercase().as_str() {
            m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD") => {
                reqwest::Method::from_bytes(m.as_bytes()).expect("a known method")
            }
            other => {
                return Err(OutboundError::Invalid(format!(
                    "method {:?}: use GET, POST, PUT, PATCH, DELETE or HEAD",
                    other.chars().take(16).collect::<String>()
                )));
            }
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                OutboundError::Invalid(format!("header name {name:?} is not valid"))
            })?;
            if matches!(
                name.as_str(),
                "host"
                    | "content-length"
                    | "transfer-encoding"
                    | "connection"
                    | "upgrade"
                    | "te"
                    | "trailer"
                    | "proxy-authorization"
                    | "user-agent"
            ) {
                return Err(OutboundError::Invalid(format!(
                    "header {name} is set by the host"
                )));
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                OutboundError::Invalid(format!("header {name}: the value is not valid"))
            })?;
            headers.append(name, value);
        }
        headers.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_str(&request.user_agent)
                .unwrap_or_else(|_| HeaderValue::from_static("StreamFlow-Plugin")),
        );
        let started = Instant::now();
        let sent = client
            .request(method, request.url.clone())
            .headers(headers)
            .body(request.body.clone())
            .timeout(timeout_left)
            .send()
            .await
            .map_err(|e| send_error(&e, &request.url, timeout_left))?;
        let status = sent.status().as_u16();
        let mut response_headers = Vec::new();
        let mut header_bytes = 0;
        for (name, value) in sent.headers() {
            header_bytes += name.as_str().len() + value.len();
            if response_headers.len() >= MAX_RESPONSE_HEADERS
                || header_bytes > MAX_RESPONSE_HEADER_BYTES
            {
                return Err(OutboundError::TooLarge(format!(
                    "the response has more than {MAX_RESPONSE_HEADERS} headers or {MAX_RESPONSE_HEADER_BYTES} bytes of them"
                )));
            }
            response_headers.push((
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
        let cap = request
            .max_response_bytes
            .min(self.config.max_response_bytes);
        if sent.content_length().is_some_and(|n| n > cap) {
            return Err(too_large(cap));
        }
        let url = sent.url().clone();
        let mut body = Vec::new();
        let mut stream = sent.bytes_stream();
        let left = timeout_left.saturating_sub(started.elapsed());
        let read = tokio::time::timeout(left, async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| send_error(&e, &request.url, timeout_left))?;
                if (body.len() + chunk.len()) as u64 > cap {
                    return Err(too_large(cap));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(())
        })
        .await;
        match read {
            Err(_) => return Err(timeout(timeout_left)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
        }
        Ok(Response {
            status,
            headers: response_headers,
            body,
            url,
        })
    }
}

fn too_large(cap: u64) -> OutboundError {
    OutboundError::TooLarge(format!("the response body is over {cap} bytes"))
}

fn timeout(after: Duration) -> OutboundError {
    OutboundError::Timeout(format!(
        "no complete response within {} ms",
        after.as_millis()
    ))
}

/// A URL without its query (which may carry an API key) for messages.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

fn send_error(e: &reqwest::Error, url: &Url, timeout_left: Duration) -> OutboundError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<RefusedAddress>() {
            return OutboundError::Refused(refused.0.clone());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return timeout(timeout_left);
    }
    let host = url.host_str().unwrap_or("?");
    let why = if e.is_connect() {
        "could not connect"
    } else {
        "the connection failed"
    };
    // reqwest's own text carries the URL with its query: never shown.
    OutboundError::Unreachable(format!("{host}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_refused_in_every_form() {
        for bad in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(forbidden(ip).is_some(), "{bad} should be refused");
        }
        for good in [
            "8.8.8.8",
            "172.32.0.1",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = good.parse().unwrap();
            assert_eq!(forbidden(ip), None, "{good}");
        }
    }

    #[test]
    fn settings_parse() {
        assert_eq!(
            OutboundConfig::parse_allow_hosts("127.0.0.1:8443, Fake.Test:80").unwrap(),
            vec![
                ("127.0.0.1".to_string(), 8443),
                ("fake.test".to_string(), 80)
            ]
        );
        assert!(OutboundConfig::parse_allow_hosts("nohost").is_err());
        assert_eq!(
            OutboundConfig::parse_resolve("a.test=127.0.0.1,b.test=[::1]").unwrap(),
            vec![
                ("a.test".to_string(), "127.0.0.1".parse().unwrap()),
                ("b.test".to_string(), "::1".parse().unwrap())
            ]
        );
        assert!(OutboundConfig::parse_resolve("a.test=nope").is_err());
    }

    #[tokio::test]
    async fn urls_are_checked_before_any_connection() {
        let outbound = Outbound::new(OutboundConfig {
            allow_hosts: vec![("127.0.0.1".into(), 9000)],
            max_response_bytes: DEFAULT_MAX_RESPONSE,
            ..Default::default()
        })
        .unwrap();
        let any = |_: &str| true;
        let check = |url: &str| outbound.check_url(&Url::parse(url).unwrap(), &any);
        assert!(check("https://api.example.com/x").is_ok());
        assert!(check("http://127.0.0.1:9000/x").is_ok());
        for refused in [
            "http://api.example.com/",
            "https://127.0.0.1/",
            "http://127.0.0.1:9001/",
            "https://[::1]/",
            "https://10.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::ffff:7f00:1]/",
            "ftp://api.example.com/",
        ] {
            assert!(
                matches!(check(refused), Err(OutboundError::Refused(_))),
                "{refused}: {:?}",
                check(refused)
            );
        }
        assert!(matches!(
            check("https://user:pw@api.example.com/"),
            Err(OutboundError::Invalid(_))
        ));
        let only = |h: &str| h == "api.example.com";
        assert!(matches!(
            outbound.check_url(&Url::parse("https://other.example.com/").unwrap(), &only),
            Err(OutboundError::Refused(m)) if m.contains("manifest")
        ));
    }
}
