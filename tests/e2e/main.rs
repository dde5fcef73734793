//! The end-to-end tests, one binary: every file beside this one is a module of it, and all of
//! them share the harness in `support/` (real redis-server, Redis Cluster, nginx, Traefik,
//! Caddy, PostgreSQL, chromium and gatehouse processes on loopback, killed on drop), compiled
//! and linked once. `cargo test --test e2e MODULE::` runs one file's tests.
//!
//! The in-process tier (`server`, and the modules' flows driven through the real router) runs
//! beside them in the same binary.

mod support;

mod arxiv;
mod bad_input;
mod cli;
mod embedded;
mod faults;
mod flood;
mod forward_auth;
mod nginx;
mod nginx_config;
mod policy;
mod redis;
mod server;
mod shutdown;

#[cfg(feature = "accounts")]
mod accounts;
#[cfg(feature = "accounts")]
mod admin;
#[cfg(feature = "accounts")]
mod audit;
#[cfg(feature = "accounts")]
mod browser;
#[cfg(feature = "accounts")]
mod federation;
#[cfg(feature = "accounts")]
mod import;
#[cfg(feature = "accounts")]
mod look;
#[cfg(feature = "accounts")]
mod mail;
#[cfg(feature = "registry")]
mod oidc;
#[cfg(feature = "accounts")]
mod passkeys;
#[cfg(feature = "registry")]
mod registry;
#[cfg(feature = "accounts")]
mod roles;
#[cfg(feature = "accounts")]
mod second_factor;
#[cfg(feature = "registry")]
mod upgrade;
#[cfg(feature = "registry")]
mod userdata;
#[cfg(feature = "accounts")]
mod webhooks;
