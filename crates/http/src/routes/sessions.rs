//! Agent sessions: append events, list sessions, read one with its statistics and timeline, and
//! the tenant's capture settings. Always the caller's tenant (operators: `X-Tenant-ID`).
use super::{MAX_PAGE, limit_param, time_param};
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiJson, ApiQuery, Authed, perm};
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use portcullis_core::limits::nanos_to_usd as usd;
use portcullis_core::session::{CaptureMode, EventKind, Redactor, SessionSettings, check_session_id, summary};
use portcullis_core::timefmt::rfc3339_ms;
use portcullis_store::{SessionEvent, SessionFilter, SessionSort, SessionSummary};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Serialize, ToSchema)]
pub struct DecisionView {
    /// `allow` or `deny`.
    pub result: String,
    pub action: String,
    /// The policies that decided it.
    pub policies: Vec<String>,
}

impl From<&portcullis_core::session::EventDecision> for DecisionView {
    fn from(d: &portcullis_core::session::EventDecision) -> Self {
        Self { result: d.result.clone(), action: d.action.clone(), policies: d.policies.clone() }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    /// `evt_…`, time-ordered.
    pub id: String,
    /// user, assistant, tool or system.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: Option<String>,
    pub tool_name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub tool_args: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: String,
    /// The caller as the audit log names it.
    pub principal_id: Option<String>,
    pub request_id: Option<String>,
    /// Set when a policy decision produced the event (a tool request, a denied message).
    pub decision: Option<DecisionView>,
    pub model: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

impl From<&SessionEvent> for EventView {
    fn from(e: &SessionEvent) -> Self {
        Self {
            id: e.id.clone(),
            kind: e.kind.as_str().to_owned(),
            message: e.message.clone(),
            tool_name: e.tool_name.clone(),
            tool_args: e.tool_args.clone(),
            metadata: e.metadata.clone(),
            created_at: rfc3339_ms(e.created_at_ms),
            principal_id: e.principal_id.clone(),
            request_id: e.request_id.clone(),
            decision: e.decision.as_ref().map(DecisionView::from),
            model: e.model.clone(),
            input_tokens: e.input_tokens,
            output_tokens: e.output_tokens,
            cost_usd: usd(e.cost_nanos),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    pub session_id: String,
    pub first_event_at: String,
    pub last_event_at: String,
    pub total_events: i64,
    pub user_messages: i64,
    pub assistant_messages: i64,
    pub tool_calls: i64,
    /// Events a policy denied.
    pub denied: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub last_principal_id: Option<String>,
    pub last_model: Option<String>,
}

impl From<&SessionSummary> for SessionView {
    fn from(s: &SessionSummary) -> Self {
        Self {
            session_id: s.session_id.clone(),
            first_event_at: rfc3339_ms(s.first_event_ms),
            last_event_at: rfc3339_ms(s.last_event_ms),
            total_events: s.total_events,
            user_messages: s.user_messages,
            assistant_messages: s.assistant_messages,
            tool_calls: s.tool_calls,
            denied: s.denied,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cost_usd: usd(s.cost_nanos),
            last_principal_id: s.last_principal_id.clone(),
            last_model: s.last_model.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Statistics {
    pub total_events: i64,
    pub user_messages: i64,
    pub assistant_messages: i64,
    pub tool_calls: i64,
    pub denied: i64,
    /// When the first event was recorded.
    pub first_event: String,
    /// When the last event was recorded.
    pub last_event: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

#[derive(Serialize, ToSchema)]
pub struct SessionDetail {
    pub session_id: String,
    /// Oldest first.
    pub events: Vec<EventView>,
    /// Of the whole session (also when `events` is one page of it).
    pub statistics: Statistics,
    /// Pass as `cursor` for the next page of events; absent on the last.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TimelineItem {
    pub id: String,
    pub timestamp: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// One line: who said what, which tool, and how a policy decided.
    pub summary: String,
    pub tool_name: Option<String>,
    pub decision: Option<DecisionView>,
}

#[derive(Serialize, ToSchema)]
pub struct Timeline {
    pub session_id: String,
    /// Oldest first.
    pub timeline: Vec<TimelineItem>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendEvent {
    /// user, assistant, tool or system.
    #[serde(rename = "type")]
    pub kind: String,
    /// Up to 32 768 characters are kept (longer text is cut and the event's metadata says
    /// `truncated`).
    pub message: Option<String>,
    /// For `tool` events: the tool's name (at most 256 characters).
    pub tool_name: Option<String>,
    /// For `tool` events: its arguments, any JSON.
    #[schema(value_type = Option<Object>)]
    pub tool_args: Option<serde_json::Value>,
    /// A JSON object of at most 16 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

fn session_path(id: &str) -> Result<(), ApiError> {
    check_session_id(id).map_err(ApiError::BadRequest)
}

/// Appends an event to a session of the caller's tenant (creating the session). Redaction of
/// the tenant's capture settings applies.
#[utoipa::path(post, path = "/v1/sessions/{id}/events", tag = "sessions", request_body = AppendEvent,
    params(("id" = String, Path, description = "Session id: 1–128 of `A-Za-z0-9-_.:@`")),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 201, body = EventView), (status = 400, body = ProblemDoc), (status = 401, body = ProblemDoc),
        (status = 403, body = ProblemDoc)))]
pub async fn append(
    a: Authed<perm::Execute>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AppendEvent>,
) -> Result<(StatusCode, Json<EventView>), ApiError> {
    session_path(&id)?;
    let scope = a.scope()?.clone();
    let kind: EventKind = body.kind.parse().map_err(ApiError::BadRequest)?;
    if let Some(m) = &body.metadata {
        if !m.is_object() {
            return Err(ApiError::BadRequest(String::from("`metadata` must be a JSON object")));
        }
        if portcullis_core::session::json_len(m) > 16 * 1024 {
            return Err(ApiError::BadRequest(String::from("`metadata` must be at most 16 KiB")));
        }
    }
    if body.tool_name.as_ref().is_some_and(|t| t.is_empty() || t.chars().count() > 256) {
        return Err(ApiError::BadRequest(String::from("`tool_name` must have 1 to 256 characters")));
    }
    let capture = a.app.guard.session_capture(scope.tenant_id()).await?;
    let origin = portcullis_guard::sessions::EventOrigin {
        tenant: scope.tenant_id(),
        session_id: &id,
        principal_id: &a.grant.principal.id,
        request_id: &a.meta.request_id,
        now_ms: a.app.guard.now_ms(),
    };
    let mut e = origin.event(kind);
    e.message = body.message;
    e.tool_name = body.tool_name;
    e.tool_args = body.tool_args;
    e.metadata = body.metadata.unwrap_or_else(|| serde_json::json!({}));
    capture.prepare(&mut e);
    let mut audit = a.event("session.event.append", portcullis_core::audit::AuditResult::Success);
    audit.resource_type = Some(String::from("session"));
    audit.resource_id = Some(id.clone());
    audit.metadata = serde_json::json!({ "event_id": e.id, "type": e.kind.as_str() });
    a.record(audit).await?;
    a.app.guard.append_session_events(vec![e.clone()]).await?;
    Ok((StatusCode::CREATED, Json(EventView::from(&e))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Sessions with activity at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Sessions that began before this time (RFC 3339).
    pub until: Option<String>,
    /// Part of the session id.
    pub q: Option<String>,
    /// `recent` (default: latest activity first) or `cost` (most expensive first).
    pub sort: Option<String>,
    /// 1–500, default 100.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The caller's tenant's sessions, by latest activity or by cost.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(ListParams),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = crate::views::Page<SessionView>), (status = 400, body = ProblemDoc),
        (status = 401, body = ProblemDoc), (status = 403, body = ProblemDoc)))]
pub async fn list(
    a: Authed<perm::AuditRead>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<crate::views::Page<SessionView>>, ApiError> {
    let scope = a.scope()?.clone();
    let sort = match p.sort.as_deref() {
        None | Some("recent") => SessionSort::Recent,
        Some("cost") => SessionSort::Cost,
        Some(other) => return Err(ApiError::BadRequest(format!("sort `{other}`: expected `recent` or `cost`"))),
    };
    let limit = limit_param(p.limit, 100, MAX_PAGE)?;
    let after = match &p.cursor {
        None => None,
        Some(c) => {
            let (k, id) =
                c.split_once(':').ok_or_else(|| ApiError::BadRequest(String::from("`cursor` is not valid")))?;
            Some((
                k.parse::<i64>().map_err(|_| ApiError::BadRequest(String::from("`cursor` is not valid")))?,
                id.to_owned(),
            ))
        }
    };
    if p.q.as_ref().is_some_and(|q| q.len() > 128) {
        return Err(ApiError::BadRequest(String::from("`q` must be at most 128 characters")));
    }
    let filter = SessionFilter {
        since_ms: time_param("since", p.since.as_deref())?,
        until_ms: time_param("until", p.until.as_deref())?,
        contains: p.q.filter(|q| !q.is_empty()),
        sort,
        after,
        limit: limit + 1,
    };
    a.record_ok("session.list", "session", None).await?;
    let rows = a.app.guard.store().list_sessions(&scope, &filter).await?;
    Ok(Json(super::paginate(
        rows,
        limit,
        |s: &SessionSummary| format!("{}:{}", s.sort_key(sort), s.session_id),
        |s: &SessionSummary| SessionView::from(s),
    )))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Events per page: 1–1000, default 1000.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

async fn load(
    a: &Authed<perm::AuditRead>,
    action: &str,
    id: &str,
    p: &EventParams,
) -> Result<(SessionSummary, Vec<SessionEvent>, Option<String>), ApiError> {
    session_path(id)?;
    let scope = a.scope()?.clone();
    let limit = limit_param(p.limit, 1000, 1000)?;
    let Some(summary) = a.app.guard.store().get_session(&scope, id).await? else {
        return Err(a.not_found(action, "session", id, None).await);
    };
    a.record_ok(action, "session", Some(id)).await?;
    let mut events = a.app.guard.store().session_events(&scope, id, p.cursor.as_deref(), limit + 1).await?;
    let next = if events.len() > limit as usize {
        events.truncate(limit as usize);
        events.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok((summary, events, next))
}

/// A session's events (oldest first) and statistics.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", params(("id" = String, Path), EventParams),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = SessionDetail), (status = 400, body = ProblemDoc), (status = 401, body = ProblemDoc),
        (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc)))]
pub async fn get(
    a: Authed<perm::AuditRead>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Json<SessionDetail>, ApiError> {
    let (s, events, next_cursor) = load(&a, "session.read", &id, &p).await?;
    Ok(Json(SessionDetail {
        session_id: s.session_id.clone(),
        events: events.iter().map(EventView::from).collect(),
        statistics: Statistics {
            total_events: s.total_events,
            user_messages: s.user_messages,
            assistant_messages: s.assistant_messages,
            tool_calls: s.tool_calls,
            denied: s.denied,
            first_event: rfc3339_ms(s.first_event_ms),
            last_event: rfc3339_ms(s.last_event_ms),
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cost_usd: usd(s.cost_nanos),
        },
        next_cursor,
    }))
}

/// A session as one line per event, oldest first.
#[utoipa::path(get, path = "/v1/sessions/{id}/timeline", tag = "sessions", params(("id" = String, Path), EventParams),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = Timeline), (status = 400, body = ProblemDoc), (status = 401, body = ProblemDoc),
        (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc)))]
pub async fn timeline(
    a: Authed<perm::AuditRead>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Json<Timeline>, ApiError> {
    let (s, events, next_cursor) = load(&a, "session.timeline", &id, &p).await?;
    let timeline = events
        .iter()
        .map(|e| TimelineItem {
            id: e.id.clone(),
            timestamp: rfc3339_ms(e.created_at_ms),
            kind: e.kind.as_str().to_owned(),
            summary: summary(e.kind, e.message.as_deref(), e.tool_name.as_deref(), e.decision.as_ref()),
            tool_name: e.tool_name.clone(),
            decision: e.decision.as_ref().map(DecisionView::from),
        })
        .collect();
    Ok(Json(Timeline { session_id: s.session_id, timeline, next_cursor }))
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionSettingsBody {
    /// `full` (messages and tool arguments, redacted), `metadata` (no text) or `off` (nothing
    /// captured from traffic; API appends are still stored).
    pub capture: String,
    /// Regular expressions (at most 32, each up to 512 characters) whose matches become
    /// `[REDACTED]`, besides the built-in credential patterns.
    #[serde(default)]
    pub redact_patterns: Vec<String>,
}

fn settings_view(s: &SessionSettings) -> SessionSettingsBody {
    SessionSettingsBody { capture: s.capture.as_str().to_owned(), redact_patterns: s.redact_patterns.clone() }
}

/// The tenant's session capture settings.
#[utoipa::path(get, path = "/v1/session-settings", tag = "sessions", security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = SessionSettingsBody), (status = 401, body = ProblemDoc), (status = 403, body = ProblemDoc)))]
pub async fn get_settings(a: Authed<perm::ConfigRead>) -> Result<Json<SessionSettingsBody>, ApiError> {
    let scope = a.scope()?.clone();
    a.record_ok("session_settings.read", "tenant", Some(scope.tenant_id().as_str())).await?;
    Ok(Json(settings_view(&a.app.guard.session_settings(&scope).await?)))
}

/// Replaces the tenant's session capture settings (audited).
#[utoipa::path(put, path = "/v1/session-settings", tag = "sessions", request_body = SessionSettingsBody,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = SessionSettingsBody), (status = 400, body = ProblemDoc), (status = 401, body = ProblemDoc),
        (status = 403, body = ProblemDoc)))]
pub async fn put_settings(
    a: Authed<perm::ConfigWrite>,
    ApiJson(body): ApiJson<SessionSettingsBody>,
) -> Result<Json<SessionSettingsBody>, ApiError> {
    let scope = a.scope()?.clone();
    let capture: CaptureMode = body.capture.parse().map_err(ApiError::BadRequest)?;
    Redactor::new(&body.redact_patterns).map_err(ApiError::BadRequest)?;
    let settings = SessionSettings { capture, redact_patterns: body.redact_patterns };
    let mut e = a.event("session_settings.update", portcullis_core::audit::AuditResult::Success);
    e.resource_type = Some(String::from("tenant"));
    e.resource_id = Some(scope.tenant_id().to_string());
    e.metadata = serde_json::json!({ "capture": body.capture, "redact_patterns": settings.redact_patterns.len() });
    a.record(e).await?;
    a.app.guard.store().set_session_settings(scope.tenant_id(), &settings, a.app.guard.now_ms()).await?;
    a.app.guard.invalidate_session_capture(scope.tenant_id());
    Ok(Json(settings_view(&settings)))
}
