//! Serving with the protections plain `axum::serve` lacks: a header-read timeout (a slowloris
//! connection that never finishes its headers is closed), a bound on header bytes (431), and a
//! graceful drain on shutdown. The peer address is attached to every request for audit and IP rules.
//!
//! Shape: one accept loop hands each connection to one of N edge threads, each running its own
//! single-threaded runtime. A connection, its requests and its upstream connection then live on
//! one thread: no work stealing, no cross-core wake-ups on the request path. Measured here, the
//! multi-threaded runtime spent a sixth of its CPU waking tasks on the other core (reschedule
//! IPIs, futexes) for every request.
use crate::Gateway;
use crate::middleware::PeerAddr;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

#[derive(Clone, Debug)]
pub struct ServeSettings {
    pub header_read_timeout: Duration,
    /// Upper bound of the request head (request line + headers); larger heads get 431.
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    /// Edge threads; 0 = one per available core.
    pub workers: usize,
    /// Runs first on every edge thread, with its index (e.g. to bind the thread's audit lane).
    pub on_edge_start: Option<EdgeHook>,
}

/// A function every edge thread calls with its index when it starts.
#[derive(Clone)]
pub struct EdgeHook(pub Arc<dyn Fn(usize) -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for EdgeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeHook")
    }
}

/// How many edge threads `workers` (from configuration; 0 = automatic) means here.
pub fn worker_count(workers: usize) -> usize {
    if workers > 0 {
        return workers;
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            shutdown_grace: Duration::from_secs(10),
            workers: 0,
            on_edge_start: None,
        }
    }
}

/// Connection state shared by the requests of one client connection (an HTTP/1 connection
/// carries one request at a time; HTTP/2 ones may carry several).
pub type ConnState = Arc<crate::proxy::ConnUpstreams>;

struct Edge {
    connections: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    thread: std::thread::JoinHandle<()>,
}

fn builder(settings: &ServeSettings) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(crate::timer::CoarseTimer)
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192));
    builder.http2().timer(crate::timer::CoarseTimer);
    builder
}

fn start_edge(
    index: usize,
    app: Gateway,
    settings: ServeSettings,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<Edge> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
    let thread = std::thread::Builder::new().name(format!("edge-{index}")).spawn(move || {
        if let Some(hook) = &settings.on_edge_start
            && let Err(e) = (hook.0)(index)
        {
            tracing::error!(error = %e, "edge thread start hook failed");
        }
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "edge runtime did not start");
                return;
            }
        };
        let builder = builder(&settings);
        // This thread's own handle on the gateway: the per-request clone below then touches a
        // reference count no other core writes (clones of the shared state's inner `Arc`s
        // bounced their cache lines between the cores on every request).
        let app = Arc::new(app);
        rt.block_on(async move {
            let graceful = GracefulShutdown::new();
            let mut open = true;
            loop {
                tokio::select! {
                    next = rx.recv(), if open => {
                        let Some((stream, peer)) = next else {
                            open = false;
                            continue;
                        };
                        let stream = match TcpStream::from_std(stream) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!(error = %e, "connection not taken over by the edge runtime");
                                continue;
                            }
                        };
                        let app = app.clone();
                        let conn_state: ConnState = Arc::default();
                        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                            let app = app.clone();
                            let conn_state = conn_state.clone();
                            async move {
                                if let Some(route) = app.direct_route(&req) {
                                    let res = crate::proxy::handle(app.state(), route, req, peer, conn_state).await;
                                    return Ok::<_, std::convert::Infallible>(res);
                                }
                                req.extensions_mut().insert(PeerAddr(peer));
                                req.extensions_mut().insert(conn_state);
                                app.router.clone().oneshot(req.map(Body::new)).await
                            }
                        });
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            break;
                        }
                    }
                }
            }
            // No new connections; let the open ones finish their requests, within the grace.
            let grace = tokio::time::sleep(settings.shutdown_grace);
            tokio::pin!(grace);
            tokio::select! {
                () = graceful.shutdown() => {}
                () = &mut grace => {
                    tracing::warn!("shutdown grace period over; closing remaining connections");
                    return;
                }
            }
            // Then what the requests left running (the rest of an answer whose client left,
            // read for its usage): it runs on this thread's runtime, which stops when this
            // returns. The tracker spans every edge; each drives its own tasks meanwhile. (Such
            // a read over the HTTP/1 caller's own upstream connection is driven here; one over a
            // connection of the shared pool, used by multiplexed callers, may be driven by an
            // edge that has already stopped, and is then recorded without its token counts.)
            let background = &app.state().background;
            background.close();
            tokio::select! {
                () = background.wait() => {}
                () = &mut grace => {
                    tracing::warn!(
                        tasks = background.len(),
                        "shutdown grace period over; answers still being read are recorded without their token counts"
                    );
                }
            }
        });
    })?;
    Ok(Edge { connections: tx, thread })
}

pub async fn serve(
    listener: TcpListener,
    app: Gateway,
    settings: ServeSettings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut edges = Vec::new();
    for i in 0..worker_count(settings.workers) {
        edges.push(start_edge(i, app.clone(), settings.clone(), stop_rx.clone())?);
    }
    tokio::pin!(shutdown);
    let mut next = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepted connection could not be handed over");
                        continue;
                    }
                };
                // Round robin: connections are long-lived (keep-alive), so this spreads the load
                // evenly enough without measuring it.
                next = (next + 1) % edges.len().max(1);
                if let Some(edge) = edges.get(next)
                    && edge.connections.send((stream, peer)).is_err()
                {
                    tracing::error!("edge thread {next} is gone");
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    for edge in edges {
        drop(edge.connections);
        let _ = tokio::task::spawn_blocking(move || edge.thread.join()).await;
    }
    Ok(())
}
