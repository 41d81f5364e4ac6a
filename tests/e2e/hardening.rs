//! The HTTP layer under hostile clients: JSON keys that used to panic the error path, slow
//! clients (stalled heads, stalled bodies, idle connections), the connection cap, graceful
//! shutdown with a request in flight, and who may read `/metrics`.
//!
//! Time bounds here are generous upper bounds on behaviour (the server closes a stalled
//! connection at all), not measurements.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Backend, TestServer};

/// Far longer than any timeout a test configures: reaching it means the server kept a
/// connection it should have closed.
const BOUND: Duration = Duration::from_secs(15);

async fn server(tweak: impl FnOnce(&mut streamflow::config::Config)) -> TestServer {
    TestServer::start_with(Backend::Sqlite, tweak)
        .await
        .expect("SQLite is always available")
}

async fn connect(srv: &TestServer) -> TcpStream {
    TcpStream::connect(srv.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection; returns what it sent. Panics if it does
/// not close within [`BOUND`].
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open; it sent: {}",
        String::from_utf8_lossy(&received)
    );
    String::from_utf8_lossy(&received).into_owned()
}

/// Reads one whole response (headers and a `Content-Length` body) off a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&received).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed mid-response: {text}");
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response in time");
    String::from_utf8_lossy(&received).into_owned()
}

fn body_of(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").expect("a head").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_keys_with_brackets_and_escapes_get_a_pointer_not_a_panic() {
    let srv = server(|_| {}).await;
    for (key, pointer) in [
        ("[", "/["),
        ("[é", "/[é"),
        ("é]", "/é]"),
        ("a[0].b", "/a[0].b"),
        ("x/y~z", "/x~1y~0z"),
    ] {
        for path in ["/api/auth/login", "/provider/auth/login"] {
            let (status, body) = srv
                .call(Method::POST, path, None, Some(json!({ key: 1 })))
                .await;
            assert_eq!(status, 422, "{path} {key:?}: {body}");
            assert_eq!(
                body["error"]["details"]["errors"][0]["path"], pointer,
                "{path} {key:?}: {body}"
            );
        }
    }
    // Nested under a known field too.
    let provider = srv.provider_token().await;
    let (status, body) = srv
        .post(
            "/provider/tenants",
            &provider,
            json!({"slug": "acme", "name": "Acme", "template": {"[": 1}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    // The server still answers.
    let (status, _) = srv.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_closed_after_the_header_timeout() {
    let srv = server(|c| {
        c.header_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_secs(600);
    })
    .await;
    // Half a request line.
    let mut half = connect(&srv).await;
    half.write_all(b"GET /hea").await.unwrap();
    read_to_close(&mut half).await;
    // A whole line, then the headers never end.
    let mut headers = connect(&srv).await;
    headers
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    read_to_close(&mut headers).await;
    // Nothing at all.
    let mut silent = connect(&srv).await;
    read_to_close(&mut silent).await;
    // A kept-alive connection that starts a second request and stalls.
    let mut second = connect(&srv).await;
    second
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut second).await.starts_with("HTTP/1.1 200"));
    second.write_all(b"GET /heal").await.unwrap();
    read_to_close(&mut second).await;
    // Others are served meanwhile.
    let (status, _) = srv.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let srv = server(|c| {
        c.header_timeout = Duration::from_secs(600);
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut conn = connect(&srv).await;
    for _ in 0..2 {
        conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut conn).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    assert_eq!(read_to_close(&mut conn).await, "", "closed without a word");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_the_connection_closes() {
    let srv = server(|c| c.body_timeout = Duration::from_millis(300)).await;
    let mut conn = connect(&srv).await;
    conn.write_all(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"tenant\": \"acme\", ",
    )
    .await
    .unwrap();
    let response = read_to_close(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert_eq!(body_of(&response)["error"]["code"], "body_timeout");

    // A body that arrives, slowly but within the limit, is read as usual.
    let mut conn = connect(&srv).await;
    let body = br#"{"tenant":"acme","email":"a@b.test","password":"x"}"#;
    conn.write_all(
        format!(
            "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.write_all(&body[..10]).await.unwrap();
    conn.write_all(&body[10..]).await.unwrap();
    let response = read_response(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_frees() {
    let srv = server(|c| c.max_connections = 1).await;
    let mut first = connect(&srv).await;
    first
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));
    // `first` is open and idle: the one connection allowed. A second one is not served...
    let mut second = connect(&srv).await;
    second
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a connection past the cap was served: {early:?}"
    );
    // ...until the first closes.
    drop(first);
    let response = read_response(&mut second).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let srv = server(|c| c.max_connections_per_peer = 2).await;
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let server = srv
            .base
            .trim_start_matches("http://")
            .parse::<std::net::SocketAddr>()
            .unwrap();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind((ip, 0).into()).unwrap();
            socket.connect(server).await.unwrap()
        }
    };
    let health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = from("127.0.0.1").await;
        conn.write_all(health).await.unwrap();
        assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));
        held.push(conn);
    }
    // A third from the same address is closed unanswered...
    let mut third = from("127.0.0.1").await;
    let _ = third.write_all(health).await;
    let answer = read_to_close(&mut third).await;
    assert!(answer.is_empty(), "{answer}");
    // ...while another address is served.
    let mut other = from("127.0.0.2").await;
    other.write_all(health).await.unwrap();
    assert!(read_response(&mut other).await.starts_with("HTTP/1.1 200"));
    // A held connection freed makes room again.
    drop(held.pop());
    let again = tokio::time::timeout(BOUND, async {
        loop {
            let mut conn = from("127.0.0.1").await;
            if conn.write_all(health).await.is_ok() && read_to_close_or_response(&mut conn).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "the freed slot was never reused");
}

/// Whether the server answered (true) or closed the connection unanswered (false).
async fn read_to_close_or_response(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(BOUND, conn.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_request_in_flight() {
    let mut srv = server(|_| {}).await;
    let mut conn = connect(&srv).await;
    let body = br#"{"tenant":"acme","email":"a@b.test","password":"wrong-password"}"#;
    conn.write_all(
        format!(
            "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The server answers `100 Continue` once the handler starts reading the body: from then
    // on the request is in flight, however slow the machine.
    let mut seen = Vec::new();
    tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("100 Continue\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before 100 Continue");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the server asked for the body");
    srv.stop();
    conn.write_all(body).await.unwrap();
    let response = read_to_close(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    // And nothing new is accepted.
    let refused = tokio::time::timeout(BOUND, async {
        loop {
            match TcpStream::connect(srv.base.trim_start_matches("http://")).await {
                Err(_) => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "the listener was not closed");
}

async fn metrics(srv: &TestServer, token: Option<&str>) -> (u16, String) {
    let mut req = srv.http.get(format!("{}/metrics", srv.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_an_allowed_address_or_the_token() {
    // No address allowed; the token opens it.
    let srv = server(|c| {
        c.metrics_allow = vec![];
        c.metrics_token = Some("metrics-token-0123456789".into());
    })
    .await;
    let (status, body) = metrics(&srv, None).await;
    assert_eq!(status, 403, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "forbidden");
    assert_eq!(metrics(&srv, Some("metrics-token-012345678")).await.0, 403);
    assert_eq!(metrics(&srv, Some("")).await.0, 403);
    let (status, text) = metrics(&srv, Some("metrics-token-0123456789")).await;
    assert_eq!(status, 200);
    assert!(text.contains("streamflow_http_requests_total"), "{text}");
    drop(srv);

    // Allowed by address: loopback is in the list (a single address or a network).
    for allow in ["127.0.0.1", "127.0.0.0/8"] {
        let srv = server(|c| {
            c.metrics_allow = vec![streamflow::config::parse_network(allow).unwrap()];
        })
        .await;
        assert_eq!(metrics(&srv, None).await.0, 200, "{allow}");
    }
    // Another network only, no token configured: refused whatever is sent.
    let srv = server(|c| c.metrics_allow = vec!["10.0.0.0/8".parse().unwrap()]).await;
    assert_eq!(metrics(&srv, None).await.0, 403);
    assert_eq!(metrics(&srv, Some("anything")).await.0, 403);
}
