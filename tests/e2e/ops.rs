//! Operations routes, request ids, the error shape of unknown routes, the OpenAPI document.

use reqwest::Method;
use serde_json::json;

use crate::harness::{Backend, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_request_ids() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let resp = srv
        .http
        .get(format!("{}/health", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a UUID request id is generated");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["database"],
        "ok"
    );

    let resp = srv
        .http
        .get(format!("{}/api/me", srv.base))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["x-request-id"],
        "trace-me-123",
        "echoed, errors included"
    );

    let text = srv
        .http
        .get(format!("{}/metrics", srv.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("streamflow_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/api/me\""), "{text}");
    assert!(text.contains("streamflow_http_request_duration_seconds_bucket"));

    let (status, body) = srv.call(Method::GET, "/no/such/route", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = srv.call(Method::DELETE, "/health", None, None).await;
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_route() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let (status, doc) = srv.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("post", "/provider/auth/login"),
        ("post", "/provider/auth/refresh"),
        ("post", "/provider/auth/logout"),
        ("get", "/provider/me"),
        ("post", "/provider/tenants"),
        ("get", "/provider/tenants"),
        ("get", "/provider/tenants/{slug}"),
        ("post", "/provider/tenants/{slug}/suspend"),
        ("post", "/provider/tenants/{slug}/resume"),
        ("post", "/provider/tenants/{slug}/users"),
        ("get", "/provider/tenants/{slug}/users"),
        ("post", "/provider/developers"),
        ("get", "/provider/developers"),
        ("post", "/developer/auth/login"),
        ("post", "/developer/auth/refresh"),
        ("post", "/developer/auth/logout"),
        ("get", "/developer/me"),
        ("post", "/api/auth/login"),
        ("post", "/api/auth/refresh"),
        ("post", "/api/auth/logout"),
        ("get", "/api/me"),
        ("get", "/api/users"),
        ("post", "/api/users"),
        ("patch", "/api/users/{id}"),
        ("get", "/api/api-keys"),
        ("post", "/api/api-keys"),
        ("delete", "/api/api-keys/{id}"),
        ("get", "/api/record-types"),
        ("get", "/api/record-types/{type}"),
        ("put", "/api/record-types/{type}"),
        ("post", "/api/records/{type}"),
        ("get", "/api/records/{type}"),
        ("get", "/api/records/{type}/{id}"),
        ("patch", "/api/records/{type}/{id}"),
        ("delete", "/api/records/{type}/{id}"),
        ("get", "/api/records/{type}/{id}/history"),
        ("get", "/api/pipelines"),
        ("get", "/api/automation-runs"),
        ("get", "/provider/templates"),
        ("get", "/provider/templates/{id}"),
        ("post", "/provider/tenants/{slug}/template"),
        ("get", "/provider/tenants/{slug}/template"),
        ("get", "/health"),
        ("get", "/metrics"),
        ("post", "/developer/plugins"),
        ("get", "/developer/plugins"),
        ("get", "/provider/plugins"),
        ("post", "/provider/plugins/{id}/versions/{version}/approve"),
        ("post", "/provider/plugins/{id}/versions/{version}/reject"),
        ("get", "/provider/tenants/{slug}/plugins"),
        ("put", "/provider/tenants/{slug}/plugins/{id}"),
        ("delete", "/provider/tenants/{slug}/plugins/{id}"),
        ("post", "/provider/tenants/{slug}/plugins/{id}/reset"),
        ("get", "/provider/tenants/{slug}/plugins/{id}/audit"),
        ("get", "/api/plugins"),
        ("put", "/api/plugins/{id}/config"),
        ("post", "/api/plugins/{id}/actions/{name}"),
        ("get", "/provider/plugins/{id}/connections/{connection}"),
        ("put", "/provider/plugins/{id}/connections/{connection}"),
        ("get", "/provider/tenants/{slug}/connections"),
        ("get", "/provider/tenants/{slug}/plugins/{id}/schedules"),
        (
            "post",
            "/provider/tenants/{slug}/plugins/{id}/schedules/{schedule}/run",
        ),
        ("get", "/provider/tenants/{slug}/plugins/{id}/webhooks"),
        ("get", "/api/connections"),
        ("post", "/api/connections/{plugin}/{connection}/authorize"),
        ("put", "/api/connections/{plugin}/{connection}"),
        ("delete", "/api/connections/{plugin}/{connection}"),
        ("get", "/api/plugins/{id}/schedules"),
        ("post", "/api/plugins/{id}/schedules/{schedule}/run"),
        ("get", "/api/plugins/{id}/webhooks"),
        ("get", "/provider/plugins/{id}/webhooks"),
    ];
    for (method, path) in expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not described"
        );
    }
    let described: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        described,
        expected.len(),
        "a route was added without a test of its description"
    );
    assert!(doc["components"]["securitySchemes"]["client_token"].is_object());
    // The statuses the shared layers answer with, and the constraints the server enforces.
    let login = &doc["paths"]["/api/auth/login"]["post"]["responses"];
    for status in ["400", "401", "413", "415", "422", "429", "500"] {
        assert!(
            login[status].is_object(),
            "login does not document {status}"
        );
    }
    assert!(doc["paths"]["/api/me"]["get"]["responses"]["401"].is_object());
    let tenant = &doc["components"]["schemas"]["CreateTenant"]["properties"];
    assert_eq!(tenant["slug"]["maxLength"], 63);
    assert!(tenant["slug"]["pattern"].is_string());
    // The client realm's routes name their security scheme.
    assert_eq!(
        doc["paths"]["/api/records/{type}"]["post"]["security"][0],
        json!({"client_token": []})
    );
}
