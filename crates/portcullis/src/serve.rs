//! `portcullis serve`.
use crate::config::Config;
use crate::runtime;
use anyhow::Context;
use portcullis_core::Principal;
use portcullis_core::audit::AuditResult;
use portcullis_core::iplist::{IpPolicy, IpRules, IpSet, parse_net};
use portcullis_guard::{Grant, Guard, RequestMeta};
use portcullis_http::{HttpSettings, server::ServeSettings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cfg.log.format == "text" {
        let _ = builder.try_init();
    } else {
        let _ = builder.json().try_init();
    }
}

pub const BOOTSTRAP_EMAIL: &str = "admin@localhost";

/// On an empty store: create the first operator with a random password and print it once.
async fn bootstrap(guard: &Arc<Guard>, listen: &str) -> anyhow::Result<()> {
    if guard.store().count_operators().await? > 0 {
        return Ok(());
    }
    let raw = portcullis_guard::random_bytes::<24>().map_err(anyhow::Error::msg)?;
    let password: String = portcullis_core::apikey::generate(&raw).chars().skip(3).take(24).collect();
    let system = Grant {
        principal: Arc::new(Principal::system_operator(String::from("system:bootstrap"))),
        scope: None,
        permission: portcullis_core::Permission::TenantsManage,
    };
    let meta = RequestMeta { request_id: String::from("bootstrap"), ip: None, user_agent: None };
    let user = guard
        .create_user(&system, &meta, BOOTSTRAP_EMAIL, &password, None)
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap: {e}"))?;
    let mut e = guard.event_for(&system, &meta, "bootstrap", AuditResult::Success);
    e.resource_type = Some(String::from("user"));
    e.resource_id = Some(user.id.to_string());
    e.reason = Some(String::from("first start on an empty store: first operator created"));
    guard.record(e).await?;
    println!("== Portcullis bootstrap: the first operator (shown once, never again) ==");
    println!("bootstrap email: {BOOTSTRAP_EMAIL}");
    println!("bootstrap password: {password}");
    println!("sign in to the UI: http://{listen}/ui");
    println!(
        "or log in: curl -s -X POST http://{listen}/v1/auth/login -H 'content-type: application/json' -d '{{\"email\":\"{BOOTSTRAP_EMAIL}\",\"password\":\"{password}\"}}'"
    );
    Ok(())
}

/// Tries at stop to write usage and session events still in memory (200 ms apart).
const STOP_FLUSH_TRIES: u32 = 10;

/// Runs `flush` until it succeeds, at most [`STOP_FLUSH_TRIES`] times 200 ms apart; the last
/// failure is logged naming `what` was lost.
async fn flush_at_stop<F, Fut, E>(what: &str, mut flush: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    for attempt in 1..=STOP_FLUSH_TRIES {
        match flush().await {
            Ok(()) => return,
            Err(e) if attempt == STOP_FLUSH_TRIES => {
                tracing::warn!(error = %e, "{what} could not be written at stop");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The directory of a scale-out instance's own state, named by its listen address: a restart on
/// the same address continues the same chain, and instances on one data dir never share one.
pub fn instance_dir(data_dir: &Path, listen: &SocketAddr) -> PathBuf {
    let name: String = listen
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    data_dir.join("instances").join(name)
}

/// Takes the lock that makes this process the only `serve` on `dir` (the only writer of the
/// chain whose id and files live there).
fn lock(dir: &Path, what: impl FnOnce() -> String) -> anyhow::Result<std::fs::File> {
    let lock_path = dir.join("serve.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        anyhow::bail!("{}", what());
    }
    Ok(lock)
}

async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (set PORTCULLIS_LISTEN)"))
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    init_tracing(&cfg);
    // Before anything records a metric (the limiter does at start).
    let _ = portcullis_http::metrics::install();
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let (lock, listener, instance) = if cfg.database_url.is_some() {
        // Scale-out: several instances may share the data dir (they form one deployment); each
        // keeps its lock, chain id and audit files in its own directory, named by the address it
        // listens on. Bound first: with port 0 the address is known only then.
        let listener = bind(&cfg.listen).await?;
        let addr = listener.local_addr()?;
        let dir = instance_dir(&cfg.data_dir, &addr);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating instance dir {}", dir.display()))?;
        let lock = lock(&dir, || {
            format!("another `portcullis serve` listening on {addr} is using the instance dir {}", dir.display())
        })?;
        (lock, listener, dir)
    } else {
        // One server per data dir: two would write the same audit chain.
        let lock = lock(&cfg.data_dir, || {
            format!("another `portcullis serve` is using the data dir {}", cfg.data_dir.display())
        })?;
        (lock, bind(&cfg.listen).await?, cfg.data_dir.clone())
    };
    let writer_id = runtime::writer_id_for_serve(&cfg, &instance)?;
    let local = listener.local_addr()?;
    let opened = runtime::open(cfg, writer_id.clone(), true, instance.join("audit")).await?;
    let cfg = opened.cfg;
    let guard = opened.guard;
    guard.spawn_maintenance();
    if cfg.sessions.retention_days > 0 {
        guard.spawn_session_retention(Duration::from_secs(u64::from(cfg.sessions.retention_days) * 86_400));
    }
    bootstrap(&guard, &local.to_string()).await?;
    let routes =
        portcullis_http::proxy::RouteTable::new(&cfg.routes).map_err(|e| anyhow::anyhow!("invalid route: {e}"))?;
    let app = portcullis_http::app(
        guard.clone(),
        opened.audit_reader,
        HttpSettings {
            cors: cfg.http.cors.layer().map_err(anyhow::Error::msg)?,
            global_ip: IpPolicy::compile(&IpRules { allow: cfg.ip.allow.clone(), block: cfg.ip.block.clone() })
                .map_err(|e| anyhow::anyhow!("[ip]: {e}"))?,
            trusted_proxies: IpSet::new(
                &cfg.ip
                    .trusted_proxies
                    .iter()
                    .map(|p| parse_net(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(anyhow::Error::msg)?,
            ),
            max_body_bytes: cfg.http.max_body_bytes,
            request_timeout: Duration::from_secs(cfg.http.request_timeout_secs),
            key_rotation_default_grace: Duration::from_secs(cfg.auth.key_rotation_grace_secs),
            metrics_token: cfg.metrics.bearer_token.clone(),
            ui: portcullis_http::ui::UiSettings {
                dev_dir: std::env::var_os("PORTCULLIS_UI_DIR").map(std::path::PathBuf::from),
                secure_cookie: cfg.http.secure_cookies,
            },
            audit_verify: Some(portcullis_http::AuditVerify {
                sources: {
                    let cfg = cfg.clone();
                    Arc::new(move || crate::cli::audit_sources(&cfg).map_err(|e| e.to_string()))
                },
                key: ed25519_dalek::SigningKey::from_bytes(&opened.signing_key).verifying_key(),
            }),
        },
        routes,
    );
    println!("Portcullis listening on http://{local}");
    println!("  UI:       http://{local}/ui   (sign in with an operator or tenant user's email and password)");
    println!("  API:      http://{local}/v1   (OpenAPI: http://{local}/openapi.json)");
    println!(
        "  health:   http://{local}/healthz  http://{local}/readyz   metrics: http://{local}/metrics (operator or scrape token)"
    );
    for r in &cfg.routes {
        println!("  route:    http://{local}{}/…  →  {}   (action {})", r.prefix, r.upstream, r.action);
    }
    if instance == cfg.data_dir {
        println!("  data dir: {}   audit chain: {writer_id}", cfg.data_dir.display());
    } else {
        println!(
            "  data dir: {}   instance dir: {}   audit chain: {writer_id}",
            cfg.data_dir.display(),
            instance.display()
        );
    }
    println!(
        "  audit:    {}",
        match crate::runtime::acknowledge(&cfg, true) {
            portcullis_audit::Acknowledge::FileWrite =>
                "acknowledged at the instance's JSONL write; the database is its query index",
            portcullis_audit::Acknowledge::DatabaseCommit => "acknowledged at the database commit",
        }
    );
    match &cfg.redis_url {
        Some(url) => println!(
            "  limits:   shared in Redis {} (key prefix {}, fail mode {}, timeout {} ms)",
            portcullis_limiter::redis::redact_url(url),
            cfg.redis.key_prefix,
            cfg.redis.fail_mode,
            cfg.redis.timeout_ms
        ),
        None => println!("  limits:   in this process"),
    }
    tracing::info!(listen = %local, writer_id, "portcullis serving");
    let audit = guard.audit_log().clone();
    let settings = ServeSettings {
        header_read_timeout: Duration::from_secs(cfg.http.header_read_timeout_secs),
        max_header_bytes: cfg.http.max_header_bytes,
        workers: cfg.http.workers,
        // Each edge thread appends its own requests' audit events.
        on_edge_start: audit
            .appends_in_place()
            .then(|| portcullis_http::server::EdgeHook(Arc::new(move |_| audit.bind_thread()))),
        ..ServeSettings::default()
    };
    // The accept loop runs on a worker like everything else, not on the thread that blocks in
    // `main`: waking that thread for every accepted connection costs a futex round trip each.
    tokio::spawn(portcullis_http::server::serve(listener, app, settings, shutdown_signal()))
        .await
        .map_err(|e| anyhow::anyhow!("server task failed: {e}"))??;
    guard.flush_usage().await;
    // What is still in memory is lost when the process exits: a busy store (a pool wait over
    // `database.acquire_timeout_ms`) gets a few more tries before giving up.
    flush_at_stop("usage of the last second", || guard.flush_usage_ledger()).await;
    flush_at_stop("session events of the last second", || guard.flush_sessions()).await;
    // The final signed checkpoint must be written before the process exits.
    guard.audit_log().shutdown().await;
    drop(lock);
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
