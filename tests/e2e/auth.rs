//! Realm isolation, forged tokens, refresh rotation, suspension and login rate limits.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::harness::{Backend, TestServer};

/// One route of each realm that needs a token.
const REALM_ROUTES: [(&str, &str); 3] = [
    ("provider", "/provider/me"),
    ("developer", "/developer/me"),
    ("client", "/api/me"),
];

async fn developer_token(srv: &TestServer, provider: &str) -> String {
    let (status, body) = srv
        .post(
            "/provider/developers",
            provider,
            json!({"email": "dev@plugins.test", "password": "developer-pass-1", "name": "Dev"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = srv
        .call(
            Method::POST,
            "/developer/auth/login",
            None,
            Some(json!({"email": "dev@plugins.test", "password": "developer-pass-1"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

both_backends! {
    async fn each_realm_refuses_the_others_tokens(srv) {
        let provider = srv.provider_token().await;
        let developer = developer_token(&srv, &provider).await;
        srv.tenant(&provider, "acme").await;
        let client = srv.user(&provider, "acme", "owner").await;
        let tokens = [("provider", provider.as_str()), ("developer", developer.as_str()), ("client", client.as_str())];
        for (realm, route) in REALM_ROUTES {
            for (token_realm, token) in tokens {
                let (status, body) = srv.get(route, token).await;
                if realm == token_realm {
                    assert_eq!(status, 200, "{token_realm} token on its own realm {route}: {body}");
                } else {
                    assert_eq!(status, 401, "{token_realm} token on {route}");
                    assert_eq!(body["error"]["code"], "unauthorized");
                }
            }
            let (status, _) = srv.call(Method::GET, route, None, None).await;
            assert_eq!(status, 401, "no token on {route}");
        }
        // A client token cannot reach provider data routes either.
        let (status, _) = srv.get("/provider/tenants", &client).await;
        assert_eq!(status, 401);
        let (status, _) = srv.post("/provider/tenants", &developer, json!({"slug": "evil", "name": "Evil"})).await;
        assert_eq!(status, 401);
    }
}

fn segment(value: serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&value).unwrap())
}

fn hs256(header: &serde_json::Value, claims: &serde_json::Value, key: &[u8]) -> String {
    let header: jsonwebtoken::Header = serde_json::from_value(header.clone()).unwrap();
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

both_backends! {
    async fn forged_expired_and_garbage_tokens_are_refused(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        let client = srv.user(&provider, "acme", "owner").await;
        // Take the real claims of a valid client token and abuse them.
        let payload = client.split('.').nth(1).unwrap();
        let mut claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let client_key = srv.state.store.realm_secret("client", b"unused").await.unwrap();
        let provider_key = srv.state.store.realm_secret("provider", b"unused").await.unwrap();

        let unsigned = format!("{}.{}.", segment(json!({"alg": "none", "typ": "JWT"})), segment(claims.clone()));
        let resigned = hs256(&json!({"alg": "HS256"}), &claims, b"a key the attacker chose");
        let other_realm_key = hs256(&json!({"alg": "HS256"}), &claims, &provider_key);
        let mut wrong_aud = claims.clone();
        wrong_aud["aud"] = json!("streamflow:provider");
        let provider_aud_client_key = hs256(&json!({"alg": "HS256"}), &wrong_aud, &client_key);
        let hs512 = hs256(&json!({"alg": "HS512"}), &claims, &client_key);
        claims["exp"] = json!(1_600_000_000u64);
        claims["iat"] = json!(1_599_999_000u64);
        let expired = hs256(&json!({"alg": "HS256"}), &claims, &client_key);
        let tampered = {
            let mut parts: Vec<String> = client.split('.').map(String::from).collect();
            let mut c = serde_json::from_slice::<serde_json::Value>(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
            c["sub"] = json!(uuid::Uuid::new_v4());
            parts[1] = segment(c);
            parts.join(".")
        };
        let garbage = ["garbage", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9", "sfk_not-a-real-key", &"x".repeat(8000)];
        let forged = [unsigned, resigned, other_realm_key, provider_aud_client_key, hs512, expired, tampered];
        for token in forged.iter().map(String::as_str).chain(garbage) {
            let (status, body) = srv.get("/api/me", token).await;
            assert_eq!(status, 401, "token {token:.40} was accepted: {body}");
            let (status, _) = srv.get("/api/records/lead", token).await;
            assert_eq!(status, 401);
        }
        // The genuine token still works, and a wrong auth scheme does not.
        assert_eq!(srv.get("/api/me", &client).await.0, 200);
        let resp = srv.http.get(format!("{}/api/me", srv.base)).header("authorization", format!("Basic {client}")).send().await.unwrap();
        assert_eq!(resp.status(), 401);
    }
}

both_backends! {
    async fn refresh_tokens_rotate_and_reuse_revokes_the_family(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        let email = "rotating@acme.test";
        srv.post("/provider/tenants/acme/users", &provider, json!({"email": email, "password": crate::harness::PASSWORD, "role": "member"})).await;
        let first = srv.client_login("acme", email).await;
        let r1 = first["refresh_token"].as_str().unwrap().to_string();
        assert_eq!(first["expires_in"], 900);

        let refresh = |token: String| {
            let srv = &srv;
            async move { srv.call(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": token}))).await }
        };
        let (status, second) = refresh(r1.clone()).await;
        assert_eq!(status, 200, "{second}");
        let r2 = second["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(r1, r2, "the refresh token rotates");
        assert_eq!(srv.get("/api/me", second["access_token"].as_str().unwrap()).await.0, 200);

        // Another realm's refresh route does not know this token (and does not spend it).
        let (status, _) = srv.call(Method::POST, "/provider/auth/refresh", None, Some(json!({"refresh_token": r2.clone()}))).await;
        assert_eq!(status, 401);

        let (status, third) = refresh(r2.clone()).await;
        assert_eq!(status, 200);
        let r3 = third["refresh_token"].as_str().unwrap().to_string();

        // Reusing a spent token is theft: it fails, and the live token of the family dies.
        let (status, body) = refresh(r1).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "refresh_token_reused");
        let (status, _) = refresh(r3).await;
        assert_eq!(status, 401, "the family is revoked after reuse");

        // Logout revokes a fresh login's refresh token.
        let fresh = srv.client_login("acme", email).await;
        let token = fresh["refresh_token"].as_str().unwrap().to_string();
        let (status, _) = srv.call(Method::POST, "/api/auth/logout", None, Some(json!({"refresh_token": token.clone()}))).await;
        assert_eq!(status, 204);
        assert_eq!(refresh(token).await.0, 401);
        assert_eq!(refresh("sfr_unknown".into()).await.0, 401);

        // Provider refresh works in its own realm.
        let p = srv.provider_login().await;
        let (status, body) = srv.call(Method::POST, "/provider/auth/refresh", None, Some(json!({"refresh_token": p["refresh_token"]}))).await;
        assert_eq!(status, 200, "{body}");
    }
}

both_backends! {
    async fn suspended_tenant_users_and_keys_are_refused(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        let email = "owner@acme.test";
        srv.post("/provider/tenants/acme/users", &provider, json!({"email": email, "password": crate::harness::PASSWORD, "role": "owner"})).await;
        let login = srv.client_login("acme", email).await;
        let token = login["access_token"].as_str().unwrap().to_string();
        let (status, key) = srv.post("/api/api-keys", &token, json!({"name": "zapier"})).await;
        assert_eq!(status, 201, "{key}");
        let key = key["key"].as_str().unwrap().to_string();
        assert_eq!(srv.get("/api/records/lead", &key).await.0, 200);

        let (status, body) = srv.post("/provider/tenants/acme/suspend", &provider, json!({})).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("suspended")));
        assert_eq!(srv.get("/api/me", &token).await.0, 401, "live access token refused");
        assert_eq!(srv.get("/api/records/lead", &key).await.0, 401, "API key refused");
        let (status, body) = srv.call(Method::POST, "/api/auth/login", None, Some(json!({"tenant": "acme", "email": email, "password": crate::harness::PASSWORD}))).await;
        assert_eq!(status, 403);
        assert_eq!(body["error"]["code"], "tenant_suspended");
        let (status, _) = srv.call(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": login["refresh_token"]}))).await;
        assert_eq!(status, 401, "refresh refused while suspended");

        srv.post("/provider/tenants/acme/resume", &provider, json!({})).await;
        assert_eq!(srv.get("/api/me", &token).await.0, 200);
        assert_eq!(srv.get("/api/records/lead", &key).await.0, 200);
    }
}

both_backends! {
    async fn bad_credentials_get_one_answer(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        srv.post("/provider/tenants/acme/users", &provider, json!({"email": "a@acme.test", "password": crate::harness::PASSWORD, "role": "member"})).await;
        for body in [
            json!({"tenant": "acme", "email": "a@acme.test", "password": "wrong-password"}),
            json!({"tenant": "acme", "email": "nobody@acme.test", "password": crate::harness::PASSWORD}),
            json!({"tenant": "no-such-tenant", "email": "a@acme.test", "password": crate::harness::PASSWORD}),
            json!({"tenant": "acme' OR '1'='1", "email": "a@acme.test", "password": crate::harness::PASSWORD}),
        ] {
            let (status, resp) = srv.call(Method::POST, "/api/auth/login", None, Some(body)).await;
            assert_eq!(status, 401);
            assert_eq!(resp["error"]["code"], "invalid_credentials");
        }
        let (status, _) = srv.call(Method::POST, "/provider/auth/login", None, Some(json!({"email": crate::harness::PROVIDER_EMAIL, "password": "nope-nope-nope"}))).await;
        assert_eq!(status, 401);
        let (status, _) = srv.call(Method::POST, "/developer/auth/login", None, Some(json!({"email": crate::harness::PROVIDER_EMAIL, "password": crate::harness::PROVIDER_PASSWORD}))).await;
        assert_eq!(status, 401, "a provider account is not a developer account");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_rate_limited_per_account_and_per_address() {
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.login_per_account_per_minute = 3;
        c.login_per_ip_per_minute = 8;
    })
    .await
    .unwrap();
    let attempt = |email: &'static str| {
        let srv = &srv;
        async move {
            srv.call(
                Method::POST,
                "/provider/auth/login",
                None,
                Some(json!({"email": email, "password": "wrong-password"})),
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(attempt("victim@provider.test").await.0, 401);
    }
    let (status, body) = attempt("victim@provider.test").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["details"]["retry_after_seconds"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // Another account from the same address still gets through, until the address limit.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(attempt("other@provider.test").await.0);
    }
    assert_eq!(&statuses[..2], &[401, 401], "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "the per-address limit applies too: {statuses:?}"
    );
    let resp = srv
        .http
        .post(format!("{}/provider/auth/login", srv.base))
        .json(&json!({"email": "x@y.test", "password": "whatever-pass"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
}

both_backends! {
    async fn keys_and_sessions_do_not_outlive_their_users_access(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        let owner = srv.user(&provider, "acme", "owner").await;
        let (_, admin) = srv.post("/api/users", &owner, json!({"email": "admin@acme.test", "password": crate::harness::PASSWORD, "role": "admin"})).await;
        let admin_id = admin["id"].as_str().unwrap().to_string();
        let admin_login = srv.client_login("acme", "admin@acme.test").await;
        let admin_token = admin_login["access_token"].as_str().unwrap().to_string();
        let (status, key) = srv.post("/api/api-keys", &admin_token, json!({"name": "admin key", "role": "admin"})).await;
        assert_eq!(status, 201, "{key}");
        let key = key["key"].as_str().unwrap().to_string();
        let define_type = json!({"name": "Site visit"});
        let (status, _) = srv.call(Method::PUT, "/api/record-types/visit", Some(&key), Some(define_type.clone())).await;
        assert_eq!(status, 200, "an admin key defines record types");

        // Demoting the creator caps the key at the creator's new role.
        assert_eq!(srv.patch(&format!("/api/users/{admin_id}"), &owner, json!({"role": "viewer"})).await.0, 200);
        let (status, _) = srv.call(Method::PUT, "/api/record-types/visit", Some(&key), Some(define_type)).await;
        assert_eq!(status, 403, "the key is now a viewer");
        assert_eq!(srv.get("/api/records/lead", &key).await.0, 200);
        assert_eq!(srv.get("/api/me", &key).await.1["role"], "viewer");

        // A refresh attempted while disabled is refused without spending the token, so the
        // same token works once the user is active again (no false theft alarm).
        let refresh_token = admin_login["refresh_token"].as_str().unwrap().to_string();
        assert_eq!(srv.patch(&format!("/api/users/{admin_id}"), &owner, json!({"role": "admin"})).await.0, 200);
        let second = srv.client_login("acme", "admin@acme.test").await;
        assert_eq!(srv.patch(&format!("/api/users/{admin_id}"), &owner, json!({"status": "disabled"})).await.0, 200);
        assert_eq!(srv.get("/api/records/lead", &key).await.0, 401, "a disabled creator's keys stop working");
        let refresh = |token: &str| {
            let (srv, token) = (&srv, token.to_string());
            async move { srv.call(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": token}))).await.0 }
        };
        assert_eq!(refresh(&refresh_token).await, 401);
        assert_eq!(srv.patch(&format!("/api/users/{admin_id}"), &owner, json!({"status": "active"})).await.0, 200);
        // Disabling signed the user out everywhere: sessions from before it are gone.
        assert_eq!(refresh(&refresh_token).await, 401, "disable revoked earlier sessions");
        assert_eq!(refresh(second["refresh_token"].as_str().unwrap()).await, 401);
        assert_eq!(srv.get("/api/records/lead", &key).await.0, 200, "the key works again with its creator");

        // A password reset also signs out every session.
        let third = srv.client_login("acme", "admin@acme.test").await;
        assert_eq!(srv.patch(&format!("/api/users/{admin_id}"), &owner, json!({"password": "a-brand-new-password"})).await.0, 200);
        assert_eq!(refresh(third["refresh_token"].as_str().unwrap()).await, 401);
    }
}

/// Moves the login of every session in the database back by `days`.
async fn age_sessions(srv: &TestServer, days: i64) {
    let by = days * 24 * 3600 * 1_000_000;
    streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query("UPDATE refresh_tokens SET session_started_at = session_started_at - $1")
            .bind(by)
            .execute(pool)
            .await
            .unwrap();
    });
}

both_backends! {
    async fn a_session_ends_a_fixed_time_after_its_login(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        let email = "long-lived@acme.test";
        srv.post("/provider/tenants/acme/users", &provider, json!({"email": email, "password": crate::harness::PASSWORD, "role": "member"})).await;
        let refresh = |path: &'static str, token: String| {
            let srv = &srv;
            async move { srv.call(Method::POST, path, None, Some(json!({"refresh_token": token}))).await }
        };
        let login = srv.client_login("acme", email).await;
        let (status, second) = refresh("/api/auth/refresh", login["refresh_token"].as_str().unwrap().into()).await;
        assert_eq!(status, 200, "{second}");
        // Refreshed tokens never outlive the session (30 days by default) either.
        let latest_expiry_past_start: i64 = streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
            sqlx::query_scalar("SELECT MAX(expires_at - session_started_at) FROM refresh_tokens")
                .fetch_one(pool).await.unwrap()
        });
        assert!(latest_expiry_past_start <= 30 * 24 * 3600 * 1_000_000, "{latest_expiry_past_start}");

        // 29 days in, the session still refreshes; past 30 days it is over, however fresh
        // its latest refresh token is.
        let p = srv.provider_login().await;
        age_sessions(&srv, 29).await;
        let (status, third) = refresh("/api/auth/refresh", second["refresh_token"].as_str().unwrap().into()).await;
        assert_eq!(status, 200, "{third}");
        age_sessions(&srv, 2).await;
        let (status, body) = refresh("/api/auth/refresh", third["refresh_token"].as_str().unwrap().into()).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "session_expired");
        assert!(body["error"]["message"].as_str().unwrap().contains("30 days"), "{body}");
        // The same holds in the platform realms.
        let (status, body) = refresh("/provider/auth/refresh", p["refresh_token"].as_str().unwrap().into()).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("session_expired")));
        // A new login starts a new session.
        let fresh = srv.client_login("acme", email).await;
        assert_eq!(refresh("/api/auth/refresh", fresh["refresh_token"].as_str().unwrap().into()).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_session_lifetime_allows_no_refresh() {
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.session_max_age = std::time::Duration::ZERO;
    })
    .await
    .unwrap();
    let login = srv.provider_login().await;
    assert_eq!(
        srv.get("/provider/me", login["access_token"].as_str().unwrap())
            .await
            .0,
        200
    );
    let (status, body) = srv
        .call(
            Method::POST,
            "/provider/auth/refresh",
            None,
            Some(json!({"refresh_token": login["refresh_token"]})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "session_expired");
}

both_backends! {
    async fn over_long_passwords_are_refused_on_every_route(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        let owner = srv.user(&provider, "acme", "owner").await;
        let (_, member) = srv.post("/api/users", &owner, json!({"email": "m@acme.test", "password": crate::harness::PASSWORD, "role": "member"})).await;
        let at_cap = "p".repeat(256);
        for long in ["p".repeat(257), "é".repeat(257), "x".repeat(512 * 1024)] {
            // Logins: the same answer as a wrong password, in all three realms.
            for (path, body) in [
                ("/api/auth/login", json!({"tenant": "acme", "email": "m@acme.test", "password": long})),
                ("/provider/auth/login", json!({"email": crate::harness::PROVIDER_EMAIL, "password": long})),
                ("/developer/auth/login", json!({"email": "dev@plugins.test", "password": long})),
            ] {
                let (status, resp) = srv.call(Method::POST, path, None, Some(body)).await;
                assert_eq!((status, resp["error"]["code"].as_str()), (401, Some("invalid_credentials")), "{path}");
            }
            // Setting a password: 422 naming the field.
            let routes = [
                ("/api/users", &owner, json!({"email": "n@acme.test", "password": long, "role": "viewer"})),
                ("/provider/tenants/acme/users", &provider, json!({"email": "n@acme.test", "password": long, "role": "viewer"})),
                ("/provider/developers", &provider, json!({"email": "d@plugins.test", "password": long, "name": "D"})),
            ];
            for (path, token, body) in routes {
                let (status, resp) = srv.post(path, token, body).await;
                assert_eq!(status, 422, "{path}: {resp}");
                assert!(resp.to_string().contains("/password"), "{path}: {resp}");
            }
            let (status, resp) = srv.patch(&format!("/api/users/{}", member["id"].as_str().unwrap()), &owner, json!({"password": long})).await;
            assert_eq!(status, 422, "{resp}");
        }
        // The cap itself is a valid password, and works at login.
        let (status, _) = srv.post("/api/users", &owner, json!({"email": "cap@acme.test", "password": at_cap, "role": "viewer"})).await;
        assert_eq!(status, 201);
        let (status, body) = srv.call(Method::POST, "/api/auth/login", None, Some(json!({"tenant": "acme", "email": "cap@acme.test", "password": at_cap}))).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_from_other_addresses_do_not_lock_out_the_user() {
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.login_per_account_per_minute = 3;
        c.login_per_account_global_per_minute = 4;
        c.login_max_delay = std::time::Duration::from_millis(200);
    })
    .await
    .unwrap();
    // The server listens on 127.0.0.1; attackers connect from other loopback addresses.
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(Some(ip.parse().unwrap()))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let login = |client: reqwest::Client, password: &'static str| {
        let url = format!("{}/provider/auth/login", srv.base);
        async move {
            let resp = client
                .post(url)
                .json(&json!({"email": crate::harness::PROVIDER_EMAIL, "password": password}))
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }
    };
    for attacker in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        for _ in 0..3 {
            assert_eq!(
                login(from(attacker), "guess-guess-guess").await,
                401,
                "{attacker}"
            );
        }
        assert_eq!(
            login(from(attacker), "guess-guess-guess").await,
            429,
            "{attacker} is limited"
        );
    }
    // Nine guesses at the account went past its ceiling of four, yet its user, from their
    // own address, signs in (slowed down, not refused).
    assert_eq!(
        login(from("127.0.0.1"), crate::harness::PROVIDER_PASSWORD).await,
        200
    );
    // ... and still has their own address's quota for typos.
    assert_eq!(login(from("127.0.0.1"), "a-typo-in-it").await, 401);
}
