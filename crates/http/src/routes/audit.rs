use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiQuery, Authed, perm};
use axum::Json;
use portcullis_core::audit::{AuditRecord, AuditResult};
use portcullis_store::AuditFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// The acting principal as recorded (e.g. `key:<id>`, `user:<email>`).
    pub user_id: Option<String>,
    pub action: Option<String>,
    /// success, denied or failure.
    pub result: Option<String>,
    /// RFC 3339; inclusive.
    pub from: Option<String>,
    /// RFC 3339; exclusive.
    pub to: Option<String>,
    /// Operators only: read this tenant's events (same as X-Tenant-ID).
    pub tenant_id: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<AuditRecord>,
    pub next_cursor: Option<String>,
}

/// Queries the audit log of the caller's tenant (operators: any tenant, or all).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = AuditPage), (status = 400, body = ProblemDoc)))]
pub async fn query(
    a: Authed<perm::AuditRead>,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = super::limit_param(p.limit, 100, 1000)?;
    let time = |field: &str, v: &Option<String>| super::time_param(field, v.as_deref());
    if let Some(r) = &p.result
        && AuditResult::parse(r).is_none()
    {
        return Err(ApiError::BadRequest(String::from("`result` must be success, denied or failure")));
    }
    let before_id = p
        .cursor
        .as_deref()
        .map(|c| c.parse::<i64>().map_err(|_| ApiError::BadRequest(String::from("invalid `cursor`"))))
        .transpose()?;
    let tenant_id = if a.grant.principal.is_operator() {
        match (&a.grant.scope, &p.tenant_id) {
            (Some(s), _) => Some(s.tenant_id().to_string()),
            (None, Some(t)) => {
                Some(portcullis_core::TenantId::parse(t).map_err(|e| ApiError::BadRequest(e.to_string()))?.to_string())
            }
            (None, None) => None,
        }
    } else {
        let own = a.scope()?.tenant_id().to_string();
        if p.tenant_id.as_ref().is_some_and(|t| *t != own) {
            return Err(a
                .deny("audit.query", "other_tenant_requested", "`tenant_id` may only name the caller's own tenant")
                .await);
        }
        Some(own)
    };
    let filter = AuditFilter {
        tenant_id: tenant_id.clone(),
        user_id: p.user_id.clone(),
        action: p.action.clone(),
        result: p.result.clone(),
        from_ms: time("from", &p.from)?,
        to_ms: time("to", &p.to)?,
        before_id,
        limit: limit + 1,
    };
    // Read your own writes: the query index trails the durable log by a batch.
    if !a.app.guard.audit_log().index_caught_up(std::time::Duration::from_secs(2)).await {
        tracing::warn!("audit query index is behind the log; recent events may be missing from this answer");
    }
    let mut rows = a.app.audit.query(&filter).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more { rows.last().map(|(id, _)| id.to_string()) } else { None };
    let mut e = a.event("audit.query", AuditResult::Success);
    e.tenant_id = tenant_id.or(e.tenant_id);
    e.resource_type = Some(String::from("audit"));
    e.metadata =
        serde_json::json!({ "user_id": p.user_id, "action": p.action, "result": p.result, "from": p.from, "to": p.to });
    a.record(e).await?;
    Ok(Json(AuditPage { items: rows.into_iter().map(|(_, r)| r).collect(), next_cursor }))
}

#[derive(Serialize, ToSchema)]
pub struct ChainView {
    pub writer_id: String,
    pub records: u64,
    pub head_seq: u64,
    /// The last signed checkpoint of this chain: its sequence number and time.
    pub last_checkpoint_seq: Option<u64>,
    pub last_checkpoint_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VerifyView {
    /// Every chain links, every checkpoint's signature holds, files and database agree.
    pub ok: bool,
    pub checked_at: String,
    pub writers: Vec<ChainView>,
    pub files: usize,
    pub file_records: u64,
    pub checkpoints: usize,
    /// Acknowledged records in the files not yet in the database index.
    pub unindexed: u64,
    /// In the order found; the first is the first broken link.
    pub problems: Vec<String>,
}

/// Serialises verification runs: one at a time reads the whole log.
static VERIFYING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Verifies every hash chain and signed checkpoint of the audit log, as `portcullis audit
/// verify` does (operators). Reads the whole log, one run at a time (a POST: from the UI it needs
/// the CSRF token, so another site cannot make a signed-in browser start runs); for very large
/// logs prefer the CLI.
#[utoipa::path(post, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = VerifyView), (status = 401, body = ProblemDoc), (status = 403, body = ProblemDoc),
        (status = 503, body = ProblemDoc)))]
pub async fn verify(a: Authed<perm::TenantsManage>) -> Result<Json<VerifyView>, ApiError> {
    let Some(v) = a.app.settings.audit_verify.clone() else {
        return Err(ApiError::Unavailable(String::from("audit verification is not configured on this server")));
    };
    let _one = VERIFYING.lock().await;
    let sources = (v.sources)().map_err(ApiError::Internal)?;
    let report = portcullis_audit::verify_sources(a.app.audit.as_ref(), &sources, &v.key)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the audit log could not be read: {e}")))?;
    let checkpoints = a.app.audit.checkpoints().await?;
    let writers = report
        .writers
        .iter()
        .map(|w| {
            let last = checkpoints.iter().filter(|c| c.writer_id == w.writer_id).max_by_key(|c| c.seq);
            ChainView {
                writer_id: w.writer_id.clone(),
                records: w.records,
                head_seq: w.head_seq,
                last_checkpoint_seq: last.map(|c| c.seq).or(w.last_checkpoint_seq),
                last_checkpoint_at: last.map(|c| c.timestamp.clone()),
            }
        })
        .collect();
    let mut e = a.event("audit.verify", if report.ok { AuditResult::Success } else { AuditResult::Failure });
    e.resource_type = Some(String::from("audit"));
    e.metadata =
        serde_json::json!({ "ok": report.ok, "problems": report.problems.len(), "chains": report.writers.len() });
    a.record(e).await?;
    Ok(Json(VerifyView {
        ok: report.ok,
        checked_at: portcullis_core::timefmt::rfc3339_ms(a.app.guard.now_ms()),
        writers,
        files: report.files,
        file_records: report.file_records,
        checkpoints: report.checkpoints,
        unindexed: report.unindexed,
        problems: report.problems,
    }))
}
