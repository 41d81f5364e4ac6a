//! Records: CRUD, optimistic concurrency, listing, schemas, and bad input.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{TestServer, event_kinds};

async fn owner_of(srv: &TestServer, slug: &str) -> String {
    let provider = srv.provider_token().await;
    srv.tenant(&provider, slug).await;
    srv.user(&provider, slug, "owner").await
}

both_backends! {
    async fn records_round_trip_with_optimistic_concurrency(srv) {
        let owner = owner_of(&srv, "acme").await;
        let (status, lead) = srv.post("/api/records/lead", &owner, json!({"data": {"name": "Dana", "budget": 9500}, "stage": "new"})).await;
        assert_eq!(status, 201, "{lead}");
        for field in ["id", "type", "stage", "data", "version", "created_at", "updated_at"] {
            assert!(lead.get(field).is_some(), "{field} missing: {lead}");
        }
        assert_eq!(lead["type"], "lead");
        assert_eq!(lead["version"], 1);
        assert!(lead["score"].is_null() && lead.as_object().unwrap().contains_key("score"), "leads carry score: null");
        let (_, contact) = srv.post("/api/records/contact", &owner, json!({"data": {"name": "Dana"}})).await;
        assert!(!contact.as_object().unwrap().contains_key("score"), "only leads have a score");

        let path = format!("/api/records/lead/{}", lead["id"].as_str().unwrap());
        assert_eq!(srv.get(&path, &owner).await.1, lead);
        let (status, updated) = srv.patch(&path, &owner, json!({"data": {"name": "Dana W.", "budget": 12000}, "stage": "qualified", "version": 1})).await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!((updated["version"].as_i64(), updated["stage"].as_str()), (Some(2), Some("qualified")));
        assert_eq!(updated["created_at"], lead["created_at"]);

        // A writer holding version 1 is told, and changes nothing.
        let (status, body) = srv.patch(&path, &owner, json!({"data": {"name": "stale"}, "version": 1})).await;
        assert_eq!(status, 409);
        assert_eq!(body["error"]["code"], "version_conflict");
        assert_eq!(body["error"]["details"]["current_version"], 2);
        assert_eq!(srv.get(&path, &owner).await.1, updated);

        // Stage-only change keeps the data.
        let (_, moved) = srv.patch(&path, &owner, json!({"stage": "won", "version": 2})).await;
        assert_eq!(moved["data"], updated["data"]);
        assert_eq!(event_kinds(&srv, lead["id"].as_str().unwrap()).await,
            ["record.created", "stage.changed", "record.updated", "stage.changed", "record.updated", "stage.changed"]);

        assert_eq!(srv.delete(&path, &owner).await.0, 204);
        assert_eq!(srv.get(&path, &owner).await.0, 404);
        assert_eq!(srv.delete(&path, &owner).await.0, 404);
        assert_eq!(srv.patch(&path, &owner, json!({"stage": "x", "version": 3})).await.0, 404);
    }
}

both_backends! {
    async fn lists_filter_and_page_in_a_stable_order(srv) {
        let owner = owner_of(&srv, "acme").await;
        let mut ids = Vec::new();
        for i in 0..25 {
            let stage = if i % 3 == 0 { "won" } else { "new" };
            let (_, r) = srv.post("/api/records/lead", &owner, json!({"data": {"n": i}, "stage": stage})).await;
            ids.push(r["id"].as_str().unwrap().to_string());
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let query = match &cursor { Some(c) => format!("?limit=10&cursor={c}"), None => "?limit=10".into() };
            let (status, page) = srv.get(&format!("/api/records/lead{query}"), &owner).await;
            assert_eq!(status, 200, "{page}");
            pages += 1;
            seen.extend(page["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ids, "every record once, in creation order");

        let (status, all) = srv.get("/api/records/lead?stage=&limit=&cursor=&updated_since=", &owner).await;
        assert_eq!(status, 200, "empty parameters mean no filter: {all}");
        assert_eq!(all["items"].as_array().unwrap().len(), 25);
        let (_, won) = srv.get("/api/records/lead?stage=won&limit=200", &owner).await;
        assert_eq!(won["items"].as_array().unwrap().len(), 9);
        assert!(won["items"].as_array().unwrap().iter().all(|r| r["stage"] == "won"));
        assert!(won["next_cursor"].is_null());

        // updated_since: only what changed at or after the time.
        let (_, first) = srv.get(&format!("/api/records/lead/{}", ids[0]), &owner).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mark = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
        srv.patch(&format!("/api/records/lead/{}", ids[0]), &owner, json!({"stage": "lost", "version": first["version"]})).await;
        let (status, recent) = srv.get(&format!("/api/records/lead?updated_since={}", mark.replace('+', "%2B")), &owner).await;
        assert_eq!(status, 200, "{recent}");
        let recent_ids: Vec<&str> = recent["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(recent_ids, [ids[0].as_str()]);

        for (query, parameter) in [
            ("?limit=0", "limit"), ("?limit=201", "limit"), ("?limit=ten", "limit"),
            ("?cursor=not-a-cursor", "cursor"), ("?updated_since=yesterday", "updated_since"),
        ] {
            let (status, body) = srv.get(&format!("/api/records/lead{query}"), &owner).await;
            assert_eq!(status, 400, "{query}: {body}");
            assert_eq!(body["error"]["details"]["parameter"], parameter);
        }
        assert_eq!(srv.get("/api/records/invoice", &owner).await.1["error"]["code"], "unknown_record_type");
    }
}

/// Sends only the head of a POST that declares `length` bytes of JSON, and reads the answer:
/// a server that checks the declared length answers without waiting for the body.
pub(crate) async fn headers_only_post(
    srv: &TestServer,
    path: &str,
    token: &str,
    length: usize,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = srv.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some((headers, body)) = text.split_once("\r\n\r\n") {
            let declared = headers.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if declared.is_some_and(|n| body.len() >= n) {
                let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, serde_json::from_str(body).unwrap());
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("the server answered in time")
            .unwrap();
        assert!(n > 0, "connection closed before a full answer: {text}");
        received.extend_from_slice(&buf[..n]);
    }
}

/// Everything the tenant has, to compare before and after bad requests.
async fn snapshot(srv: &TestServer, token: &str) -> Value {
    srv.get("/api/records/lead?limit=200", token).await.1
}

both_backends! {
    async fn bad_input_is_refused_and_changes_nothing(srv) {
        let owner = owner_of(&srv, "acme").await;
        let lead = srv.lead(&owner, json!({"name": "Original", "budget": 100})).await;
        let path = format!("/api/records/lead/{}", lead["id"].as_str().unwrap());
        let before = snapshot(&srv, &owner).await;

        // (method, path, content type, body, expected status, expected code)
        type Case<'a> = (Method, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
        let cases: Vec<Case> = vec![
            (Method::POST, "/api/records/lead", Some("application/json"), b"{\"data\": {".to_vec(), 400, "malformed_json"),
            (Method::POST, "/api/records/lead", Some("application/json"), b"not json at all".to_vec(), 400, "malformed_json"),
            (Method::POST, "/api/records/lead", Some("application/json"), b"{\"data\": {}} trailing".to_vec(), 400, "malformed_json"),
            (Method::POST, "/api/records/lead", Some("application/json"), b"".to_vec(), 400, "malformed_json"),
            (Method::POST, "/api/records/lead", Some("text/plain"), b"{\"data\": {}}".to_vec(), 415, "unsupported_media_type"),
            (Method::POST, "/api/records/lead", None, b"{\"data\": {}}".to_vec(), 415, "unsupported_media_type"),
            (Method::POST, "/api/records/lead", Some("application/json"), b"{\"data\": [1,2]}".to_vec(), 422, "validation_failed"),
            (Method::POST, "/api/records/lead", Some("application/json"), b"{\"data\": \"x\"}".to_vec(), 422, "validation_failed"),
            (Method::POST, "/api/records/lead", Some("application/json"), b"{\"stage\": \"new\"}".to_vec(), 422, "validation_failed"),
            (Method::POST, "/api/records/lead", Some("application/json"), b"{\"data\": {}, \"stage\": 7}".to_vec(), 422, "validation_failed"),
            (Method::POST, "/api/records/lead", Some("application/json"), b"{\"data\": {}, \"evil\": 1}".to_vec(), 422, "validation_failed"),
            (Method::POST, "/api/records/lead", Some("application/json"), b"{\"data\": {\"a\": \"nul\\u0000byte\"}}".to_vec(), 422, "validation_failed"),
            (Method::POST, "/api/records/lead", Some("application/json"), b"{\"data\": {}, \"stage\": \"  \"}".to_vec(), 422, "validation_failed"),
            (Method::POST, "/api/records/no_such_type", Some("application/json"), b"{\"data\": {}}".to_vec(), 404, "unknown_record_type"),
            (Method::POST, "/api/records/Lead';--", Some("application/json"), b"{\"data\": {}}".to_vec(), 404, "unknown_record_type"),
            (Method::PATCH, &path, Some("application/json"), b"{\"data\": {\"name\": \"x\"}, \"version\": \"1\"}".to_vec(), 422, "validation_failed"),
            (Method::PATCH, &path, Some("application/json"), b"{\"data\": {\"name\": \"x\"}}".to_vec(), 422, "validation_failed"),
            (Method::PATCH, &path, Some("application/json"), b"{\"version\": 1}".to_vec(), 422, "validation_failed"),
            (Method::PATCH, &path, Some("application/json"), b"{\"data\": {\"name\": \"x\"}, \"version\": 7}".to_vec(), 409, "version_conflict"),
            (Method::PATCH, "/api/records/lead/not-a-uuid", Some("application/json"), b"{\"stage\": \"x\", \"version\": 1}".to_vec(), 404, "not_found"),
        ];
        for (method, path, content_type, body, status, code) in cases {
            let shown = String::from_utf8_lossy(&body).to_string();
            let (got, resp) = srv.raw(method, path, &owner, content_type, body).await;
            assert_eq!(got, status, "{path} {shown}: {resp}");
            assert_eq!(resp["error"]["code"], code, "{path} {shown}: {resp}");
        }

        // Field paths say where the problem is.
        let (_, resp) = srv.raw(Method::PATCH, &path, &owner, Some("application/json"), b"{\"data\": {}, \"version\": \"1\"}".to_vec()).await;
        assert_eq!(resp["error"]["details"]["errors"][0]["path"], "/version");
        let (_, resp) = srv.raw(Method::POST, "/api/records/lead", &owner, Some("application/json"), b"{\"data\": {\"notes\": [\"ok\", \"bad\\u0000\"]}}".to_vec()).await;
        assert_eq!(resp["error"]["details"]["errors"][0]["path"], "/data/notes/1");
        let (_, resp) = srv.raw(Method::POST, "/api/records/lead", &owner, Some("application/json"), b"{\"stage\": \"x\"}".to_vec()).await;
        assert_eq!(resp["error"]["details"]["errors"][0]["path"], "/data");

        // Oversized bodies: refused by declared length before a byte of the body is sent...
        let (status, resp) = headers_only_post(&srv, "/api/records/lead", &owner, 2 * 1024 * 1024).await;
        assert_eq!(status, 413, "{resp}");
        assert_eq!(resp["error"]["code"], "body_too_large");
        assert_eq!(resp["error"]["details"]["limit_bytes"], 1024 * 1024);
        // ...and cut off when streamed without a length.
        let big = format!("{{\"data\": {{\"blob\": \"{}\"}}}}", "x".repeat(2 * 1024 * 1024));
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.into_bytes().chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        // A fresh client: the server answers 413 and closes the connection while the client
        // is still streaming, so the client sees either the 413 or a reset while sending
        // (then the unchanged snapshot below is the proof that nothing was stored).
        let sent = reqwest::Client::new().post(format!("{}/api/records/lead", srv.base))
            .bearer_auth(&owner)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
            .send().await;
        match sent {
            Ok(resp) => assert_eq!(resp.status(), 413, "chunked oversized body"),
            Err(e) => assert!(e.is_request() || e.is_body(), "unexpected failure: {e:?}"),
        }

        assert_eq!(snapshot(&srv, &owner).await, before, "nothing changed");
    }
}

const HOSTILE: [&str; 8] = [
    "'; DROP TABLE records; --",
    "\" OR \"1\"=\"1",
    "Robert'); DELETE FROM tenants WHERE ('1'='1",
    "%' OR 1=1 --",
    "\\'; SELECT pg_sleep(5); --",
    "Zoë Ñúñez — 東京都 — مرحبا — 🔥🏠",
    "\u{202E}gnp.exe",
    "$1 $2 ?1 :name @x",
];

both_backends! {
    async fn sql_metacharacters_and_unicode_are_just_data(srv) {
        let owner = owner_of(&srv, "acme").await;
        let mut ids = Vec::new();
        for (i, text) in HOSTILE.iter().enumerate() {
            let data = json!({"name": text, "notes": {*text: [text]}, "i": i});
            let (status, r) = srv.post("/api/records/lead", &owner, json!({"data": data, "stage": text})).await;
            assert_eq!(status, 201, "{text}: {r}");
            assert_eq!(r["data"]["name"], *text);
            assert_eq!(r["stage"], *text);
            let (_, back) = srv.get(&format!("/api/records/lead/{}", r["id"].as_str().unwrap()), &owner).await;
            assert_eq!(back["data"], data);
            ids.push(r["id"].as_str().unwrap().to_string());
        }
        for (i, text) in HOSTILE.iter().enumerate() {
            let url = reqwest::Url::parse_with_params(&format!("{}/api/records/lead", srv.base), &[("stage", *text)]).unwrap();
            let query = url.query().unwrap();
            let (status, page) = srv.get(&format!("/api/records/lead?{query}"), &owner).await;
            assert_eq!(status, 200, "{text}: {page}");
            let found: Vec<&str> = page["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
            assert_eq!(found, [ids[i].as_str()], "the filter matched exactly the record with stage {text}");
        }
        let (_, all) = srv.get("/api/records/lead?limit=200", &owner).await;
        assert_eq!(all["items"].as_array().unwrap().len(), HOSTILE.len(), "nothing dropped or added");

        // Hostile text in names, slugs, emails and record types.
        let provider = srv.provider_token().await;
        for text in HOSTILE {
            let (status, _) = srv.post("/provider/tenants", &provider, json!({"slug": text, "name": text})).await;
            assert_eq!(status, 422, "slug {text}");
            let (status, _) = srv.post("/provider/tenants/acme/users", &provider, json!({"email": text, "password": crate::harness::PASSWORD, "role": "member"})).await;
            assert_eq!(status, 422, "email {text}");
        }
        let (status, t) = srv.post("/provider/tenants", &provider, json!({"slug": "unicode-co", "name": HOSTILE[5]})).await;
        assert_eq!((status, t["name"].as_str()), (201, Some(HOSTILE[5])));
        let (status, _) = srv.post("/provider/tenants", &provider, json!({"slug": "nul-co", "name": "bad\u{0}name"})).await;
        assert_eq!(status, 422);
        let (status, _) = srv.get("/api/records/lead?stage=a%00b", &owner).await;
        assert_eq!(status, 400);
        for path in ["/provider/tenants/acme'%20OR%20'1'='1", "/provider/tenants/a%00b", "/provider/tenants/%F0%9F%94%A5"] {
            assert_eq!(srv.get(path, &provider).await.0, 404, "{path}");
        }
        assert_eq!(srv.post("/provider/tenants/a%00b/suspend", &provider, json!({})).await.0, 404);
    }
}

both_backends! {
    async fn record_types_validate_data_against_their_schema(srv) {
        let owner = owner_of(&srv, "acme").await;
        let schema = json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "budget": {"type": "number", "minimum": 0},
                "postal_code": {"type": "string", "pattern": "^[0-9]{5}$"},
                "contact": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}}
            }
        });
        let (status, t) = srv.call(Method::PUT, "/api/record-types/lead", Some(&owner), Some(json!({"name": "Lead", "schema": schema}))).await;
        assert_eq!(status, 200, "{t}");
        assert_eq!(t["version"], 2);
        let (_, types) = srv.get("/api/record-types", &owner).await;
        let ids: Vec<&str> = types["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["contact", "job", "lead"]);

        let (status, body) = srv.post("/api/records/lead", &owner, json!({"data": {"budget": "lots", "postal_code": "7870"}})).await;
        assert_eq!(status, 422, "{body}");
        let mut paths: Vec<&str> = body["error"]["details"]["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
        paths.sort();
        assert_eq!(paths, ["/data", "/data/budget", "/data/postal_code"]);
        let (status, _) = srv.post("/api/records/lead", &owner, json!({"data": {"name": "Ok", "budget": 10, "postal_code": "78704"}})).await;
        assert_eq!(status, 201);

        // Updates are validated too.
        let lead = srv.lead(&owner, json!({"name": "Valid"})).await;
        let (status, body) = srv.patch(&format!("/api/records/lead/{}", lead["id"].as_str().unwrap()), &owner, json!({"data": {"name": ""}, "version": 1})).await;
        assert_eq!(status, 422);
        assert_eq!(body["error"]["details"]["errors"][0]["path"], "/data/name");

        // Unusable schemas are refused with the path of the schema.
        // A recursive schema that branches at every level would make validation exponential.
        let branch = json!({"type": "object", "required": ["x"], "properties": {"x": {"$ref": "#"}}});
        let bomb = json!({"anyOf": [branch, branch, branch, branch, branch, branch, branch, branch, branch, branch]});
        for bad in [json!({"type": "wrong"}), json!({"$ref": "https://evil.example/schema.json"}), json!({"$ref": "file:///etc/passwd"}), json!("string"), bomb] {
            let (status, body) = srv.call(Method::PUT, "/api/record-types/lead", Some(&owner), Some(json!({"name": "Lead", "schema": bad}))).await;
            assert_eq!(status, 422, "{body}");
            assert_eq!(body["error"]["details"]["errors"][0]["path"], "/schema");
        }
        // A custom type works like the built-ins.
        let (status, _) = srv.call(Method::PUT, "/api/record-types/inspection", Some(&owner), Some(json!({"name": "Roof inspection", "schema": {"type": "object", "required": ["address"]}}))).await;
        assert_eq!(status, 200);
        assert_eq!(srv.post("/api/records/inspection", &owner, json!({"data": {}})).await.0, 422);
        assert_eq!(srv.post("/api/records/inspection", &owner, json!({"data": {"address": "1 Main St"}})).await.0, 201);
        assert_eq!(srv.call(Method::PUT, "/api/record-types/Bad-Type", Some(&owner), Some(json!({"name": "x"}))).await.0, 422);
        let (status, body) = srv.call(Method::PUT, "/api/record-types/lead", Some(&owner), Some(json!({"name": "L", "schema": {"description": "a\u{0}b"}}))).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["details"]["errors"][0]["path"], "/schema/description");

        // Deeply nested data is refused before any schema walks it.
        let mut deep = json!("leaf");
        for _ in 0..20 {
            deep = json!({"a": deep});
        }
        let (status, body) = srv.post("/api/records/inspection", &owner, json!({"data": {"address": "x", "nested": deep}})).await;
        assert_eq!(status, 422, "{body}");
        assert!(body["error"]["details"]["errors"][0]["path"].as_str().unwrap().starts_with("/data/nested/a/a"));
    }
}

both_backends! {
    async fn concurrent_writes_are_committed_together_and_each_answered(srv) {
        let owner = owner_of(&srv, "acme").await;
        // 200 creates at once: every one is answered with its own record and stored once.
        let creates = (0..200).map(|i| {
            let (srv, owner) = (&srv, owner.clone());
            async move { srv.post("/api/records/lead", &owner, json!({"data": {"n": i}})).await }
        });
        let results = futures_util::future::join_all(creates).await;
        let mut ids: Vec<String> = results.iter().map(|(status, r)| {
            assert_eq!(*status, 201, "{r}");
            r["id"].as_str().unwrap().to_string()
        }).collect();
        let mut numbers: Vec<i64> = results.iter().map(|(_, r)| r["data"]["n"].as_i64().unwrap()).collect();
        numbers.sort();
        assert_eq!(numbers, (0..200).collect::<Vec<i64>>(), "each caller got its own record back");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200);
        let (_, page) = srv.get("/api/records/lead?limit=200", &owner).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 200);
        assert!(page["next_cursor"].is_null());

        // 20 updates of one record holding the same version: exactly one wins.
        let lead = srv.lead(&owner, json!({"name": "Contested"})).await;
        let path = format!("/api/records/lead/{}", lead["id"].as_str().unwrap());
        let updates = (0..20).map(|i| {
            let (srv, owner, path) = (&srv, owner.clone(), path.clone());
            async move { srv.patch(&path, &owner, json!({"data": {"name": format!("writer {i}")}, "version": 1})).await.0 }
        });
        let mut statuses = futures_util::future::join_all(updates).await;
        statuses.sort();
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19, "{statuses:?}");
        let (_, after) = srv.get(&path, &owner).await;
        assert_eq!(after["version"], 2);
        assert_eq!(event_kinds(&srv, lead["id"].as_str().unwrap()).await, ["record.created", "stage.changed", "record.updated"]);
    }
}

/// Big records cannot make big responses: a record's data has its own size limit (below the
/// body limit), and a list page ends early at a byte budget, saying so through its cursor.
mod large_records_are_bounded {
    use super::*;
    use crate::harness::Backend;

    const RECORD_LIMIT: usize = 20_000;
    const LIST_BYTES: usize = 10_000;

    async fn story(srv: TestServer) {
        let owner = owner_of(&srv, "acme").await;
        let blob = |bytes: usize| json!({"data": {"notes": "x".repeat(bytes)}});

        // Over the record limit, whoever asks and however the body is within its own limit.
        let (status, body) = srv
            .post("/api/records/lead", &owner, blob(RECORD_LIMIT))
            .await;
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["error"]["code"], "record_too_large");
        assert_eq!(body["error"]["details"]["path"], "/data");
        assert_eq!(body["error"]["details"]["limit_bytes"], RECORD_LIMIT);
        let (status, small) = srv.post("/api/records/lead", &owner, blob(100)).await;
        assert_eq!(status, 201, "{small}");
        let path = format!("/api/records/lead/{}", small["id"].as_str().unwrap());
        let (status, body) = srv
            .patch(
                &path,
                &owner,
                json!({"data": {"notes": "y".repeat(RECORD_LIMIT)}, "version": 1}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (413, Some("record_too_large")),
            "{body}"
        );
        assert_eq!(srv.delete(&path, &owner).await.0, 204);

        // Pages of large records end at the byte budget; one record larger than the budget
        // still comes, alone, so every record can be read.
        async fn read_all(
            srv: &TestServer,
            owner: &str,
            record_type: &str,
        ) -> (Vec<String>, Vec<usize>) {
            let (mut ids, mut sizes) = (Vec::new(), Vec::new());
            let mut cursor: Option<String> = None;
            loop {
                let query = match &cursor {
                    Some(c) => format!("?limit=200&cursor={c}"),
                    None => "?limit=200".into(),
                };
                let (status, page) = srv
                    .get(&format!("/api/records/{record_type}{query}"), owner)
                    .await;
                assert_eq!(status, 200, "{page}");
                let items = page["items"].as_array().unwrap();
                assert!(
                    !items.is_empty(),
                    "a page with a cursor before it is never empty"
                );
                sizes.push(items.len());
                ids.extend(items.iter().map(|r| r["id"].as_str().unwrap().to_string()));
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => return (ids, sizes),
                }
            }
        }
        let mut big = Vec::new();
        let mut small = Vec::new();
        for _ in 0..5 {
            big.push(
                srv.post("/api/records/lead", &owner, blob(15_000)).await.1["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        for _ in 0..10 {
            small.push(
                srv.post("/api/records/contact", &owner, blob(2_000))
                    .await
                    .1["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let (ids, sizes) = read_all(&srv, &owner, "lead").await;
        assert_eq!(ids, big, "every large record once, in order");
        assert_eq!(sizes, [1, 1, 1, 1, 1]);
        let (ids, sizes) = read_all(&srv, &owner, "contact").await;
        assert_eq!(ids, small);
        assert!(
            sizes.iter().all(|&n| n > 1 && n * 2_000 <= LIST_BYTES),
            "pages fill up to the budget: {sizes:?}"
        );
        assert!(
            sizes.len() >= 3,
            "10 records of 2 KB take several 10 KB pages: {sizes:?}"
        );
    }

    fn limits(c: &mut streamflow::config::Config) {
        c.record_limit = RECORD_LIMIT;
        c.list_response_bytes = LIST_BYTES;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        story(
            TestServer::start_with(Backend::Sqlite, limits)
                .await
                .unwrap(),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(srv) = TestServer::start_with(Backend::Postgres, limits).await else {
            return;
        };
        story(srv).await;
    }
}
