//! The HTTP API: one router per realm (`/provider`, `/developer`, `/api`), the operations
//! routes (`/health`, `/metrics`, `/openapi.json`) and the layers every request goes through
//! (request id, tracing, metrics, body limit).
//!
//! The OpenAPI description is built from the same route table the server runs
//! (utoipa-axum), so it cannot miss a route.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tower_http::LatencyUnit;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::{DeadlineBody, TimeoutError};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, LoginLimiter};
use crate::kernel::Kernel;

mod client;
mod developer;
pub mod error;
pub mod extract;
mod integrations;
pub mod json;
mod plugins;
mod provider;
pub mod records;
mod session;
pub mod templates;
mod validate;

pub use error::{ApiError, ApiResult, ErrorBody};
pub use json::JsonBody;

/// Everything a handler may need, shared by all requests (cheap to clone): the kernel, and
/// what only HTTP needs beside it. Handlers reach the kernel's parts through it
/// (`state.store`, `state.records()`).
#[derive(Clone)]
pub struct AppState {
    pub kernel: Arc<Kernel>,
    pub auth: Arc<Auth>,
    pub login_limiter: Arc<LoginLimiter>,
    pub metrics: PrometheusHandle,
}

impl std::ops::Deref for AppState {
    type Target = Kernel;

    fn deref(&self) -> &Kernel {
        &self.kernel
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "StreamFlow API",
        description = "Host kernel of StreamFlow. Three realms, each with its own tokens: \
                       /provider (platform operators), /developer (plugin authors) and \
                       /api (client businesses). Every error is \
                       {\"error\": {\"code\", \"message\", \"details\"}}."
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "provider_token",
                "access token from POST /provider/auth/login",
            ),
            (
                "developer_token",
                "access token from POST /developer/auth/login",
            ),
            (
                "client_token",
                "access token from POST /api/auth/login, or a tenant API key (sfk_...)",
            ),
        ] {
            let mut scheme = Http::new(HttpAuthScheme::Bearer);
            scheme.description = Some(what.to_string());
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

/// The whole application: routes, layers and the OpenAPI document describing them.
pub fn router(state: AppState) -> Router {
    let (routes, openapi) = routes_and_doc();
    // Serialised once: the document never changes while the server runs.
    let openapi = axum::body::Bytes::from(
        serde_json::to_vec(&openapi).expect("the OpenAPI document serialises"),
    );
    let routes = routes.merge(integrations::public_router()).route(
        "/openapi.json",
        axum::routing::get(move || {
            let openapi = openapi.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    openapi,
                )
            }
        }),
    );
    layers(routes, state.config.body_limit, state.config.body_timeout).with_state(state)
}

/// The route table and the OpenAPI document made from it, the statuses every route shares
/// included ([`CommonResponses`]).
fn routes_and_doc() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(metrics_text))
        .nest(
            "/provider",
            provider::router()
                .merge(plugins::provider_router())
                .merge(integrations::provider_router())
                .merge(templates::router()),
        )
        .nest(
            "/developer",
            developer::router().merge(plugins::developer_router()),
        )
        .nest(
            "/api",
            client::router()
                .merge(records::router())
                .merge(plugins::client_router())
                .merge(integrations::client_router()),
        )
        .split_for_parts();
    CommonResponses.modify(&mut openapi);
    (routes, openapi)
}

/// Adds to every operation the error statuses the layers and extractors answer with, unless
/// the operation documents them itself: 500 everywhere; 401 where a token is required; 400
/// where a path, query or body is parsed; 404 where the path names something; 422 where a
/// body or query is checked; 408, 413 and 415 where a body is read; 429 on the login routes.
struct CommonResponses;

impl CommonResponses {
    fn common(
        path: &str,
        operation: &utoipa::openapi::path::Operation,
    ) -> Vec<(u16, &'static str)> {
        let secured = operation
            .security
            .as_ref()
            .is_some_and(|s| !s.is_empty() && !s.contains(&Default::default()));
        let has_body = operation.request_body.is_some();
        let params = operation.parameters.as_deref().unwrap_or_default();
        let has_params = !params.is_empty();
        let has_query = params.iter().any(|p| match p {
            utoipa::openapi::RefOr::T(p) => {
                matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query)
            }
            utoipa::openapi::RefOr::Ref(_) => true,
        });
        let mut statuses = vec![(
            500,
            "internal error; the x-request-id response header identifies it in the server logs",
        )];
        if secured {
            statuses.push((
                401,
                "missing, invalid or expired credentials for this realm",
            ));
        }
        if has_body || has_params {
            statuses.push((
                400,
                "a path or query parameter, or the body, does not parse",
            ));
        }
        if path.contains('{') {
            statuses.push((
                404,
                "what the path names does not exist (or is not visible to you)",
            ));
        }
        if has_body || has_query {
            statuses.push((
                422,
                "a field or query parameter is invalid; `details.errors` lists each with where it is",
            ));
        }
        if has_body {
            statuses.push((408, "the request body did not arrive in time"));
            statuses.push((413, "the request body is larger than the limit"));
            statuses.push((415, "the body is not sent with its documented content type"));
        }
        if path.ends_with("/auth/login") {
            statuses.push((429, "too many login attempts; wait `Retry-After` seconds"));
        }
        statuses
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in Self::common(path, operation) {
                    let response = ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                        )
                        .build();
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert(response.into());
                }
            }
        }
    }
}

/// The layers every request goes through, outermost first: request id (set, then echoed on
/// the response), tracing, metrics, turning a handler panic into a 500 with the request id,
/// the request-body deadline (408), JSON errors, the body limit. Also the 404 and 405
/// fallbacks.
pub fn layers<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    body_limit: usize,
    body_timeout: Duration,
) -> Router<S> {
    let request_id = HeaderName::from_static("x-request-id");
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(json::body_limit(body_limit))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(body_timeout, body_deadline))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(name_panicked_request))
        .layer(middleware::from_fn(record_metrics))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
            })
            // One access-log line per request, at info, inside the request's span.
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO).latency_unit(LatencyUnit::Micros)),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Marks the response made for a caught panic, so [`name_panicked_request`] can answer it.
#[derive(Clone, Copy)]
struct Panicked;

/// A handler panicked: log what it said (inside the request's span, so with its id) and
/// answer 500. The panic message stays in the log: it may quote anything.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into());
    tracing::error!(panic = %message, "a handler panicked; answered 500");
    metrics::counter!("streamflow_http_panics_total").increment(1);
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(Panicked);
    response
}

/// Gives a caught panic's 500 the error shape and the request id, so a client can report it.
async fn name_panicked_request(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let response = next.run(req).await;
    if response.extensions().get::<Panicked>().is_none() {
        return response;
    }
    ApiError::internal()
        .with_details(serde_json::json!({ "request_id": request_id }))
        .into_response()
}

/// Bytes per second below which a declared body is too slow to be waited for: each
/// `MIN_BODY_RATE` bytes of `Content-Length` add a second to the body deadline.
const MIN_BODY_RATE: u64 = 64 * 1024;

/// Gives the request body `timeout` to arrive, whatever reads it. A body that misses it
/// fails its reader; the response is then 408 and the connection closes (its remaining
/// bytes will not be read).
async fn body_deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    // A large declared body (a plugin package) gets more time, at the slowest rate a real
    // client on a poor link would send; a stalled one is still cut off.
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let timeout = timeout.saturating_add(Duration::from_secs(declared / MIN_BODY_RATE));
    let expired = Arc::new(AtomicBool::new(false));
    let flag = expired.clone();
    let req = req.map(|body| {
        axum::body::Body::new(DeadlineWatch {
            body: Box::pin(DeadlineBody::new(timeout, body)),
            expired: flag,
        })
    });
    let response = next.run(req).await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive within {} ms",
            timeout.as_millis()
        ),
    )
    .with_details(serde_json::json!({ "timeout_ms": timeout.as_millis() as u64 }))
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// A request body under tower-http's deadline that remembers when the deadline struck.
struct DeadlineWatch {
    body: std::pin::Pin<Box<DeadlineBody<axum::body::Body>>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for DeadlineWatch {
    type Data = axum::body::Bytes;
    type Error = tower_http::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = self.body.as_mut().poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(e))) = &polled
            && e.is::<TimeoutError>()
        {
            self.expired.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("streamflow_http_requests_total", &labels).increment(1);
    metrics::histogram!("streamflow_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Marks a response whose body is meant as it is (a page for a browser, a plugin's answer
/// to a webhook), so [`json_errors`] leaves an error status of it alone.
#[derive(Clone, Copy)]
pub(crate) struct Verbatim;

/// Makes every error JSON, including the plain-text rejections of axum's own extractors
/// (a path that is not UTF-8, a repeated query parameter).
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let verbatim = response.extensions().get::<Verbatim>().is_some();
    if !(status.is_client_error() || status.is_server_error()) || is_json || verbatim {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        _ if status.is_server_error() => "internal",
        _ => "error",
    };
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.chars().take(300).collect()
    };
    ApiError::new(status, code, message).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; GET /openapi.json lists them",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; GET /openapi.json lists them",
    )
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
    database: &'static str,
    version: &'static str,
}

/// Liveness and database reachability.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn health(State(state): State<AppState>) -> Response {
    let ok = state.store.ping().await.is_ok();
    let body = Health {
        status: if ok { "ok" } else { "degraded" },
        database: if ok { "ok" } else { "unreachable" },
        version: env!("CARGO_PKG_VERSION"),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics in the text exposition format. Open to the peers in
/// `STREAMFLOW_METRICS_ALLOW` (loopback by default), or to anyone with the bearer token
/// `STREAMFLOW_METRICS_TOKEN`; 403 otherwise.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, content_type = "text/plain", body = String),
        (status = 403, description = "neither an allowed address nor the metrics token", body = ErrorBody),
    ))]
async fn metrics_text(State(state): State<AppState>, req: Request) -> Response {
    if !metrics_allowed(&state.config, &req) {
        return ApiError::forbidden(
            "/metrics is open to the addresses in STREAMFLOW_METRICS_ALLOW, or with the bearer \
             token STREAMFLOW_METRICS_TOKEN",
        )
        .into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The peer is in the allow list (its own address, not a forwarded header), or the request
/// carries the metrics token (compared in constant time, over hashes so the length does not
/// show either).
fn metrics_allowed(config: &crate::config::Config, req: &Request) -> bool {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_canonical());
    if peer.is_some_and(|ip| config.metrics_allow.iter().any(|net| net.contains(&ip))) {
        return true;
    }
    let Some(expected) = config.metrics_token.as_deref() else {
        return false;
    };
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if presented.is_empty() || expected.is_empty() {
        return false;
    }
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    let presented = sha2::Sha256::digest(presented.as_bytes());
    let expected = sha2::Sha256::digest(expected.as_bytes());
    bool::from(presented[..].ct_eq(&expected[..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn doc() -> Value {
        serde_json::to_value(routes_and_doc().1).unwrap()
    }

    type Check = fn(&str) -> bool;

    /// Each documented request field with the server's own check of it.
    fn fields() -> Vec<(&'static str, &'static str, Check)> {
        let email: Check = |s| validate::email(s, "").is_ok();
        let password: Check = |s| validate::password(s, "").is_ok();
        let slug: Check = |s| validate::slug(s, "").is_ok();
        vec![
            ("CreateTenant", "slug", slug),
            ("CreateTenant", "name", |s| {
                validate::name(s, "", 200).is_ok()
            }),
            ("CreateUser", "email", email),
            ("CreateUser", "password", password),
            ("CreateDeveloper", "email", email),
            ("CreateDeveloper", "password", password),
            ("CreateDeveloper", "name", |s| {
                validate::name(s, "", 200).is_ok()
            }),
            ("UpdateUser", "password", password),
            ("CreateApiKey", "name", |s| {
                validate::name(s, "", 100).is_ok()
            }),
            ("PutRecordType", "name", |s| {
                validate::name(s, "", 100).is_ok()
            }),
            ("ClientLogin", "tenant", slug),
            ("ClientLogin", "email", email),
            ("LoginRequest", "email", email),
            ("ApplyTemplate", "version", |s| {
                semver::Version::parse(s).is_ok()
            }),
        ]
    }

    fn validator(doc: &Value, schema: &str, field: &str) -> jsonschema::Validator {
        let property = &doc["components"]["schemas"][schema]["properties"][field];
        assert!(
            property.get("pattern").is_some() || property.get("minLength").is_some(),
            "{schema}.{field} documents no constraint: {property}"
        );
        jsonschema::validator_for(property).unwrap()
    }

    fn samples() -> Vec<String> {
        let mut samples: Vec<String> = [
            "",
            "a",
            "ab",
            "a-b",
            "-ab",
            "ab-",
            "Acme",
            "acme-hvac",
            " x ",
            "x\n",
            "x\u{85}",
            "\u{a0}",
            "é",
            "\t",
            "a@b.c",
            "A@B.CO",
            "a@b",
            "a b@c.d",
            "@b.c",
            "a@@b.c",
            "a@b.c@d",
            "a@.",
            "0@.",
            "a@b..c",
            "1.0.0",
            "1.0.0-rc.1",
            "01.0.0",
            "1.0.0-01",
            "1.0.0-rc.01",
            "1.0.0+build.01",
            "1.0",
            " ana@example.com ",
            "ana@exa\u{1}mple.com",
            "名@例え.jp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [9, 10, 63, 64, 100, 101, 200, 201, 253, 254, 255, 256, 257] {
            samples.push("p".repeat(n));
            samples.push("é".repeat(n));
            samples.push(format!("{}@b.co", "a".repeat(n.saturating_sub(5))));
        }
        samples
    }

    /// What the OpenAPI description accepts, the server accepts: a client that keeps to the
    /// documented constraints is never refused for them.
    #[test]
    fn documented_constraints_never_promise_more_than_the_server_accepts() {
        let doc = doc();
        for (schema, field, check) in fields() {
            let v = validator(&doc, schema, field);
            let mut accepted = 0;
            for s in samples() {
                if v.is_valid(&json!(s)) {
                    accepted += 1;
                    assert!(
                        check(&s),
                        "{schema}.{field}: documented valid, refused: {s:?}"
                    );
                }
            }
            assert!(
                accepted > 0,
                "{schema}.{field} accepts none of the samples: {}",
                doc["components"]["schemas"][schema]
            );
        }
    }

    proptest! {
        #[test]
        fn documented_constraints_hold_for_any_string(s in any::<String>()) {
            let doc = doc();
            for (schema, field, check) in fields() {
                let v = validator(&doc, schema, field);
                prop_assert!(!v.is_valid(&json!(s)) || check(&s), "{}.{}: {:?}", schema, field, s);
            }
        }
    }

    /// Every operation lists the statuses the shared layers answer with.
    #[test]
    fn every_operation_documents_the_common_statuses() {
        let doc = doc();
        let op = |path: &str, method: &str| doc["paths"][path][method]["responses"].clone();
        let has = |r: &Value, codes: &[&str]| codes.iter().all(|c| r.get(*c).is_some());
        assert!(has(
            &op("/api/auth/login", "post"),
            &["400", "413", "415", "422", "429", "500"]
        ));
        assert!(
            op("/api/auth/login", "post").get("401").is_some(),
            "documented by the route"
        );
        assert!(has(&op("/api/me", "get"), &["401", "500"]));
        assert!(op("/api/me", "get").get("415").is_none(), "no body, no 415");
        assert!(has(
            &op("/api/records/{type}", "post"),
            &["400", "401", "404", "413", "415", "422", "500"]
        ));
        assert!(op("/health", "get").get("401").is_none(), "public");
        let ops = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|p| p.as_object().unwrap().values());
        for operation in ops {
            assert!(operation["responses"].get("500").is_some(), "{operation}");
        }
    }
}
