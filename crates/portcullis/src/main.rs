//! `portcullis`: one binary for the gateway (`serve`) and the operator's command line.
#![forbid(unsafe_code)]

mod cli;
mod cli_policy;
mod cli_profile;
mod cli_usage;
mod config;
mod runtime;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// glibc's allocator spent a seventh of the gateway's CPU under load (malloc/free with
// consolidation across threads); mimalloc's per-thread heaps make those calls cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "Multi-tenant security gateway and governance control plane")]
struct Args {
    /// TOML configuration file; `PORTCULLIS_*` environment variables override it.
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (embedded default: SQLite and audit files in the data dir; with
    /// PORTCULLIS_DATABASE_URL: PostgreSQL, see `portcullis migrate --help`).
    Serve,
    /// Create or upgrade the store schema (also done by `serve` at start).
    ///
    /// Embedded (no PORTCULLIS_DATABASE_URL): migrates the SQLite files in the data dir; `serve`
    /// does the same at every start.
    ///
    /// PostgreSQL needs two roles, both created beforehand by the DBA:
    ///
    ///   - the owner role, which owns the database's `portcullis` schema; it needs CREATE on
    ///     the database (e.g. `CREATE ROLE portcullis_owner LOGIN PASSWORD '…'; CREATE DATABASE
    ///     portcullis OWNER portcullis_owner;`). Its URL is PORTCULLIS_MIGRATION_DATABASE_URL and
    ///     only `migrate` uses it.
    ///
    ///   - the application role, a plain login role: not a superuser, no BYPASSRLS, owning
    ///     nothing (`CREATE ROLE portcullis_app LOGIN PASSWORD '…';`). Its URL is
    ///     PORTCULLIS_DATABASE_URL, used by `serve` and every CLI command.
    ///
    /// Then run, with both URLs set:
    ///
    ///   PORTCULLIS_MIGRATION_DATABASE_URL=postgres://portcullis_owner:…@db/portcullis
    ///   PORTCULLIS_DATABASE_URL=postgres://portcullis_app:…@db/portcullis portcullis migrate
    ///
    /// It creates the schema, tables and row-level-security policies, and grants the role named
    /// in PORTCULLIS_DATABASE_URL exactly what it needs (SELECT/INSERT/UPDATE/DELETE per table,
    /// USAGE on the schema and its sequences), never ownership; then checks, as that role, what
    /// `serve` checks. Safe to run again and from several hosts at once. `serve` and the CLI
    /// refuse a schema at another version, and refuse to start as a role that is a superuser,
    /// has BYPASSRLS or owns a table; when PORTCULLIS_MIGRATION_DATABASE_URL is also set they
    /// migrate at start.
    #[command(verbatim_doc_comment)]
    Migrate,
    /// Tenants: create, list, suspend, resume.
    #[command(subcommand)]
    Tenant(cli::TenantCmd),
    /// Operators and tenant users.
    #[command(subcommand)]
    User(cli::UserCmd),
    /// API keys: create (prints the key once), list, revoke, rotate.
    #[command(subcommand)]
    Key(cli::KeyCmd),
    /// The audit log: query, verify the hash chains and signed checkpoints.
    #[command(subcommand)]
    Audit(cli::AuditCmd),
    /// Tenant Cedar policies: check a file, create, update, delete, list, versions, schema.
    #[command(subcommand)]
    Policy(cli_policy::PolicyCmd),
    /// Model profiles: per role and deployment mode, the model, base URL, temperature and prices.
    #[command(subcommand)]
    ModelProfile(cli_profile::ProfileCmd),
    /// A tenant's usage (requests, tokens, latency, cost) by day, caller, model and route, as
    /// `GET /v1/usage` reports it; read from the store, where servers add their counts every
    /// `auth.cache_refresh_ms` (1 s by default).
    Usage(cli_usage::UsageArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        match args.command {
            Command::Serve => serve::run(cfg).await.map(|()| ExitCode::SUCCESS),
            Command::Migrate => cli::migrate(cfg, args.json).await,
            Command::Tenant(c) => cli::tenant(cfg, args.json, c).await,
            Command::User(c) => cli::user(cfg, args.json, c).await,
            Command::Key(c) => cli::key(cfg, args.json, c).await,
            Command::Audit(c) => cli::audit(cfg, args.json, c).await,
            Command::Policy(c) => cli_policy::policy(cfg, args.json, c).await,
            Command::ModelProfile(c) => cli_profile::profile(cfg, args.json, c).await,
            Command::Usage(a) => cli_usage::usage(cfg, args.json, a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
