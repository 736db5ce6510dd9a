//! The container image (`Dockerfile`) and the cluster of
//! `deploy/docker-compose.yml` held to the code they run: the services and
//! ports the README documents, only `CHAT_…` variables the server really
//! reads (the list comes from the built binary's `--help`), backends that
//! point at the compose services, and a `Dockerfile` that exposes what the
//! compose file maps and runs a real binary of the workspace. Then the two
//! chat servers' environments, with the compose hostnames replaced by this
//! machine's PostgreSQL, Redis and Apache Kafka broker, start real
//! `chat-server` processes that form a cluster: a message sent over HTTP on
//! one reaches a session on the other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chat_test_support::process::{free_addr, ServerProcess};
use chat_test_support::services::{fresh_postgres, kafka_brokers, redis_url, unique};
use chat_test_support::{http, http_with, Live};
use yaml_rust2::{Yaml, YamlLoader};

const BINARY: &str = env!("CARGO_BIN_EXE_chat-server");

/// The services the compose file must define.
const SERVICES: [&str; 5] = ["postgres", "redis", "kafka", "chat-1", "chat-2"];

/// The chat servers and the (host, container) ports they publish, gRPC then
/// HTTP: chat-1 on the original specification's ports, chat-2 on the next
/// ones (the ports `scripts/cluster.sh` gives its second server).
const CHAT_SERVERS: [(&str, [(u16, u16); 2]); 2] = [
    ("chat-1", [(50050, 50050), (3000, 3000)]),
    ("chat-2", [(50055, 50050), (3001, 3000)]),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every `CHAT_…` variable `chat-server` reads, from its `--help`
/// (`[env: CHAT_X=]`, or `[env: CHAT_X]` for a hidden value).
fn server_env_names() -> BTreeSet<String> {
    let output = std::process::Command::new(BINARY)
        .arg("--help")
        .env_clear()
        .output()
        .expect("run chat-server --help");
    assert!(output.status.success(), "chat-server --help failed");
    // clap wraps long lines: make every run of whitespace one space.
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.split(['=', ']'])
                .next()
                .expect("a variable name")
                .to_owned()
        })
        .collect();
    for name in &names {
        assert!(name.starts_with("CHAT_"), "unexpected variable {name}");
    }
    // The parsing found the settings, not nothing.
    for known in [
        "CHAT_GRPC_ADDR",
        "CHAT_HTTP_ADDR",
        "CHAT_STORE",
        "CHAT_ADMIN_TOKEN",
    ] {
        assert!(names.contains(known), "{known} not in {names:?}");
    }
    names
}

/// A YAML scalar as the string compose would pass on.
fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `${NAME:-default}` and `${NAME-default}` as compose resolves them when
/// `NAME` is not set; a reference without a default fails the test (the
/// file must work as it is).
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|i| start + i)
            .unwrap_or_else(|| panic!("unclosed ${{ in {value}"));
        let inner = &rest[start + 2..end];
        let default = inner
            .split_once(":-")
            .or_else(|| inner.split_once('-'))
            .map(|(_, default)| default)
            .unwrap_or_else(|| panic!("${{{inner}}} in {value} has no default"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

struct Compose {
    doc: Yaml,
}

impl Compose {
    fn load() -> Self {
        let text = read("deploy/docker-compose.yml");
        let mut docs = YamlLoader::load_from_str(&text).expect("deploy/docker-compose.yml parses");
        assert_eq!(docs.len(), 1, "one YAML document");
        Self {
            doc: docs.remove(0),
        }
    }

    fn service(&self, name: &str) -> &Yaml {
        let service = &self.doc["services"][name];
        assert!(
            service.as_hash().is_some(),
            "service {name} missing from deploy/docker-compose.yml"
        );
        service
    }

    /// A service's environment (map or `NAME=value` list), interpolated.
    fn env(&self, name: &str) -> BTreeMap<String, String> {
        let environment = &self.service(name)["environment"];
        let pairs: Vec<(String, String)> = if let Some(map) = environment.as_hash() {
            map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect()
        } else if let Some(list) = environment.as_vec() {
            list.iter()
                .map(|item| {
                    let item = scalar(item);
                    let (k, v) = item.split_once('=').expect("NAME=value");
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        } else {
            panic!("service {name} has no environment");
        };
        pairs
            .into_iter()
            .map(|(k, v)| (k, interpolate(&v)))
            .collect()
    }

    /// The `host:container` ports a service publishes.
    fn ports(&self, name: &str) -> Vec<(u16, u16)> {
        self.service(name)["ports"]
            .as_vec()
            .unwrap_or_else(|| panic!("service {name} publishes no ports"))
            .iter()
            .map(|entry| {
                let entry = scalar(entry);
                let parts: Vec<&str> = entry.split(':').collect();
                let [.., host, container] = parts.as_slice() else {
                    panic!("port {entry} of {name} is not host:container");
                };
                let port = |p: &str| {
                    p.parse::<u16>()
                        .unwrap_or_else(|_| panic!("port {entry} of {name} is not a single port"))
                };
                (port(host), port(container))
            })
            .collect()
    }
}

fn socket(value: &str, what: &str) -> SocketAddr {
    value
        .parse()
        .unwrap_or_else(|e| panic!("{what}={value} is not an address: {e}"))
}

/// `scheme://[user[:password]@]host:port[/path]` → (host, port, path).
fn url_host_port(url: &str, scheme: &str) -> (String, u16, String) {
    let rest = url
        .strip_prefix(&format!("{scheme}://"))
        .unwrap_or_else(|| panic!("{url} is not a {scheme}:// URL"));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = host_port
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url} names no port"));
    (
        host.to_owned(),
        port.parse().expect("a port number"),
        path.to_owned(),
    )
}

#[test]
fn compose_defines_the_services_and_publishes_the_documented_ports() {
    let compose = Compose::load();
    for name in SERVICES {
        let service = compose.service(name);
        assert!(
            service["restart"].as_str().is_some(),
            "service {name} has no restart policy"
        );
    }
    let image = |name: &str| scalar(&compose.service(name)["image"]);
    assert!(image("postgres").starts_with("postgres:"));
    assert!(image("redis").starts_with("redis:"));
    assert!(image("kafka").starts_with("apache/kafka:"));

    let mut published = BTreeSet::new();
    for (name, expected) in CHAT_SERVERS {
        let ports = compose.ports(name);
        assert_eq!(ports, expected, "ports of {name}");
        for (host, _) in &ports {
            assert!(published.insert(*host), "host port {host} published twice");
        }
        // The container ports are those the server listens on, on every
        // interface of the container.
        let env = compose.env(name);
        let grpc = socket(&env["CHAT_GRPC_ADDR"], "CHAT_GRPC_ADDR");
        let http = socket(&env["CHAT_HTTP_ADDR"], "CHAT_HTTP_ADDR");
        assert!(grpc.ip().is_unspecified() && http.ip().is_unspecified());
        assert_eq!(grpc.port(), expected[0].1, "{name}'s gRPC port");
        assert_eq!(http.port(), expected[1].1, "{name}'s HTTP port");
        // The health check asks the HTTP port the server listens on.
        let check = compose.service(name)["healthcheck"]["test"]
            .as_vec()
            .expect("a health check")
            .iter()
            .map(scalar)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            check.contains(&format!(":{}/healthz", http.port())),
            "{name}'s health check {check} does not ask its HTTP port"
        );
        // Docker's SIGKILL comes after the server's grace period, so a
        // stop drains the sessions.
        let stop = scalar(&compose.service(name)["stop_grace_period"]);
        let stop: u64 = stop
            .strip_suffix('s')
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}'s stop_grace_period {stop:?} is whole seconds"));
        let grace: u64 = env["CHAT_SHUTDOWN_GRACE_SECS"].parse().expect("a number");
        assert!(
            stop > grace,
            "{name}: stop_grace_period {stop}s <= grace {grace}s"
        );
        // Built from the Dockerfile at the repository root.
        let build = &compose.service(name)["build"];
        let context = repo_root().join("deploy").join(scalar(&build["context"]));
        let dockerfile = context.join(scalar(&build["dockerfile"]));
        assert_eq!(
            dockerfile.canonicalize().expect("the Dockerfile exists"),
            repo_root().join("Dockerfile")
        );
    }
}

/// `scripts/kafka/server.properties` (the suite's broker) as key/value
/// pairs, its ports filled in with the compose file's.
fn test_broker_properties() -> BTreeMap<String, String> {
    read("scripts/kafka/server.properties")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("key=value");
            let value = value
                .replace("@PORT@", "9092")
                .replace("@CONTROLLER_PORT@", "9093");
            (key.to_owned(), value)
        })
        .collect()
}

/// A listener list (`NAME://host:port,…`) or quorum (`id@host:port,…`)
/// without its hosts: the compose network's names and the tests' loopback
/// differ by design, the rest must not.
fn without_hosts(value: &str) -> String {
    value
        .split(',')
        .map(|entry| {
            let (head, host_port) = match entry.split_once("//") {
                Some((name, rest)) => (format!("{name}//"), rest),
                None => match entry.split_once('@') {
                    Some((id, rest)) => (format!("{id}@"), rest),
                    None => (String::new(), entry),
                },
            };
            let port = host_port.rsplit_once(':').map_or(host_port, |(_, p)| p);
            format!("{head}:{port}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn compose_kafka_runs_the_tests_broker_settings() {
    let compose = Compose::load();
    // The same Apache Kafka release as the suite's broker.
    let pom = read("scripts/kafka/pom.xml");
    let version = pom
        .split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(v, _)| v.trim().to_owned())
        .expect("<kafka.version> in scripts/kafka/pom.xml");
    assert_eq!(
        scalar(&compose.service("kafka")["image"]),
        format!("apache/kafka:{version}")
    );

    let mut env = compose.env("kafka");
    // A KRaft cluster id: 16 bytes in URL-safe base64 without padding, as
    // scripts/services.sh makes one for each run.
    let id = env.remove("CLUSTER_ID").expect("CLUSTER_ID");
    const URL_SAFE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert_eq!(id.len(), 22, "{id}");
    assert!(id.chars().all(|c| URL_SAFE.contains(c)), "{id}");
    // 22 characters carry 132 bits: the last 4 must be zero for 16 bytes.
    let last = URL_SAFE.find(id.chars().last().unwrap()).unwrap();
    assert_eq!(last & 0b1111, 0, "{id} is not 16 bytes");
    assert!(!id.starts_with('-'), "{id}");

    // KAFKA_FOO_BAR is the image's name for foo.bar.
    let compose_settings: BTreeMap<String, String> = env
        .into_iter()
        .map(|(name, value)| {
            let key = name
                .strip_prefix("KAFKA_")
                .unwrap_or_else(|| panic!("{name} is not a broker setting"))
                .to_lowercase()
                .replace('_', ".");
            (key, value)
        })
        .collect();
    let tests = test_broker_properties();
    assert_eq!(
        compose_settings.keys().collect::<Vec<_>>(),
        tests.keys().collect::<Vec<_>>(),
        "the compose file's broker settings and scripts/kafka/server.properties"
    );
    for (key, compose_value) in &compose_settings {
        let test_value = &tests[key];
        match key.as_str() {
            // Where the data lives is each one's own.
            "log.dirs" => assert!(!compose_value.is_empty() && !test_value.is_empty()),
            "listeners" | "advertised.listeners" | "controller.quorum.voters" => assert_eq!(
                without_hosts(compose_value),
                without_hosts(test_value),
                "{key}"
            ),
            _ => assert_eq!(compose_value, test_value, "{key}"),
        }
    }
}

#[test]
fn compose_sets_only_variables_the_server_reads() {
    let known = server_env_names();
    let compose = Compose::load();
    for (name, _) in CHAT_SERVERS {
        let env = compose.env(name);
        let chat: Vec<&String> = env.keys().filter(|k| k.starts_with("CHAT_")).collect();
        assert!(!chat.is_empty(), "{name} sets no CHAT_ variable");
        for var in chat {
            assert!(
                known.contains(var),
                "{name} sets {var}, which chat-server does not read (it reads {known:?})"
            );
        }
        let other: Vec<&String> = env.keys().filter(|k| !k.starts_with("CHAT_")).collect();
        assert!(other.is_empty(), "{name} sets {other:?}");
    }
    for (var, _) in dockerfile_runtime_env() {
        if var.starts_with("CHAT_") {
            assert!(known.contains(&var), "the Dockerfile sets {var}, unknown");
        }
    }
}

#[test]
fn compose_backends_are_the_compose_services() {
    let compose = Compose::load();
    let postgres = compose.env("postgres");
    let kafka = compose.env("kafka");
    let mut node_ids = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    for (name, _) in CHAT_SERVERS {
        let env = compose.env(name);
        assert_eq!(env["CHAT_STORE"], "postgres");
        assert_eq!(env["CHAT_REGISTRY"], "redis");
        assert_eq!(env["CHAT_BUS"], "kafka");

        let url = &env["CHAT_POSTGRES_URL"];
        let (host, port, database) = url_host_port(url, "postgres");
        assert_eq!((host.as_str(), port), ("postgres", 5432), "{url}");
        assert_eq!(database, postgres["POSTGRES_DB"], "{url}");
        let credentials = format!(
            "{}:{}@",
            postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]
        );
        assert!(url.contains(&credentials), "{url} lacks {credentials}");

        let (host, port, _) = url_host_port(&env["CHAT_REDIS_URL"], "redis");
        assert_eq!((host.as_str(), port), ("redis", 6379));

        assert_eq!(env["CHAT_KAFKA_BROKERS"], "kafka:9092");
        // The broker tells clients to come back to the same name.
        assert!(kafka["KAFKA_ADVERTISED_LISTENERS"].contains("//kafka:9092"));
        assert!(kafka["KAFKA_LISTENERS"].contains(":9092"));
        assert!(kafka["KAFKA_PROCESS_ROLES"].contains("controller"));

        assert!(
            node_ids.insert(env["CHAT_NODE_ID"].clone()),
            "node ids must differ"
        );
        let token = &env["CHAT_ADMIN_TOKEN"];
        assert!(token.len() >= 16, "the admin token is too short");
        tokens.insert(token.clone());

        // Started once the backends answer.
        let depends = &compose.service(name)["depends_on"];
        for backend in ["postgres", "redis", "kafka"] {
            assert_eq!(
                depends[backend]["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for {backend}"
            );
            assert!(
                compose.service(backend)["healthcheck"]["test"]
                    .as_vec()
                    .is_some(),
                "{backend} has no health check"
            );
        }
    }
    assert_eq!(node_ids.len(), 2);
    assert_eq!(tokens.len(), 1, "one admin token for the cluster");
}

/// The Dockerfile as (instruction, arguments) per stage, continuation lines
/// joined, comments dropped.
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let text = read("Dockerfile");
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    let mut logical = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && logical.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            logical.push_str(head);
            logical.push(' ');
            continue;
        }
        logical.push_str(trimmed);
        let (instruction, args) = logical.split_once(' ').unwrap_or((&logical, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push((instruction, args.trim().to_owned()));
        logical.clear();
    }
    assert!(stages.len() >= 2, "a multi-stage Dockerfile");
    stages
}

fn dockerfile_runtime_env() -> Vec<(String, String)> {
    let stages = dockerfile_stages();
    let runtime = stages.last().expect("a runtime stage");
    runtime
        .iter()
        .filter(|(i, _)| i == "ENV")
        .flat_map(|(_, args)| {
            args.split_whitespace()
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("ENV NAME=value");
                    (k.to_owned(), v.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The workspace's members, e.g. `crates/server`.
fn workspace_members() -> Vec<String> {
    let root = read("Cargo.toml");
    let members = root
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = "))
        .expect("the workspace members on one line");
    let members: Vec<String> = members
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(members.contains(&"crates/server".to_owned()), "{members:?}");
    members
}

/// The `[[bin]]` targets of the workspace's members (a member without one
/// but with `src/main.rs` has the package's name).
fn workspace_bins() -> BTreeSet<String> {
    let mut bins = BTreeSet::new();
    for member in workspace_members() {
        let manifest = read(&format!("{member}/Cargo.toml"));
        let member = member.as_str();
        let mut section = String::new();
        let mut package = None;
        let mut explicit = false;
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            if let Some(value) = line.strip_prefix("name = ") {
                let value = value.trim_matches('"').to_owned();
                match section.as_str() {
                    "[[bin]]" => {
                        explicit = true;
                        bins.insert(value);
                    }
                    "[package]" => package = Some(value),
                    _ => {}
                }
            }
        }
        if !explicit && repo_root().join(member).join("src/main.rs").is_file() {
            bins.insert(package.expect("a package name"));
        }
    }
    bins
}

#[test]
fn dockerfile_exposes_the_compose_ports_and_runs_a_workspace_binary() {
    let stages = dockerfile_stages();
    let runtime = stages.last().unwrap();
    let builder: Vec<&(String, String)> = stages[..stages.len() - 1].iter().flatten().collect();
    let bins = workspace_bins();
    assert!(bins.contains("chat-server") && bins.contains("chat-client"));

    // A slim runtime that runs as a user of its own.
    let from = &runtime[0].1;
    assert!(from.contains("slim"), "runtime stage {from}");
    let user = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.as_str())
        .expect("a USER");
    assert!(user != "root" && user != "0", "runs as {user}");

    // It exposes every container port the compose file maps, and the
    // image's own listen addresses are those ports on every interface.
    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    let compose = Compose::load();
    for (name, _) in CHAT_SERVERS {
        for (_, container) in compose.ports(name) {
            assert!(exposed.contains(&container), "{container} not EXPOSEd");
        }
    }
    let env: BTreeMap<String, String> = dockerfile_runtime_env().into_iter().collect();
    let grpc = socket(&env["CHAT_GRPC_ADDR"], "CHAT_GRPC_ADDR");
    let http = socket(&env["CHAT_HTTP_ADDR"], "CHAT_HTTP_ADDR");
    assert!(grpc.ip().is_unspecified() && http.ip().is_unspecified());
    assert_eq!(
        exposed,
        BTreeSet::from([grpc.port(), http.port()]),
        "EXPOSE matches the listen addresses"
    );

    // What the build copies from the repository exists and is not left
    // out by .dockerignore.
    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    for required in ["target", ".git"] {
        assert!(ignored.contains(required), ".dockerignore lacks {required}");
    }
    let copies = |instructions: &[&(String, String)]| -> Vec<(bool, Vec<String>)> {
        instructions
            .iter()
            .filter(|(i, _)| i == "COPY")
            .map(|(_, args)| {
                let words: Vec<&str> = args.split_whitespace().collect();
                let from_stage = words.iter().any(|w| w.starts_with("--from="));
                let paths: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (_, sources) = paths.split_last().expect("COPY <src>… <dest>");
                (from_stage, sources.iter().map(|s| s.to_string()).collect())
            })
            .collect()
    };
    for (from_stage, sources) in copies(&builder) {
        assert!(!from_stage);
        for source in sources {
            let path = repo_root().join(&source);
            assert!(
                path.exists(),
                "COPY {source}: no such file in the repository"
            );
            assert!(
                !ignored.contains(&source),
                "COPY {source} is .dockerignored"
            );
        }
    }
    // The manifests and every member of the workspace are copied: cargo
    // needs them all.
    let copied: Vec<String> = copies(&builder)
        .into_iter()
        .flat_map(|(_, sources)| sources)
        .map(|s| s.trim_end_matches('/').to_owned())
        .collect();
    let needed_paths = ["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    for needed in needed_paths.iter().chain(&workspace_members()) {
        assert!(
            copied
                .iter()
                .any(|c| needed == c || needed.starts_with(&format!("{c}/"))),
            "the builder does not copy {needed}"
        );
    }

    // The builder builds the binaries the runtime copies; they are real
    // binaries of the workspace, and the entrypoint is one of them.
    let build = builder
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, a)| a.as_str())
        .find(|a| a.contains("cargo build"))
        .expect("a cargo build in the builder");
    let runtime_refs: Vec<&(String, String)> = runtime.iter().collect();
    let mut shipped = BTreeSet::new();
    for (from_stage, sources) in copies(&runtime_refs) {
        assert!(from_stage, "the runtime copies from the builder only");
        for source in sources {
            let bin = source.rsplit('/').next().unwrap().to_owned();
            assert!(
                bins.contains(&bin),
                "{bin} is not a [[bin]] of the workspace"
            );
            assert!(
                build.contains(&format!("--bin {bin}")),
                "the builder does not build {bin}"
            );
            shipped.insert(bin);
        }
    }
    let entrypoint = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, a)| a)
        .expect("an ENTRYPOINT");
    let entrypoint: Vec<String> =
        serde_json::from_str(entrypoint).expect("ENTRYPOINT in JSON (exec) form");
    let program = entrypoint[0].rsplit('/').next().unwrap();
    assert_eq!(program, "chat-server");
    assert!(shipped.contains(program), "the image lacks {program}");
}

#[test]
fn readme_walks_through_the_compose_cluster() {
    let readme = read("README.md");
    assert!(readme.contains("docker compose -f deploy/docker-compose.yml up --build"));
    assert!(readme.contains("docker compose -f deploy/docker-compose.yml down -v"));
    for (name, ports) in CHAT_SERVERS {
        for (host, _) in ports {
            assert!(
                readme.contains(&format!(":{host}")),
                "the README does not show {name}'s port {host}"
            );
        }
    }
}

/// The compose environment of `service` for a process on this machine:
/// the backends' hostnames replaced by the test services, the listen
/// addresses left to [`ServerProcess`] (free loopback ports), and Redis keys
/// and Kafka topics under a prefix of this test's own; every other variable
/// exactly as the compose file sets it.
fn local_env(
    compose: &Compose,
    service: &str,
    postgres: &str,
    prefix: &str,
) -> BTreeMap<String, String> {
    let mut env = compose.env(service);
    let mut replace = |name: &str, value: String| {
        assert!(env.contains_key(name), "{service} does not set {name}");
        env.insert(name.to_owned(), value);
    };
    replace("CHAT_POSTGRES_URL", postgres.to_owned());
    replace("CHAT_REDIS_URL", redis_url());
    replace("CHAT_KAFKA_BROKERS", kafka_brokers());
    for listen in ["CHAT_GRPC_ADDR", "CHAT_HTTP_ADDR"] {
        env.remove(listen).expect("a listen address");
    }
    for shared in ["CHAT_REDIS_PREFIX", "CHAT_KAFKA_TOPIC_PREFIX"] {
        assert!(!env.contains_key(shared), "{service} sets {shared}");
    }
    env.insert("CHAT_REDIS_PREFIX".into(), format!("{prefix}:"));
    env.insert("CHAT_KAFKA_TOPIC_PREFIX".into(), format!("{prefix}-inbox-"));
    env
}

async fn start(env: &BTreeMap<String, String>, data: &Path) -> ServerProcess {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    ServerProcess::start(Path::new(BINARY), data, free_addr(), &env).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_environments_run_a_cluster() {
    let compose = Compose::load();
    let postgres = fresh_postgres().await;
    let prefix = unique("deploy");
    let one_env = local_env(&compose, "chat-1", &postgres, &prefix);
    let two_env = local_env(&compose, "chat-2", &postgres, &prefix);
    let token = compose.env("chat-1")["CHAT_ADMIN_TOKEN"].clone();

    let (one_data, two_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = start(&one_env, one_data.path()).await;
    let two = start(&two_env, two_data.path()).await;

    for server in [&one, &two] {
        let health = http(server.http_addr, "GET", "/healthz", None).await;
        assert_eq!(health.status, 200, "{}", health.body);
        // The compose admin token is the one the server accepts.
        let bearer = format!("Bearer {token}");
        let admin = http_with(
            server.http_addr,
            "GET",
            "/admin/dead-letters",
            &[("Authorization", &bearer)],
            None,
        )
        .await;
        assert_eq!(admin.status, 200, "{}", admin.body);
    }

    // The README's walkthrough: a user registered on each server with the
    // specification's request, user2 connected to chat-2, a message from
    // user1 sent on chat-1 reaches them through the bus.
    let register = |server: &ServerProcess, username: &str| {
        let addr = server.http_addr;
        let body = format!(r#"{{ "username":"{username}","name":"bar", "phone": "8098080"}}"#);
        async move {
            let answer = http(addr, "POST", "/v1/chat-apps/users", Some(body.as_bytes())).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            answer.json["data"]["secret"]
                .as_str()
                .expect("a secret")
                .to_owned()
        }
    };
    let user1 = register(&one, "user1").await;
    let user2 = register(&two, "user2").await;
    let mut user2_live = Live::open(two.chat(&user2).await).await;

    let bearer = format!("Bearer {user1}");
    let sent = http_with(
        one.http_addr,
        "POST",
        "/v1/chat-apps/messages",
        &[("Authorization", &bearer)],
        Some(br#"{"to_user":"user2","body":"hello from chat-1","client_msg_id":"m-1"}"#),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let message = user2_live.message().await;
    assert_eq!(message.body, "hello from chat-1");
    assert_eq!(message.sender, "user1");
}
