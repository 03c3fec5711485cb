//! The operator UI: three static files embedded in the binary, and the cookie session they run on.
//!
//! A browser logs in at `POST /ui/login` and receives the login session token in an HttpOnly,
//! SameSite=Strict cookie; the pages then call the same `/v1` API as every other client. A request
//! authenticated by the cookie that changes anything must carry `X-CSRF-Token` (derived from the
//! session token, so it needs no storage) and, when the browser names one, a same-origin `Origin`:
//! a form on another port of the same host is same-site, so SameSite alone would let it through.
use crate::AppState;
use crate::error::{ApiError, ProblemDoc};
use crate::extract::ApiJson;
use crate::routes::auth::{LoginRequest, Meta, PrincipalView};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::Permission;
use portcullis_core::audit::AuditResult;
use portcullis_core::timefmt::rfc3339_ms;
use portcullis_guard::{Credential, RequestMeta, SESSION_PREFIX};
use serde::Serialize;
use std::path::PathBuf;
use utoipa::ToSchema;

pub const COOKIE: &str = "portcullis_session";
/// `COOKIE=`, as a cookie pair starts.
pub const COOKIE_PAIR_PREFIX: &str = "portcullis_session=";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The page's own policy: scripts and styles only from the binary, nothing inline, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset { name: "index.html", content_type: "text/html; charset=utf-8", body: include_str!("../ui/index.html") },
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../ui/app.js") },
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", body: include_str!("../ui/app.css") },
];

/// Where the UI files come from: embedded (always, in production), or re-read from a directory
/// on every request while developing the pages (`PORTCULLIS_UI_DIR`). Only the three names above
/// are ever served, so the directory cannot be used to read anything else.
#[derive(Clone, Debug, Default)]
pub struct UiSettings {
    pub dev_dir: Option<PathBuf>,
    /// Mark the session cookie `Secure` even without `X-Forwarded-Proto: https`.
    pub secure_cookie: bool,
}

fn asset(app: &AppState, name: &str) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::NotFound.into_response();
    };
    let body = match &app.settings.ui.dev_dir {
        Some(dir) => match std::fs::read_to_string(dir.join(a.name)) {
            Ok(s) => axum::body::Body::from(s),
            Err(e) => return ApiError::Internal(format!("PORTCULLIS_UI_DIR: {}: {e}", a.name)).into_response(),
        },
        None => axum::body::Body::from(a.body),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(a.content_type)),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        ],
        body,
    )
        .into_response()
}

/// The operator UI (login page, then the app).
#[utoipa::path(get, path = "/ui", tag = "ui",
    responses((status = 200, description = "The UI page", content_type = "text/html")))]
pub async fn index(State(s): State<AppState>) -> Response {
    asset(&s, "index.html")
}

/// The UI's script and stylesheet.
#[utoipa::path(get, path = "/ui/{file}", tag = "ui", params(("file" = String, Path, description = "app.js or app.css")),
    responses((status = 200, description = "A UI asset"), (status = 404, body = ProblemDoc)))]
pub async fn file(State(s): State<AppState>, Path(file): Path<String>) -> Response {
    if file == "index.html" {
        return ApiError::NotFound.into_response();
    }
    asset(&s, &file)
}

/// The session token carried by the UI cookie, if the request has one.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| v.starts_with(SESSION_PREFIX))
}

/// The CSRF token of a login session: a one-way function of the session token, so it can be
/// shown to the page's script without revealing the cookie, and needs no storage.
pub fn csrf_token(session_token: &str) -> String {
    portcullis_guard::sha256_hex(&format!("portcullis-ui-csrf\0{session_token}"))
}

pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Browsers send Origin on every cross-origin request that could matter (CORS reads and
        // every POST); its absence means same-origin or not a browser (the CSRF token still has
        // to match on a change).
        return true;
    };
    let Some(authority) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else {
        return false;
    };
    // The host the browser used: `Host`, or behind a reverse proxy that rewrites it, the
    // `X-Forwarded-Host` it sets (a page on another site can send neither with a cookie).
    let host =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.split(',').next().unwrap_or("").trim());
    [host("host"), host("x-forwarded-host")]
        .into_iter()
        .flatten()
        .any(|h| !h.is_empty() && h.eq_ignore_ascii_case(authority))
}

fn is_mutation(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why a cookie-authenticated request was refused, if it was: any request from another origin
/// (reads too: a credentialed CORS configuration must not hand the UI's session to another
/// site), and a change without the CSRF token.
pub fn csrf_violation(method: &Method, headers: &HeaderMap, token: &str) -> Option<&'static str> {
    if !same_origin(headers) {
        return Some("cross-origin request");
    }
    if !is_mutation(method) {
        return None;
    }
    let sent = headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    let want = csrf_token(token);
    if sent.is_empty() || !bool::from(subtle::ConstantTimeEq::ct_eq(sent, want.as_bytes())) {
        return Some("missing or wrong X-CSRF-Token");
    }
    None
}

/// Audits a refused cross-site request and answers 403.
pub async fn refuse_csrf(
    app: &AppState,
    meta: &RequestMeta,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    why: &str,
) -> ApiError {
    let mut e = app.guard.event(meta, "csrf.rejected", AuditResult::Denied);
    e.reason = Some(why.to_owned());
    e.metadata = serde_json::json!({
        "method": method.as_str(),
        "path": uri.path(),
        "origin": headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
    });
    match app.guard.record(e).await {
        Ok(()) => ApiError::Forbidden(format!("{why}: the UI session cannot be used from another site")),
        Err(e) => e.into(),
    }
}

fn cookie_header(parts: &HeaderMap, app: &AppState, value: &str, max_age_secs: i64) -> HeaderValue {
    let https =
        parts.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let secure = if https || app.settings.ui.secure_cookie { "; Secure" } else { "" };
    let v = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("portcullis_session=; Path=/; Max-Age=0"))
}

#[derive(Serialize, ToSchema)]
pub struct UiSession {
    /// Send as `X-CSRF-Token` on every request that changes something.
    pub csrf_token: String,
    pub principal: PrincipalView,
    pub expires_at: Option<String>,
}

/// Password login for the UI: the session token goes into an HttpOnly cookie, the page gets the
/// CSRF token. Same backoff and audit as `/v1/auth/login`.
#[utoipa::path(post, path = "/ui/login", tag = "ui", request_body = LoginRequest,
    responses((status = 200, body = UiSession), (status = 401, body = ProblemDoc), (status = 403, body = ProblemDoc),
        (status = 429, body = ProblemDoc)))]
pub async fn login(
    State(s): State<AppState>,
    Meta(meta): Meta,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    // A login form posted from another site would sign the victim into the attacker's account.
    if !same_origin(&headers) {
        return Err(refuse_csrf(&s, &meta, &method, &uri, &headers, "cross-origin request").await);
    }
    if body.email.len() > 254 {
        return Err(ApiError::BadRequest(String::from("`email` is too long")));
    }
    let ok = s.guard.login(&body.email, &body.password, &meta).await?;
    let max_age = ((ok.expires_at_ms - s.guard.now_ms()) / 1000).max(0);
    let view = UiSession {
        csrf_token: csrf_token(&ok.token),
        principal: PrincipalView::from(&ok.principal),
        expires_at: Some(rfc3339_ms(ok.expires_at_ms)),
    };
    let cookie = cookie_header(&headers, &s, &ok.token, max_age);
    Ok(([(header::SET_COOKIE, cookie)], axum::Json(view)).into_response())
}

/// Who the UI cookie belongs to, with the CSRF token for the page (401 without a valid cookie).
#[utoipa::path(get, path = "/ui/session", tag = "ui",
    responses((status = 200, body = UiSession), (status = 401, body = ProblemDoc)))]
pub async fn session(State(s): State<AppState>, Meta(meta): Meta, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some(token) = cookie_token(&headers) else {
        return Err(ApiError::Unauthenticated(String::from("not signed in")));
    };
    let principal = s.guard.authenticate(Some(Credential::Session(token.clone())), &meta).await?;
    let view =
        UiSession { csrf_token: csrf_token(&token), principal: PrincipalView::from(&*principal), expires_at: None };
    Ok(axum::Json(view).into_response())
}

/// Ends the UI session and clears its cookie. Needs the CSRF token.
#[utoipa::path(post, path = "/ui/logout", tag = "ui",
    responses((status = 204), (status = 401, body = ProblemDoc), (status = 403, body = ProblemDoc)))]
pub async fn logout(
    State(s): State<AppState>,
    Meta(meta): Meta,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(token) = cookie_token(&headers) else {
        return Err(ApiError::Unauthenticated(String::from("not signed in")));
    };
    if let Some(why) = csrf_violation(&method, &headers, &token) {
        return Err(refuse_csrf(&s, &meta, &method, &uri, &headers, why).await);
    }
    let principal = s.guard.authenticate(Some(Credential::Session(token)), &meta).await?;
    if let Some(sid) = principal.session_id.clone() {
        let grant = portcullis_guard::Grant { principal, scope: None, permission: Permission::Session };
        crate::routes::auth::end_session(&s, &grant, &meta, &sid).await?;
    }
    let cookie = cookie_header(&headers, &s, "", 0);
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}
