//! `http.send` for plugins: the manifest's hosts (or the hosts of the connection the request
//! names), the connection's credentials added by the host, one retry after a 401 with a
//! refreshed token, and the metering of every call per tenant × plugin × host.

use std::time::Instant;

use streamflow_runtime::{HostError, HttpResponse, OutboundRequest};

use super::capabilities::KernelServices;
use super::connections::Applied;
use crate::outbound::{self, OutboundError};

/// Usage rows being written at once, off the calls' paths.
static USAGE_WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(256);

/// Headers a plugin may not set itself when its request names a connection: the
/// connection sets them.
fn credential_header(name: &str, applied: &Applied) -> bool {
    applied
        .headers
        .iter()
        .any(|(h, _)| h.eq_ignore_ascii_case(name))
}

/// How the plugin is told an outbound failure. The messages name hosts, never a query
/// (which may hold an API key) or a credential.
pub(super) fn host_error(e: OutboundError) -> HostError {
    match e {
        OutboundError::Refused(m) => HostError::Denied(m),
        OutboundError::Invalid(m) => HostError::Invalid(m),
        OutboundError::TooLarge(m) => HostError::Limit(m),
        OutboundError::Timeout(m) => HostError::Timeout(m),
        OutboundError::Unreachable(m) => HostError::Unavailable(m),
    }
}

/// The URL of a request: absolute, or relative to the connection's API base.
fn request_url(asked: &str, applied: Option<&Applied>) -> Result<reqwest::Url, HostError> {
    if let Ok(url) = reqwest::Url::parse(asked) {
        return Ok(url);
    }
    let base = applied.and_then(|a| a.api_base.as_deref()).ok_or_else(|| {
        HostError::Invalid(
            "the URL is not absolute (a relative URL needs a connection with an API base)".into(),
        )
    })?;
    let joined = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        asked.trim_start_matches('/')
    );
    reqwest::Url::parse(&joined).map_err(|_| {
        HostError::Invalid("the URL joined to the connection's API base is not valid".into())
    })
}

impl KernelServices {
    /// The manifest pattern (or connection host) a host was allowed by: the metering key,
    /// bounded by what the manifest and the provider list.
    fn host_key(&self, host: &str, applied: Option<&Applied>) -> String {
        let listed = self.active.manifest.http.as_ref().and_then(|spec| {
            spec.hosts
                .iter()
                .find(|p| streamflow_runtime::integration::host_matches(p, host))
                .cloned()
        });
        listed
            .or_else(|| applied.and_then(|a| a.hosts.iter().find(|h| *h == host).cloned()))
            .unwrap_or_else(|| "(refused)".into())
    }

    /// What the connection adds, with the call's deadline on waiting for it. The
    /// connection's work runs in its own task: a token refresh cut off between the
    /// service's answer and saving it would lose a rotated refresh token, so it finishes
    /// even when this call stops waiting.
    async fn applied(
        &self,
        id: &str,
        after_401: Option<i64>,
        deadline: tokio::time::Instant,
    ) -> Result<Applied, HostError> {
        let (kernel, active, scope, id) = (
            self.kernel.clone(),
            self.active.clone(),
            self.scope,
            id.to_string(),
        );
        let work = tokio::spawn(async move {
            kernel
                .connections()
                .apply(&scope, &active.manifest, &id, after_401)
                .await
        });
        match tokio::time::timeout_at(deadline, work).await {
            Ok(Ok(applied)) => applied.map_err(host_error),
            Ok(Err(_)) => Err(HostError::Unavailable(
                "the connection's token work failed".into(),
            )),
            Err(_) => Err(HostError::Timeout(
                "the connection's token work did not finish within the request's timeout".into(),
            )),
        }
    }

    pub(super) async fn send_http(
        &self,
        request: OutboundRequest,
    ) -> Result<HttpResponse, HostError> {
        let manifest = &self.active.manifest;
        // One deadline for the whole call: the connection's token work, the request and
        // its retry after a 401 together.
        let deadline = tokio::time::Instant::now() + request.timeout;
        let timed_out = || {
            HostError::Timeout(format!(
                "no complete response within {} ms",
                request.timeout.as_millis()
            ))
        };
        let mut applied = match &request.connection {
            Some(id) => Some(self.applied(id, None, deadline).await?),
            None => None,
        };
        let url = request_url(&request.url, applied.as_ref())?;
        // A connection's credentials go only to the hosts of its own URLs (the provider
        // chose them), never to another host the manifest lists.
        if let (Some(applied), Some(id)) = (&applied, &request.connection) {
            let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            if !applied.hosts.contains(&host) {
                return Err(HostError::Denied(format!(
                    "{host} is not a host of connection {id}; its credentials go only to {}",
                    applied.hosts.join(", ")
                )));
            }
        }
        let user_agent = format!(
            "StreamFlow-Plugin/{}@{}",
            self.active.plugin_id, self.active.version
        );
        let mut retried = false;
        loop {
            let mut url = url.clone();
            let mut headers = request.headers.clone();
            let mut identity = None;
            if let Some(applied) = &applied {
                headers.retain(|(name, _)| !credential_header(name, applied));
                headers.extend(applied.headers.iter().cloned());
                if !applied.query.is_empty() {
                    url.query_pairs_mut().extend_pairs(applied.query.iter());
                }
                identity = applied.identity.clone();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            let key = self.host_key(host.trim_matches(['[', ']']), applied.as_ref());
            let outbound_request = outbound::Request {
                method: request.method.clone(),
                url,
                headers,
                body: request.body.clone(),
                timeout: left,
                follow_redirects: request.follow_redirects,
                max_response_bytes: request.max_response_bytes,
                user_agent: user_agent.clone(),
                identity,
                credential_headers: applied
                    .as_ref()
                    .map(|a| a.headers.iter().map(|(k, _)| k.clone()).collect())
                    .unwrap_or_default(),
            };
            let hosts = applied
                .as_ref()
                .map(|a| a.hosts.clone())
                .unwrap_or_default();
            let allowed = |h: &str| {
                manifest.http.as_ref().is_some_and(|spec| spec.allows(h))
                    || hosts.iter().any(|c| c == h)
            };
            let started = Instant::now();
            let result = self.kernel.outbound.send(outbound_request, &allowed).await;
            self.meter(&key, &request, &result, started).await;
            let response = result.map_err(|e| match e {
                // The body cap was this call's `http-bytes` quota, not the platform's.
                OutboundError::TooLarge(m)
                    if request.max_response_bytes < self.kernel.outbound.max_response_bytes() =>
                {
                    HostError::Limit(format!(
                        "quota http-bytes: this call had {} bytes left for the response ({m}; limits.remaining says what is left)",
                        request.max_response_bytes
                    ))
                }
                e => host_error(e),
            })?;
            // A 401 on a connection whose token may have been revoked or rotated elsewhere:
            // refresh once (from the generation this request used) and try again.
            let from_connection = applied.as_ref().is_some_and(|a| {
                response
                    .url
                    .host_str()
                    .is_some_and(|h| a.hosts.iter().any(|c| c.eq_ignore_ascii_case(h)))
            });
            if response.status == 401
                && from_connection
                && !retried
                && let Some(generation) = applied.as_ref().and_then(|a| a.generation)
                && let Some(id) = &request.connection
            {
                retried = true;
                applied = Some(self.applied(id, Some(generation), deadline).await?);
                continue;
            }
            return Ok(HttpResponse {
                status: response.status,
                headers: response.headers,
                body: response.body,
            });
        }
    }

    /// Counts one call in Prometheus and in the usage table billing reads.
    async fn meter(
        &self,
        host: &str,
        request: &OutboundRequest,
        result: &Result<outbound::Response, OutboundError>,
        started: Instant,
    ) {
        let elapsed = started.elapsed();
        let (outcome, received) = match result {
            Ok(r) if r.status < 400 => ("ok", r.body.len()),
            Ok(r) => ("http_error", r.body.len()),
            Err(OutboundError::Refused(_)) => ("refused", 0),
            Err(OutboundError::Timeout(_)) => ("timeout", 0),
            Err(_) => ("failed", 0),
        };
        let bytes = (request.body.len() + received) as u64;
        let labels = [
            ("tenant", self.scope.tenant_id().to_string()),
            ("plugin", self.active.plugin_id.clone()),
            ("host", host.to_string()),
        ];
        let mut with_outcome = labels.to_vec();
        with_outcome.push(("outcome", outcome.to_string()));
        metrics::counter!("streamflow_plugin_http_requests_total", &with_outcome).increment(1);
        metrics::counter!("streamflow_plugin_http_bytes_total", &labels).increment(bytes);
        metrics::histogram!("streamflow_plugin_http_request_duration_seconds", &labels)
            .record(elapsed.as_secs_f64());
        // Written off the call's path (the plugin does not wait for the usage row), at most
        // USAGE_WRITES at once; past that the call writes its own row (back-pressure).
        let (store, scope, plugin, host) = (
            self.kernel.store.clone(),
            self.scope,
            self.active.plugin_id.clone(),
            host.to_string(),
        );
        let failed = outcome != "ok";
        let write = async move {
            if let Err(e) = store
                .record_http_usage(
                    &scope,
                    &plugin,
                    &host,
                    bytes as i64,
                    failed,
                    elapsed.as_millis() as i64,
                )
                .await
            {
                tracing::warn!(error = %e, "could not record a plugin's HTTP usage");
            }
        };
        match USAGE_WRITES.try_acquire() {
            Ok(permit) => {
                tokio::spawn(async move {
                    write.await;
                    drop(permit);
                });
            }
            Err(_) => write.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_urls_join_the_connection_base() {
        let applied = Applied {
            api_base: Some("https://quickbooks.api.intuit.com/v3/".into()),
            ..Applied::default()
        };
        let url = request_url("/company/9/invoice?minorversion=75", Some(&applied)).unwrap();
        assert_eq!(
            url.as_str(),
            "https://quickbooks.api.intuit.com/v3/company/9/invoice?minorversion=75"
        );
        assert!(request_url("/company", None).is_err());
        let absolute = request_url("https://api.sam.gov/x", Some(&applied)).unwrap();
        assert_eq!(absolute.host_str(), Some("api.sam.gov"));
    }
}
