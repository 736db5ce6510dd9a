//! Observability against real servers: `/metrics` counts what happened and
//! parses as the Prometheus text format, `/readyz` follows the real health
//! of each backend (PostgreSQL and Redis cut by the fault proxy, a Kafka
//! broker killed and started again), and log lines carry their request
//! and session spans.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use chat_proto as pb;
use chat_server::config::{BusBackend, RegistryBackend, StoreBackend};
use chat_test_support::fault::Proxy;
use chat_test_support::process::{free_addr, free_service_port, Broker};
use chat_test_support::services::{fresh_postgres, postgres_addr, redis_url, unique};
use chat_test_support::{cluster_node, http, http_with, send_request, TestServer, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;

// ------------------------------------------------- a strict text parser

/// One scrape of `/metrics`, parsed: every sample by name and labels.
struct Scrape {
    samples: HashMap<(String, BTreeMap<String, String>), f64>,
    text: String,
}

impl Scrape {
    /// The value of `name` with exactly `labels`; the series must exist.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        *self
            .samples
            .get(&(name.to_owned(), labels.clone()))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    fn value(&self, name: &str) -> f64 {
        self.get(name, &[])
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Fails the parse with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

type Labels = BTreeMap<String, String>;

/// `k="v",k="v"` (the braces removed) into a map.
fn parse_labels(mut s: &str, line: &str) -> Result<Labels, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (name, rest) = s
            .split_once("=\"")
            .ok_or_else(|| format!("label without a quoted value: {line}"))?;
        ensure!(is_name(name), "label name {name:?}: {line}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}: {line}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value: {line}")),
            }
        };
        ensure!(
            labels.insert(name.to_owned(), value).is_none(),
            "label {name} twice: {line}"
        );
        s = &rest[end + 1..];
        if !s.is_empty() {
            s = s
                .strip_prefix(',')
                .ok_or_else(|| format!("labels not separated by commas: {line}"))?;
        }
    }
    Ok(labels)
}

fn parse_value(s: &str, line: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}: {line}")),
    }
}

/// The family a sample belongs to: histogram samples end in `_bucket`,
/// `_sum` or `_count`.
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

/// Parses the Prometheus text exposition format strictly: every line is a
/// `# HELP`, a `# TYPE` (once per family, before its samples), a sample
/// of a typed family with valid name, labels and value, or blank; no
/// series twice; counters are not negative; each histogram's buckets are
/// cumulative and end with `+Inf` equal to its `_count`.
fn parse(text: &str) -> Result<Scrape, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = HashMap::new();
    let mut samples: HashMap<(String, Labels), f64> = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let (keyword, rest) = rest
                .split_once(' ')
                .ok_or_else(|| format!("a comment without a keyword: {line}"))?;
            let (name, what) = rest
                .split_once(' ')
                .ok_or_else(|| format!("a comment without a name and text: {line}"))?;
            ensure!(is_name(name), "metric name {name:?}: {line}");
            match keyword {
                "TYPE" => {
                    ensure!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&what),
                        "type {what:?}: {line}"
                    );
                    ensure!(
                        types.insert(name.to_owned(), what.to_owned()).is_none(),
                        "TYPE of {name} twice"
                    );
                }
                "HELP" => {
                    ensure!(!what.trim().is_empty(), "empty HELP: {line}");
                    ensure!(helps.insert(name.to_owned(), ()).is_none(), "HELP twice");
                }
                other => return Err(format!("unknown comment {other:?}: {line}")),
            }
            continue;
        }
        ensure!(!line.starts_with('#'), "comment without a space: {line}");
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("not `series value`: {line}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or_else(|| format!("labels do not end with }}: {line}"))?;
                (name, parse_labels(labels, line)?)
            }
            None => (series, BTreeMap::new()),
        };
        ensure!(is_name(name), "metric name {name:?}: {line}");
        let value = parse_value(value, line)?;
        let family = family(name, &types);
        ensure!(
            types.contains_key(family),
            "sample before (or without) the TYPE of its family: {line}"
        );
        ensure!(
            samples.insert((name.to_owned(), labels), value).is_none(),
            "series twice: {line}"
        );
    }
    for (name, kind) in &types {
        ensure!(helps.contains_key(name), "{name} has no HELP");
        if kind == "counter" {
            for ((sample, _), value) in &samples {
                ensure!(
                    sample != name || *value >= 0.0,
                    "counter {name} is negative"
                );
            }
        }
        if kind != "histogram" {
            continue;
        }
        let bucket = format!("{name}_bucket");
        let mut buckets = Vec::new();
        for ((sample, labels), value) in &samples {
            if *sample == bucket {
                let le = labels
                    .get("le")
                    .ok_or_else(|| format!("{name}: a bucket without le"))?;
                buckets.push((parse_value(le, "le")?, *value));
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        ensure!(buckets.len() > 1, "{name} has buckets");
        ensure!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: buckets are not cumulative: {buckets:?}"
        );
        let (last_le, last) = buckets[buckets.len() - 1];
        ensure!(last_le == f64::INFINITY, "{name} does not end with +Inf");
        let count = samples
            .get(&(format!("{name}_count"), BTreeMap::new()))
            .ok_or_else(|| format!("{name} has no _count"))?;
        ensure!(
            last == *count,
            "{name}: +Inf bucket {last} != count {count}"
        );
        ensure!(
            samples.contains_key(&(format!("{name}_sum"), BTreeMap::new())),
            "{name} has no _sum"
        );
    }
    Ok(Scrape {
        samples,
        text: text.to_owned(),
    })
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let answer = http(addr, "GET", "/metrics", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    parse(&answer.body).unwrap_or_else(|why| panic!("{why}\n{}", answer.body))
}

/// Scrapes until `check` holds; fails after [`WAIT`].
async fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let started = tokio::time::Instant::now();
    loop {
        let now = scrape(addr).await;
        if check(&now) {
            return now;
        }
        assert!(
            started.elapsed() < WAIT,
            "{what}: not within {WAIT:?}\n{}",
            now.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_parser_refuses_what_prometheus_refuses() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\",y=\"\"} 3\n\n\
                # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                h_sum 0.5\nh_count 2\n";
    let parsed = parse(good).unwrap();
    assert_eq!(parsed.get("a_total", &[("x", "1\""), ("y", "")]), 3.0);
    assert_eq!(parsed.value("h_count"), 2.0);
    for bad in [
        "a_total 1\n",
        "# TYPE a counter\n# HELP a A.\na{x=1} 1\n",
        "# TYPE a counter\n# HELP a A.\na{x=\"1\"y=\"2\"} 1\n",
        "# TYPE a counter\n# HELP a A.\na one\n",
        "# TYPE a counter\n# HELP a A.\na -1\n",
        "# TYPE a counter\n# HELP a A.\na 1\na 2\n",
        "# TYPE a counter\na 1\n",
        "# TYPE a gauge\n# TYPE a gauge\n# HELP a A.\n",
        "# TYPE h histogram\n# HELP h H.\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
        "# TYPE h histogram\n# HELP h H.\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        "# TYPE 1a counter\n",
        "#TYPE a counter\n",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}

// ------------------------------------------------------------- /metrics

/// Two nodes of one cluster (PostgreSQL, Redis registry and bus): alice on
/// A sends N messages to bob on B. A counts N accepted and N published
/// records, B N records received and N messages delivered, with as many
/// latency samples; refused sends are counted by reason; the session
/// gauges follow the live sessions back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sends_deliveries_and_sessions_across_two_nodes() {
    const N: f64 = 20.0;
    let postgres = fresh_postgres().await;
    let prefix = format!("{}:", unique("obs"));
    let configure = |node: String| {
        let (postgres, prefix) = (postgres.clone(), prefix.clone());
        move |c: &mut chat_server::Config| cluster_node(c, &node, &postgres, &prefix)
    };
    let a = TestServer::start_with(configure(unique("a-"))).await;
    let b = TestServer::start_with(configure(unique("b-"))).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;

    let fresh = scrape(a.http_addr).await;
    for name in [
        "chat_sessions",
        "chat_messages_accepted_total",
        "chat_messages_delivered_total",
        "chat_bus_records_published_total",
        "chat_bus_records_received_total",
        "chat_store_failures_total",
        "chat_registry_failures_total",
        "chat_send_to_commit_seconds_count",
    ] {
        assert_eq!(fresh.value(name), 0.0, "{name} of a fresh server");
    }
    for reason in chat_server::telemetry::FAILURE_REASONS {
        assert_eq!(
            fresh.get("chat_messages_failed_total", &[("reason", reason)]),
            0.0
        );
    }

    let mut alice_live = a.connect(&alice).await;
    let mut bob_live = b.connect(&bob).await;
    scrape_until(a.http_addr, "alice's session counted", |s| {
        s.value("chat_sessions") == 1.0
    })
    .await;
    scrape_until(b.http_addr, "bob's session counted", |s| {
        s.value("chat_sessions") == 1.0
    })
    .await;

    for i in 0..N as usize {
        alice_live
            .send_to("bob", &format!("m{i}"), &format!("k{i}"))
            .await;
        let ack = alice_live.ack().await;
        assert!(ack.error.is_none(), "{ack:?}");
        assert_eq!(bob_live.message().await.body, format!("m{i}"));
    }
    // A retry of a committed send is acknowledged, not accepted again.
    alice_live.send_to("bob", "m0", "k0").await;
    assert!(alice_live.ack().await.error.is_none());

    let on_a = scrape(a.http_addr).await;
    assert_eq!(on_a.value("chat_messages_accepted_total"), N);
    assert_eq!(on_a.value("chat_send_to_commit_seconds_count"), N);
    assert!(on_a.value("chat_send_to_commit_seconds_sum") > 0.0);
    assert_eq!(on_a.value("chat_bus_records_published_total"), N);
    assert_eq!(on_a.value("chat_bus_publish_failures_total"), 0.0);
    assert_eq!(
        on_a.value("chat_messages_delivered_total"),
        0.0,
        "the sender's own session gets acks, not deliveries"
    );
    // Bob's delivery is counted when his stream has it: it has.
    let on_b = scrape(b.http_addr).await;
    assert_eq!(on_b.value("chat_messages_delivered_total"), N);
    assert_eq!(on_b.value("chat_delivery_latency_seconds_count"), N);
    assert_eq!(on_b.value("chat_bus_records_received_total"), N);
    assert_eq!(on_b.value("chat_bus_record_age_seconds_count"), N);
    assert_eq!(on_b.value("chat_messages_accepted_total"), 0.0);
    let within_5s = on_b.get("chat_delivery_latency_seconds_bucket", &[("le", "5")]);
    assert_eq!(within_5s, N, "every delivery took less than 5 s");
    for node in [&on_a, &on_b] {
        assert_eq!(node.value("chat_store_failures_total"), 0.0);
        assert_eq!(node.value("chat_bus_undecodable_records_total"), 0.0);
    }

    // Refused sends, by reason.
    let refuse = |to: &str, body: &str, key: &str| send_request(to, body, key);
    alice_live
        .push(pb::client_frame::Frame::Send(refuse("bob", "   ", "r1")))
        .await;
    assert!(alice_live.ack().await.error.is_some());
    alice_live
        .push(pb::client_frame::Frame::Send(refuse("nobody", "hi", "r2")))
        .await;
    assert!(alice_live.ack().await.error.is_some());
    let mut unary = a.chat(&alice).await;
    let status = unary
        .send_message(refuse("alice", "to myself", "r3"))
        .await
        .expect_err("a message to oneself is refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    let on_a = scrape(a.http_addr).await;
    let failed = |reason| on_a.get("chat_messages_failed_total", &[("reason", reason)]);
    assert_eq!(failed("invalid_argument"), 2.0);
    assert_eq!(failed("not_found"), 1.0);
    assert_eq!(failed("unavailable"), 0.0);
    assert_eq!(on_a.value("chat_messages_accepted_total"), N);

    drop(alice_live);
    drop(bob_live);
    for node in [&a, &b] {
        scrape_until(node.http_addr, "sessions back to 0", |s| {
            s.value("chat_sessions") == 0.0
        })
        .await;
    }
}

/// A rate-limited send is counted as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_send_is_counted_under_its_reason() {
    let server = TestServer::start_with(|c| c.limits.sends_per_second = 1).await;
    let alice = server.register("alice").await;
    server.register("bob").await;
    let mut client = server.chat(&alice).await;
    let mut limited = 0;
    for i in 0..5 {
        match client
            .send_message(send_request("bob", "hi", &format!("k{i}")))
            .await
        {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                limited += 1;
            }
        }
    }
    assert!(
        limited > 0,
        "five sends at once pass a limit of one a second"
    );
    let now = scrape(server.http_addr).await;
    assert_eq!(
        now.get("chat_messages_failed_total", &[("reason", "rate_limited")]),
        limited as f64
    );
    assert_eq!(
        now.value("chat_messages_accepted_total"),
        5.0 - limited as f64
    );
}

// --------------------------------------------------------------- /readyz

/// `GET /readyz`: status and `data`.
async fn readyz(addr: SocketAddr) -> (u16, serde_json::Value) {
    let answer = http(addr, "GET", "/readyz", None).await;
    assert_eq!(answer.json["code"], answer.status, "{}", answer.body);
    (answer.status, answer.json)
}

/// Polls `/readyz` until it answers `status`; fails after `wait`.
async fn readyz_until(addr: SocketAddr, status: u16, wait: Duration) -> serde_json::Value {
    let started = tokio::time::Instant::now();
    loop {
        let (now, body) = readyz(addr).await;
        if now == status {
            return body;
        }
        assert!(
            started.elapsed() < wait,
            "/readyz is still {now} after {wait:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_ready(body: &serde_json::Value) {
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(
        body["data"],
        serde_json::json!({"ready": true, "store": "ok", "registry": "ok", "bus": "ok"})
    );
}

/// The defaults (SQLite, in-process registry and bus) are ready, and
/// `/healthz` stays a liveness answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_defaults_are_ready() {
    let server = TestServer::start().await;
    let (status, body) = readyz(server.http_addr).await;
    assert_eq!(status, 200, "{body}");
    assert_ready(&body);
    let health = http(server.http_addr, "GET", "/healthz", None).await;
    assert_eq!(health.json["data"], serde_json::json!({"healthy": true}));
}

fn redis_addr() -> SocketAddr {
    redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("CHAT_TEST_REDIS_URL is redis://host:port/")
}

/// PostgreSQL, a Redis registry behind the fault proxy and a Redis bus:
/// ready; Redis unreachable for the registry: 503 naming the registry
/// alone; reachable again: ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_registry() {
    let postgres = fresh_postgres().await;
    let proxy = Proxy::start(redis_addr()).await;
    let prefix = format!("{}:", unique("obs"));
    let via = format!("redis://{}/", proxy.addr());
    let server = TestServer::start_with(move |c| {
        c.cluster.node_id = unique("n-");
        c.cluster.store = StoreBackend::Postgres { url: postgres };
        c.cluster.registry = RegistryBackend::Redis {
            url: via,
            prefix: prefix.clone(),
        };
        c.cluster.bus = BusBackend::Redis {
            url: redis_url(),
            prefix,
        };
    })
    .await;
    let (status, body) = readyz(server.http_addr).await;
    assert_eq!(status, 200, "{body}");
    assert_ready(&body);

    proxy.refuse(true);
    proxy.cut();
    let started = tokio::time::Instant::now();
    let body = readyz_until(server.http_addr, 503, WAIT).await;
    let down = started.elapsed();
    assert_eq!(body["status"], "error");
    assert_eq!(body["error"]["kind"], "unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("registry"), "{body}");
    assert!(
        !message.contains("store") && !message.contains("bus"),
        "{body}"
    );
    let data = &body["data"];
    assert_eq!(data["ready"], false);
    assert_eq!((&data["store"], &data["bus"]), (&"ok".into(), &"ok".into()));
    let registry = data["registry"].as_str().unwrap();
    assert!(registry != "ok" && !registry.is_empty(), "{body}");

    proxy.refuse(false);
    let back = tokio::time::Instant::now();
    let body = readyz_until(server.http_addr, 200, WAIT).await;
    assert_ready(&body);
    eprintln!(
        "registry: not ready {down:?} after Redis went away ({registry}), ready {:?} after it came back",
        back.elapsed()
    );
}

/// The store behind the fault proxy: ready; PostgreSQL unreachable: 503
/// naming the store, a send refused as unavailable and counted, with the
/// store failures; reachable again: ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_store() {
    let url = fresh_postgres().await;
    let proxy = Proxy::start(postgres_addr(&url)).await;
    let via = url.replace(&postgres_addr(&url).to_string(), &proxy.addr().to_string());
    let server = TestServer::start_with(move |c| {
        c.cluster.store = StoreBackend::Postgres { url: via };
    })
    .await;
    let alice = server.register("alice").await;
    server.register("bob").await;
    // Authenticated while the store answers: its sends reach the store.
    let mut alice_live = server.connect(&alice).await;
    let (status, body) = readyz(server.http_addr).await;
    assert_eq!(status, 200, "{body}");
    assert_ready(&body);

    proxy.refuse(true);
    proxy.cut();
    let body = readyz_until(server.http_addr, 503, WAIT).await;
    let data = &body["data"];
    assert_eq!(data["ready"], false);
    let store = data["store"].as_str().unwrap();
    assert_ne!(store, "ok", "{body}");
    assert_eq!(
        (&data["registry"], &data["bus"]),
        (&"ok".into(), &"ok".into())
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("store"));

    alice_live.send_to("bob", "hi", "k1").await;
    let refused = alice_live
        .ack()
        .await
        .error
        .expect("no send without the store");
    assert_eq!(refused.kind, "unavailable", "{refused:?}");
    let now = scrape(server.http_addr).await;
    assert_eq!(
        now.get("chat_messages_failed_total", &[("reason", "unavailable")]),
        1.0
    );
    assert!(
        now.value("chat_store_failures_total") >= 1.0,
        "the failed send's store call counts"
    );
    assert!(
        !now.text.contains("chat_dead_letters_stored"),
        "a store that cannot count leaves the gauge out"
    );

    proxy.refuse(false);
    let body = readyz_until(server.http_addr, 200, WAIT).await;
    assert_ready(&body);
    eprintln!("store: not ready while PostgreSQL was away ({store}), ready again");
}

/// A Kafka bus on a broker of the test's own (and a Redis registry): ready; broker killed: 503
/// naming the bus; broker back (empty: it keeps topics in memory): ready
/// once the node has opened its inbox again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_kafka_bus() {
    let mut broker = Broker::start(free_service_port()).await;
    let mut kafka = chat_cluster::bus::KafkaConfig::new(broker.address());
    kafka.topic_prefix = format!("{}-", unique("obs"));
    let server = TestServer::start_with(move |c| {
        c.cluster.node_id = unique("n-");
        c.cluster.registry = RegistryBackend::Redis {
            url: redis_url(),
            prefix: format!("{}:", unique("obs")),
        };
        c.cluster.bus = BusBackend::Kafka(kafka);
    })
    .await;
    let (status, body) = readyz(server.http_addr).await;
    assert_eq!(status, 200, "{body}");
    assert_ready(&body);

    broker.kill().await;
    let body = readyz_until(server.http_addr, 503, WAIT).await;
    let data = &body["data"];
    assert_ne!(data["bus"], "ok", "{body}");
    assert_eq!(
        (&data["store"], &data["registry"]),
        (&"ok".into(), &"ok".into())
    );
    let bus = data["bus"].as_str().unwrap().to_owned();

    broker.restart_empty().await;
    let back = tokio::time::Instant::now();
    let body = readyz_until(server.http_addr, 200, 3 * WAIT).await;
    assert_ready(&body);
    eprintln!(
        "kafka: not ready while the broker was down ({bus}), ready {:?} after it came back",
        back.elapsed()
    );
}

// ----------------------------------------------------------------- spans

/// The real binary's log: an HTTP request's completion line carries its
/// method, route, request id, status and latency; a `Connect` session's
/// lines carry the gRPC method, the user and the session id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_request_and_session_spans() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc_addr, http_addr) = (free_addr(), free_addr());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .env("CHAT_DATA_DIR", dir.path())
        .env("CHAT_GRPC_ADDR", grpc_addr.to_string())
        .env("CHAT_HTTP_ADDR", http_addr.to_string())
        .env("CHAT_LOG", "info,chat_server::http=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start chat-server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line_with = async |what: &[&str]| -> String {
        let find = async {
            while let Some(line) = lines.next_line().await.expect("read the log") {
                if what.iter().all(|w| line.contains(w)) {
                    return line;
                }
            }
            panic!("the server exited before logging {what:?}");
        };
        tokio::time::timeout(WAIT, find)
            .await
            .unwrap_or_else(|_| panic!("no log line with {what:?} within {WAIT:?}"))
    };
    line_with(&["chat server listening"]).await;

    let answer = http_with(
        http_addr,
        "GET",
        "/v1/chat-apps/users?username=nobody",
        &[("x-request-id", "trace-me-42")],
        None,
    )
    .await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json["req_id"], "trace-me-42");
    let done = line_with(&["request finished", "trace-me-42"]).await;
    for field in [
        "method=GET",
        "route=/v1/chat-apps/users",
        "req_id=trace-me-42",
        "status=404",
        "latency_ms=",
    ] {
        assert!(done.contains(field), "{field} missing from: {done}");
    }

    // A request without an id gets one, the same in the envelope and the
    // log.
    let answer = http(http_addr, "GET", "/readyz", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let id = answer.json["req_id"].as_str().unwrap().to_owned();
    let done = line_with(&["request finished", "route=/readyz"]).await;
    assert!(done.contains(&format!("req_id={id}")), "{id}: {done}");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let register = |name: &str| {
        let mut users = pb::user_service_client::UserServiceClient::new(channel.clone());
        let name = name.to_owned();
        async move {
            users
                .register(pb::RegisterRequest {
                    username: name,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .secret
        }
    };
    let secret = register("carol").await;
    let bearer = pb::Bearer::new(&secret).unwrap();
    let chat = pb::chat_service_client::ChatServiceClient::with_interceptor(channel, bearer);
    let live = chat_test_support::Live::open(chat).await;
    let started = line_with(&["session started", "carol"]).await;
    for field in ["grpc{method=Connect}", "session{user=carol session="] {
        assert!(started.contains(field), "{field} missing from: {started}");
    }
    drop(live);
    let ended = line_with(&["session ended", "carol"]).await;
    assert!(ended.contains("session{"), "{ended}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
