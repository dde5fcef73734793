//! Prometheus metrics (prometheus-client), passed around explicitly; no global registry.
//!
//! Names are docs/architecture.md's, prefixed `gatehouse_`. Labels are bounded enums, never a user, a
//! path or a token. The `/auth` counters are resolved once at start, so the hot path only
//! increments an atomic.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Outcome of one `/auth` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow = 0,
    Deny = 1,
    Forbid = 2,
    Error = 3,
}

/// How the caller presented itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Session = 0,
    Bearer = 1,
    Anonymous = 2,
    None = 3,
}

const OUTCOMES: [&str; 4] = ["allow", "deny", "forbid", "error"];
const METHODS: [&str; 4] = ["session", "bearer", "anonymous", "none"];

type Labels = [(&'static str, &'static str); 2];

/// Bucket bounds from 25 µs to 1 s, in nanoseconds: a cache hit is a few microseconds, a
/// miss a Redis round trip.
const LATENCY_BOUNDS_NS: [u64; 15] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// A latency histogram in seconds whose `observe` is three relaxed atomic adds and no lock.
///
/// prometheus-client's own `Histogram` takes a mutex on every observation, which the
/// runtime's worker threads would contend for on every `/auth` answer. Buckets are stored
/// per bucket (not cumulative); the sum is kept in whole nanoseconds.
#[derive(Clone, Default)]
pub struct LatencyHistogram(Arc<HistogramInner>);

#[derive(Default)]
struct HistogramInner {
    /// One per bound, then +Inf.
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far (for tests and benches).
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .finish()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder takes per-bucket counts and accumulates them itself. The count is the
        // total of the buckets read, so a scrape racing an observation stays consistent.
        let mut count = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BOUNDS_NS.len() + 1);
        for (i, n) in self.0.buckets.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            count += n;
            let bound = LATENCY_BOUNDS_NS
                .get(i)
                .map_or(f64::INFINITY, |&b| b as f64 / 1e9);
            buckets.push((bound, n));
        }
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The store operations, as `store_requests_total{op}` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// A session read: the only store call on the `/auth` path (on a miss).
    Get = 0,
    /// A new session.
    Put,
    /// One session revoked.
    Revoke,
    /// All of a user's sessions revoked (or all but one).
    RevokeUser,
    /// A user's sessions listed.
    List,
    /// `last_seen` written, in the background.
    Touch,
    /// `/readyz`'s check.
    Ping,
}

impl StoreOp {
    pub const ALL: [StoreOp; 7] = [
        StoreOp::Get,
        StoreOp::Put,
        StoreOp::Revoke,
        StoreOp::RevokeUser,
        StoreOp::List,
        StoreOp::Touch,
        StoreOp::Ping,
    ];

    fn label(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::Put => "put",
            StoreOp::Revoke => "revoke",
            StoreOp::RevokeUser => "revoke_user",
            StoreOp::List => "list",
            StoreOp::Touch => "touch",
            StoreOp::Ping => "ping",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    process: Registry,
    /// The companion modules' metrics, added once at start (`add_module`).
    modules: std::sync::OnceLock<Registry>,
    auth: Vec<Counter>,
    pub auth_duration: LatencyHistogram,
    pub cache_hit: Counter,
    pub cache_miss: Counter,
    pub cache_negative: Counter,
    /// `store_requests_total{op, result}`, resolved once: [op][ok, error].
    store_requests: [[Counter; 2]; StoreOp::ALL.len()],
    pub store_duration: LatencyHistogram,
    jwt_signed: Family<[(&'static str, String); 1], Counter>,
    pub sessions_revoked: Counter,
    pub cache_entries: Gauge,
    rss: Gauge,
    cpu: Counter<f64, std::sync::atomic::AtomicU64>,
    open_fds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let auth_family = Family::<Labels, Counter>::default();
        registry.register(
            "auth_requests",
            "Answers of /auth by result and credential method",
            auth_family.clone(),
        );
        let mut auth = Vec::with_capacity(16);
        for o in OUTCOMES {
            for m in METHODS {
                auth.push(
                    auth_family
                        .get_or_create(&[("result", o), ("method", m)])
                        .clone(),
                );
            }
        }
        let auth_duration = LatencyHistogram::default();
        registry.register_with_unit(
            "auth_request_duration",
            "Time to answer /auth",
            Unit::Seconds,
            auth_duration.clone(),
        );
        let cache = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "cache_lookups",
            "In-process cache lookups by result",
            cache.clone(),
        );
        let cache_hit = cache.get_or_create(&[("result", "hit")]).clone();
        let cache_miss = cache.get_or_create(&[("result", "miss")]).clone();
        let cache_negative = cache.get_or_create(&[("result", "negative")]).clone();
        let store_requests = Family::<Labels, Counter>::default();
        registry.register(
            "store_requests",
            "Session store calls by operation and result",
            store_requests.clone(),
        );
        // Both results exist from the start, so that a rate() of errors is 0, not absent; and
        // the store path only increments an atomic, as /auth's own counters do.
        let store_requests = StoreOp::ALL.map(|op| {
            ["ok", "error"].map(|r| {
                store_requests
                    .get_or_create(&[("op", op.label()), ("result", r)])
                    .clone()
            })
        });
        let store_duration = LatencyHistogram::default();
        registry.register_with_unit(
            "store_request_duration",
            "Time of session store calls",
            Unit::Seconds,
            store_duration.clone(),
        );
        let jwt_signed = Family::default();
        registry.register("jwt_signed", "JWTs minted by key id", jwt_signed.clone());
        let sessions_revoked = Counter::default();
        registry.register(
            "sessions_revoked",
            "Sessions dropped from this instance's cache by revocation",
            sessions_revoked.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Sessions held in the in-process cache",
            cache_entries.clone(),
        );

        let mut process = Registry::with_prefix("process");
        let rss = Gauge::default();
        process.register_with_unit(
            "resident_memory",
            "Resident memory size",
            Unit::Bytes,
            rss.clone(),
        );
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        process.register_with_unit(
            "cpu",
            "User and system CPU time spent",
            Unit::Seconds,
            cpu.clone(),
        );
        let open_fds = Gauge::default();
        process.register("open_fds", "Open file descriptors", open_fds.clone());
        let start_time: Gauge = Gauge::default();
        process.register_with_unit(
            "start_time",
            "Start time since the Unix epoch",
            Unit::Seconds,
            start_time.clone(),
        );
        start_time.set(crate::session::unix_now() as i64);

        Metrics {
            registry,
            process,
            modules: std::sync::OnceLock::new(),
            auth,
            auth_duration,
            cache_hit,
            cache_miss,
            cache_negative,
            store_requests,
            store_duration,
            jwt_signed,
            sessions_revoked,
            cache_entries,
            rss,
            cpu,
            open_fds,
        }
    }

    /// `/auth` requests answered so far (all outcomes): how a shutdown tells that traffic
    /// has stopped, at no cost to the hot path.
    pub fn auth_requests(&self) -> u64 {
        self.auth.iter().map(Counter::get).sum()
    }

    #[inline]
    pub fn auth(&self, outcome: Outcome, method: AuthMethod) -> &Counter {
        &self.auth[outcome as usize * 4 + method as usize]
    }

    /// One store call: counted by operation and result, timed.
    pub fn store(&self, op: StoreOp, ok: bool, took: Duration) {
        self.store_requests[op as usize][usize::from(!ok)].inc();
        self.store_duration.observe(took);
    }

    pub fn jwt_signed(&self, kid: &str) {
        self.jwt_signed
            .get_or_create(&[("kid", kid.to_string())])
            .inc();
    }

    /// Exposes the companion modules' metrics beside the core's. Once: a second call is
    /// ignored (and is a bug in the caller).
    pub fn add_module(&self, registry: Registry) {
        if self.modules.set(registry).is_err() {
            tracing::error!("module metrics registered twice; the second set is ignored");
        }
    }

    /// The text exposition, with process metrics read now.
    pub fn encode(&self) -> String {
        self.read_process();
        let mut out = String::with_capacity(8192);
        encode_registry(&mut out, &self.registry).expect("writing to a String cannot fail");
        encode_registry(&mut out, &self.process).expect("writing to a String cannot fail");
        if let Some(modules) = self.modules.get() {
            encode_registry(&mut out, modules).expect("writing to a String cannot fail");
        }
        encode_eof(&mut out).expect("writing to a String cannot fail");
        out
    }

    fn read_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            {
                self.rss.set(kb * 1024);
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may contain spaces) start at ") ".
            if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) {
                let f: Vec<&str> = rest.split(' ').collect();
                // utime and stime are fields 14 and 15 of stat, 12 and 13 here, in clock
                // ticks (100 per second on Linux).
                if let (Some(u), Some(s)) = (f.get(11), f.get(12)) {
                    if let (Ok(u), Ok(s)) = (u.parse::<f64>(), s.parse::<f64>()) {
                        let now = (u + s) / 100.0;
                        let before = self.cpu.get();
                        if now > before {
                            self.cpu.inc_by(now - before);
                        }
                    }
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_designed_names() {
        let m = Metrics::new();
        m.auth(Outcome::Allow, AuthMethod::Session).inc();
        m.auth_duration.observe(Duration::from_micros(100));
        m.cache_hit.inc();
        m.store(StoreOp::Get, true, Duration::from_millis(1));
        m.store(StoreOp::Revoke, false, Duration::from_millis(1));
        m.jwt_signed("kid1");
        let text = m.encode();
        for name in [
            "gatehouse_auth_requests_total{result=\"allow\",method=\"session\"} 1",
            "gatehouse_auth_request_duration_seconds_bucket",
            "gatehouse_cache_lookups_total{result=\"hit\"} 1",
            "gatehouse_store_requests_total{op=\"get\",result=\"ok\"} 1",
            "gatehouse_store_requests_total{op=\"revoke\",result=\"error\"} 1",
            "gatehouse_store_requests_total{op=\"touch\",result=\"ok\"} 0",
            "gatehouse_store_request_duration_seconds_count",
            "gatehouse_jwt_signed_total{kid=\"kid1\"} 1",
            "gatehouse_sessions_revoked_total",
            "gatehouse_cache_entries",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn latency_histogram_buckets_are_cumulative_and_in_seconds() {
        let m = Metrics::new();
        for d in [
            Duration::from_micros(30),
            Duration::from_micros(30),
            Duration::from_millis(3),
            Duration::from_secs(2),
        ] {
            m.auth_duration.observe(d);
        }
        let text = m.encode();
        let buckets: Vec<(f64, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("gatehouse_auth_request_duration_seconds_bucket{le=\""))
            .map(|l| {
                let (le, n) = l.split_once("\"} ").unwrap();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, n.trim().parse().unwrap())
            })
            .collect();
        let at = |le: f64| {
            buckets
                .iter()
                .find(|b| b.0 == le || (b.0 - le).abs() < 1e-12)
                .unwrap()
                .1
        };
        assert_eq!(at(0.000025), 0);
        assert_eq!(at(0.00005), 2);
        assert_eq!(at(0.0025), 2);
        assert_eq!(at(0.005), 3);
        assert_eq!(at(1.0), 3);
        assert_eq!(at(f64::INFINITY), 4);
        assert!(
            text.contains("gatehouse_auth_request_duration_seconds_count 4"),
            "{text}"
        );
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("gatehouse_auth_request_duration_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 2.00306).abs() < 1e-9, "sum {sum}");
    }
}
