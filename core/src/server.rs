//! Wiring: open the store, load the realms' keys, bootstrap the first provider account,
//! and serve HTTP until a shutdown signal, finishing in-flight requests first. The accept
//! loop is ours (over hyper) so each connection has a header deadline, an idle limit and a
//! place under a connection cap.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::api::{self, AppState};
use crate::auth::{self, Auth, LoginLimiter};
use crate::config::Config;
use crate::kernel::Kernel;
use crate::store::accounts::AccountKind;

/// The provider account made on first start, when one was made.
pub struct BootstrappedProvider {
    pub email: String,
    /// Set when the password was generated (and must be shown once).
    pub generated_password: Option<String>,
}

/// Opens the kernel (connecting to the database and migrating it) and builds what HTTP
/// needs beside it.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    let kernel = Kernel::open(config).await?;
    let auth = Auth::load(&kernel.store, &kernel.config)
        .await
        .context("loading the realms' signing keys")?;
    let config = &kernel.config;
    Ok(AppState {
        auth: Arc::new(auth),
        login_limiter: LoginLimiter::new(
            config.login_per_ip_per_minute,
            config.login_per_account_per_minute,
            config.login_per_account_global_per_minute,
            config.login_max_delay,
        ),
        metrics: crate::telemetry::prometheus(),
        kernel,
    })
}

/// Creates the first provider account if there is none: from `STREAMFLOW_PROVIDER_EMAIL` /
/// `STREAMFLOW_PROVIDER_PASSWORD`, or with a generated password.
pub async fn bootstrap_provider(state: &AppState) -> anyhow::Result<Option<BootstrappedProvider>> {
    if state.store.count_accounts(AccountKind::Provider).await? > 0 {
        return Ok(None);
    }
    let config = &state.config;
    let email = config
        .provider_email
        .clone()
        .unwrap_or_else(|| "admin@streamflow.local".into())
        .trim()
        .to_lowercase();
    let (password, generated) = match &config.provider_password {
        Some(p) if p.chars().count() >= 10 => (p.clone(), false),
        Some(_) => anyhow::bail!(
            "STREAMFLOW_PROVIDER_PASSWORD is shorter than 10 characters; choose a longer one"
        ),
        None => (auth::new_secret(""), true),
    };
    let hash = auth::hash_password(password.clone()).await?;
    let created = state
        .store
        .create_account(AccountKind::Provider, &email, "", &hash)
        .await?;
    // Another node may have won the race to create it; then it is not ours to print.
    Ok(created.map(|_| BootstrappedProvider {
        email,
        generated_password: generated.then_some(password),
    }))
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = state.store.clone();
    let stop = crate::events::Stop::default();
    let dispatcher = state
        .config
        .dispatcher
        .then(|| crate::events::start(state.kernel.clone(), stop.clone()));
    let scheduler = state
        .config
        .scheduler
        .then(|| crate::kernel::schedules::start(state.kernel.clone(), stop.clone()));
    let limits = ConnectionLimits::from(state.config.as_ref());
    let app = api::router(state);
    accept_loop(listener, app, limits, shutdown).await;
    // Finish the batch of events in hand; what is left waits in the outbox.
    stop.stop();
    if let Some(dispatcher) = dispatcher {
        let _ = dispatcher.await;
    }
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    store.close().await;
    Ok(())
}

/// What one connection may take (from the configuration).
#[derive(Clone, Copy, Debug)]
struct ConnectionLimits {
    header: Duration,
    idle: Duration,
    max_connections: usize,
    /// Connections one peer address may hold at once (0: no limit of its own).
    max_per_peer: usize,
}

impl From<&Config> for ConnectionLimits {
    fn from(config: &Config) -> Self {
        Self {
            header: config.header_timeout,
            idle: config.idle_timeout,
            max_connections: config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            max_per_peer: config.max_connections_per_peer,
        }
    }
}

/// Open connections per peer address; an address's entry goes with its last connection.
#[derive(Default)]
struct PeerCounts {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection of a peer, counted until dropped.
struct PeerSlot {
    counts: Arc<PeerCounts>,
    ip: std::net::IpAddr,
}

impl PeerCounts {
    /// Counts a new connection from `ip`, or `None` when it already holds `max` (0: no cap).
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut open = self.open.lock().expect("not poisoned");
        let count = open.entry(ip).or_insert(0);
        if max > 0 && *count >= max {
            if *count == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().expect("not poisoned");
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections (at most `max_connections` open at once: past the cap a new one waits
/// in the listen backlog, not accepted, until another closes), serves each with hyper's
/// HTTP/1.1, and on `shutdown` stops accepting and lets every connection finish the request
/// it is on.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Arc::new(PeerCounts::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) {
                        tracing::error!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        // One address may not take every slot: past its own cap it is closed at once.
        let peer = match peers.enter(remote.ip(), limits.max_per_peer) {
            Some(peer) => peer,
            None => {
                metrics::counter!("streamflow_http_connections_refused_total", "reason" => "per_peer")
                    .increment(1);
                drop(stream);
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            stream,
            remote,
            app.clone(),
            limits,
            stop_rx.clone(),
            (permit, peer),
        ));
    }
    // New connections are refused from here on; open ones finish their request and close.
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    _slot: (OwnedSemaphorePermit, PeerSlot),
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let in_service = activity.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // Login rate limiting and /metrics read the peer address from here.
        req.extensions_mut().insert(ConnectInfo(remote));
        let busy = Busy::start(in_service.clone());
        let app = app.clone();
        async move {
            let response = app.oneshot(req.map(Body::new)).await;
            drop(busy);
            response
        }
    });
    // hyper's own header-read timer is off: it runs from whenever hyper waits for a request
    // head, idle keep-alive time included, so it could not tell a stalled head from an idle
    // connection. `Activity` times the two apart.
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut watchdog = std::pin::pin!(activity.expired(limits));
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                break;
            }
            why = &mut watchdog => {
                // Dropping the connection closes the socket; no request is in progress.
                tracing::debug!(%remote, why, "closing the connection");
                metrics::counter!("streamflow_http_connections_timed_out_total", "why" => why)
                    .increment(1);
                break;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Where a connection is: waiting for (or reading) a request head, running a request, or
/// idle between requests; and since when.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Head,
    Busy,
    Idle,
}

struct ActivityState {
    phase: Phase,
    since: Instant,
    in_flight: usize,
}

/// The clock of one connection: a new connection, or an idle one that receives a byte, has
/// `header_timeout` to complete a request head; a connection with no request in progress
/// is closed after `idle_timeout`. The request body has its own deadline (the router's
/// body-timeout layer); a running handler has none here.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                phase: Phase::Head,
                since: Instant::now(),
                in_flight: 0,
            }),
            changed: Notify::new(),
        }
    }

    fn set(&self, update: impl FnOnce(&mut ActivityState)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = (state.phase, state.since);
        update(&mut state);
        if (state.phase, state.since) != before {
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: an idle connection starts reading a request head.
    fn read(&self) {
        self.set(|s| {
            if s.phase == Phase::Idle {
                s.phase = Phase::Head;
                s.since = Instant::now();
            }
        });
    }

    /// Resolves with the reason once the connection has overstayed its phase.
    async fn expired(&self, limits: ConnectionLimits) -> &'static str {
        loop {
            let notified = self.changed.notified();
            let (phase, since) = {
                let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                (s.phase, s.since)
            };
            let (limit, why) = match phase {
                Phase::Head => (limits.header, "header_timeout"),
                Phase::Idle => (limits.idle, "idle_timeout"),
                Phase::Busy => {
                    notified.await;
                    continue;
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until((since + limit).into()) => {
                    let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    if (s.phase, s.since) == (phase, since) {
                        return why;
                    }
                }
                () = notified => {}
            }
        }
    }
}

/// A request in progress on a connection (dropped when its response is ready, or when the
/// client goes away mid-request).
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Self {
        activity.set(|s| {
            s.in_flight += 1;
            s.phase = Phase::Busy;
        });
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(|s| {
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.phase = Phase::Idle;
                s.since = Instant::now();
            }
        });
    }
}

/// The socket, telling the connection's `Activity` when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler that panics costs its request a 500 in the error shape, naming the request
    /// id and not what the panic said; the same connection and server go on serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_handler_costs_one_request() {
        let routes: Router = Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    if std::hint::black_box(true) {
                        panic!("secret detail 42");
                    }
                    "unreachable"
                }),
            )
            .route("/ok", axum::routing::get(|| async { "fine" }));
        let app = api::layers(routes, 1024, Duration::from_secs(5));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let limits = ConnectionLimits::from(&Config::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(accept_loop(listener, app, limits, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        for round in 0..3 {
            let resp = http.get(format!("{base}/boom")).send().await.unwrap();
            assert_eq!(resp.status(), 500, "round {round}");
            let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "internal");
            assert_eq!(body["error"]["details"]["request_id"], id.as_str());
            assert!(!body.to_string().contains("secret detail"), "{body}");
            let resp = http
                .get(format!("{base}/boom"))
                .header("x-request-id", "given-id-7")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.headers()["x-request-id"], "given-id-7");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["details"]["request_id"], "given-id-7");
            let resp = http.get(format!("{base}/ok")).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.text().await.unwrap(), "fine");
        }
        let _ = stop.send(());
        server.await.unwrap();
    }
}
