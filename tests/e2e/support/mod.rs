//! End-to-end test harness: real `redis-server`, Redis Cluster, `nginx` and `gatehouse`
//! processes on 127.0.0.1 with ephemeral ports, plus tiny std-only RESP and HTTP/1.1 clients.
//!
//! Why std-only and synchronous: the harness must be obviously correct and must not share a
//! runtime (or a bug) with the code under test. Every process a helper starts is killed and
//! reaped when the helper is dropped — also while a failing test unwinds — and every
//! temporary directory is removed, so a test run leaves no stray servers, zombies or files.
//! (A test binary killed with SIGKILL cannot clean up; nothing can.)
//!
//! Ports stay below 55535 because a Redis Cluster node also listens on port + 10000.
//! Helpers never touch the process environment: tests run in parallel threads.

// The companion modules' tests alone drive a browser, PostgreSQL, pages, Node and a receiver
// of POSTs (back-channel logouts, webhooks); the registry's alone a TLS document host.
#[cfg(feature = "accounts")]
mod chrome;
mod echo;
mod gatehouse;
mod http;
mod nginx;
#[cfg(feature = "accounts")]
mod node;
mod ports;
#[cfg(feature = "accounts")]
mod postgres;
mod process;
pub mod proxy;
// (Only the registry's tests and the logins bench use it.)
#[cfg(feature = "accounts")]
#[cfg_attr(not(feature = "registry"), allow(dead_code))]
mod receiver;
mod redis;
#[cfg(feature = "registry")]
mod tls;
#[cfg(feature = "accounts")]
mod web;

#[cfg(feature = "accounts")]
pub use chrome::*;
pub use echo::*;
pub use gatehouse::*;
pub use http::*;
pub use nginx::*;
#[cfg(feature = "accounts")]
pub use node::*;
pub use ports::*;
#[cfg(feature = "accounts")]
pub use postgres::*;
pub use process::*;
#[cfg(feature = "accounts")]
#[cfg_attr(not(feature = "registry"), allow(unused_imports))]
pub use receiver::*;
pub use redis::*;
#[cfg(feature = "registry")]
pub use tls::*;
#[cfg(feature = "accounts")]
pub use web::*;

use std::collections::HashMap;
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
