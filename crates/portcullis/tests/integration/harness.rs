//! Shared fixtures: start the real binary on a fresh data dir, log in, create tenants and keys,
//! run CLI commands against the same data dir.
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub addr: String,
    /// Kept alive for the server's lifetime; removed on drop.
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
    pub config: Option<PathBuf>,
    pub bootstrap_password: Option<String>,
    pub stdout: Vec<String>,
    client: Client,
}

pub fn client() -> Client {
    Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

impl Server {
    /// A server on a fresh data dir with default configuration.
    pub fn start() -> Server {
        Self::start_with(&[], None)
    }

    /// `env`: extra `PORTCULLIS_*` variables; `config_toml`: written to a file passed with `--config`.
    pub fn start_with(env: &[(&str, &str)], config_toml: Option<&str>) -> Server {
        let dir = tempfile::Builder::new().prefix("portcullis-test-").tempdir().unwrap();
        let config = config_toml.map(|text| {
            let p = dir.path().join("portcullis.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        let mut s = Server {
            child: None,
            base: String::new(),
            addr: String::new(),
            dir,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            config,
            bootstrap_password: None,
            stdout: Vec::new(),
            client: client(),
        };
        s.spawn();
        s
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
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
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
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the server never blocks on a full pipe.
                    continue;
                }
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
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
