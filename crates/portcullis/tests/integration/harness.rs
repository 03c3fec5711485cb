//! Shared fixtures: start the real binary on a fresh data dir, log in, create tenants and keys,
//! run CLI commands against the same data dir.
//!
//! The suite runs in either deployment shape: embedded (default) or, with
//! `PORTCULLIS_TEST_SHAPE=postgres`, every server on its own fresh PostgreSQL database (migrated
//! by `portcullis migrate` as its owner role, served as a plain application role, the shared
//! secrets in the environment). Tests that read the embedded store's files call
//! [`embedded_only`].
//!
//! With `PORTCULLIS_TEST_LIMITS=redis` every server also shares its limits in Redis
//! (`PORTCULLIS_TEST_REDIS_URL`, default the standard loopback server), each server under its own
//! key prefix unless it joins another's deployment.
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Whether servers start in the scale-out shape (`PORTCULLIS_TEST_SHAPE=postgres`).
pub fn shape_is_postgres() -> bool {
    match std::env::var("PORTCULLIS_TEST_SHAPE").as_deref() {
        Ok("postgres") => true,
        Ok("embedded") | Ok("") | Err(_) => false,
        Ok(other) => panic!("PORTCULLIS_TEST_SHAPE=`{other}`: expected `embedded` or `postgres`"),
    }
}

/// Whether servers share their limits in Redis (`PORTCULLIS_TEST_LIMITS=redis`).
pub fn limits_in_redis() -> bool {
    match std::env::var("PORTCULLIS_TEST_LIMITS").as_deref() {
        Ok("redis") => true,
        Ok("local") | Ok("") | Err(_) => false,
        Ok(other) => panic!("PORTCULLIS_TEST_LIMITS=`{other}`: expected `local` or `redis`"),
    }
}

/// The test Redis: `PORTCULLIS_TEST_REDIS_URL` (set by `scripts/test.sh`), else the standard
/// loopback server.
pub fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| String::from("redis://127.0.0.1:6379"))
}

/// The environment that puts a server's limits in the test Redis under a fresh key prefix. The
/// timeout is generous: debug builds on a loaded machine must not fall into the fail mode by
/// accident (the fault tests set their own).
pub fn redis_limits_env() -> Vec<(String, String)> {
    vec![
        (String::from("PORTCULLIS_REDIS_URL"), redis_url()),
        (String::from("PORTCULLIS_REDIS__KEY_PREFIX"), format!("pct-test:{}", uuid_like())),
        (String::from("PORTCULLIS_REDIS__TIMEOUT_MS"), String::from("2000")),
    ]
}

/// For a test that only makes sense on the embedded store (it reads or tampers with the data
/// dir's SQLite files directly): true, after saying why, when the suite runs on PostgreSQL, and
/// the caller returns.
pub fn embedded_only(reason: &str) -> bool {
    if shape_is_postgres() {
        eprintln!("embedded shape only, skipped on postgres: {reason}");
        return true;
    }
    false
}

/// The admin (superuser) URL of the test PostgreSQL: `PORTCULLIS_TEST_PG_URL` (set by
/// `scripts/test.sh`, which starts a throwaway server when none answers), else the standard
/// loopback server with trust authentication.
pub fn pg_admin_url() -> String {
    std::env::var("PORTCULLIS_TEST_PG_URL")
        .unwrap_or_else(|_| String::from("postgres://postgres@127.0.0.1:5432/postgres"))
}

/// `url` with its user, password and database replaced (host, port and parameters kept).
pub fn pg_url_for(url: &str, user: &str, password: &str, db: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let query = path.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
    format!("postgres://{user}:{password}@{host}/{db}{query}")
}

/// Runs statements on `url` (one connection, in order); panics naming the failing one.
pub fn pg_exec(url: &str, statements: &[String]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(url).await.unwrap_or_else(|e| {
            panic!("connect to the test PostgreSQL: {e} (the README's test command, scripts/test.sh, provides one)")
        });
        for s in statements {
            sqlx::raw_sql(s).execute(&mut c).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        let _ = c.close().await;
    });
}

/// Every row of every table of the `portcullis` schema as text, each line `table: row` (read as
/// the superuser: row-level security does not hide anything from it).
pub fn pg_all_rows_text(admin_url: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(admin_url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'portcullis' AND c.relkind = 'r' ORDER BY 1",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let mut out = String::new();
        for t in tables {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT x::text FROM portcullis.{t} x")).fetch_all(&mut c).await.unwrap();
            out.push_str(&format!("{t}:\n"));
            for r in rows {
                out.push_str(&format!("{t}: {r}\n"));
            }
        }
        out
    })
}

/// A fresh database with its own two roles, as a DBA would set them up for Portcullis: an owner
/// (owns the database, runs `migrate`) and a plain login application role. Everything is
/// uniquely named and dropped again on drop.
pub struct PgDatabase {
    /// Superuser URL of the server the database is on.
    pub server_admin_url: String,
    pub name: String,
    pub owner: String,
    pub app: String,
    /// Superuser on this database (for tests that inspect or tamper).
    pub admin_url: String,
    pub owner_url: String,
    pub app_url: String,
    /// The application role's password, which must never appear in any output.
    pub app_password: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        Self::create_on(&pg_admin_url())
    }

    /// A fresh database on the server whose superuser URL is `server_admin_url`.
    pub fn create_on(server_admin_url: &str) -> PgDatabase {
        let server_admin_url = server_admin_url.to_owned();
        let name = format!("pct_{}", uuid_like());
        let owner = format!("{name}_owner");
        let app = format!("{name}_app");
        let owner_password = format!("own{}", uuid_like());
        let app_password = format!("app{}", uuid_like());
        pg_exec(
            &server_admin_url,
            &[
                format!("CREATE ROLE {owner} LOGIN PASSWORD '{owner_password}'"),
                format!("CREATE ROLE {app} LOGIN PASSWORD '{app_password}'"),
                format!("CREATE DATABASE {name} OWNER {owner}"),
            ],
        );
        let admin_url = {
            let rest = server_admin_url.split_once("://").map(|(_, r)| r).unwrap_or(&server_admin_url);
            let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
            let query = path.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
            format!("postgres://{authority}/{name}{query}")
        };
        PgDatabase {
            owner_url: pg_url_for(&server_admin_url, &owner, &owner_password, &name),
            app_url: pg_url_for(&server_admin_url, &app, &app_password, &name),
            admin_url,
            name,
            owner,
            app,
            app_password,
            server_admin_url,
        }
    }

    /// Runs `portcullis migrate` with both URLs, as the deployment guide says.
    /// Migrated, ready for `serve`.
    pub fn migrated(self) -> PgDatabase {
        self.migrate();
        self
    }

    pub fn migrate(&self) {
        let out = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORTCULLIS_DATABASE_URL", &self.app_url)
            .env("PORTCULLIS_MIGRATION_DATABASE_URL", &self.owner_url)
            .arg("migrate")
            .output()
            .unwrap();
        assert!(out.status.success(), "portcullis migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Best effort: a leftover uniquely named database disturbs no later run.
        let url = self.server_admin_url.clone();
        let stmts = [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            format!("DROP ROLE IF EXISTS {}", self.app),
            format!("DROP ROLE IF EXISTS {}", self.owner),
        ];
        let _ = std::thread::spawn(move || {
            let _ = std::panic::catch_unwind(|| pg_exec(&url, &stmts));
        })
        .join();
    }
}

/// Servers started in the scale-out shape, by data dir: (admin URL of their database, the
/// environment the CLI needs). Lets helpers that are given only a data dir reach its database.
type Env = Vec<(String, String)>;
static SCALE_OUT: std::sync::Mutex<Vec<(PathBuf, String, Env)>> = std::sync::Mutex::new(Vec::new());

/// For a data dir of a server in the scale-out shape: its database's admin URL and its env.
pub fn scale_out_for(data: &Path) -> Option<(String, Env)> {
    let all = SCALE_OUT.lock().unwrap_or_else(|e| e.into_inner());
    all.iter().find(|(d, _, _)| d == data).map(|(_, url, env)| (url.clone(), env.clone()))
}

/// 32 random-enough bytes as 64 hex characters (test secrets).
pub fn hex32() -> String {
    format!("{}{}", uuid_like(), uuid_like())
}

/// The environment a scale-out instance needs: the application role's URL and the shared secrets.
pub fn scale_out_env(db: &PgDatabase) -> Vec<(String, String)> {
    vec![
        (String::from("PORTCULLIS_DATABASE_URL"), db.app_url.clone()),
        (String::from("PORTCULLIS_KEY_PEPPER"), hex32()),
        (String::from("PORTCULLIS_MASTER_KEY"), hex32()),
        (String::from("PORTCULLIS_AUDIT_SIGNING_KEY"), hex32()),
    ]
}

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub addr: String,
    /// Kept alive for the server's lifetime; removed on drop of the last server sharing it.
    pub dir: Arc<tempfile::TempDir>,
    /// This process's stderr (several instances may share `dir`).
    log_file: PathBuf,
    pub env: Vec<(String, String)>,
    pub config: Option<PathBuf>,
    pub bootstrap_password: Option<String>,
    /// What the process printed until it listened.
    pub stdout: Vec<String>,
    /// Everything it printed since (the rest of the start-up banner and beyond).
    stdout_after: Arc<Mutex<Vec<String>>>,
    /// The server's own database in the PostgreSQL shape; dropped after the process is killed.
    pub pg: Option<PgDatabase>,
    client: Client,
}

pub fn client() -> Client {
    // The server closes a keep-alive connection that sends no next request within its header-read
    // timeout (10 s). A client reusing one at that very moment gets a reset (seen under a loaded
    // CI): never reuse one idle for half that.
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

impl Server {
    /// A server on a fresh data dir with default configuration.
    pub fn start() -> Server {
        Self::start_with(&[], None)
    }

    /// `env`: extra `PORTCULLIS_*` variables; `config_toml`: written to a file passed with `--config`.
    /// In the PostgreSQL shape the server gets a fresh migrated database first (`env` may
    /// still override any of its variables).
    pub fn start_with(env: &[(&str, &str)], config_toml: Option<&str>) -> Server {
        let pg = shape_is_postgres().then(|| {
            let db = PgDatabase::create();
            db.migrate();
            db
        });
        Self::start_on(pg, env, config_toml)
    }

    /// A server in the scale-out shape on `db` (already migrated), whatever the suite's shape.
    pub fn start_on_postgres(db: PgDatabase, env: &[(&str, &str)]) -> Server {
        Self::start_on(Some(db), env, None)
    }

    /// A server with exactly `env`, never provisioned a database (e.g. a second instance on
    /// another server's database).
    pub fn start_plain(env: &[(&str, &str)]) -> Server {
        Self::start_on(None, env, None)
    }

    /// A server on `pg` (if given; none = the embedded shape unless `env` says otherwise).
    pub fn start_on(pg: Option<PgDatabase>, env: &[(&str, &str)], config_toml: Option<&str>) -> Server {
        let mut all_env = pg.as_ref().map(scale_out_env).unwrap_or_default();
        // A server given its own Redis settings (or another's, to join its deployment) keeps them.
        if limits_in_redis() && !env.iter().any(|(k, _)| *k == "PORTCULLIS_REDIS_URL") {
            all_env.extend(redis_limits_env());
        }
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let dir = Arc::new(tempfile::Builder::new().prefix("portcullis-test-").tempdir().unwrap());
        let config = config_toml.map(|text| {
            let p = dir.path().join("portcullis.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        let mut s = Server {
            child: None,
            base: String::new(),
            addr: String::new(),
            log_file: dir.path().join("server.log"),
            dir,
            env: all_env,
            config,
            bootstrap_password: None,
            stdout: Vec::new(),
            stdout_after: Arc::default(),
            pg,
            client: client(),
        };
        if let Some(db) = &s.pg {
            let mut all = SCALE_OUT.lock().unwrap_or_else(|e| e.into_inner());
            all.push((s.data_dir(), db.admin_url.clone(), s.env.clone()));
        }
        s.spawn();
        s
    }

    /// Another instance of this server's deployment: the same environment (database, secrets,
    /// Redis and its key prefix, configuration file) and the same data dir, its own listen
    /// address — what the contract calls one deployment. `extra` overrides variables.
    pub fn start_instance(&self, extra: &[(&str, &str)]) -> Server {
        let n = self.dir.path().read_dir().map(|d| d.count()).unwrap_or(0);
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut s = Server {
            child: None,
            base: String::new(),
            addr: String::new(),
            log_file: self.dir.path().join(format!("server-{n}-{}.log", uuid_like())),
            dir: self.dir.clone(),
            env,
            config: self.config.clone(),
            bootstrap_password: None,
            stdout: Vec::new(),
            stdout_after: Arc::default(),
            pg: None,
            client: client(),
        };
        s.spawn();
        s
    }

    /// Whether this server runs in the scale-out shape (on PostgreSQL).
    pub fn scale_out(&self) -> bool {
        self.env.iter().any(|(k, _)| k == "PORTCULLIS_DATABASE_URL")
    }

    /// Where this process keeps its own state (`node-id`, `serve.lock`, `audit/`): the data dir
    /// on the embedded shape, its instance directory (named by its address) in the scale-out one.
    pub fn instance_dir(&self) -> PathBuf {
        if !self.scale_out() {
            return self.data_dir();
        }
        let name: String = self
            .addr
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        self.data_dir().join("instances").join(name)
    }

    /// This server's audit chain id.
    pub fn writer_id(&self) -> String {
        std::fs::read_to_string(self.instance_dir().join("node-id")).unwrap().trim().to_owned()
    }

    /// `portcullis migrate` as an operator runs it: on PostgreSQL with the owner's URL too.
    pub fn cli_migrate(&self) -> Output {
        let mut c = self.command();
        if let Some(db) = &self.pg {
            c.env("PORTCULLIS_MIGRATION_DATABASE_URL", &db.owner_url);
        }
        c.arg("migrate").stdin(Stdio::null()).output().unwrap()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORTCULLIS_DATA_DIR", self.data_dir())
            .env("PORTCULLIS_LOG", "warn")
            .env("USER", "tester");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(cfg) = &self.config {
            c.arg("--config").arg(cfg);
        }
        c
    }

    /// (Re)starts the process on the same data dir and waits until it listens.
    pub fn spawn(&mut self) {
        let listen = if self.addr.is_empty() { String::from("127.0.0.1:0") } else { self.addr.clone() };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_file).unwrap();
        let mut child = self
            .command()
            .env("PORTCULLIS_LISTEN", &listen)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let after = self.stdout_after.clone();
        std::thread::spawn(move || {
            let mut started = false;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if started {
                    // Kept after start-up too; and drained so the server never blocks on a full pipe.
                    after.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    continue;
                }
                started = line.starts_with("Portcullis listening on ");
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .unwrap_or_else(|_| panic!("server did not start; log: {}", self.log()));
            if let Some(pw) = line.strip_prefix("bootstrap password: ") {
                self.bootstrap_password = Some(pw.trim().to_owned());
            }
            self.stdout.push(line.clone());
            if let Some(rest) = line.strip_prefix("Portcullis listening on http://") {
                self.addr = rest.trim().to_owned();
                self.base = format!("http://{}", self.addr);
                break;
            }
        }
        self.child = Some(child);
    }

    /// Everything the process printed on stdout so far.
    pub fn all_stdout(&self) -> String {
        let mut all = self.stdout.clone();
        all.extend(self.stdout_after.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        all.join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(self.url(path))
    }
    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.client.delete(self.url(path))
    }
    pub fn request(&self, method: &str, path: &str) -> RequestBuilder {
        self.client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), self.url(path))
    }

    pub fn login(&self, email: &str, password: &str) -> String {
        let r = self.post("/v1/auth/login").json(&json!({ "email": email, "password": password })).send().unwrap();
        assert_eq!(r.status(), 200, "login {email}");
        r.json::<Value>().unwrap()["token"].as_str().unwrap().to_owned()
    }

    /// Session token of the bootstrap operator.
    pub fn operator_token(&self) -> String {
        self.login("admin@localhost", self.bootstrap_password.as_deref().expect("bootstrap password printed"))
    }

    pub fn create_tenant(&self, op: &str, name: &str, tier: &str) -> String {
        let r = self.post("/v1/tenants").bearer_auth(op).json(&json!({ "name": name, "tier": tier })).send().unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().unwrap()["id"].as_str().unwrap().to_owned()
    }

    /// (key id, key) created by the operator inside `tenant`.
    pub fn create_key(&self, op: &str, tenant: &str, role: &str) -> (String, String) {
        let r = self
            .post("/v1/keys")
            .bearer_auth(op)
            .header("x-tenant-id", tenant)
            .json(&json!({ "name": format!("{role}-key"), "role": role }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().unwrap();
        (v["id"].as_str().unwrap().to_owned(), v["key"].as_str().unwrap().to_owned())
    }

    /// (user id, email, password) of a new tenant user.
    pub fn create_user(&self, op: &str, tenant: &str, role: &str) -> (String, String, String) {
        let email = format!("{role}-{}@example.test", uuid_like());
        let password = String::from("correct horse battery staple");
        let r = self
            .post("/v1/users")
            .bearer_auth(op)
            .header("x-tenant-id", tenant)
            .json(&json!({ "email": email, "password": password, "role": role }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text());
        let v: Value = r.json().unwrap();
        (v["id"].as_str().unwrap().to_owned(), email, password)
    }

    /// Runs the CLI on this server's data dir.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs the CLI with `--json` and parses stdout; panics with stderr when it fails.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(out.status.success(), "cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Audit events as the operator sees them, newest first.
    pub fn audit(&self, op: &str, query: &str) -> Vec<Value> {
        let r = self.get(&format!("/v1/audit?limit=1000&{query}")).bearer_auth(op).send().unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().unwrap()["items"].as_array().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{:016x}{:08x}{:08x}", t as u64, std::process::id(), n)
}

/// Polls `f` until it returns true or `limit` passes; returns whether it became true.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Copies a directory tree (for tampering with a copy of a stopped server's data dir).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

pub fn problem(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(ct.starts_with("application/problem+json"), "status {status} content-type {ct}");
    let v: Value = r.json().unwrap();
    assert_eq!(v["status"], status);
    assert!(v["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    (status, v)
}

/// A loopback port that was free a moment ago (for servers that cannot be told to bind port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A free loopback port for a server a test stops and starts again on the same port (PostgreSQL,
/// Redis): taken below the kernel's ephemeral range, so that while the server is down no
/// outgoing connection or port-0 listener of the busy test run can be handed its port.
pub fn restartable_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|v| v.parse::<u16>().ok()))
        .unwrap_or(32_768);
    let (from, to) = (low.saturating_sub(12_000).max(1_024), low.saturating_sub(1).max(1_025));
    // Spread over the range by process, time and call, so that two servers of this run (or of
    // two runs) are unlikely to be handed one port before either has bound it.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::UNIX_EPOCH.elapsed().map(|d| d.subsec_nanos()).unwrap_or(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos ^ call.wrapping_mul(104_729);
    let span = u32::from(to - from);
    (0..span)
        .map(|i| from + (seed.wrapping_add(i.wrapping_mul(7_919)) % span) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or_else(free_port)
}

/// A throwaway `redis-server` of a test's own, on a free loopback port in a temp dir, that the
/// test may stop, hang (SIGSTOP), wake (SIGCONT) and start again on the same port — never the
/// machine's shared server.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
}

impl RedisServer {
    /// `password`: started with `--requirepass`.
    pub fn start(password: Option<&str>) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: restartable_port(),
            dir: tempfile::Builder::new().prefix("portcullis-redis-").tempdir().unwrap(),
            password: password.map(str::to_owned),
        };
        r.start_again();
        r
    }

    /// `redis://…` with the password, if any.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// (Re)starts on the same port; waits until it answers PING.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut c = Command::new("redis-server");
        c.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            c.args(["--requirepass", p]);
        }
        self.child = Some(c.spawn().unwrap_or_else(|e| panic!("redis-server: {e} (apt-get install redis-server)")));
        let answered = eventually(Duration::from_secs(10), || self.answers());
        assert!(answered, "redis-server on port {} did not answer", self.port);
    }

    /// Answers PING (authenticated when it has a password)?
    pub fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
        let mut req = String::new();
        if let Some(p) = &self.password {
            req.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{p}\r\n", p.len()));
        }
        req.push_str("*1\r\n$4\r\nPING\r\n");
        if c.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !String::from_utf8_lossy(&got).contains("PONG") {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    /// SIGKILL: gone, its port closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// SIGSTOP: the port still accepts connections, nothing answers.
    pub fn hang(&self) {
        self.signal("STOP");
    }

    pub fn wake(&self) {
        self.signal("CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process must be woken to die promptly and release its port.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.child.as_ref().map(Child::id).unwrap_or(0).to_string())
                .status();
        }
        self.stop();
    }
}

/// A throwaway PostgreSQL cluster of a test's own (initdb + pg_ctl from `/usr/lib/postgresql/*/bin`,
/// trust authentication, a free loopback port), which the test may stop and start again — never
/// the machine's shared server. As root, the cluster belongs to the `postgres` user.
pub struct PgCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    run_as_postgres: bool,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                let mut v: Vec<PathBuf> = d
                    .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .filter(|p| p.join("initdb").exists())
                    .collect();
                v.sort();
                v.pop()
            })
            .expect("PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)");
        let dir = tempfile::Builder::new().prefix("portcullis-pg-").tempdir().unwrap();
        let run_as_postgres =
            Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
        if run_as_postgres {
            let ok = Command::new("chown").arg("postgres").arg(dir.path()).status().unwrap().success();
            assert!(ok, "chown postgres {}", dir.path().display());
        }
        let c = PgCluster { bin, dir, port: restartable_port(), run_as_postgres };
        let out = c
            .command("initdb")
            .arg("-D")
            .arg(c.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        c.start_again();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Superuser URL.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start_again(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `pg_ctl stop -m immediate`: every backend killed, no shutdown checkpoint (crash recovery at
    /// the next start).
    pub fn stop_immediate(&self) {
        let out =
            self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]).output().unwrap();
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "stop"]).output();
    }
}
