//! Real nginx (Debian package) with `auth_request` pointed at Portcullis, in front of an
//! application, configured with the block from `docs/nginx.md` so the documentation is tested.
use crate::harness::{Server, free_port};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NGINX: &str = "/usr/sbin/nginx";

/// The ```nginx block of docs/nginx.md.
fn documented_config() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/nginx.md")).unwrap();
    let start = doc.find("```nginx\n").expect("docs/nginx.md has an nginx block") + "```nginx\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx running the documented block against `portcullis`, with a small "application" server
/// (also nginx) that echoes the identity headers it received.
fn start_nginx(portcullis: &str, listen: u16, app: u16) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let block = documented_config()
        .replace("127.0.0.1:8080", portcullis)
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{app}"))
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{listen}"));
    let conf = format!(
        "user root;\nworker_processes 1;\nerror_log stderr warn;\npid {pid};\nevents {{ worker_connections 256; }}\n\
         http {{\n access_log off;\n client_body_temp_path {tmp}/body;\n proxy_temp_path {tmp}/proxy;\n\
         fastcgi_temp_path {tmp}/fastcgi;\n uwsgi_temp_path {tmp}/uwsgi;\n scgi_temp_path {tmp}/scgi;\n\
         {block}\n server {{\n  listen 127.0.0.1:{app};\n  location / {{\n   default_type text/plain;\n\
           return 200 \"tenant=$http_x_portcullis_tenant role=$http_x_portcullis_role user=$http_x_portcullis_user authorization=$http_authorization apikey=$http_x_api_key\";\n  }}\n }}\n}}\n",
        pid = dir.path().join("nginx.pid").display(),
        tmp = dir.path().display(),
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let test = Command::new(NGINX).arg("-t").arg("-c").arg(&path).arg("-p").arg(dir.path()).output().unwrap();
    assert!(test.status.success(), "nginx -t: {}", String::from_utf8_lossy(&test.stderr));
    let child = Command::new(NGINX)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .arg("-g")
        .arg("daemon off;")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = crate::harness::eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok()
    });
    assert!(up, "nginx did not start listening");
    Nginx { child, _dir: dir }
}

#[test]
fn auth_request_allows_denies_and_limits() {
    if !std::path::Path::new(NGINX).exists() {
        panic!("nginx is not installed; the README's test command installs it (apt-get install nginx)");
    }
    let s = Server::start();
    let op = s.operator_token();
    let t = s.create_tenant(&op, "edge", "free");
    let (_, service) = s.create_key(&op, &t, "service");
    let (_, viewer) = s.create_key(&op, &t, "viewer");
    let r = s
        .request("PUT", &format!("/v1/tenants/{t}/limits"))
        .bearer_auth(&op)
        .json(&json!({"rate_per_minute": 3}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (listen, app) = (free_port(), free_port());
    let _nginx = start_nginx(&s.addr, listen, app);
    let http = crate::harness::client();
    let url = format!("http://127.0.0.1:{listen}/api/orders?x=1");

    // Allowed: the application sees the identity Portcullis established, and no credential.
    let r = http.get(&url).header("x-api-key", &service).send().unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().unwrap();
    assert!(body.contains(&format!("tenant={t}")), "{body}");
    assert!(body.contains("role=service"), "{body}");
    assert!(body.contains("user=key:"), "{body}");
    assert!(body.contains("authorization= apikey="), "credentials must not reach the app: {body}");
    // Spoofed identity headers from the client are replaced, not passed through.
    let r = http.get(&url).bearer_auth(&service).header("x-portcullis-tenant", "evil").send().unwrap();
    assert!(r.text().unwrap().contains(&format!("tenant={t}")));

    // Denied.
    assert_eq!(http.get(&url).send().unwrap().status(), 401);
    assert_eq!(http.get(&url).header("x-api-key", &viewer).send().unwrap().status(), 403);
    assert_eq!(http.get(&url).header("x-api-key", "pc_not_a_key").send().unwrap().status(), 401);

    // Limited: 3 per minute for the tenant; two used above by the service key.
    assert_eq!(http.get(&url).header("x-api-key", &service).send().unwrap().status(), 200);
    let r = http.get(&url).header("x-api-key", &service).send().unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some_and(|v| v.to_str().unwrap().parse::<u64>().unwrap() >= 1));

    // Every decision is in the audit log, with the original URI.
    let events = s.audit(&op, "action=http.request");
    assert!(events.iter().any(|e| e["result"] == "success" && e["resource_id"] == "/api/orders"));
    assert!(events.iter().any(|e| e["result"] == "denied" && e["reason"] == "limit:tenant_rate"));
    assert!(events.iter().any(|e| e["result"] == "denied" && e["reason"] == "rbac:no_permit"));
}
