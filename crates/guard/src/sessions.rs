//! Agent sessions: events captured from traffic (queued on the request path, priced and written
//! by the maintenance task with usage) or appended through the API (written before the answer),
//! each passed through the tenant's capture settings and redaction first.
use crate::Guard;
use portcullis_core::session::{CaptureMode, Redactor, SessionSettings, clean_text, json_len};
use portcullis_core::{TenantId, TenantScope};
use portcullis_store::{SessionEvent, StoreError};
use std::sync::Arc;

/// Events captured from traffic and not yet written. Bounded: past [`MAX_PENDING`] new events
/// are dropped (counted in `portcullis_session_events_dropped_total`) rather than growing
/// without limit while the store is away.
#[derive(Default)]
pub struct Pending {
    /// The events, and about how many bytes they hold.
    events: std::sync::Mutex<(Vec<SessionEvent>, usize)>,
    /// Held for a whole flush, so the flush at shutdown waits for one in flight.
    flushing: tokio::sync::Mutex<()>,
}

pub const MAX_PENDING: usize = 100_000;
/// And at most this many bytes of text and JSON (an event holds at most ~100 KiB after
/// [`TenantCapture::prepare`]).
pub const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;
/// Tool arguments and metadata larger than this (as JSON) are not kept as such.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Events written per store call: a flush never holds one long transaction.
const FLUSH_CHUNK: usize = 500;

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// About what an event weighs in memory, for the queue's bound.
fn weight(e: &SessionEvent) -> usize {
    256 + e.message.as_ref().map_or(0, String::len) + e.tool_args.as_ref().map_or(0, json_len) + json_len(&e.metadata)
}

/// A tenant's capture settings, compiled.
#[derive(Debug)]
pub struct TenantCapture {
    pub settings: SessionSettings,
    pub redactor: Redactor,
}

impl TenantCapture {
    pub fn new(settings: SessionSettings) -> TenantCapture {
        // Patterns were validated when saved; one that no longer compiles falls back to the
        // built-in redaction rather than storing text unredacted or failing traffic.
        let redactor = Redactor::new(&settings.redact_patterns).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "stored redact patterns do not compile; built-in redaction only");
            Redactor::shared_builtin().clone()
        });
        TenantCapture { settings, redactor }
    }

    /// Whether traffic is captured at all.
    pub fn captures(&self) -> bool {
        self.settings.capture != CaptureMode::Off
    }

    /// Applies the capture mode and redaction to an event about to be stored: text cleaned and
    /// cut, credentials and the tenant's patterns replaced, message and arguments dropped in
    /// `metadata` mode.
    pub fn prepare(&self, e: &mut SessionEvent) {
        let metadata_only = self.settings.capture == CaptureMode::Metadata;
        let mut cut = false;
        e.message = match e.message.take() {
            Some(_) if metadata_only => None,
            Some(m) => {
                let (text, was_cut) = clean_text(&self.redactor.text(&m));
                cut |= was_cut;
                Some(text)
            }
            None => None,
        };
        e.tool_name = e.tool_name.take().map(|t| clean_text(&self.redactor.text(&t)).0.chars().take(256).collect());
        e.tool_args = match e.tool_args.take() {
            Some(_) if metadata_only => None,
            Some(mut v) => {
                self.redactor.json(&mut v);
                // Arguments are kept up to MAX_JSON_BYTES as JSON; larger ones as cut text.
                if json_len(&v) > MAX_JSON_BYTES {
                    cut = true;
                    let text = v.to_string();
                    Some(serde_json::Value::String(clean_text(&text[..floor_char(&text, MAX_JSON_BYTES)]).0))
                } else {
                    Some(v)
                }
            }
            None => None,
        };
        if !e.metadata.is_object() {
            e.metadata = serde_json::json!({});
        }
        self.redactor.json(&mut e.metadata);
        if json_len(&e.metadata) > MAX_JSON_BYTES {
            e.metadata = serde_json::json!({ "dropped": "metadata larger than 64 KiB" });
        }
        // Identifiers that came from the client: no NUL (PostgreSQL text cannot hold one), short.
        for id in [&mut e.model, &mut e.principal_id, &mut e.request_id].into_iter().flatten() {
            if id.contains('\0') || id.chars().count() > 256 {
                *id = clean_text(id).0.chars().take(256).collect();
            }
        }
        const MAX_TOKENS: i64 = 1 << 40;
        e.input_tokens = e.input_tokens.clamp(0, MAX_TOKENS);
        e.output_tokens = e.output_tokens.clamp(0, MAX_TOKENS);
        if cut && let Some(o) = e.metadata.as_object_mut() {
            o.insert(String::from("truncated"), serde_json::Value::Bool(true));
        }
    }
}

/// Where the events of one request come from: tenant, session, caller, request, time.
pub struct EventOrigin<'a> {
    pub tenant: &'a TenantId,
    pub session_id: &'a str,
    /// The caller as the audit log names it.
    pub principal_id: &'a str,
    pub request_id: &'a str,
    pub now_ms: i64,
}

impl EventOrigin<'_> {
    /// A new event of `kind` with a fresh time-ordered id.
    pub fn event(&self, kind: portcullis_core::session::EventKind) -> SessionEvent {
        SessionEvent {
            id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            tenant_id: self.tenant.to_string(),
            session_id: self.session_id.to_owned(),
            kind,
            message: None,
            tool_name: None,
            tool_args: None,
            metadata: serde_json::json!({}),
            created_at_ms: self.now_ms,
            principal_id: Some(self.principal_id.to_owned()),
            request_id: Some(self.request_id.to_owned()),
            decision: None,
            model: None,
            input_tokens: 0,
            output_tokens: 0,
            cost_nanos: 0,
        }
    }
}

impl Guard {
    /// The tenant's capture settings, from cache (dropped on a `session_settings` change).
    pub async fn session_capture(&self, tenant: &TenantId) -> Result<Arc<TenantCapture>, StoreError> {
        if let Some(c) = self.cache.capture.get(tenant) {
            return Ok(c.clone());
        }
        let generation = self.cache.generation();
        let c = Arc::new(TenantCapture::new(self.store.session_settings(tenant).await?));
        self.cache.capture.insert(tenant.clone(), c.clone());
        if self.cache.stale_since(generation) {
            self.cache.capture.remove(tenant);
        }
        Ok(c)
    }

    pub fn invalidate_session_capture(&self, tenant: &TenantId) {
        self.cache.capture.remove(tenant);
    }

    /// Queues events captured from traffic (already prepared) for the next flush.
    pub fn capture_session_events(&self, events: Vec<SessionEvent>) {
        if events.is_empty() {
            return;
        }
        let bytes: usize = events.iter().map(weight).sum();
        let mut p = self.sessions.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if p.0.len() + events.len() > MAX_PENDING || p.1 + bytes > MAX_PENDING_BYTES {
            metrics::counter!("portcullis_session_events_dropped_total").increment(events.len() as u64);
            return;
        }
        p.0.extend(events);
        p.1 += bytes;
    }

    /// Prices events with tokens at the tenant's model-profile prices.
    async fn price(&self, events: &mut [SessionEvent]) -> Result<(), StoreError> {
        for e in events.iter_mut() {
            if let Some(model) = &e.model
                && e.cost_nanos == 0
            {
                e.cost_nanos = self.token_cost(&e.tenant_id, model, e.input_tokens, e.output_tokens).await?;
            }
        }
        Ok(())
    }

    /// Writes events now (the API's append): priced, then stored.
    pub async fn append_session_events(&self, mut events: Vec<SessionEvent>) -> Result<(), StoreError> {
        self.price(&mut events).await?;
        self.store.append_session_events(&events).await
    }

    /// Writes what traffic captured, in chunks. When the store is unavailable the rest is kept
    /// for the next attempt (ids make the retry idempotent); a chunk the store refuses for what
    /// it holds is dropped and counted, so one bad event cannot block every later one.
    pub async fn flush_sessions(&self) -> Result<(), StoreError> {
        let _one = self.sessions.flushing.lock().await;
        let mut events = {
            let mut p = self.sessions.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            p.1 = 0;
            std::mem::take(&mut p.0)
        };
        if events.is_empty() {
            return Ok(());
        }
        // Instances writing the same sessions lock their rows in the same order: no deadlock.
        events.sort_by(|a, b| (&a.tenant_id, &a.session_id).cmp(&(&b.tenant_id, &b.session_id)));
        let mut rest = events.as_mut_slice();
        while !rest.is_empty() {
            let n = rest.len().min(FLUSH_CHUNK);
            let (chunk, tail) = rest.split_at_mut(n);
            let result = match self.price(chunk).await {
                Ok(()) => self.store.append_session_events(chunk).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {}
                Err(e @ StoreError::Unavailable(_)) => {
                    let kept: Vec<SessionEvent> = chunk.iter().chain(tail.iter()).cloned().collect();
                    let mut p = self.sessions.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let room = MAX_PENDING.saturating_sub(p.0.len());
                    let dropped = kept.len().saturating_sub(room);
                    if dropped > 0 {
                        metrics::counter!("portcullis_session_events_dropped_total").increment(dropped as u64);
                    }
                    let mut back: Vec<SessionEvent> = kept.into_iter().take(room).collect();
                    p.1 += back.iter().map(weight).sum::<usize>();
                    back.append(&mut p.0);
                    p.0 = back;
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(error = %e, events = n, "session events refused by the store; dropped");
                    metrics::counter!("portcullis_session_events_dropped_total").increment(n as u64);
                }
            }
            rest = tail;
        }
        Ok(())
    }

    /// The tenant's settings as stored, for the API.
    pub async fn session_settings(&self, scope: &TenantScope) -> Result<SessionSettings, StoreError> {
        self.store.session_settings(scope.tenant_id()).await
    }
}

/// How often expired sessions are looked for, and how long after start the first time.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
const FIRST_PURGE: std::time::Duration = std::time::Duration::from_secs(60);

impl Guard {
    /// Deletes, tenant by tenant, the sessions without activity for `retention`; each tenant's
    /// purge that removed anything is audited (`session.purge`). Returns the sessions removed.
    pub async fn purge_expired_sessions(&self, retention: std::time::Duration) -> Result<u64, StoreError> {
        let before = self.now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let mut after: Option<String> = None;
        let mut total = 0;
        loop {
            let page = self.store.list_tenants(after.as_deref(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.to_string());
            for t in &page {
                let scope = TenantScope::authorized(t.id.clone(), false);
                let gone = self.store.purge_sessions(&scope, before).await?;
                if gone > 0 {
                    total += gone;
                    let meta = crate::RequestMeta {
                        request_id: format!("retention-{}", uuid::Uuid::now_v7().simple()),
                        ip: None,
                        user_agent: None,
                    };
                    let mut e = self.event(&meta, "session.purge", portcullis_core::audit::AuditResult::Success);
                    e.user_id = Some(String::from("system:retention"));
                    e.tenant_id = Some(t.id.to_string());
                    e.resource_type = Some(String::from("session"));
                    e.reason = Some(String::from("retention"));
                    e.metadata = serde_json::json!({ "sessions": gone, "inactive_before_ms": before });
                    if let Err(err) = self.record(e).await {
                        tracing::warn!(error = %err, "session purge could not be audited");
                    }
                }
            }
            if page.len() < 500 {
                break;
            }
        }
        Ok(total)
    }

    /// Runs [`Guard::purge_expired_sessions`] a minute after start and then every hour, until
    /// the guard is dropped.
    pub fn spawn_session_retention(self: &Arc<Self>, retention: std::time::Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(FIRST_PURGE).await;
            let mut tick = tokio::time::interval(PURGE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(g) = weak.upgrade() else { break };
                match g.purge_expired_sessions(retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(sessions = n, "expired sessions deleted"),
                    Err(e) => tracing::warn!(error = %e, "expired sessions could not be deleted; next try in an hour"),
                }
            }
        });
    }
}
