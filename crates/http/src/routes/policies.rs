//! Tenant Cedar policies: CRUD with versions, the schema, a dry-run of one request, and a
//! simulation of a draft set against the tenant's recent audited decisions.
//!
//! Every write is validated against the schema first (400 with positions when it does not
//! validate), audited before it is made, and reaches every instance's decisions through the
//! change feed (`auth.cache_refresh_ms`).
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiJson, Authed, perm};
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use portcullis_core::audit::{AuditRecord, AuditResult};
use portcullis_core::timefmt::{parse_rfc3339_ms, rfc3339_ms};
use portcullis_core::{Principal, PrincipalKind, Role, TenantScope};
use portcullis_guard::policies::{MAX_POLICIES, PolicyChange};
use portcullis_guard::{ContextInput, Decision, PolicyEngine};
use portcullis_policy::{Document, Problem, TenantPolicies};
use portcullis_store::{AuditFilter, PolicyRecord, PolicyVersion};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use utoipa::ToSchema;

/// The most recorded decisions one simulation replays.
pub const MAX_SIMULATED: u32 = 10_000;
/// Changed decisions shown per simulation.
const EXAMPLES: usize = 20;

#[derive(Serialize, ToSchema)]
pub struct PolicyView {
    /// `pol_…`: the id decisions name.
    pub id: String,
    pub name: String,
    pub description: String,
    /// The Cedar text as saved.
    pub cedar: String,
    pub enabled: bool,
    pub version: i64,
    pub created_at: String,
    pub created_by: String,
    pub updated_at: String,
    pub updated_by: String,
}

impl From<&PolicyRecord> for PolicyView {
    fn from(p: &PolicyRecord) -> Self {
        Self {
            id: p.id.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            cedar: p.cedar.clone(),
            enabled: p.enabled,
            version: p.version,
            created_at: rfc3339_ms(p.created_at_ms),
            created_by: p.created_by.clone(),
            updated_at: rfc3339_ms(p.updated_at_ms),
            updated_by: p.updated_by.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProblemView {
    pub message: String,
    pub help: Option<String>,
    /// 1-based line and column of the offending text.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Byte offset and length of it.
    pub offset: Option<usize>,
    pub length: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct SavedPolicy {
    #[serde(flatten)]
    pub policy: PolicyView,
    /// Validator warnings (the policy was saved).
    pub warnings: Vec<ProblemView>,
}

#[derive(Serialize, ToSchema)]
pub struct PolicyList {
    /// Ordered by name.
    pub items: Vec<PolicyView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicy {
    /// Unique within the tenant; 1–128 characters.
    pub name: String,
    /// One or more Cedar `permit`/`forbid` statements, validated against the schema
    /// (`GET /v1/policies/schema`).
    pub cedar: String,
    pub description: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    pub name: Option<String>,
    pub cedar: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    /// The version this edit is based on; 409 when the policy has moved on since.
    pub version: Option<i64>,
}

fn problems_view(p: Vec<Problem>) -> Vec<ProblemView> {
    p.into_iter()
        .map(|p| ProblemView {
            message: p.message,
            help: p.help,
            line: p.line,
            column: p.column,
            offset: p.offset,
            length: p.length,
        })
        .collect()
}

fn invalid(detail: &str, errors: Vec<ProblemView>) -> ApiError {
    let mut ext = serde_json::Map::new();
    ext.insert(String::from("errors"), serde_json::to_value(errors).unwrap_or_default());
    ApiError::Invalid(detail.to_owned(), ext)
}

/// Lists the tenant's policies.
#[utoipa::path(get, path = "/v1/policies", tag = "policies", security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = PolicyList), (status = 403, body = ProblemDoc)))]
pub async fn list(a: Authed<perm::PoliciesRead>) -> Result<Json<PolicyList>, ApiError> {
    let scope = a.scope()?;
    let rows = a.app.guard.store().list_policies(scope).await?;
    a.record_ok("policy.list", "policy", None).await?;
    Ok(Json(PolicyList { items: rows.iter().map(PolicyView::from).collect() }))
}

/// Creates a policy. 400 problem+json with `errors` (message, line, column) when the Cedar
/// text does not parse or validate.
#[utoipa::path(post, path = "/v1/policies", tag = "policies", request_body = CreatePolicy,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 201, body = SavedPolicy), (status = 400, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
pub async fn create(
    a: Authed<perm::PoliciesWrite>,
    ApiJson(body): ApiJson<CreatePolicy>,
) -> Result<(StatusCode, Json<SavedPolicy>), ApiError> {
    let scope = a.scope()?.clone();
    let change = PolicyChange {
        name: Some(body.name),
        cedar: Some(body.cedar),
        description: body.description,
        enabled: body.enabled,
    };
    let (p, warnings) = a.app.guard.create_policy(&a.grant, &a.meta, &scope, change).await?;
    let warnings = problems_view(warnings);
    Ok((StatusCode::CREATED, Json(SavedPolicy { policy: PolicyView::from(&p), warnings })))
}

async fn load(a: &Authed<impl Send + Sync>, id: &str, action: &str) -> Result<PolicyRecord, ApiError> {
    let scope = a.scope()?;
    match a.app.guard.store().get_policy(scope, id).await? {
        Some(p) => Ok(p),
        None => Err(a.not_found(action, "policy", id, None).await),
    }
}

/// Reads one policy.
#[utoipa::path(get, path = "/v1/policies/{id}", tag = "policies", params(("id" = String, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = PolicyView), (status = 404, body = ProblemDoc)))]
pub async fn get(a: Authed<perm::PoliciesRead>, Path(id): Path<String>) -> Result<Json<PolicyView>, ApiError> {
    let p = load(&a, &id, "policy.read").await?;
    a.record_ok("policy.read", "policy", Some(&p.id)).await?;
    Ok(Json(PolicyView::from(&p)))
}

/// Changes a policy (name, text, description, enabled). Each change is a new version.
#[utoipa::path(put, path = "/v1/policies/{id}", tag = "policies", params(("id" = String, Path)), request_body = UpdatePolicy,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = SavedPolicy), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc),
        (status = 409, body = ProblemDoc, description = "the name is taken, or the policy changed since `version`")))]
pub async fn update(
    a: Authed<perm::PoliciesWrite>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdatePolicy>,
) -> Result<Json<SavedPolicy>, ApiError> {
    let scope = a.scope()?.clone();
    let old = load(&a, &id, "policy.update").await?;
    if let Some(v) = body.version
        && v != old.version
    {
        return Err(ApiError::Conflict(format!("the policy is at version {}, not {v}; re-read it", old.version)));
    }
    let change =
        PolicyChange { name: body.name, cedar: body.cedar, description: body.description, enabled: body.enabled };
    let (p, warnings) = a.app.guard.update_policy(&a.grant, &a.meta, &scope, &old, change).await?;
    let warnings = problems_view(warnings);
    Ok(Json(SavedPolicy { policy: PolicyView::from(&p), warnings }))
}

/// Deletes a policy; its history stays readable.
#[utoipa::path(delete, path = "/v1/policies/{id}", tag = "policies", params(("id" = String, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = ProblemDoc)))]
pub async fn delete(a: Authed<perm::PoliciesWrite>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let scope = a.scope()?.clone();
    let p = load(&a, &id, "policy.delete").await?;
    if !a.app.guard.delete_policy(&a.grant, &a.meta, &scope, &p).await? {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct VersionView {
    pub version: i64,
    /// create, update or delete.
    pub change: String,
    pub changed_at: String,
    pub changed_by: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub cedar: String,
    /// Unified diff of the Cedar text against the previous version (against nothing for the first).
    pub diff: String,
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    /// Oldest first.
    pub items: Vec<VersionView>,
}

fn unified_diff(old: &str, new: &str, from: &str, to: &str) -> String {
    similar::TextDiff::from_lines(old, new).unified_diff().context_radius(3).header(from, to).to_string()
}

/// The policy's history: who changed what, when, with a diff per version. Also after delete.
#[utoipa::path(get, path = "/v1/policies/{id}/versions", tag = "policies", params(("id" = String, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = VersionList), (status = 404, body = ProblemDoc)))]
pub async fn versions(a: Authed<perm::PoliciesRead>, Path(id): Path<String>) -> Result<Json<VersionList>, ApiError> {
    let scope = a.scope()?;
    let rows: Vec<PolicyVersion> = a.app.guard.store().policy_versions(scope, &id).await?;
    if rows.is_empty() {
        return Err(a.not_found("policy.versions", "policy", &id, None).await);
    }
    a.record_ok("policy.versions", "policy", Some(&id)).await?;
    let mut items = Vec::with_capacity(rows.len());
    let mut prev = String::new();
    for v in &rows {
        let from = if v.version == 1 { String::from("(none)") } else { format!("v{}", v.version - 1) };
        let diff = if v.change == "delete" {
            String::new()
        } else {
            unified_diff(&prev, &v.cedar, &from, &format!("v{}", v.version))
        };
        items.push(VersionView {
            version: v.version,
            change: v.change.clone(),
            changed_at: rfc3339_ms(v.changed_at_ms),
            changed_by: v.changed_by.clone(),
            name: v.name.clone(),
            description: v.description.clone(),
            enabled: v.enabled,
            cedar: v.cedar.clone(),
            diff,
        });
        prev.clone_from(&v.cedar);
    }
    Ok(Json(VersionList { items }))
}

#[derive(Serialize, ToSchema)]
pub struct SchemaView {
    /// The Cedar schema tenant policies are validated against (Cedar schema syntax).
    pub schema: String,
    /// The built-in RBAC policies every tenant's set starts from.
    pub builtin: String,
}

/// The Cedar schema and the built-in policies, for policy authors.
#[utoipa::path(get, path = "/v1/policies/schema", tag = "policies", security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = SchemaView)))]
pub async fn schema(a: Authed<perm::PoliciesRead>) -> Result<Json<SchemaView>, ApiError> {
    let e = a.app.guard.policy_engine();
    Ok(Json(SchemaView { schema: e.schema_text(), builtin: e.builtin_text().to_owned() }))
}

/// A policy that is not saved: replaces the saved one of the same `id`, or is added.
#[derive(Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct DraftPolicy {
    pub id: Option<String>,
    pub cedar: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AsPrincipal {
    /// api_key (default), user or jwt.
    pub kind: Option<String>,
    /// admin, editor, viewer or service.
    pub role: String,
    pub id: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    pub action: String,
    pub resource: Option<super::decide::ResourceRef>,
    #[schema(value_type = Object)]
    pub context: Option<serde_json::Value>,
    /// Decide as this hypothetical caller of the tenant instead of the caller itself
    /// (required for operators).
    #[serde(rename = "as")]
    pub as_principal: Option<AsPrincipal>,
    /// Decide with these drafts applied over the saved policies.
    pub drafts: Option<Vec<DraftPolicy>>,
    /// Saved policies to leave out.
    pub remove: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct EvaluateResponse {
    /// allow or deny.
    pub decision: String,
    /// As in `/v1/authorize` (limits are not consulted: nothing is consumed).
    pub reasons: Vec<String>,
    pub policies: Vec<String>,
    pub errors: Vec<super::decide::PolicyErrorView>,
}

/// Compiles the tenant's saved enabled policies with `drafts` applied and `remove` left out.
async fn draft_set(
    a: &Authed<impl Send + Sync>,
    scope: &TenantScope,
    drafts: &[DraftPolicy],
    remove: &[String],
) -> Result<TenantPolicies, ApiError> {
    let engine = a.app.guard.policy_engine();
    let mut docs: Vec<(String, String)> = a
        .app
        .guard
        .store()
        .list_policies(scope)
        .await?
        .into_iter()
        .filter(|p| p.enabled && !remove.contains(&p.id))
        .map(|p| (p.id, p.cedar))
        .collect();
    for (i, d) in drafts.iter().enumerate() {
        let id = match &d.id {
            Some(id)
                if id.starts_with("pol_")
                    && id.len() <= 64
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                id.clone()
            }
            Some(_) => return Err(ApiError::BadRequest(format!("drafts[{i}].id must be a policy id (`pol_…`)"))),
            None => format!("draft_{}", i + 1),
        };
        if let Err(errors) = engine.check(&id, &d.cedar) {
            return Err(invalid(&format!("drafts[{i}] does not validate against the schema"), problems_view(errors)));
        }
        docs.retain(|(k, _)| *k != id);
        docs.push((id, d.cedar.clone()));
    }
    if docs.len() > MAX_POLICIES + 100 {
        return Err(ApiError::BadRequest(String::from("too many policies in the draft set")));
    }
    Ok(engine.compile(docs.iter().map(|(id, cedar)| Document { id, cedar })))
}

fn principal_as(scope: &TenantScope, p: &AsPrincipal) -> Result<Principal, ApiError> {
    let role = Role::from_str(&p.role).map_err(ApiError::BadRequest)?;
    let kind = match p.kind.as_deref().unwrap_or("api_key") {
        "api_key" => PrincipalKind::ApiKey,
        "user" => PrincipalKind::User,
        "jwt" => PrincipalKind::Jwt,
        other => return Err(ApiError::BadRequest(format!("`as.kind` `{other}` must be api_key, user or jwt"))),
    };
    Ok(Principal {
        kind,
        id: p.id.clone().unwrap_or_else(|| String::from("evaluate:principal")),
        tenant_id: Some(scope.tenant_id().clone()),
        role: Some(role),
        key_id: None,
        user_id: None,
        session_id: None,
        scopes: Vec::new(),
    })
}

/// Decides one request without acting on it: with the saved policies, or with drafts applied.
/// Consumes no limit; nothing is recorded but the dry-run itself.
#[utoipa::path(post, path = "/v1/policies/evaluate", tag = "policies", request_body = EvaluateRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = EvaluateResponse), (status = 400, body = ProblemDoc)))]
pub async fn evaluate(
    a: Authed<perm::PoliciesRead>,
    ApiJson(body): ApiJson<EvaluateRequest>,
) -> Result<Json<EvaluateResponse>, ApiError> {
    super::decide::check_action(&body.action)?;
    let scope = a.scope()?.clone();
    let principal = match &body.as_principal {
        Some(p) => principal_as(&scope, p)?,
        None if a.grant.principal.is_operator() => {
            return Err(ApiError::BadRequest(String::from(
                "operators evaluate as a tenant caller: give `as` with a role",
            )));
        }
        None => (*a.grant.principal).clone(),
    };
    let resource = body.resource.as_ref().map(|r| (r.kind.as_str(), r.id.as_str()));
    let ctx = ContextInput {
        ip: a.meta.ip.as_deref().and_then(|i| i.parse().ok()),
        ..ContextInput::at(a.app.guard.now_ms())
    }
    .with_caller_context(body.context.as_ref(), resource);
    let drafts = body.drafts.unwrap_or_default();
    let remove = body.remove.unwrap_or_default();
    let set = if drafts.is_empty() && remove.is_empty() {
        a.app.guard.tenant_policies(scope.tenant_id()).await?
    } else {
        std::sync::Arc::new(draft_set(&a, &scope, &drafts, &remove).await?)
    };
    let d = a.app.guard.policy_engine().decide(
        Some(&set),
        &portcullis_policy::DecisionRequest { principal: &principal, action: &body.action, resource, context: &ctx },
    );
    let mut e = a.event("policy.evaluate", AuditResult::Success);
    e.resource_type = Some(String::from("policy"));
    e.with_meta("evaluated_action", serde_json::Value::from(body.action.clone()))
        .with_meta("decision", serde_json::Value::from(if d.allowed { "allow" } else { "deny" }))
        .with_meta("drafts", serde_json::Value::from(drafts.len()));
    a.record(e).await?;
    Ok(Json(EvaluateResponse {
        decision: String::from(if d.allowed { "allow" } else { "deny" }),
        reasons: d.reasons(),
        policies: d.policies,
        errors: d
            .errors
            .into_iter()
            .map(|e| super::decide::PolicyErrorView { policy: e.policy, message: e.message })
            .collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    /// Drafts applied over the saved policies (same `id`: replaces; no id: added).
    #[serde(default)]
    pub drafts: Vec<DraftPolicy>,
    /// Saved policies to leave out.
    #[serde(default)]
    pub remove: Vec<String>,
    /// How many of the most recent recorded decisions to replay (default 1000, at most 10 000).
    pub limit: Option<u32>,
    /// RFC 3339; inclusive. Default: no lower bound.
    pub from: Option<String>,
    /// RFC 3339; exclusive. Default: now.
    pub to: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SimulatedDecision {
    pub decision: String,
    pub reasons: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChangedDecision {
    pub request_id: Option<String>,
    pub timestamp: String,
    pub principal: String,
    pub role: String,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub before: SimulatedDecision,
    pub after: SimulatedDecision,
}

#[derive(Serialize, ToSchema)]
pub struct SimulateResponse {
    /// Recorded decisions replayed.
    pub evaluated: u64,
    /// Recorded events that are not replayable decisions (logins, admin changes, events from
    /// before decisions recorded their policies).
    pub skipped: u64,
    /// Decisions the draft set answers differently from the saved set.
    pub changed: u64,
    pub allow_to_deny: u64,
    pub deny_to_allow: u64,
    /// Up to 20 changed decisions, newest first.
    pub examples: Vec<ChangedDecision>,
}

/// A recorded decision's request: who, on what resource, in which context.
type Replay = (Principal, Option<(String, String)>, ContextInput);

/// The request a recorded decision made, rebuilt: who (kind, id, role), what, on what, with
/// which context. `None` for events that are not policy decisions.
fn replayable(r: &AuditRecord) -> Option<Replay> {
    let m = r.metadata.as_object()?;
    m.get("policies")?;
    let role = Role::from_str(m.get("role")?.as_str()?).ok()?;
    let kind = match m.get("auth")?.as_str()? {
        "api_key" => PrincipalKind::ApiKey,
        "user" => PrincipalKind::User,
        "jwt" => PrincipalKind::Jwt,
        _ => return None,
    };
    if !PolicyEngine::valid_action(&r.action) {
        return None;
    }
    let tenant = portcullis_core::TenantId::parse(r.tenant_id.as_deref()?).ok()?;
    let principal = Principal {
        kind,
        id: r.user_id.clone()?,
        tenant_id: Some(tenant),
        role: Some(role),
        key_id: None,
        user_id: None,
        session_id: None,
        scopes: Vec::new(),
    };
    let text = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let (resource, route) = match (r.resource_type.as_deref(), r.resource_id.as_deref(), text("route")) {
        // auth_check records the URI and the route it matched; a URI no route matched is
        // recorded (and was decided) as `Route::"auth_check"` without a route in the context.
        (Some("uri"), _, Some(route)) => {
            let matched = route.starts_with('/').then(|| route.clone());
            (Some((String::from("route"), route)), matched)
        }
        (Some("route"), Some(id), _) => (Some((String::from("route"), id.to_owned())), Some(id.to_owned())),
        (Some(t), Some(id), _) => (Some((t.to_owned(), id.to_owned())), None),
        _ => (None, None),
    };
    let time_ms = parse_rfc3339_ms(&r.timestamp)?;
    let ctx = ContextInput {
        ip: r.ip_address.as_deref().and_then(|i| i.parse().ok()),
        route,
        method: text("method"),
        path: text("path")
            .or_else(|| (r.resource_type.as_deref() == Some("uri")).then(|| r.resource_id.clone()).flatten()),
        ..ContextInput::at(time_ms)
    }
    .with_caller_context(m.get("context"), resource.as_ref().map(|(t, i)| (t.as_str(), i.as_str())));
    Some((principal, resource, ctx))
}

fn simulated(d: &Decision) -> SimulatedDecision {
    SimulatedDecision { decision: String::from(if d.allowed { "allow" } else { "deny" }), reasons: d.reasons() }
}

/// Replays the tenant's most recent recorded decisions with the saved policies and with the
/// draft set, and reports which would change. Only the policy layer is replayed (RBAC and Cedar);
/// limits and key scopes are not.
#[utoipa::path(post, path = "/v1/policies/simulate", tag = "policies", request_body = SimulateRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = SimulateResponse), (status = 400, body = ProblemDoc)))]
pub async fn simulate(
    a: Authed<perm::PoliciesRead>,
    ApiJson(body): ApiJson<SimulateRequest>,
) -> Result<Json<SimulateResponse>, ApiError> {
    let scope = a.scope()?.clone();
    let limit = super::limit_param(body.limit, 1000, MAX_SIMULATED)?;
    let time = |field: &str, v: &Option<String>| super::time_param(field, v.as_deref());
    let (from_ms, to_ms) = (time("from", &body.from)?, time("to", &body.to)?);
    let draft = draft_set(&a, &scope, &body.drafts, &body.remove).await?;
    let current = a.app.guard.tenant_policies(scope.tenant_id()).await?;
    if !a.app.guard.audit_log().index_caught_up(std::time::Duration::from_secs(2)).await {
        tracing::warn!("audit query index is behind the log; the simulation may miss the newest decisions");
    }
    let engine = a.app.guard.policy_engine();
    let mut out = SimulateResponse {
        evaluated: 0,
        skipped: 0,
        changed: 0,
        allow_to_deny: 0,
        deny_to_allow: 0,
        examples: Vec::new(),
    };
    let mut before_id = None;
    let mut remaining = limit;
    // Events that are not decisions are skipped; read at most this many in all.
    let mut scan_budget = u64::from(limit) * 5;
    while remaining > 0 && scan_budget > 0 {
        let page = remaining.min(1000);
        let filter = AuditFilter {
            tenant_id: Some(scope.tenant_id().to_string()),
            from_ms,
            to_ms,
            before_id,
            limit: page,
            ..AuditFilter::default()
        };
        let rows = a.app.audit.query(&filter).await?;
        let Some((last, _)) = rows.last() else { break };
        before_id = Some(*last);
        let n = rows.len() as u32;
        scan_budget = scan_budget.saturating_sub(u64::from(n));
        for (_, r) in &rows {
            let Some((principal, resource, ctx)) = replayable(r) else {
                out.skipped += 1;
                continue;
            };
            remaining -= 1;
            out.evaluated += 1;
            let res = resource.as_ref().map(|(t, i)| (t.as_str(), i.as_str()));
            let req = portcullis_policy::DecisionRequest {
                principal: &principal,
                action: &r.action,
                resource: res,
                context: &ctx,
            };
            let was = engine.decide(Some(&current), &req);
            let now = engine.decide(Some(&draft), &req);
            if was.allowed != now.allowed {
                out.changed += 1;
                if was.allowed {
                    out.allow_to_deny += 1;
                } else {
                    out.deny_to_allow += 1;
                }
                if out.examples.len() < EXAMPLES {
                    out.examples.push(ChangedDecision {
                        request_id: r.request_id.clone(),
                        timestamp: r.timestamp.clone(),
                        principal: principal.id.clone(),
                        role: principal.role.map(|r| r.to_string()).unwrap_or_default(),
                        action: r.action.clone(),
                        resource_type: r.resource_type.clone(),
                        resource_id: r.resource_id.clone(),
                        before: simulated(&was),
                        after: simulated(&now),
                    });
                }
            }
            if remaining == 0 {
                break;
            }
        }
        if n < page {
            break;
        }
    }
    let mut e = a.event("policy.simulate", AuditResult::Success);
    e.resource_type = Some(String::from("policy"));
    e.with_meta("drafts", serde_json::Value::from(body.drafts.len()))
        .with_meta("evaluated", serde_json::Value::from(out.evaluated))
        .with_meta("changed", serde_json::Value::from(out.changed));
    a.record(e).await?;
    Ok(Json(out))
}
