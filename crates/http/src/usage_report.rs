//! The usage report (`GET /v1/usage`, `portcullis usage`): the query's days and grouping checked,
//! then the store's (tenant, day, caller, model, route) rows filtered, grouped and summed. Pure:
//! the caller reads the rows (and, in the server, writes its own unwritten usage first).
use portcullis_store::UsageRow;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The longest range one query may span.
pub const MAX_DAYS: i64 = 366;

/// The dimensions a report may be grouped by.
pub const DIMENSIONS: [&str; 4] = ["day", "principal", "model", "route"];

#[derive(Serialize, ToSchema, Default, Clone)]
pub struct UsageItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub requests: i64,
    pub status_2xx: i64,
    pub status_4xx: i64,
    pub status_5xx: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Mean time from the request reaching the gateway to the response's end, in ms.
    pub avg_latency_ms: f64,
    /// Exact cost in nano-USD (10⁻⁹ USD), from the model profile's prices when the tokens were
    /// counted; 0 for models without a profile.
    pub cost_nanos: i64,
    pub cost_usd: f64,
}

impl UsageItem {
    fn add(&mut self, r: &UsageRow) {
        self.requests += r.requests;
        self.status_2xx += r.status_2xx;
        self.status_4xx += r.status_4xx;
        self.status_5xx += r.status_5xx;
        self.input_tokens = self.input_tokens.saturating_add(r.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(r.output_tokens);
        // Sum first; `finish` turns it into the mean.
        self.avg_latency_ms += r.latency_ms_sum as f64;
        self.cost_nanos = self.cost_nanos.saturating_add(r.cost_nanos);
    }

    fn finish(mut self) -> Self {
        self.avg_latency_ms = if self.requests > 0 { self.avg_latency_ms / self.requests as f64 } else { 0.0 };
        self.cost_usd = portcullis_core::limits::nanos_to_usd(self.cost_nanos);
        self
    }
}

#[derive(Serialize, ToSchema)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub group_by: Vec<String>,
    pub items: Vec<UsageItem>,
    pub totals: UsageItem,
}

/// Only the rows of this caller, model and route (each when given).
#[derive(Clone, Debug, Default)]
pub struct UsageFilters {
    pub principal: Option<String>,
    pub model: Option<String>,
    pub route: Option<String>,
}

/// Why a usage query is refused. The text is the API's problem `detail`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageQueryError {
    /// `field` (`from` or `to`) is not a `YYYY-MM-DD` day.
    #[error("`{field}` must be a day, YYYY-MM-DD")]
    BadDay { field: &'static str, value: String },
    #[error("`from` is after `to`")]
    FromAfterTo,
    #[error("a query spans at most {MAX_DAYS} days")]
    TooLong,
    #[error("cannot group by `{0}`: use day, principal, model, route")]
    BadDimension(String),
}

/// A checked query: the days to read from the store, and how to group what they hold.
#[derive(Clone, Debug)]
pub struct UsageQuery {
    pub from: String,
    pub to: String,
    pub group_by: Vec<String>,
    pub filters: UsageFilters,
}

fn day(field: &'static str, v: &str) -> Result<i64, UsageQueryError> {
    portcullis_core::timefmt::parse_rfc3339_ms(&format!("{v}T00:00:00Z"))
        .filter(|_| v.len() == 10)
        .ok_or_else(|| UsageQueryError::BadDay { field, value: v.to_owned() })
}

impl UsageQuery {
    /// `to` defaults to `today` (`YYYY-MM-DD`, UTC), `from` to `to`; `group_by` is a
    /// comma-separated list of [`DIMENSIONS`], `day` when absent, none (one row for the whole
    /// range) when empty.
    pub fn new(
        from: Option<&str>,
        to: Option<&str>,
        group_by: Option<&str>,
        filters: UsageFilters,
        today: &str,
    ) -> Result<UsageQuery, UsageQueryError> {
        let to = to.unwrap_or(today).to_owned();
        // A `from` left out is `to`: a bad `to` is then named as itself.
        let from_ms = from.map(|f| day("from", f)).transpose()?;
        let to_ms = day("to", &to)?;
        let from_ms = from_ms.unwrap_or(to_ms);
        let from = from.map_or_else(|| to.clone(), str::to_owned);
        if from_ms > to_ms {
            return Err(UsageQueryError::FromAfterTo);
        }
        if (to_ms - from_ms) / 86_400_000 >= MAX_DAYS {
            return Err(UsageQueryError::TooLong);
        }
        let group_by: Vec<String> = match group_by {
            None => vec![String::from("day")],
            Some(g) => g.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        };
        if let Some(bad) = group_by.iter().find(|g| !DIMENSIONS.contains(&g.as_str())) {
            return Err(UsageQueryError::BadDimension(bad.clone()));
        }
        Ok(UsageQuery { from, to, group_by, filters })
    }

    /// The report of `rows` (the tenant's rows of `from..=to`): those matching the filters,
    /// grouped (ordered by day, caller, model, route), and their totals.
    pub fn report(self, rows: &[UsageRow]) -> UsageReport {
        let by = |g: &str| self.group_by.iter().any(|x| x == g);
        let f = &self.filters;
        let mut groups: BTreeMap<(String, String, String, String), UsageItem> = BTreeMap::new();
        let mut totals = UsageItem::default();
        for r in rows.iter().filter(|r| {
            f.principal.as_ref().is_none_or(|x| *x == r.principal_id)
                && f.model.as_ref().is_none_or(|x| *x == r.model)
                && f.route.as_ref().is_none_or(|x| *x == r.route)
        }) {
            let pick = |on: bool, v: &str| if on { v.to_owned() } else { String::new() };
            let key = (
                pick(by("day"), &r.day),
                pick(by("principal"), &r.principal_id),
                pick(by("model"), &r.model),
                pick(by("route"), &r.route),
            );
            let item = groups.entry(key).or_insert_with(|| UsageItem {
                day: by("day").then(|| r.day.clone()),
                principal: by("principal").then(|| r.principal_id.clone()),
                model: by("model").then(|| r.model.clone()),
                route: by("route").then(|| r.route.clone()),
                ..UsageItem::default()
            });
            item.add(r);
            totals.add(r);
        }
        UsageReport {
            from: self.from,
            to: self.to,
            group_by: self.group_by,
            items: groups.into_values().map(UsageItem::finish).collect(),
            totals: totals.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    fn row(day: &str, principal: &str, model: &str, requests: i64, cost: i64) -> UsageRow {
        UsageRow {
            tenant_id: String::from("t"),
            day: day.to_owned(),
            principal_id: principal.to_owned(),
            model: model.to_owned(),
            route: String::from("/llm"),
            requests,
            status_2xx: requests,
            input_tokens: 10 * requests,
            output_tokens: 20 * requests,
            latency_ms_sum: 7 * requests,
            cost_nanos: cost,
            ..UsageRow::default()
        }
    }

    fn query(from: Option<&str>, to: Option<&str>, group_by: Option<&str>) -> Result<UsageQuery, UsageQueryError> {
        UsageQuery::new(from, to, group_by, UsageFilters::default(), "2026-12-02")
    }

    #[test]
    fn days_and_dimensions_are_checked() {
        let q = query(None, None, None).unwrap();
        assert_eq!(
            (q.from.as_str(), q.to.as_str(), q.group_by),
            ("2026-12-02", "2026-12-02", vec![String::from("day")])
        );
        assert_eq!(query(Some("2026-11-01"), None, Some("")).unwrap().group_by, Vec::<String>::new());
        assert_eq!(
            query(Some("2026-13-01"), None, None).unwrap_err(),
            UsageQueryError::BadDay { field: "from", value: String::from("2026-13-01") }
        );
        assert_eq!(query(None, Some("2026-12-1"), None).unwrap_err().to_string(), "`to` must be a day, YYYY-MM-DD");
        assert_eq!(query(Some("2026-12-03"), None, None).unwrap_err(), UsageQueryError::FromAfterTo);
        assert_eq!(query(Some("2025-12-01"), None, None).unwrap_err(), UsageQueryError::TooLong);
        assert!(query(Some("2025-12-02"), None, None).is_ok(), "366 days");
        assert_eq!(
            query(None, None, Some("model, colour")).unwrap_err().to_string(),
            "cannot group by `colour`: use day, principal, model, route"
        );
    }

    #[test]
    fn rows_are_filtered_grouped_and_summed() {
        let rows = [
            row("2026-12-01", "key:a", "m1", 2, 100),
            row("2026-12-02", "key:a", "m1", 1, 50),
            row("2026-12-02", "key:b", "m2", 3, 7),
        ];
        let q = query(Some("2026-12-01"), None, Some("model")).unwrap();
        let r = q.report(&rows);
        assert_eq!(r.items.len(), 2);
        assert_eq!((r.items[0].model.as_deref(), r.items[0].requests, r.items[0].cost_nanos), (Some("m1"), 3, 150));
        assert_eq!((r.items[0].day.as_deref(), r.items[0].principal.as_deref()), (None, None));
        assert_eq!((r.totals.requests, r.totals.input_tokens, r.totals.cost_nanos), (6, 60, 157));
        assert!((r.totals.avg_latency_ms - 7.0).abs() < 1e-9);
        assert!((r.totals.cost_usd - 157e-9).abs() < 1e-15);

        let only_b = UsageFilters { principal: Some(String::from("key:b")), ..UsageFilters::default() };
        let q = UsageQuery::new(Some("2026-12-01"), None, Some(""), only_b, "2026-12-02").unwrap();
        let r = q.report(&rows);
        assert_eq!(r.items.len(), 1);
        assert_eq!((r.items[0].requests, r.totals.requests), (3, 3));
    }
}
