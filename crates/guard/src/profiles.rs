//! Audited changes to a tenant's model profiles (which model a role uses in a deployment mode,
//! where, and at what price), shared by the HTTP API and the CLI. Each one validates, writes its
//! audit event durably, then changes the store (which records a `model_profiles` change).
//!
//! Prices are USD per 1 000 tokens with at most 6 decimal places: they are stored exactly as
//! integer micro-USD, and a price with more precision is refused rather than rounded, so the
//! price read back is always the price given.
use crate::admin::AdminError;
use crate::{Grant, Guard, RequestMeta};
use portcullis_core::TenantScope;
use portcullis_core::audit::{AuditEvent, AuditResult};
use portcullis_store::{ModelProfile, StoreError};

/// The most model profiles one tenant may hold.
pub const MAX_MODEL_PROFILES: usize = 1000;
/// The highest price accepted, in USD per 1 000 tokens.
pub const MAX_PRICE_PER_1K: f64 = 1000.0;
/// The highest temperature accepted.
pub const MAX_TEMPERATURE: f64 = 2.0;
pub const MAX_BASE_URL: usize = 2048;

/// What a new or changed profile says; `None` fields of an update keep their value. Prices in
/// USD per 1 000 tokens.
#[derive(Clone, Debug, Default)]
pub struct ModelProfileChange {
    pub role: Option<String>,
    pub deployment_mode: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub temperature: Option<f64>,
    pub input_price_per_1k: Option<f64>,
    pub output_price_per_1k: Option<f64>,
}

impl ModelProfileChange {
    fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.deployment_mode.is_none()
            && self.model.is_none()
            && self.base_url.is_none()
            && self.temperature.is_none()
            && self.input_price_per_1k.is_none()
            && self.output_price_per_1k.is_none()
    }
}

fn invalid(m: impl Into<String>) -> AdminError {
    AdminError::Invalid(m.into())
}

/// `role` and `deployment_mode`: 1–64 characters of `a-z 0-9 . _ -`.
pub fn check_slug(field: &str, v: &str) -> Result<(), AdminError> {
    let ok = (1..=64).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(invalid(format!("`{field}` must be 1–64 characters of a-z, 0-9, `.`, `_` and `-`")));
    }
    Ok(())
}

/// 1–128 characters, no control characters, no surrounding spaces.
pub fn check_model(v: &str) -> Result<(), AdminError> {
    let n = v.chars().count();
    if n == 0 || n > 128 || v.chars().any(char::is_control) || v.trim() != v {
        return Err(invalid("`model` must be 1–128 characters without control characters or surrounding spaces"));
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host and optionally a port and a path: at most 2048
/// characters of printable ASCII (international host names in their `xn--` form). Credentials
/// (`user:pass@`), a query or a fragment are refused: secrets do not belong in a base URL (they
/// go in upstream credentials), and the URL is recorded in the audit log.
pub fn check_base_url(v: &str) -> Result<(), AdminError> {
    let bad = |why: &str| invalid(format!("`base_url` {why}"));
    if v.is_empty() || v.len() > MAX_BASE_URL {
        return Err(bad(&format!("must be 1–{MAX_BASE_URL} characters")));
    }
    if !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("must be printable ASCII without spaces (international host names in their xn-- form)"));
    }
    let lower = v.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &v[8..]
    } else if lower.starts_with("http://") {
        &v[7..]
    } else {
        return Err(bad("must be an http:// or https:// URL"));
    };
    if rest.contains(['?', '#']) {
        return Err(bad("must not have a query or a fragment"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad("must not carry credentials (use upstream credentials)"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(bad("has an unterminated IPv6 address"));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("has an invalid IPv6 address"));
        }
        match after {
            "" => (addr, None),
            p => match p.strip_prefix(':') {
                Some(p) => (addr, Some(p)),
                None => return Err(bad("has text after its IPv6 address")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && (authority.starts_with('[')
            || (host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })));
    if !host_ok {
        return Err(bad("must have a host"));
    }
    if let Some(p) = port
        && !(p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0))
    {
        return Err(bad("has a port that is not 1–65535"));
    }
    Ok(())
}

pub fn check_temperature(t: f64) -> Result<(), AdminError> {
    if !t.is_finite() || !(0.0..=MAX_TEMPERATURE).contains(&t) {
        return Err(invalid(format!("`temperature` must be a number from 0 to {MAX_TEMPERATURE}")));
    }
    Ok(())
}

/// A price in USD per 1 000 tokens as integer micro-USD; refused when negative, above
/// [`MAX_PRICE_PER_1K`], not finite, or with more than 6 decimal places.
pub fn price_micros(field: &str, usd: f64) -> Result<i64, AdminError> {
    if !usd.is_finite() || !(0.0..=MAX_PRICE_PER_1K).contains(&usd) {
        return Err(invalid(format!("`{field}` must be a number of USD per 1K tokens from 0 to {MAX_PRICE_PER_1K}")));
    }
    let micros = usd * 1_000_000.0;
    let whole = micros.round();
    // A decimal with at most 6 places lands within float noise (< 1e-6 at 1e9) of a whole number
    // of micro-USD; anything finer is off by far more.
    if (micros - whole).abs() > 1e-6 {
        return Err(invalid(format!("`{field}` must have at most 6 decimal places (whole micro-USD)")));
    }
    Ok(whole as i64)
}

/// Integer micro-USD back to USD: `150` → `0.00015` exactly as written.
pub fn price_usd(micros: i64) -> f64 {
    micros as f64 / 1_000_000.0
}

pub fn new_model_profile_id() -> String {
    format!("mp_{}", uuid::Uuid::now_v7().simple())
}

fn pair_taken(p: &ModelProfile) -> AdminError {
    AdminError::Conflict(format!(
        "the tenant already has a model profile for role `{}` in deployment mode `{}`",
        p.role, p.deployment_mode
    ))
}

fn store_conflict(p: &ModelProfile) -> impl FnOnce(StoreError) -> AdminError + '_ {
    move |e| match e {
        StoreError::Conflict(_) => pair_taken(p),
        other => other.into(),
    }
}

/// Applies `change` to `p`, validating each given field.
fn apply(p: &mut ModelProfile, change: ModelProfileChange) -> Result<(), AdminError> {
    if let Some(v) = change.role {
        check_slug("role", &v)?;
        p.role = v;
    }
    if let Some(v) = change.deployment_mode {
        check_slug("deployment_mode", &v)?;
        p.deployment_mode = v;
    }
    if let Some(v) = change.model {
        check_model(&v)?;
        p.model = v;
    }
    if let Some(v) = change.base_url {
        check_base_url(&v)?;
        p.base_url = v;
    }
    if let Some(v) = change.temperature {
        check_temperature(v)?;
        p.temperature = v;
    }
    if let Some(v) = change.input_price_per_1k {
        p.input_price_micros_per_1k = price_micros("input_price_per_1k", v)?;
    }
    if let Some(v) = change.output_price_per_1k {
        p.output_price_micros_per_1k = price_micros("output_price_per_1k", v)?;
    }
    Ok(())
}

impl Guard {
    /// The event of a profile change. The profile's role is `profile_role` in the metadata
    /// (`role` there is the caller's).
    fn model_profile_event(&self, g: &Grant, meta: &RequestMeta, action: &str, p: &ModelProfile) -> AuditEvent {
        let mut e = self.event_for(g, meta, action, AuditResult::Success);
        e.tenant_id = Some(p.tenant_id.to_string());
        e.resource_type = Some(String::from("model_profile"));
        e.resource_id = Some(p.id.clone());
        e.with_meta("profile_role", serde_json::Value::from(p.role.clone()))
            .with_meta("deployment_mode", serde_json::Value::from(p.deployment_mode.clone()))
            .with_meta("model", serde_json::Value::from(p.model.clone()))
            .with_meta("base_url", serde_json::Value::from(p.base_url.clone()))
            .with_meta("temperature", serde_json::Value::from(p.temperature))
            .with_meta("input_price_per_1k", serde_json::Value::from(price_usd(p.input_price_micros_per_1k)))
            .with_meta("output_price_per_1k", serde_json::Value::from(price_usd(p.output_price_micros_per_1k)));
        e
    }

    /// Creates a profile; every field of `change` is required.
    pub async fn create_model_profile(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        change: ModelProfileChange,
    ) -> Result<ModelProfile, AdminError> {
        let required = |name: &str, present: bool| {
            if present { Ok(()) } else { Err(invalid(format!("`{name}` is required"))) }
        };
        required("role", change.role.is_some())?;
        required("deployment_mode", change.deployment_mode.is_some())?;
        required("model", change.model.is_some())?;
        required("base_url", change.base_url.is_some())?;
        required("temperature", change.temperature.is_some())?;
        required("input_price_per_1k", change.input_price_per_1k.is_some())?;
        required("output_price_per_1k", change.output_price_per_1k.is_some())?;
        let now = self.now_ms();
        let mut p = ModelProfile {
            id: new_model_profile_id(),
            tenant_id: scope.tenant_id().clone(),
            role: String::new(),
            deployment_mode: String::new(),
            model: String::new(),
            base_url: String::new(),
            temperature: 0.0,
            input_price_micros_per_1k: 0,
            output_price_micros_per_1k: 0,
            created_at_ms: now,
            created_by: g.principal.id.clone(),
            updated_at_ms: now,
            updated_by: g.principal.id.clone(),
        };
        apply(&mut p, change)?;
        let existing = self.store.list_model_profiles(scope).await?;
        if existing.len() >= MAX_MODEL_PROFILES {
            return Err(AdminError::Conflict(format!(
                "the tenant already holds {MAX_MODEL_PROFILES} model profiles, the most allowed"
            )));
        }
        // Refused before the event is recorded: the log must not claim a creation that cannot
        // happen. (The store's unique constraint still settles a concurrent race.)
        if existing.iter().any(|q| q.role == p.role && q.deployment_mode == p.deployment_mode) {
            return Err(pair_taken(&p));
        }
        self.record(self.model_profile_event(g, meta, "model_profile.create", &p)).await?;
        self.store.create_model_profile(scope, &p).await.map_err(store_conflict(&p))?;
        Ok(p)
    }

    /// Applies `change` (at least one field) to `old`. Conflict when the new (role, mode) is
    /// taken, or the profile was deleted meanwhile.
    pub async fn update_model_profile(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        old: &ModelProfile,
        change: ModelProfileChange,
    ) -> Result<ModelProfile, AdminError> {
        if change.is_empty() {
            return Err(invalid("nothing to change: give at least one field"));
        }
        let mut p = old.clone();
        apply(&mut p, change)?;
        // A move onto a taken (role, mode) is refused before the event is recorded.
        if (p.role != old.role || p.deployment_mode != old.deployment_mode)
            && self
                .store
                .list_model_profiles(scope)
                .await?
                .iter()
                .any(|q| q.id != p.id && q.role == p.role && q.deployment_mode == p.deployment_mode)
        {
            return Err(pair_taken(&p));
        }
        p.updated_at_ms = self.now_ms();
        p.updated_by = g.principal.id.clone();
        self.record(self.model_profile_event(g, meta, "model_profile.update", &p)).await?;
        if !self.store.update_model_profile(scope, &p).await.map_err(store_conflict(&p))? {
            return Err(AdminError::Conflict(String::from("the model profile was deleted meanwhile")));
        }
        Ok(p)
    }

    /// Deletes the profile; false when it was gone already.
    pub async fn delete_model_profile(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        p: &ModelProfile,
    ) -> Result<bool, AdminError> {
        self.record(self.model_profile_event(g, meta, "model_profile.delete", p)).await?;
        Ok(self.store.delete_model_profile(scope, &p.id, self.now_ms()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_convert_exactly_and_finer_ones_are_refused() {
        for (usd, micros) in [(0.00015, 150), (0.0006, 600), (0.0, 0), (1000.0, 1_000_000_000), (0.000001, 1)] {
            assert_eq!(price_micros("p", usd).ok(), Some(micros), "{usd}");
            assert_eq!(price_usd(micros), usd, "{micros}");
        }
        for bad in [-0.000001, 1000.000001, 0.0000005, 0.00000001, f64::NAN, f64::INFINITY] {
            assert!(price_micros("p", bad).is_err(), "{bad}");
        }
        // Every whole micro-USD price round-trips through its USD value.
        for micros in (0..2_000_000).step_by(7).chain(999_990_000..=1_000_000_000) {
            assert_eq!(price_micros("p", price_usd(micros)).ok(), Some(micros), "{micros}");
        }
    }

    #[test]
    fn base_urls_are_http_with_a_host_and_no_secrets() {
        for ok in [
            "http://localhost:11434",
            "https://api.openai.com/v1",
            "HTTPS://Example.COM/v1/",
            "http://10.0.0.5:8080/openai/deployments/gpt",
            "http://[::1]:8000/v1",
            "https://my_host.internal",
        ] {
            assert!(check_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ftp://example.com",
            "example.com",
            "http://",
            "http:///path",
            "https://:443",
            "http://user:pw@example.com",
            "https://example.com/v1?key=secret",
            "https://example.com/#x",
            "http://example.com:0",
            "http://example.com:65536",
            "http://example.com:",
            "http://exa mple.com",
            "http://exämple.com",
            "http://[::1",
            "http://[zz]/",
            "http://a..b/",
        ] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
        assert!(check_base_url(&format!("https://example.com/{}", "a".repeat(2048))).is_err());
    }

    #[test]
    fn roles_modes_models_and_temperatures() {
        for ok in ["chat", "self-hosted", "v1.2_b", &"a".repeat(64)] {
            assert!(check_slug("role", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Chat", "a b", "é", "a/b", &"a".repeat(65)] {
            assert!(check_slug("role", bad).is_err(), "{bad}");
        }
        assert!(check_model("gpt-4o-mini").is_ok());
        assert!(check_model("meta/llama 3 70b").is_ok());
        for bad in ["", " gpt", "gpt\n", &"m".repeat(129)] {
            assert!(check_model(bad).is_err(), "{bad:?}");
        }
        for ok in [0.0, 0.7, 2.0] {
            assert!(check_temperature(ok).is_ok());
        }
        for bad in [-0.1, 2.01, 3.0, f64::NAN] {
            assert!(check_temperature(bad).is_err());
        }
    }
}
