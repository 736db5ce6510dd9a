//! The HTTP API against its OpenAPI document (`crates/server/openapi.json`,
//! served at `/openapi.json`): schemathesis reads the document from a real
//! server on loopback (which is how `/openapi.json` itself is tested),
//! generates requests for every other operation from it (valid and invalid
//! ones, the document's examples, and sequences that follow its links),
//! and checks every answer: never a server error, and status, content
//! type, headers and body as the document describes.
//!
//! Needs schemathesis: `CHAT_TEST_SCHEMATHESIS` names its executable.
//! `scripts/test.sh` installs it (from PyPI, into a virtualenv) and sets
//! the variable; without it this test fails.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_server::Backends;
use chat_store::{NewDeadLetter, Store};
use chat_test_support::{admin_token, http, http_as, http_with, message_envelope, TestServer};

const SCHEMATHESIS_VAR: &str = "CHAT_TEST_SCHEMATHESIS";

/// Test cases per operation and phase: the whole run takes about 20 s on
/// two cores.
const MAX_EXAMPLES: u32 = 40;

/// How long the run may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(180);

/// What every answer is checked for: no server error; status, content
/// type, headers and body as documented; invalid input (as the document
/// defines it) refused; the token required where the document says so.
/// Left out: `unsupported_method` (an admin path answers another method
/// with the token check, then 404, never 405, so that a server without an
/// admin token shows no admin surface) and `positive_data_acceptance`
/// (some valid-looking requests are refused by rules a schema cannot
/// state: a body over 4096 bytes of UTF-8, a message to oneself, a name
/// that is taken).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,\
                      negative_data_rejection,missing_required_header,ignored_auth,\
                      ensure_resource_availability";

/// Registers `username` over HTTP and returns its secret.
async fn register(server: &TestServer, username: &str) -> String {
    let body = format!(r#"{{"username":"{username}","name":"{username}","phone":"8098080"}}"#);
    let answer = http(
        server.http_addr,
        "POST",
        "/v1/chat-apps/users",
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json["data"]["secret"]
        .as_str()
        .expect("a secret")
        .to_owned()
}

/// A server with the admin API on a fresh SQLite file, and its store.
async fn server(dir: &Path) -> (TestServer, Arc<dyn Store>) {
    let mut sqlite = chat_store::sqlite::SqliteConfig::new(dir.join("chat.db"));
    sqlite.durability = chat_store::sqlite::Durability::Normal;
    let store: Arc<dyn Store> =
        Arc::new(chat_store::sqlite::SqliteStore::open(sqlite).expect("open SQLite"));
    let backends = Backends {
        store: store.clone(),
        registry: Arc::new(chat_cluster::registry::MemoryRegistry::new(
            Duration::from_secs(15),
        )),
        bus: Arc::new(chat_cluster::bus::MemoryBus::default()),
    };
    let server =
        TestServer::start_node(Some(backends), |c| c.admin_token = Some(admin_token())).await;
    (server, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_as_its_openapi_document_says() {
    let Some(schemathesis) = std::env::var_os(SCHEMATHESIS_VAR) else {
        panic!(
            "{SCHEMATHESIS_VAR} is not set: run the tests with scripts/test.sh, which installs \
             schemathesis, or set it to a schemathesis executable \
             (python3 -m venv DIR && DIR/bin/pip install schemathesis; \
             {SCHEMATHESIS_VAR}=DIR/bin/schemathesis)"
        );
    };
    let version = tokio::process::Command::new(&schemathesis)
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {schemathesis:?} ({SCHEMATHESIS_VAR}): {e}"));
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains("version 4."),
        "{SCHEMATHESIS_VAR}={schemathesis:?} is {version:?}; this test needs schemathesis 4"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let (server, store) = server(dir.path()).await;

    // Something for the operations to find. The document's examples name
    // user1 (whose secret authenticates the run), user2, and dead letter
    // 1 (which replays; letter 2 does not decode).
    let secret = register(&server, "user1").await;
    register(&server, "user2").await;
    let sent = http_as(
        server.http_addr,
        &secret,
        "POST",
        "/v1/chat-apps/messages",
        Some(br#"{"to_user":"user2","body":"hello","client_msg_id":"m-0"}"#),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    for payload in [
        message_envelope(&["user2"], "c-elsewhere", 1, "user1", "replayed"),
        b"\x00not an envelope".to_vec(),
    ] {
        store
            .add_dead_letter(NewDeadLetter {
                node: "elsewhere".into(),
                reason: "for the OpenAPI test".into(),
                payload,
            })
            .await
            .expect("a dead letter");
    }

    // Each security scheme of the document gets its own token: the user's
    // secret for the chat routes, the admin token for /admin.
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.openapi.UserSecret]\nbearer = \"{secret}\"\n\n\
             [auth.openapi.AdminToken]\nbearer = \"{}\"\n",
            chat_test_support::TEST_ADMIN_TOKEN
        ),
    )
    .expect("write schemathesis.toml");

    let url = server.http_url();
    let mut command = tokio::process::Command::new(&schemathesis);
    command
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{url}/openapi.json"))
        .args(["--url", &url])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        // One worker: the server shares the two cores, and concurrent
        // workers can trip over a CPython 3.11 parser bug in hypothesis
        // ("AST constructor recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        // Only loopback: no proxy, no configuration from elsewhere.
        .current_dir(dir.path())
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let output = tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis did not finish within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("cannot run {schemathesis:?} ({SCHEMATHESIS_VAR}): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "schemathesis found answers that break the OpenAPI document \
         ({}, after {:.1?}):\n{stdout}\n{stderr}",
        output.status,
        started.elapsed()
    );
    server.stop().await;
}

/// Answers the document promises that generated requests seldom reach: an
/// array of the fields is not a JSON object body, and a path id that is
/// not UTF-8 once percent-decoded is answered in the envelope, after the
/// token check (so a server without an admin token still shows nothing).
#[tokio::test]
async fn odd_requests_are_answered_in_the_envelope() {
    let server = TestServer::start_with(|c| c.admin_token = Some(admin_token())).await;
    let addr = server.http_addr;
    let secret = register(&server, "user1").await;
    register(&server, "user2").await;
    let user = format!("Bearer {secret}");
    let admin = format!("Bearer {}", chat_test_support::TEST_ADMIN_TOKEN);
    let error = |answer: &chat_test_support::HttpAnswer, code: u16, kind: &str| {
        assert_eq!(answer.status, code, "{}", answer.body);
        assert_eq!(answer.json["code"], code, "{}", answer.body);
        assert_eq!(answer.json["error"]["kind"], kind, "{}", answer.body);
    };

    let array = http(addr, "POST", "/v1/chat-apps/users", Some(br#"["user3"]"#)).await;
    error(&array, 400, "invalid_argument");
    let lookup = http(addr, "GET", "/v1/chat-apps/users?username=user3", None).await;
    error(&lookup, 404, "not_found");
    let send = http_with(
        addr,
        "POST",
        "/v1/chat-apps/messages",
        &[("Authorization", &user)],
        Some(br#"["user2", null, "hello", "m-1"]"#),
    )
    .await;
    error(&send, 400, "invalid_argument");

    let history = "/v1/chat-apps/conversations/%FF/messages";
    error(
        &http(addr, "GET", history, None).await,
        401,
        "unauthenticated",
    );
    let authed = http_with(addr, "GET", history, &[("Authorization", &user)], None).await;
    error(&authed, 404, "not_found");
    for (method, path) in [
        ("GET", "/admin/dead-letters/%FF"),
        ("POST", "/admin/dead-letters/%FF/replay"),
    ] {
        error(
            &http(addr, method, path, None).await,
            401,
            "unauthenticated",
        );
        let authed = http_with(addr, method, path, &[("Authorization", &admin)], None).await;
        error(&authed, 400, "invalid_argument");
    }
    server.stop().await;

    let without_admin = TestServer::start().await;
    let answer = http(
        without_admin.http_addr,
        "GET",
        "/admin/dead-letters/%FF",
        None,
    )
    .await;
    error(&answer, 404, "not_found");
    without_admin.stop().await;
}
