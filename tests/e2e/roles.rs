//! Who may act on whom: the whole role × role × action table, grants, the last owner, the
//! `field` role's record types, and the paged user, key, record-type and tenant lists.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{PASSWORD, TestServer};

const ROLES: [&str; 6] = ["owner", "admin", "manager", "member", "field", "viewer"];

fn rank(role: &str) -> usize {
    ROLES.len() - ROLES.iter().position(|r| *r == role).expect("a role")
}

/// The rule under test, written out independently of the server's: acting on a user needs
/// a strictly higher role, or being an owner.
fn may_act(actor: &str, target: &str) -> bool {
    actor == "owner" || (actor == "admin" && rank(target) < rank("admin"))
}

fn expect(allowed: bool, ok: u16) -> u16 {
    if allowed { ok } else { 403 }
}

/// A user created by `owner` in `slug`; returns (id, access token).
async fn user(srv: &TestServer, owner: &str, slug: &str, role: &str) -> (String, String) {
    let email = format!("{role}-{}@{slug}.test", uuid::Uuid::new_v4().simple());
    let (status, body) = srv
        .post(
            "/api/users",
            owner,
            json!({"email": email, "password": PASSWORD, "role": role}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let token = srv.client_login(slug, &email).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    (id, token)
}

async fn new_key(srv: &TestServer, token: &str, role: &str) -> Value {
    let (status, key) = srv
        .post("/api/api-keys", token, json!({"name": "k", "role": role}))
        .await;
    assert_eq!(status, 201, "{key}");
    key
}

both_backends! {
    async fn the_whole_role_by_role_by_action_table(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        // The root owner sets the scene and puts things back between actions.
        let root = srv.user(&provider, "acme", "owner").await;

        // One actor per role, plus an admin-role API key made by the admin actor.
        let mut actors: Vec<(String, String)> = Vec::new();
        for role in ROLES {
            actors.push((role.to_string(), user(&srv, &root, "acme", role).await.1));
        }
        let admin_token = actors[1].1.clone();
        let admin_key = new_key(&srv, &admin_token, "admin").await["key"].as_str().unwrap().to_string();
        actors.push(("admin key".to_string(), admin_key));

        // One target per role. Each makes one key per actor while it may (as an admin, or
        // as the owner it is), then gets its role: a key's creator is judged by the role
        // they hold now.
        struct Target { id: String, role: &'static str, keys: Vec<String> }
        let mut targets = Vec::new();
        for role in ROLES {
            let start = if role == "owner" { "owner" } else { "admin" };
            let (id, token) = user(&srv, &root, "acme", start).await;
            let mut keys = Vec::new();
            for _ in &actors {
                keys.push(new_key(&srv, &token, "viewer").await["id"].as_str().unwrap().to_string());
            }
            if role != start {
                let (status, body) = srv.patch(&format!("/api/users/{id}"), &root, json!({"role": role})).await;
                assert_eq!(status, 200, "{body}");
            }
            targets.push(Target { id, role, keys });
        }

        let mut mismatches = Vec::new();
        for (a, (actor, token)) in actors.iter().enumerate() {
            let is_key = actor == "admin key";
            for target in &targets {
                let path = format!("/api/users/{}", target.id);
                let on_user = !is_key && may_act(actor, target.role);
                let new_role = if target.role == "viewer" { "field" } else { "viewer" };
                let actions = [
                    ("reset-password", json!({"password": "another-password-1"}), json!({})),
                    ("disable", json!({"status": "disabled"}), json!({"status": "active"})),
                    ("change-role", json!({"role": new_role}), json!({"role": target.role})),
                ];
                for (action, change, undo) in actions {
                    let (status, body) = srv.patch(&path, token, change).await;
                    let expected = expect(on_user, 200);
                    if status != expected {
                        mismatches.push(format!("{actor} {action} {}: {status}, expected {expected}: {body}", target.role));
                    }
                    if status == 200 && undo != json!({}) {
                        let (status, body) = srv.patch(&path, &root, undo).await;
                        assert_eq!(status, 200, "undo {action}: {body}");
                    }
                }
                // Revoking a key the target made: its creator's role is what counts; an
                // API key acts with its (capped) role and is never the creator.
                let key_actor = if is_key { "admin" } else { actor.as_str() };
                let on_key = may_act(key_actor, target.role);
                let (status, body) = srv.delete(&format!("/api/api-keys/{}", target.keys[a]), token).await;
                let expected = expect(on_key, 204);
                if status != expected {
                    mismatches.push(format!("{actor} revoke-key of {}: {status}, expected {expected}: {body}", target.role));
                }
            }
        }
        assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));

        // Nothing refused changed anything: every target has its role, is active, and the
        // keys only the allowed actors revoked are gone.
        let (_, list) = srv.get("/api/users?limit=200", &root).await;
        let by_id: HashMap<&str, &Value> = list["items"].as_array().unwrap().iter().map(|u| (u["id"].as_str().unwrap(), u)).collect();
        for target in &targets {
            assert_eq!(by_id[target.id.as_str()]["role"], target.role);
            assert_eq!(by_id[target.id.as_str()]["status"], "active");
        }
        let (_, keys) = srv.get("/api/api-keys?limit=200", &root).await;
        let revoked: HashMap<&str, bool> = keys["items"].as_array().unwrap().iter()
            .map(|k| (k["id"].as_str().unwrap(), !k["revoked_at"].is_null())).collect();
        for target in &targets {
            for (a, (actor, _)) in actors.iter().enumerate() {
                let key_actor = if actor == "admin key" { "admin" } else { actor.as_str() };
                assert_eq!(revoked[target.keys[a].as_str()], may_act(key_actor, target.role), "{actor} on {}'s key", target.role);
            }
        }
    }
}

both_backends! {
    async fn grants_self_changes_and_the_last_owner(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        let owner = srv.user(&provider, "acme", "owner").await;
        let (admin_id, admin) = user(&srv, &owner, "acme", "admin").await;
        let (peer_id, _) = user(&srv, &owner, "acme", "admin").await;
        let (manager_id, manager) = user(&srv, &owner, "acme", "manager").await;

        // Nobody grants above their own role; only owners make owners.
        let new_user = |role: &str| json!({"email": format!("{role}-{}@acme.test", uuid::Uuid::new_v4().simple()), "password": PASSWORD, "role": role});
        assert_eq!(srv.post("/api/users", &admin, new_user("owner")).await.0, 403);
        assert_eq!(srv.post("/api/users", &admin, new_user("admin")).await.0, 201);
        assert_eq!(srv.post("/api/users", &manager, new_user("viewer")).await.0, 403, "managers do not manage users");
        assert_eq!(srv.post("/api/api-keys", &admin, json!({"name": "k", "role": "owner"})).await.0, 403);
        assert_eq!(srv.patch(&format!("/api/users/{manager_id}"), &admin, json!({"role": "owner"})).await.0, 403);
        let (status, body) = srv.patch(&format!("/api/users/{manager_id}"), &admin, json!({"role": "admin"})).await;
        assert_eq!(status, 200, "an admin may raise a manager to admin: {body}");
        // ... who is then the admin's peer, out of their reach.
        assert_eq!(srv.patch(&format!("/api/users/{manager_id}"), &admin, json!({"role": "manager"})).await.0, 403);

        // A refused password reset leaves the old password working.
        let (status, body) = srv.patch(&format!("/api/users/{peer_id}"), &admin, json!({"password": "taken-over-pass"})).await;
        assert_eq!(status, 403, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("higher role"), "{body}");

        // Nobody changes themselves, the owner included.
        let (_, me) = srv.get("/api/me", &owner).await;
        let owner_id = me["user"]["id"].as_str().unwrap().to_string();
        assert_eq!(srv.patch(&format!("/api/users/{owner_id}"), &owner, json!({"role": "admin"})).await.0, 403);
        assert_eq!(srv.patch(&format!("/api/users/{admin_id}"), &admin, json!({"status": "disabled"})).await.0, 403);

        // A creator revokes their own key; the owner may revoke anyone's.
        let mine = new_key(&srv, &admin, "member").await;
        assert_eq!(srv.delete(&format!("/api/api-keys/{}", mine["id"].as_str().unwrap()), &admin).await.0, 204);
        let theirs = new_key(&srv, &admin, "member").await;
        assert_eq!(srv.delete(&format!("/api/api-keys/{}", theirs["id"].as_str().unwrap()), &owner).await.0, 204);
        assert_eq!(srv.delete(&format!("/api/api-keys/{}", theirs["id"].as_str().unwrap()), &owner).await.0, 404, "already revoked");

        // Another owner may act on an owner; the store never lets the last active one go.
        let (second_id, _) = user(&srv, &owner, "acme", "owner").await;
        assert_eq!(srv.patch(&format!("/api/users/{second_id}"), &owner, json!({"role": "admin"})).await.0, 200);
        let tenant = srv.state.store.tenant_by_slug("acme").await.unwrap().unwrap();
        let scope = tenant.scope();
        use streamflow::store::tenants::{UserChanges, UserUpdate};
        let demote = UserChanges { role: Some("admin".into()), ..Default::default() };
        let outcome = srv.state.store.update_user(&scope, owner_id.parse().unwrap(), demote).await.unwrap();
        assert!(matches!(outcome, UserUpdate::LastOwner), "{outcome:?}");
        let disable = UserChanges { status: Some("disabled".into()), ..Default::default() };
        let outcome = srv.state.store.update_user(&scope, owner_id.parse().unwrap(), disable).await.unwrap();
        assert!(matches!(outcome, UserUpdate::LastOwner), "{outcome:?}");
        assert_eq!(srv.get("/api/me", &owner).await.1["role"], "owner", "nothing changed");
        // With a second active owner, the first may be demoted.
        let promote = UserChanges { role: Some("owner".into()), ..Default::default() };
        assert!(matches!(srv.state.store.update_user(&scope, second_id.parse().unwrap(), promote).await.unwrap(), UserUpdate::Updated(_)));
        let demote = UserChanges { role: Some("admin".into()), ..Default::default() };
        assert!(matches!(srv.state.store.update_user(&scope, owner_id.parse().unwrap(), demote).await.unwrap(), UserUpdate::Updated(_)));
    }
}

both_backends! {
    async fn field_staff_update_only_jobs_visits_tasks_and_time_entries(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        let owner = srv.user(&provider, "acme", "owner").await;
        for (id, name) in [("visit", "Visit"), ("task", "Task"), ("time_entry", "Time entry"), ("estimate", "Estimate")] {
            let (status, body) = srv.call(reqwest::Method::PUT, &format!("/api/record-types/{id}"), Some(&owner), Some(json!({"name": name}))).await;
            assert_eq!(status, 200, "{body}");
        }
        let member = srv.user(&provider, "acme", "member").await;
        let field = srv.user(&provider, "acme", "field").await;
        for (record_type, allowed) in [("job", true), ("visit", true), ("task", true), ("time_entry", true),
                                       ("lead", false), ("contact", false), ("estimate", false)] {
            let (status, record) = srv.post(&format!("/api/records/{record_type}"), &member, json!({"data": {"note": "made"}})).await;
            assert_eq!(status, 201, "{record}");
            let path = format!("/api/records/{record_type}/{}", record["id"].as_str().unwrap());
            let (status, body) = srv.patch(&path, &field, json!({"data": {"note": "changed"}, "version": 1})).await;
            assert_eq!(status, if allowed { 200 } else { 403 }, "field updates {record_type}: {body}");
            let (_, now) = srv.get(&path, &field).await;
            assert_eq!(now["data"]["note"], if allowed { "changed" } else { "made" });
            // Field staff create and delete nothing, whatever the type.
            assert_eq!(srv.delete(&path, &field).await.0, 403);
            assert_eq!(srv.post(&format!("/api/records/{record_type}"), &field, json!({"data": {}})).await.0, 403);
            // Members update every type.
            let version = now["version"].as_i64().unwrap();
            assert_eq!(srv.patch(&path, &member, json!({"data": {"note": "m"}, "version": version})).await.0, 200);
        }
    }
}

/// Follows `next_cursor` through a list, checking each page's size; returns every item.
async fn all_pages(srv: &TestServer, path: &str, token: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let (status, page) = srv.get(&url, token).await;
        assert_eq!(status, 200, "{url}: {page}");
        let got = page["items"].as_array().unwrap();
        assert!(got.len() <= limit, "{url}: {} items", got.len());
        items.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(got.len(), limit, "only a full page has a next one");
                cursor = Some(next.to_string());
            }
            None => {
                assert!(
                    page.get("next_cursor").is_some(),
                    "next_cursor is always there: {page}"
                );
                return items;
            }
        }
    }
}

fn field_of(items: &[Value], field: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| i[field].as_str().unwrap().to_string())
        .collect()
}

both_backends! {
    async fn user_key_record_type_and_tenant_lists_are_paged(srv) {
        let provider = srv.provider_token().await;
        for slug in ["acme", "beta", "gamma", "delta", "omega"] {
            srv.tenant(&provider, slug).await;
        }
        let owner = srv.user(&provider, "acme", "owner").await;
        let mut user_ids = vec![srv.get("/api/me", &owner).await.1["user"]["id"].as_str().unwrap().to_string()];
        for n in 0..4 {
            let (status, body) = srv.post("/api/users", &owner, json!({"email": format!("u{n}@acme.test"), "password": PASSWORD, "role": "viewer"})).await;
            assert_eq!(status, 201, "{body}");
            user_ids.push(body["id"].as_str().unwrap().to_string());
        }
        let mut key_ids = Vec::new();
        for _ in 0..5 {
            key_ids.push(new_key(&srv, &owner, "viewer").await["id"].as_str().unwrap().to_string());
        }
        for id in ["visit", "task"] {
            srv.call(reqwest::Method::PUT, &format!("/api/record-types/{id}"), Some(&owner), Some(json!({"name": id}))).await;
        }
        // Another tenant's users and keys never show up in these pages.
        let other = srv.user(&provider, "beta", "owner").await;
        new_key(&srv, &other, "viewer").await;
        for email in ["c@dev.test", "a@dev.test", "b@dev.test"] {
            srv.developer(&provider, email).await;
        }

        for limit in [1, 2, 5, 50] {
            let users = all_pages(&srv, "/api/users", &owner, limit).await;
            assert_eq!(field_of(&users, "id"), user_ids, "users in creation order, limit {limit}");
            let keys = all_pages(&srv, "/api/api-keys", &owner, limit).await;
            assert_eq!(field_of(&keys, "id"), key_ids, "keys in creation order, limit {limit}");
            let types = all_pages(&srv, "/api/record-types", &owner, limit).await;
            assert_eq!(field_of(&types, "id"), ["contact", "job", "lead", "task", "visit"], "limit {limit}");
            let tenants = all_pages(&srv, "/provider/tenants", &provider, limit).await;
            assert_eq!(field_of(&tenants, "slug"), ["acme", "beta", "delta", "gamma", "omega"], "limit {limit}");
            let provider_users = all_pages(&srv, "/provider/tenants/acme/users", &provider, limit).await;
            assert_eq!(field_of(&provider_users, "id"), user_ids, "limit {limit}");
            let developers = all_pages(&srv, "/provider/developers", &provider, limit).await;
            assert_eq!(field_of(&developers, "email"), ["a@dev.test", "b@dev.test", "c@dev.test"], "limit {limit}");
        }
        // Without `limit`, a page holds up to 50; an empty `limit=` is no limit.
        let (_, page) = srv.get("/api/users?limit=", &owner).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 5);
        assert!(page["next_cursor"].is_null());

        for path in ["/api/users", "/api/api-keys", "/api/record-types", "/provider/tenants", "/provider/developers"] {
            let token = if path.starts_with("/provider") { &provider } else { &owner };
            for bad in ["limit=0", "limit=201", "limit=ten", "limit=-1"] {
                let (status, body) = srv.get(&format!("{path}?{bad}"), token).await;
                assert_eq!(status, 400, "{path}?{bad}: {body}");
                assert_eq!(body["error"]["details"]["parameter"], "limit");
            }
            for bad in ["cursor=!!!", "cursor=AAAA", "cursor=%F0%9F%92%A9"] {
                let (status, body) = srv.get(&format!("{path}?{bad}"), token).await;
                assert_eq!(status, 400, "{path}?{bad}: {body}");
                assert_eq!(body["error"]["code"], "invalid_cursor");
            }
        }
    }
}
