//! The benchmark's reference point (`bench/gateway.sh`, variant `bare`): a reverse proxy of
//! exactly Portcullis's transport shape — one single-threaded runtime per core, connections
//! handed out round-robin, hyper on both sides, one upstream connection per client connection —
//! and nothing else: no authentication, limits, audit, metrics or header rules.
//!
//! Set beside nginx and the full chain, it separates what the transport costs on the machine at
//! hand from what the chain adds on top. It is not a product path and is never shipped.
//!
//! Usage: `bare_proxy LISTEN_ADDR UPSTREAM_ADDR` (e.g. `127.0.0.1:8081 127.0.0.1:9000`).
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Sender = hyper::client::conn::http1::SendRequest<Incoming>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut edges = Vec::new();
    for _ in 0..cores {
        let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        std::thread::spawn(move || edge(rx, upstream));
        edges.push(tx);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let mut next = 0;
        loop {
            // One connection's failure is that connection's, never the benchmark's.
            let stream = match listener.accept().await.and_then(|(s, _)| s.set_nodelay(true).and(s.into_std())) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("bare_proxy: connection not taken: {e}");
                    continue;
                }
            };
            next = (next + 1) % edges.len();
            edges[next].send(stream).map_err(|_| "edge thread gone")?;
        }
    })
}

fn edge(mut rx: mpsc::UnboundedReceiver<std::net::TcpStream>, upstream: SocketAddr) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        while let Some(stream) = rx.recv().await {
            let Ok(stream) = TcpStream::from_std(stream) else { continue };
            tokio::task::spawn_local(connection(stream, upstream));
        }
    });
}

async fn connection(stream: TcpStream, upstream: SocketAddr) {
    // This client connection's own upstream connection, opened on first use.
    let sender: Rc<RefCell<Option<Sender>>> = Rc::default();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let taken = sender.borrow_mut().take();
            let mut s = match taken {
                Some(s) if !s.is_closed() => s,
                _ => {
                    let up = TcpStream::connect(upstream).await?;
                    up.set_nodelay(true)?;
                    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
                    tokio::task::spawn_local(conn);
                    s
                }
            };
            s.ready().await?;
            let res = s.send_request(req).await?;
            *sender.borrow_mut() = Some(s);
            Ok::<_, BoxError>(res.map(|b| b.boxed()))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
}
