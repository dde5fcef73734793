//! Side-by-side load benchmark: gatehouse against the ceilings it is measured by, in one run
//! on one machine, on loopback only, stopping everything it started.
//!
//! `bash benches/load.sh` (installs wrk, nginx and redis-server if missing, then runs
//! `cargo bench --bench load`). It starts a real `redis-server`, gatehouse (release build), a
//! bare hyper server that answers 200 with an empty body (this binary, re-run with
//! `--bare-hyper`), an nginx that answers `return 204` (the fastest possible external auth
//! server), and an nginx with one worker whose five protected locations serve a static file
//! after `auth_request` to: an internal `return 204`; the 204 nginx over keepalive; gatehouse
//! over keepalive; gatehouse without keepalive; the bare hyper server over keepalive (what
//! hyper alone costs behind nginx). Load comes from `wrk` (one thread, 16 connections).
//!
//! Every figure is the median of rounds that alternate candidate and ceiling, because the
//! machine is shared and noisy; what matters is the ratio measured in the same run. The
//! results are printed as a Markdown table and written to `target/load/report.{md,json}`.
//! Nothing here is an assertion: a benchmark reports, it does not fail.

// A bench uses a part of the harness.
#[allow(dead_code, unused_imports)]
#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse::credential::{self, TokenHash};
use gatehouse::session::SessionKind;
use gatehouse::session::{unix_now, Session};
use gatehouse::store::redis::Layout;
use serde::Serialize;
use support::*;

const ROUNDS: usize = 5;
const SECONDS: u32 = 3;
const CONNECTIONS: u32 = 16;
const MISS_SESSIONS: usize = 100_000;
const BIG_SESSIONS: usize = 1_000_000;

/// What `wrk` measured in one run.
#[derive(Clone, Debug, Default, Serialize)]
struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    requests: u64,
    errors: u64,
    non_2xx: u64,
    /// CPU time (user + system) per request of the nginx worker(s), µs; through nginx only.
    nginx_cpu_us: f64,
    /// CPU time per request of the auth server (gatehouse, or the 204 nginx), µs.
    server_cpu_us: f64,
}

/// One line of the report: a candidate, its ceiling, medians of alternating rounds.
#[derive(Debug, Serialize)]
struct Row {
    scenario: String,
    candidate: String,
    ceiling: String,
    candidate_run: Run,
    ceiling_run: Run,
    ratio_rps: f64,
    ratio_p99: f64,
    store_commands_per_request: Option<f64>,
    store_writes: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    machine: String,
    rows: Vec<Row>,
    idle_rss_bytes: u64,
    start_to_ready_ms: f64,
    rss_per_session_100k: f64,
    rss_per_session_1m: f64,
    cached_sessions_1m: u64,
    /// Cache misses answered per second (direct), and `redis-benchmark -t get` at the same
    /// concurrency against the same Redis.
    miss_rps: f64,
    redis_get_rps: f64,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(i) = argv.iter().position(|a| a == "--bare-hyper") {
        // `--pad N`: answer with an N-byte header, the size of gatehouse's answer, to tell the
        // cost of the bytes from the cost of the work.
        let pad = argv
            .iter()
            .position(|a| a == "--pad")
            .map_or(0, |j| argv[j + 1].parse().expect("pad bytes"));
        return bare_hyper(argv[i + 1].parse().expect("port"), pad);
    }
    if !argv.iter().any(|a| a == "--bench") {
        println!("load: run with `cargo bench --bench load` (or `bash benches/load.sh`)");
        return;
    }
    for tool in [
        "wrk",
        "redis-server",
        "redis-cli",
        "redis-benchmark",
        "nginx",
    ] {
        let _ = find_program(tool); // panics with a clear message when missing
    }
    let started = Instant::now();
    // `LOAD_ONLY=nginx`: only the scenarios through nginx (about 2 minutes).
    let only_nginx = std::env::var("LOAD_ONLY").is_ok_and(|v| v == "nginx");
    // `LOAD_ONLY=miss`: only the cache-miss scenario and its Redis baseline.
    let only_miss = std::env::var("LOAD_ONLY").is_ok_and(|v| v == "miss");
    let mut report = Report {
        machine: machine(),
        ..Default::default()
    };
    let work = TempDir::new("load");
    let www = work.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("ok.txt"), "ok\n").unwrap();

    let redis = RedisServer::start();
    let url = redis.url();

    // Start-up time and idle memory of a fresh process.
    let mut gh = Gatehouse::spawn_no_wait(&args(&[
        "--redis-url",
        &url,
        "--cache-capacity",
        "2000000",
        "--cache-ttl",
        "1h",
        "--log-level",
        "warn",
        "--workers",
        &std::env::var("LOAD_WORKERS").unwrap_or_else(|_| "0".into()),
    ]));
    let t0 = Instant::now();
    let admin = gh.admin_addr().to_string();
    while !try_http_request("GET", &admin, "/readyz", &[], b"", Duration::from_secs(1))
        .is_ok_and(|r| r.status == 200)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "gatehouse never became ready:\n{}",
            gh.logs()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    report.start_to_ready_ms = t0.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_millis(500));
    report.idle_rss_bytes = rss(gh.pid());
    let anon = Gatehouse::spawn(&args(&[
        "--redis-url",
        &url,
        "--anonymous",
        "allow",
        "--log-level",
        "warn",
    ]));

    let (mut bare, bare_port) = spawn_bare_hyper(None);
    let bare_pid = bare.id();
    let _bare_guard = KillOnDrop(&mut bare);

    let ceiling = Nginx::start(&render(
        "server {\n    listen 127.0.0.1:{{P}};\n    access_log off;\n    location / { return 204; }\n}\n",
        &[("P", free_port().to_string())],
    ));
    let nginx = Nginx::start(&render(
        NGINX,
        &[
            ("P", free_port().to_string()),
            ("GATEHOUSE", gh.addr().port().to_string()),
            ("CEILING", ceiling.addr().port().to_string()),
            ("BARE", bare_port.to_string()),
            ("WWW", www.display().to_string()),
        ],
    ));

    // One session for the hit scenarios.
    let token = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--redis-url",
        &url,
        "--sub",
        "bench",
        "--username",
        "bench",
        "--email",
        "bench@example.org",
    ]));
    let scripts = Scripts::new(work.path(), &token);
    let gh_url = format!("http://{}/auth", gh.addr());
    let anon_url = format!("http://{}/auth", anon.addr());
    let bare_url = format!("http://127.0.0.1:{bare_port}/");
    let via = |loc: &str| format!("http://{}/{loc}/ok.txt", nginx.addr());
    // Warm both methods into the cache.
    for s in [&scripts.cookie, &scripts.bearer] {
        wrk(&gh_url, s, &[], 1);
    }

    if !only_nginx && !only_miss {
        eprintln!("load: direct, cache hit");
        for (name, script) in [
            ("hit, cookie", &scripts.cookie),
            ("hit, bearer", &scripts.bearer),
        ] {
            redis.config_resetstat();
            let (c, b) = alternate(
                || wrk(&gh_url, script, &[], SECONDS),
                || wrk(&bare_url, script, &[], SECONDS),
            );
            let (per_req, writes) = store_load(&redis, c.requests * ROUNDS as u64);
            report.rows.push(row(
                &format!("direct {name}"),
                "gatehouse /auth",
                "bare hyper 200",
                c,
                b,
                Some(per_req),
                Some(writes),
            ));
        }
        eprintln!("load: direct, cache hit, one runtime worker each");
        {
            let one = Gatehouse::spawn(&args(&[
                "--redis-url",
                &url,
                "--workers",
                "1",
                "--log-level",
                "warn",
            ]));
            let (mut bare_one, bare_one_port) = spawn_bare_hyper(Some(1));
            let _guard = KillOnDrop(&mut bare_one);
            let one_url = format!("http://{}/auth", one.addr());
            let bare_one_url = format!("http://127.0.0.1:{bare_one_port}/");
            wrk(&one_url, &scripts.bearer, &[], 1);
            let (c, b) = alternate(
                || wrk(&one_url, &scripts.bearer, &[], SECONDS),
                || wrk(&bare_one_url, &scripts.bearer, &[], SECONDS),
            );
            report.rows.push(row(
                "direct hit, bearer, 1 worker",
                "gatehouse --workers 1",
                "bare hyper, 1 worker",
                c,
                b,
                None,
                None,
            ));
        }
        eprintln!("load: direct, denied and anonymous");
        let (c, b) = alternate(
            || wrk(&gh_url, &scripts.random, &[], SECONDS),
            || wrk(&bare_url, &scripts.random, &[], SECONDS),
        );
        report.rows.push(row(
            "direct denied (random tokens)",
            "gatehouse /auth",
            "bare hyper 200",
            c,
            b,
            None,
            None,
        ));
        let (c, b) = alternate(
            || wrk(&anon_url, &scripts.none, &[], SECONDS),
            || wrk(&bare_url, &scripts.none, &[], SECONDS),
        );
        report.rows.push(row(
            "direct anonymous (allow)",
            "gatehouse /auth",
            "bare hyper 200",
            c,
            b,
            None,
            None,
        ));
    }
    if !only_miss {
        eprintln!("load: through nginx, cache hit");
        // Every round runs both credentials against every location, so that cookie and bearer
        // see the same machine: run one block after the other and the drift of a shared machine
        // between blocks (the ceiling itself moved 7-20%) reads as a difference between them.
        // "bare": the bare hyper server as the auth upstream, so that hyper's own cost behind
        // nginx is measured, not assumed.
        let locations = [
            "ceiling",
            "gatehouse",
            "internal",
            "gatehouse-nokeepalive",
            "bare",
        ];
        let credentials = [
            ("hit, cookie", &scripts.cookie),
            ("hit, bearer", &scripts.bearer),
        ];
        let mut runs: Vec<Vec<Vec<Run>>> =
            vec![vec![Vec::new(); locations.len()]; credentials.len()];
        for _ in 0..ROUNDS {
            for (c, (_, script)) in credentials.iter().enumerate() {
                for (i, loc) in locations.iter().enumerate() {
                    let server = match *loc {
                        "ceiling" => ceiling.worker_pids(),
                        "internal" => Vec::new(),
                        "bare" => vec![bare_pid],
                        _ => vec![gh.pid()],
                    };
                    runs[c][i].push(wrk_cpu(&via(loc), script, &nginx.worker_pids(), &server));
                }
            }
        }
        for (c, (name, _)) in credentials.iter().enumerate() {
            let [ceil, gate, internal, nokeep, bare] = [0, 1, 2, 3, 4].map(|i| median(&runs[c][i]));
            report.rows.push(row(
                &format!("nginx {name}"),
                "gatehouse, keepalive",
                "204 nginx, keepalive",
                gate.clone(),
                ceil.clone(),
                None,
                None,
            ));
            report.rows.push(row(
                &format!("nginx {name}"),
                "gatehouse, no keepalive",
                "gatehouse, keepalive",
                nokeep,
                gate,
                None,
                None,
            ));
            report.rows.push(row(
                &format!("nginx {name}"),
                "bare hyper, keepalive",
                "204 nginx, keepalive",
                bare,
                ceil.clone(),
                None,
                None,
            ));
            report.rows.push(row(
                &format!("nginx {name}"),
                "204 nginx, keepalive",
                "internal return 204",
                ceil,
                internal,
                None,
                None,
            ));
        }
    }

    if !only_nginx {
        eprintln!("load: cache miss ({MISS_SESSIONS} sessions)");
        let tokens = create_sessions(&redis, work.path(), "miss", MISS_SESSIONS);
        let rss_before = rss(gh.pid());
        let mut miss_runs = (Vec::new(), Vec::new());
        let mut miss_requests = 0;
        redis.config_resetstat();
        for _ in 0..ROUNDS {
            // Every round starts cold: drop everything this instance cached.
            redis.cmd(&["PUBLISH", &Layout("gh:").channel(), "*"]);
            std::thread::sleep(Duration::from_millis(200));
            // Each round is cold and starts at the first token; a round (about 50k requests at
            // 3 s) never reaches the end of the 100k, so no session is asked for twice.
            let offset = "0".to_string();
            let c = wrk(
                &gh_url,
                &scripts.tokens,
                &[tokens.to_str().unwrap(), &offset],
                SECONDS,
            );
            miss_requests += c.requests;
            miss_runs.0.push(c);
            miss_runs.1.push(wrk(
                &bare_url,
                &scripts.tokens,
                &[tokens.to_str().unwrap(), &offset],
                SECONDS,
            ));
        }
        let (per_req, writes) = store_load(&redis, miss_requests);
        let (c, b) = (median(&miss_runs.0), median(&miss_runs.1));
        // The store's own ceiling at the same concurrency: a miss is one GET and one
        // signature, so decisions per second on misses are measured against GETs per second.
        let redis_get = redis_benchmark_get(&redis);
        report.miss_rps = c.rps;
        report.redis_get_rps = redis_get;
        report.rows.push(row(
            "direct miss (each request a new session)",
            "gatehouse /auth",
            "bare hyper 200",
            c,
            b,
            Some(per_req),
            Some(writes),
        ));
        if !only_miss {
            eprintln!("load: memory with 100k cached sessions");
            redis.cmd(&["PUBLISH", &Layout("gh:").channel(), "*"]);
            std::thread::sleep(Duration::from_millis(300));
            let rss_empty = rss(gh.pid()).min(rss_before);
            warm(&gh, &gh_url, &scripts.tokens, &tokens, MISS_SESSIONS);
            let entries = cache_entries(&gh);
            report.rss_per_session_100k =
                (rss(gh.pid()).saturating_sub(rss_empty)) as f64 / entries.max(1) as f64;

            eprintln!("load: memory with 1M cached sessions (creating them takes a while)");
            let big = create_sessions(&redis, work.path(), "big", BIG_SESSIONS);
            redis.cmd(&["PUBLISH", &Layout("gh:").channel(), "*"]);
            std::thread::sleep(Duration::from_millis(500));
            let rss_empty = rss(gh.pid());
            warm(&gh, &gh_url, &scripts.tokens, &big, BIG_SESSIONS);
            report.cached_sessions_1m = cache_entries(&gh);
            report.rss_per_session_1m = (rss(gh.pid()).saturating_sub(rss_empty)) as f64
                / report.cached_sessions_1m.max(1) as f64;
        }
    }
    let md = markdown(&report);
    println!("{md}");
    let out = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("load");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.md"), &md).unwrap();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    eprintln!(
        "load: done in {:?}; report in {}",
        started.elapsed(),
        out.display()
    );
    gh.kill();
}

const NGINX: &str = r#"
upstream gatehouse { server 127.0.0.1:{{GATEHOUSE}}; keepalive 32; keepalive_timeout 5s; }
upstream ceiling { server 127.0.0.1:{{CEILING}}; keepalive 32; }
upstream bare { server 127.0.0.1:{{BARE}}; keepalive 32; }
server {
    listen 127.0.0.1:{{P}};
    access_log off;
    # Identical subrequest settings for the 204 ceiling and for gatehouse.
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Original-URI $request_uri;
    proxy_set_header X-Original-Method $request_method;
    proxy_set_header X-Original-Host $host;
    location = /_auth_internal { internal; return 204; }
    location = /_auth_ceiling { internal; proxy_pass http://ceiling/; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /_auth_gatehouse { internal; proxy_pass http://gatehouse/auth; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /_auth_gatehouse_nokeepalive { internal; proxy_pass http://127.0.0.1:{{GATEHOUSE}}/auth; }
    location = /_auth_bare { internal; proxy_pass http://bare/; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location /internal/ { auth_request /_auth_internal; alias {{WWW}}/; }
    location /bare/ {
        auth_request /_auth_bare;
        auth_request_set $jwt $upstream_http_authorization;
        alias {{WWW}}/;
    }
    location /ceiling/ {
        auth_request /_auth_ceiling;
        auth_request_set $jwt $upstream_http_authorization;
        alias {{WWW}}/;
    }
    location /gatehouse/ {
        auth_request /_auth_gatehouse;
        auth_request_set $jwt $upstream_http_authorization;
        alias {{WWW}}/;
    }
    location /gatehouse-nokeepalive/ { auth_request /_auth_gatehouse_nokeepalive; alias {{WWW}}/; }
}
"#;

/// The wrk scripts of every scenario, written once.
struct Scripts {
    cookie: PathBuf,
    bearer: PathBuf,
    none: PathBuf,
    random: PathBuf,
    tokens: PathBuf,
}

/// Prints what wrk measured as one JSON line, percentiles included (wrk's own output stops
/// at p99).
const DONE: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('JSON {"requests":%d,"duration_us":%d,"errors":%d,"non_2xx":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

impl Scripts {
    fn new(dir: &Path, token: &str) -> Scripts {
        let write = |name: &str, body: String| {
            let p = dir.join(name);
            std::fs::write(&p, body + DONE).unwrap();
            p
        };
        Scripts {
            // Static requests: wrk builds them once, as fast as wrk can go.
            cookie: write(
                "cookie.lua",
                format!("wrk.headers['Cookie'] = '_ga=GA1.2.3; gatehouse_session={token}; theme=dark'\n"),
            ),
            bearer: write("bearer.lua", format!("wrk.headers['Authorization'] = 'Bearer {token}'\n")),
            none: write("none.lua", String::new()),
            // Garbage of the right length: refused on its checksum.
            random: write(
                "random.lua",
                r#"
local pool = {}
local chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
init = function(args)
  math.randomseed(os.time())
  for n = 1, 10000 do
    local t = {'gts_'}
    for k = 1, 49 do local c = math.random(1, #chars); t[#t + 1] = chars:sub(c, c) end
    pool[n] = wrk.format(nil, nil, {['Authorization'] = 'Bearer ' .. table.concat(t)})
  end
  i = 0
end
request = function() i = i + 1; if i > #pool then i = 1 end; return pool[i] end
"#
                .into(),
            ),
            // A different session on every request: args are the token file and a start offset.
            tokens: write(
                "tokens.lua",
                r#"
local reqs = {}
init = function(args)
  local skip = tonumber(args[2] or '0')
  local n = 0
  for line in io.lines(args[1]) do
    n = n + 1
    if n > skip then reqs[#reqs + 1] = line end
  end
  i = 0
end
request = function()
  i = i + 1
  if i > #reqs then i = 1 end
  return wrk.format(nil, nil, {['Authorization'] = 'Bearer ' .. reqs[i]})
end
"#
                .into(),
            ),
        }
    }
}

fn wrk(url: &str, script: &Path, script_args: &[&str], seconds: u32) -> Run {
    let out = Command::new(find_program("wrk"))
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .arg("--")
        .args(script_args)
        .output()
        .expect("run wrk");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no result:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Run {
        rps: n("requests") / (n("duration_us") / 1e6),
        p50_us: n("p50"),
        p99_us: n("p99"),
        p999_us: n("p999"),
        requests: n("requests") as u64,
        errors: n("errors") as u64,
        non_2xx: n("non_2xx") as u64,
        ..Run::default()
    }
}

/// User + system CPU time of `pids` so far, in µs (from `/proc/<pid>/stat`). Clock ticks are
/// 10 ms, fine over a run of tens of thousands of requests; CPU time per request is much
/// steadier than requests per second on a shared machine.
fn cpu_us(pids: &[u32]) -> f64 {
    // USER_HZ, the unit of /proc's times, is 100 on Linux whatever the kernel's HZ.
    let tick_us = 1e6 / 100.0;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
            let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
            let f: Vec<&str> = rest.split(' ').collect();
            let ticks = |i: usize| {
                f.get(i - 3)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (ticks(14) + ticks(15)) * tick_us
        })
        .sum()
}

/// `wrk` through nginx, with the CPU time per request of nginx's workers and of the auth
/// server's processes.
fn wrk_cpu(url: &str, script: &Path, nginx: &[u32], server: &[u32]) -> Run {
    let (n0, s0) = (cpu_us(nginx), cpu_us(server));
    let run = wrk(url, script, &[], SECONDS);
    let (n1, s1) = (cpu_us(nginx), cpu_us(server));
    let per = |d: f64| d / run.requests.max(1) as f64;
    Run {
        nginx_cpu_us: per(n1 - n0),
        server_cpu_us: per(s1 - s0),
        ..run
    }
}

/// Runs `a` and `b` in alternation and returns the medians of each.
fn alternate(mut a: impl FnMut() -> Run, mut b: impl FnMut() -> Run) -> (Run, Run) {
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ra.push(a());
        rb.push(b());
    }
    (median(&ra), median(&rb))
}

/// Medians taken figure by figure.
fn median(runs: &[Run]) -> Run {
    let med = |f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    Run {
        rps: med(|r| r.rps),
        p50_us: med(|r| r.p50_us),
        p99_us: med(|r| r.p99_us),
        p999_us: med(|r| r.p999_us),
        requests: med(|r| r.requests as f64) as u64,
        errors: runs.iter().map(|r| r.errors).sum(),
        non_2xx: runs.iter().map(|r| r.non_2xx).sum(),
        nginx_cpu_us: med(|r| r.nginx_cpu_us),
        server_cpu_us: med(|r| r.server_cpu_us),
    }
}

fn row(
    scenario: &str,
    candidate: &str,
    ceiling: &str,
    c: Run,
    b: Run,
    per_req: Option<f64>,
    writes: Option<u64>,
) -> Row {
    Row {
        scenario: scenario.into(),
        candidate: candidate.into(),
        ceiling: ceiling.into(),
        ratio_rps: c.rps / b.rps,
        ratio_p99: c.p99_us / b.p99_us.max(1.0),
        candidate_run: c,
        ceiling_run: b,
        store_commands_per_request: per_req,
        store_writes: writes,
    }
}

/// Store commands per request since the last reset, and how many of them were writes.
fn store_load(redis: &RedisServer, requests: u64) -> (f64, u64) {
    let stats = redis.commandstats();
    let ignore = |c: &str| {
        c.starts_with("info")
            || c.starts_with("config")
            || c == "ping"
            || c == "publish"
            || c == "subscribe"
    };
    let total: u64 = stats
        .iter()
        .filter(|(c, _)| !ignore(c))
        .map(|(_, n)| n)
        .sum();
    let writes: u64 = stats
        .iter()
        .filter(|(c, _)| {
            [
                "set", "del", "sadd", "srem", "expire", "pexpire", "hset", "incr",
            ]
            .contains(&c.as_str())
        })
        .map(|(_, n)| n)
        .sum();
    (total as f64 / requests.max(1) as f64, writes)
}

/// Writes `n` sessions straight into Redis (`redis-cli --pipe`) and their tokens to a file.
fn create_sessions(redis: &RedisServer, dir: &Path, name: &str, n: usize) -> PathBuf {
    let now = unix_now();
    let tokens_path = dir.join(format!("{name}.tokens"));
    let resp_path = dir.join(format!("{name}.resp"));
    let mut tokens = std::io::BufWriter::new(std::fs::File::create(&tokens_path).unwrap());
    let mut resp = std::io::BufWriter::new(std::fs::File::create(&resp_path).unwrap());
    for i in 0..n {
        let token = credential::generate(SessionKind::User);
        let session = Session {
            username: Some(format!("user{i}")),
            email: Some(format!("user{i}@example.org")),
            scopes: vec!["read".into()],
            ..Session::new(format!("user-{i}"), now, now + 7200)
        };
        let key = Layout("gh:").session(&TokenHash::of(token.expose()));
        let value = serde_json::to_string(&session).unwrap();
        write!(
            resp,
            "*5\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n$2\r\nEX\r\n$4\r\n7200\r\n",
            key.len(),
            value.len()
        )
        .unwrap();
        writeln!(tokens, "{}", token.expose()).unwrap();
    }
    drop((tokens, resp));
    let status = Command::new(find_program("redis-cli"))
        .args(["-p", &redis.port().to_string(), "--pipe"])
        .stdin(std::fs::File::open(&resp_path).unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "redis-cli --pipe failed");
    tokens_path
}

/// `redis-benchmark -t get` against `redis` with as many clients as wrk has connections: the
/// GETs per second (the median of three runs).
fn redis_benchmark_get(redis: &RedisServer) -> f64 {
    let mut runs: Vec<f64> = (0..3)
        .map(|_| {
            let out = Command::new(find_program("redis-benchmark"))
                .args(["-p", &redis.port().to_string(), "-t", "get", "-q", "--csv"])
                .args(["-c", &CONNECTIONS.to_string(), "-n", "300000"])
                .output()
                .expect("run redis-benchmark");
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .find_map(|l| l.strip_prefix("\"GET\",\""))
                .and_then(|rest| rest.split('"').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("redis-benchmark printed no GET rate:\n{text}"))
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// Drives misses until (about) `n` sessions are cached, or 3 minutes pass.
fn warm(gh: &Gatehouse, url: &str, script: &Path, tokens: &Path, n: usize) {
    let start = Instant::now();
    let mut offset = 0u64;
    while (cache_entries(gh) as usize) < n * 99 / 100 && start.elapsed() < Duration::from_secs(180)
    {
        let r = wrk(
            url,
            script,
            &[tokens.to_str().unwrap(), &offset.to_string()],
            10,
        );
        offset = (offset + r.requests) % n as u64;
    }
}

fn cache_entries(gh: &Gatehouse) -> u64 {
    let body = http_get(gh.admin_addr(), "/metrics", &[]).body;
    body.lines()
        .find_map(|l| l.strip_prefix("gatehouse_cache_entries "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!("{cpus} cores, {model}")
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Machine: {}. wrk: 1 thread, {CONNECTIONS} connections, {SECONDS} s per run, medians of {ROUNDS} alternating rounds.\n", r.machine);
    let _ = writeln!(s, "| scenario | candidate | req/s | p50 µs | p99 µs | p99.9 µs | ceiling | req/s | p99 µs | ratio req/s | ratio p99 | store cmds/req |");
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"
    );
    for row in &r.rows {
        let (c, b) = (&row.candidate_run, &row.ceiling_run);
        let store = match (row.store_commands_per_request, row.store_writes) {
            (Some(p), Some(w)) => format!("{p:.2} ({w} writes)"),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {} |",
            row.scenario,
            row.candidate,
            c.rps,
            c.p50_us,
            c.p99_us,
            c.p999_us,
            row.ceiling,
            b.rps,
            b.p99_us,
            row.ratio_rps,
            row.ratio_p99,
            store
        );
    }
    let _ = writeln!(
        s,
        "\nCPU time per request through nginx (µs, user + system, medians):\n\n| scenario | auth server | nginx worker | auth server | total |\n|---|---|---:|---:|---:|"
    );
    let mut shown = std::collections::HashSet::new();
    for row in r.rows.iter().filter(|r| r.scenario.starts_with("nginx")) {
        for (name, run) in [
            (&row.candidate, &row.candidate_run),
            (&row.ceiling, &row.ceiling_run),
        ] {
            if run.nginx_cpu_us > 0.0 && shown.insert((&row.scenario, name)) {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {:.1} | {:.1} |",
                    row.scenario,
                    name,
                    run.nginx_cpu_us,
                    run.server_cpu_us,
                    run.nginx_cpu_us + run.server_cpu_us
                );
            }
        }
    }
    if r.redis_get_rps > 0.0 {
        let _ = writeln!(
            s,
            "\n| cache misses | per second | ratio |\n|---|---:|---:|\n| gatehouse /auth, each request a new session | {:.0} | {:.2} |\n| redis-benchmark -t get, {CONNECTIONS} clients, same Redis | {:.0} | 1.00 |",
            r.miss_rps,
            r.miss_rps / r.redis_get_rps,
            r.redis_get_rps
        );
    }
    if r.idle_rss_bytes == 0 {
        return s; // LOAD_ONLY=miss measures no memory
    }
    let _ = writeln!(s, "\n| memory and start-up | value |\n|---|---:|");
    let _ = writeln!(
        s,
        "| idle RSS | {:.1} MiB |",
        r.idle_rss_bytes as f64 / 1048576.0
    );
    let _ = writeln!(
        s,
        "| process start to /readyz 200 | {:.0} ms |",
        r.start_to_ready_ms
    );
    let _ = writeln!(
        s,
        "| RSS per cached session (100k) | {:.0} bytes |",
        r.rss_per_session_100k
    );
    let _ = writeln!(
        s,
        "| RSS per cached session ({} cached) | {:.0} bytes |",
        r.cached_sessions_1m, r.rss_per_session_1m
    );
    s
}

/// Starts the bare hyper ceiling (this binary again) on a free port; `workers` as gatehouse's
/// `--workers` (tokio reads `TOKIO_WORKER_THREADS`), `None` for one per CPU.
fn spawn_bare_hyper(workers: Option<usize>) -> (std::process::Child, u16) {
    let port = free_port();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--bare-hyper", &port.to_string()])
        .stdout(Stdio::null());
    if let Some(n) = workers {
        cmd.env("TOKIO_WORKER_THREADS", n.to_string());
    }
    let child = cmd.spawn().expect("bare hyper server");
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "bare hyper server did not start"
    );
    (child, port)
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The in-process ceiling: hyper answering 200 with an empty body, on the same runtime
/// flavour and HTTP/1 settings as gatehouse.
fn bare_hyper(port: u16, pad: usize) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    let mut resp =
                        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                    if pad > 0 {
                        let value = hyper::header::HeaderValue::from_str(&"x".repeat(pad)).unwrap();
                        resp.headers_mut()
                            .insert(hyper::header::AUTHORIZATION, value);
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
