//! `portcullis usage …`: a tenant's usage from the store, grouped and filtered as `GET /v1/usage`
//! does it (the same code builds both). The CLI is another process: it reads what the servers
//! have written (each writes its counts every `auth.cache_refresh_ms`) and writes nothing.
use crate::cli::{finish, open, print};
use crate::cli_policy::scope_of;
use crate::config::Config;
use anyhow::anyhow;
use clap::Args;
use portcullis_http::usage_report::{UsageFilters, UsageItem, UsageQuery, UsageQueryError, UsageReport};
use std::process::ExitCode;

#[derive(Args)]
pub struct UsageArgs {
    #[arg(long)]
    tenant: String,
    /// First day, YYYY-MM-DD (UTC), inclusive. Default: --to.
    #[arg(long)]
    from: Option<String>,
    /// Last day, YYYY-MM-DD (UTC), inclusive. Default: today.
    #[arg(long)]
    to: Option<String>,
    /// Comma-separated: day, principal, model, route. Default: day; "" sums the range into one row.
    #[arg(long = "group-by")]
    group_by: Option<String>,
    /// Only this caller (`key:…`, `user:…`, `jwt:…`).
    #[arg(long)]
    principal: Option<String>,
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    /// Only this route (its prefix, e.g. `/llm`).
    #[arg(long)]
    route: Option<String>,
}

/// The API's message, with the flag and the value given.
fn bad_query(e: UsageQueryError) -> anyhow::Error {
    match &e {
        UsageQueryError::BadDay { field, value } => anyhow!("--{field} `{value}` is not a day: use YYYY-MM-DD"),
        UsageQueryError::BadDimension(_) => anyhow!("--group-by: {e}"),
        UsageQueryError::FromAfterTo => anyhow!("--from is after --to"),
        UsageQueryError::TooLong => anyhow!("{e} (--from … --to)"),
    }
}

fn today() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    portcullis_core::timefmt::utc_date(now)
}

pub async fn usage(cfg: Config, json: bool, a: UsageArgs) -> anyhow::Result<ExitCode> {
    // Checked before the store is opened: bad input touches nothing.
    let filters = UsageFilters { principal: a.principal, model: a.model, route: a.route };
    let q = UsageQuery::new(a.from.as_deref(), a.to.as_deref(), a.group_by.as_deref(), filters, &today())
        .map_err(bad_query)?;
    let o = open(cfg).await?;
    let result = async {
        let scope = scope_of(&o, &a.tenant).await?;
        let rows = o.guard.store().usage(&scope, &q.from, &q.to).await?;
        let report = q.report(&rows);
        print(json, &report, || table(&a.tenant, &report))?;
        Ok(ExitCode::SUCCESS)
    }
    .await;
    finish(o, result).await
}

/// Exact USD from nano-USD: at least 2 decimals, at most 9, no trailing zeros beyond 2.
fn usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let frac = format!("{:09}", n % 1_000_000_000);
    let frac = frac.trim_end_matches('0');
    let frac = if frac.len() < 2 { format!("{frac:0<2}") } else { frac.to_owned() };
    format!("{sign}${}.{frac}", n / 1_000_000_000)
}

fn cells(group_by: &[String], i: &UsageItem) -> Vec<String> {
    let dim = |v: &Option<String>| match v.as_deref() {
        Some("") => String::from("-"),
        Some(v) => v.to_owned(),
        None => String::new(),
    };
    let mut row: Vec<String> = group_by
        .iter()
        .map(|g| match g.as_str() {
            "day" => dim(&i.day),
            "principal" => dim(&i.principal),
            "model" => dim(&i.model),
            _ => dim(&i.route),
        })
        .collect();
    row.extend([
        i.requests.to_string(),
        i.status_2xx.to_string(),
        i.status_4xx.to_string(),
        i.status_5xx.to_string(),
        i.input_tokens.to_string(),
        i.output_tokens.to_string(),
        format!("{:.1}", i.avg_latency_ms),
        usd(i.cost_nanos),
    ]);
    row
}

/// A table: one row per group (dimensions left-aligned, numbers right-aligned) and the totals;
/// without grouping, the totals alone.
fn table(tenant: &str, r: &UsageReport) -> String {
    let grouping =
        if r.group_by.is_empty() { String::from("the whole range") } else { format!("by {}", r.group_by.join(", ")) };
    let mut out = format!("usage of tenant {tenant}, {} to {} (UTC), {grouping}\n", r.from, r.to);
    let mut header: Vec<String> = r.group_by.iter().map(|g| g.to_uppercase()).collect();
    header
        .extend(["REQUESTS", "2XX", "4XX", "5XX", "INPUT TOKENS", "OUTPUT TOKENS", "AVG MS", "COST"].map(String::from));
    let grouped = !r.group_by.is_empty() && !r.items.is_empty();
    let mut rows = vec![header];
    if grouped {
        rows.extend(r.items.iter().map(|i| cells(&r.group_by, i)));
    }
    let mut total = cells(&r.group_by, &r.totals);
    if let Some(first) = total.first_mut().filter(|_| !r.group_by.is_empty()) {
        *first = String::from("TOTAL");
    }
    rows.push(total);
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    let dims = r.group_by.len();
    let last = rows.len() - 1;
    for (n, row) in rows.iter().enumerate() {
        if n == last && grouped {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| if c < dims { format!("{v:<w$}", w = widths[c]) } else { format!("{v:>w$}", w = widths[c]) })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if r.items.is_empty() {
        out.push_str("(no usage in this range)\n");
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[test]
    fn costs_are_exact_dollars() {
        assert_eq!(usd(0), "$0.00");
        assert_eq!(usd(55_500_000), "$0.0555");
        assert_eq!(usd(1_500_000_000), "$1.50");
        assert_eq!(usd(12_000_000_001), "$12.000000001");
    }

    #[test]
    fn the_table_has_a_column_per_dimension_and_totals() {
        let item = |model: &str, requests: i64, cost: i64| UsageItem {
            model: Some(model.to_owned()),
            requests,
            status_2xx: requests,
            cost_nanos: cost,
            ..UsageItem::default()
        };
        let r = UsageReport {
            from: String::from("2026-12-01"),
            to: String::from("2026-12-02"),
            group_by: vec![String::from("model")],
            items: vec![item("", 2, 0), item("gpt-test", 3, 55_500_000)],
            totals: UsageItem { requests: 5, status_2xx: 5, cost_nanos: 55_500_000, ..UsageItem::default() },
        };
        let t = table("T", &r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "usage of tenant T, 2026-12-01 to 2026-12-02 (UTC), by model");
        assert!(lines[1].starts_with("MODEL     REQUESTS"), "{t}");
        assert!(lines[2].starts_with("-         ") && lines[3].starts_with("gpt-test"), "{t}");
        assert!(lines[5].starts_with("TOTAL") && lines[5].ends_with("$0.0555"), "{t}");
    }
}
