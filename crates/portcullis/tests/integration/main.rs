//! The one integration-test binary: the real `portcullis` binary over real HTTP, each area a
//! module, shared fixtures in `harness`. Servers bind port 0 and get their own data dir.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

mod harness;

mod audit;
mod browser;
mod budgets;
mod cli;
mod cors;
mod credentials;
mod decide;
mod http;
mod iplists;
mod isolation;
mod jwt;
mod keys;
mod limits;
mod metrics;
mod model_profiles;
mod nginx;
mod policies;
mod postgres;
mod proxy;
mod rbac;
mod scaleout;
mod sessions;
mod ui;
mod upstream;
mod usage;
