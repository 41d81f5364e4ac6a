//! Tenant isolation and role permissions.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::TestServer;

both_backends! {
    async fn other_tenants_records_are_404_through_every_route(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "alpha").await;
        srv.tenant(&provider, "bravo").await;
        let a = srv.user(&provider, "alpha", "owner").await;
        let b = srv.user(&provider, "bravo", "owner").await;
        let (_, a_key) = srv.post("/api/api-keys", &a, json!({"name": "a-key", "role": "manager"})).await;
        let a_key = a_key["key"].as_str().unwrap().to_string();

        let secret = srv.lead(&b, json!({"name": "Bravo's client", "budget": 50000})).await;
        let id = secret["id"].as_str().unwrap();
        let (status, _) = srv.patch(&format!("/api/records/lead/{id}"), &b, json!({"stage": "bravo-only-stage", "version": 1})).await;
        assert_eq!(status, 200);
        // Bravo's own custom record type.
        assert_eq!(srv.call(Method::PUT, "/api/record-types/inspection", Some(&b), Some(json!({"name": "Inspection"}))).await.0, 200);
        let (_, b_user) = srv.post("/api/users", &b, json!({"email": "staff@bravo.test", "password": crate::harness::PASSWORD, "role": "member"})).await;
        let b_user_id = b_user["id"].as_str().unwrap();

        let missing = uuid::Uuid::now_v7().to_string();
        for token in [&a, &a_key] {
            for record_id in [id, missing.as_str()] {
                let path = format!("/api/records/lead/{record_id}");
                let read = srv.get(&path, token).await;
                let update = srv.patch(&path, token, json!({"data": {"name": "pwned"}, "version": 2})).await;
                let delete = srv.delete(&path, token).await;
                for (what, (status, body)) in [("read", read), ("update", update), ("delete", delete)] {
                    assert_eq!(status, 404, "{what} of another tenant's record: {body}");
                    assert_eq!(body["error"]["code"], "not_found", "same answer as a record that never existed");
                }
            }
            // Listing and filtering never show it.
            for query in ["", "?stage=bravo-only-stage", "?updated_since=2000-01-01T00:00:00Z", "?limit=200"] {
                let (status, page) = srv.get(&format!("/api/records/lead{query}"), token).await;
                assert_eq!(status, 200);
                assert!(page["items"].as_array().unwrap().iter().all(|r| r["id"] != id), "{query} leaked: {page}");
            }
            // Bravo's record type, users and keys are not Alpha's.
            assert_eq!(srv.get("/api/records/inspection", token).await.0, 404);
            assert_eq!(srv.get("/api/record-types/inspection", token).await.0, 404);
        }
        assert_eq!(srv.patch(&format!("/api/users/{b_user_id}"), &a, json!({"status": "disabled"})).await.0, 404);
        let (_, users) = srv.get("/api/users", &a).await;
        assert!(users["items"].as_array().unwrap().iter().all(|u| u["id"] != b_user_id));
        // A cursor made from Bravo's record id still only pages through Alpha's records.
        let cursor = streamflow::records::encode_cursor(uuid::Uuid::parse_str(id).unwrap());
        let (status, page) = srv.get(&format!("/api/records/lead?cursor={cursor}"), &a).await;
        assert_eq!(status, 200);
        assert!(page["items"].as_array().unwrap().is_empty());

        // Bravo's record is exactly as Bravo left it.
        let (status, now) = srv.get(&format!("/api/records/lead/{id}"), &b).await;
        assert_eq!(status, 200);
        assert_eq!(now["data"], secret["data"]);
        assert_eq!(now["version"], 2);
        assert_eq!(now["stage"], "bravo-only-stage");
    }
}

async fn status_of(
    srv: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> u16 {
    srv.call(method, path, Some(token), body).await.0
}

both_backends! {
    async fn roles_limit_what_users_may_do(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        let owner = srv.user(&provider, "acme", "owner").await;
        let lead = srv.lead(&owner, json!({"name": "Existing"})).await;
        let path = format!("/api/records/lead/{}", lead["id"].as_str().unwrap());
        let new_user = |role: &str| json!({"email": format!("{role}-{}@acme.test", uuid::Uuid::new_v4().simple()), "password": crate::harness::PASSWORD, "role": role});

        // (role, may read, create, update, delete, manage users), on leads. Field staff
        // update only jobs, visits, tasks and time entries (see roles.rs).
        let table = [
            ("viewer", true, false, false, false, false),
            ("field", true, false, false, false, false),
            ("member", true, true, true, false, false),
            ("manager", true, true, true, true, false),
            ("admin", true, true, true, true, true),
        ];
        for (role, read, create, update, delete, manage) in table {
            let token = srv.user(&provider, "acme", role).await;
            let expect = |allowed: bool, ok: u16| if allowed { ok } else { 403 };
            assert_eq!(status_of(&srv, Method::GET, "/api/records/lead", &token, None).await, expect(read, 200), "{role} list");
            assert_eq!(status_of(&srv, Method::POST, "/api/records/lead", &token, Some(json!({"data": {"name": role}}))).await, expect(create, 201), "{role} create");
            let (_, current) = srv.get(&path, &owner).await;
            assert_eq!(status_of(&srv, Method::PATCH, &path, &token, Some(json!({"stage": role, "version": current["version"]}))).await, expect(update, 200), "{role} update");
            assert_eq!(status_of(&srv, Method::GET, "/api/users", &token, None).await, expect(manage, 200), "{role} list users");
            assert_eq!(status_of(&srv, Method::POST, "/api/users", &token, Some(new_user("member"))).await, expect(manage, 201), "{role} create user");
            assert_eq!(status_of(&srv, Method::POST, "/api/api-keys", &token, Some(json!({"name": "k"}))).await, expect(manage, 201), "{role} create key");
            assert_eq!(status_of(&srv, Method::PUT, "/api/record-types/visit", &token, Some(json!({"name": "Visit"}))).await, expect(manage, 200), "{role} define type");
            if delete {
                let victim = srv.lead(&owner, json!({"name": "to delete"})).await;
                assert_eq!(status_of(&srv, Method::DELETE, &format!("/api/records/lead/{}", victim["id"].as_str().unwrap()), &token, None).await, 204, "{role} delete");
            } else {
                assert_eq!(status_of(&srv, Method::DELETE, &path, &token, None).await, 403, "{role} delete");
            }
        }

        // Nobody grants above their own role; nobody changes their own role.
        let admin = srv.user(&provider, "acme", "admin").await;
        let (status, body) = srv.post("/api/users", &admin, new_user("owner")).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(srv.post("/api/api-keys", &admin, json!({"name": "k", "role": "owner"})).await.0, 403);
        let (_, me) = srv.get("/api/me", &admin).await;
        let my_id = me["user"]["id"].as_str().unwrap();
        assert_eq!(srv.patch(&format!("/api/users/{my_id}"), &admin, json!({"role": "owner"})).await.0, 403);
        let (_, owner_me) = srv.get("/api/me", &owner).await;
        assert_eq!(srv.patch(&format!("/api/users/{}", owner_me["user"]["id"].as_str().unwrap()), &admin, json!({"status": "disabled"})).await.0, 403, "admin cannot disable an owner");

        // An owner disables a user: that user's live token stops working at once.
        let (_, member) = srv.post("/api/users", &owner, new_user("member")).await;
        let member_token = srv.client_login("acme", member["email"].as_str().unwrap()).await["access_token"].as_str().unwrap().to_string();
        assert_eq!(srv.get("/api/me", &member_token).await.0, 200);
        let (status, body) = srv.patch(&format!("/api/users/{}", member["id"].as_str().unwrap()), &owner, json!({"status": "disabled"})).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("disabled")));
        assert_eq!(srv.get("/api/me", &member_token).await.0, 401);
        assert_eq!(srv.patch(&format!("/api/users/{}", member["id"].as_str().unwrap()), &owner, json!({"status": "gone"})).await.0, 422);

        // A viewer API key reads but cannot write.
        let (_, key) = srv.post("/api/api-keys", &owner, json!({"name": "dashboard", "role": "viewer"})).await;
        let key = key["key"].as_str().unwrap().to_string();
        assert_eq!(srv.get("/api/records/lead", &key).await.0, 200);
        assert_eq!(srv.post("/api/records/lead", &key, json!({"data": {}})).await.0, 403);
    }
}

both_backends! {
    async fn api_keys_are_shown_once_and_revocable(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        let owner = srv.user(&provider, "acme", "owner").await;
        let (status, created) = srv.post("/api/api-keys", &owner, json!({"name": "Zapier sync"})).await;
        assert_eq!(status, 201, "{created}");
        let key = created["key"].as_str().unwrap().to_string();
        assert!(key.starts_with("sfk_"));
        assert_eq!(created["role"], "member");
        let (_, list) = srv.get("/api/api-keys", &owner).await;
        let text = list.to_string();
        assert!(!text.contains(&key), "the key is never shown again");
        assert_eq!(list["items"][0]["prefix"], key[..12]);

        let (status, record) = srv.post("/api/records/lead", &key, json!({"data": {"name": "From Zapier"}})).await;
        assert_eq!(status, 201);
        let (_, me) = srv.get("/api/me", &key).await;
        assert_eq!(me["api_key"], created["id"]);
        assert!(me["user"].is_null());
        assert_eq!(srv.post("/api/api-keys", &key, json!({"name": "child"})).await.0, 403, "keys do not mint keys");
        // Nor accounts, even with the role for it.
        let (_, admin_key) = srv.post("/api/api-keys", &owner, json!({"name": "admin key", "role": "admin"})).await;
        let admin_key = admin_key["key"].as_str().unwrap().to_string();
        let (status, _) = srv.post("/api/users", &admin_key, json!({"email": "made-by-key@acme.test", "password": crate::harness::PASSWORD, "role": "member"})).await;
        assert_eq!(status, 403, "an admin key cannot create users");
        let (_, users) = srv.get("/api/users", &admin_key).await;
        let someone = users["items"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(srv.patch(&format!("/api/users/{someone}"), &admin_key, json!({"password": "taken-over-password"})).await.0, 403);
        let events = crate::harness::event_kinds(&srv, record["id"].as_str().unwrap()).await;
        assert_eq!(events, ["record.created"]);

        assert_eq!(srv.delete(&format!("/api/api-keys/{}", created["id"].as_str().unwrap()), &owner).await.0, 204);
        assert_eq!(srv.get("/api/records/lead", &key).await.0, 401);
        assert_eq!(srv.delete(&format!("/api/api-keys/{}", created["id"].as_str().unwrap()), &owner).await.0, 404);
    }
}
