//! `/metrics`: Prometheus text that passes `promtool check metrics`, counts what operators
//! watch, and is not public.
use crate::harness::{Server, free_port};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};

const PROMTOOL: &str = "/usr/bin/promtool";

#[test]
fn metrics_count_requests_limits_and_audit_and_pass_promtool() {
    // A route to a closed port: every proxied request ends in 502, which is still counted.
    let cfg = format!(
        "[metrics]\nbearer_token = \"scrape-token-0123456789\"\n\n[[routes]]\nprefix = \"/up\"\nupstream = \"http://127.0.0.1:{}\"\naction = \"conversation.send\"\n",
        free_port()
    );
    let s = Server::start_with(&[], Some(&cfg));
    let op = s.operator_token();
    let t = s.create_tenant(&op, "m", "free");
    let (_, key) = s.create_key(&op, &t, "service");
    let r = s
        .request("PUT", &format!("/v1/tenants/{t}/limits"))
        .bearer_auth(&op)
        .json(&json!({"rate_per_minute": 2}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..3 {
        s.get("/up/x").header("x-api-key", &key).send().unwrap();
    }
    assert_eq!(s.get("/v1/keys").header("x-api-key", "pc_garbage").send().unwrap().status(), 401);

    // Not public: anonymous 401, a tenant key 403; operators and the scrape token may read.
    assert_eq!(s.get("/metrics").send().unwrap().status(), 401);
    assert_eq!(s.get("/metrics").header("x-api-key", &key).send().unwrap().status(), 401);
    assert_eq!(s.get("/metrics").bearer_auth(&key).send().unwrap().status(), 403);
    assert_eq!(s.get("/metrics").bearer_auth("wrong-token-0123456789").send().unwrap().status(), 401);
    let by_token = s.get("/metrics").bearer_auth("scrape-token-0123456789").send().unwrap();
    assert_eq!(by_token.status(), 200);
    let r = s.get("/metrics").bearer_auth(&op).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().unwrap();

    let has =
        |needle: &str| text.lines().any(|l| !l.starts_with('#') && needle.split('|').all(|part| l.contains(part)));
    assert!(has(&format!("portcullis_requests_total{{|route=\"/up\"|status=\"502\"|tenant=\"{t}\"")), "{text}");
    assert!(has(&format!("portcullis_requests_total{{|route=\"/up\"|status=\"429\"|tenant=\"{t}\"")), "{text}");
    assert!(has("portcullis_requests_total{|route=\"/v1/keys\"|status=\"401\"|tenant=\"none\""), "{text}");
    assert!(has("portcullis_request_duration_seconds_bucket{|route=\"/up\""), "{text}");
    assert!(has("portcullis_limit_rejections_total{kind=\"tenant_rate\"} 1"), "{text}");
    assert!(has("portcullis_auth_failures_total{reason=\"malformed_api_key\"}"), "{text}");
    assert!(has("portcullis_audit_write_seconds_bucket"), "{text}");
    assert!(has("portcullis_audit_queue_depth"), "{text}");
    assert!(
        has(&format!("portcullis_in_flight_requests{{tenant=\"{t}\"}} 0"))
            || !text.contains("portcullis_in_flight_requests"),
        "in-flight returns to 0: {text}"
    );

    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "promtool missing; the README's test command installs the prometheus package"
    );
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
