//! TLS on both listeners, with certificates made for the run: gRPC and
//! HTTP served over it, plaintext clients refused quickly, certificates
//! that do not verify refused by every client, and a reload that new
//! handshakes see while an open stream keeps working.

use std::path::Path;
use std::time::{Duration, Instant};

use chat_proto as pb;
use chat_proto::user_service_client::UserServiceClient;
use chat_test_support::tls::{self, TestCa, Validity};
use chat_test_support::{admin_cli, admin_token, TestServer, TEST_ADMIN_TOKEN, WAIT};

/// Held by the reload tests: a SIGHUP reloads every server of the
/// process, and must not do the work of the file poll in another test.
static RELOADS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_chat-server"))
}

/// An HTTPS client trusting only `ca_pem`.
fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// [`https_client`] speaking HTTP/1.1 only.
fn https_client_http1(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .http1_only()
        .timeout(WAIT)
        .build()
        .unwrap()
}

async fn register(channel: tonic::transport::Channel, username: &str) -> Result<(), tonic::Status> {
    UserServiceClient::new(channel)
        .register(pb::RegisterRequest {
            username: username.into(),
            name: username.into(),
            phone: String::new(),
        })
        .await
        .map(drop)
}

#[tokio::test]
async fn grpc_and_http_are_served_over_tls_with_hsts() {
    let ca = TestCa::new("test CA");
    let server = TestServer::start_tls(&ca, |_| {}).await;
    // gRPC: registration and a live stream, over TLS (ALPN h2).
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut live = server.connect(&bob).await;
    server
        .chat(&alice)
        .await
        .send_message(chat_test_support::send_request("bob", "over tls", "m1"))
        .await
        .expect("send over TLS");
    assert_eq!(live.message().await.body, "over tls");
    // HTTP, over HTTP/2 (ALPN) and HTTP/1.1: answers carry
    // Strict-Transport-Security, and the client's address reaches the
    // per-address limits (a registration needs it).
    let url = format!("https://localhost:{}", server.http_addr.port());
    for (client, version) in [
        (https_client(&ca.cert_pem), reqwest::Version::HTTP_2),
        (https_client_http1(&ca.cert_pem), reqwest::Version::HTTP_11),
    ] {
        let answer = client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .expect("HTTPS request");
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.version(), version);
        assert_eq!(
            answer
                .headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("max-age=31536000".to_owned())
        );
    }
    let registered = https_client(&ca.cert_pem)
        .post(format!("{url}/v1/chat-apps/users"))
        .json(&serde_json::json!({"username": "carol", "name": "Carol", "phone": "8098080"}))
        .send()
        .await
        .expect("HTTPS registration");
    assert_eq!(registered.status(), 200);
    // A stop over TLS drains like one in plaintext: the open stream is
    // told to reconnect elsewhere and the server stops in time.
    server.stop().await;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match live.recv().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(
        matches!(&end, Some(Err(status)) if status.code() == tonic::Code::Unavailable),
        "{end:?}"
    );
}

#[tokio::test]
async fn plaintext_clients_fail_fast_against_the_tls_ports() {
    let ca = TestCa::new("test CA");
    let server = TestServer::start_tls(&ca, |_| {}).await;
    let started = Instant::now();
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect_lazy();
    let refused = tokio::time::timeout(WAIT, register(plain, "plain"))
        .await
        .expect("a plaintext gRPC call ends, it does not hang");
    assert!(refused.is_err(), "a plaintext gRPC call is refused");
    let refused = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .get(format!("http://{}/healthz", server.http_addr))
            .send(),
    )
    .await
    .expect("a plaintext HTTP request ends, it does not hang");
    assert!(refused.is_err(), "a plaintext HTTP request is refused");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused within seconds, not by a timeout: {:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn certificates_that_do_not_verify_are_refused_by_every_client() {
    let ca = TestCa::new("test CA");
    let other_ca = TestCa::new("another CA");
    let with_token = |c: &mut chat_server::Config| c.admin_token = Some(admin_token());
    let good = TestServer::start_tls(&ca, with_token).await;
    let wrong_host = ca.issue("wrong-host", &["elsewhere.example"], Validity::Current);
    let wrong_host = TestServer::start_with(|c| {
        c.tls = Some(wrong_host);
        with_token(c);
    })
    .await;
    let expired = ca.issue("expired", &["localhost", "127.0.0.1"], Validity::Expired);
    let expired = TestServer::start_with(|c| {
        c.tls = Some(expired);
        with_token(c);
    })
    .await;
    let ca_file = ca.cert_file();
    let other_ca_file = other_ca.cert_file();
    let admin = |server: &TestServer, ca: &Path| {
        let url = format!("https://localhost:{}", server.http_addr.port());
        let ca = ca.to_str().unwrap().to_owned();
        async move {
            admin_cli(
                binary(),
                &url,
                Some(TEST_ADMIN_TOKEN),
                &["--ca-cert", &ca, "nodes"],
            )
            .await
        }
    };

    // The admin CLI: the right CA works; each bad certificate is refused
    // with its reason.
    let ok = admin(&good, &ca_file).await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    for (server, ca, reason) in [
        (&good, &other_ca_file, "not signed by a trusted CA"),
        (&wrong_host, &ca_file, "not valid for this host name"),
        (&expired, &ca_file, "expired"),
    ] {
        let refused = admin(server, ca).await;
        assert_eq!(refused.code, 1, "{}", refused.stderr);
        assert!(
            refused.stderr.contains("refused the TLS certificate")
                && refused.stderr.contains(reason),
            "{}",
            refused.stderr
        );
    }

    // A tonic client with a custom root.
    tls::channel(good.grpc_addr, &ca.cert_pem, "localhost")
        .await
        .expect("the right CA verifies");
    for (server, ca_pem) in [
        (&good, &other_ca.cert_pem),
        (&wrong_host, &ca.cert_pem),
        (&expired, &ca.cert_pem),
    ] {
        let refused = match tls::channel(server.grpc_addr, ca_pem, "localhost").await {
            Err(e) => chat_server::tls::refusal(&e),
            Ok(channel) => register(channel, "carol").await.err().and_then(|status| {
                std::error::Error::source(&status).and_then(chat_server::tls::refusal)
            }),
        };
        assert!(refused.is_some(), "the certificate is refused: {refused:?}");
    }
    for server in [good, wrong_host, expired] {
        server.stop().await;
    }
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_handshakes_while_open_streams_go_on() {
    let _reloads = RELOADS.lock().await;
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let files = old_ca.issue("server", &["localhost", "127.0.0.1"], Validity::Current);
    let server = TestServer::start_with(|c| c.tls = Some(files.clone())).await;
    let old = |server: &TestServer| tls::channel(server.grpc_addr, &old_ca.cert_pem, "localhost");
    let channel = old(&server).await.expect("the old certificate verifies");
    let mut users = UserServiceClient::new(channel.clone());
    let register_as = |name: &str| pb::RegisterRequest {
        username: name.into(),
        name: name.into(),
        phone: String::new(),
    };
    let alice = users
        .register(register_as("alice"))
        .await
        .unwrap()
        .into_inner();
    let bob = users
        .register(register_as("bob"))
        .await
        .unwrap()
        .into_inner();
    let client = |secret: &str| {
        pb::chat_service_client::ChatServiceClient::with_interceptor(
            channel.clone(),
            pb::Bearer::new(secret).unwrap(),
        )
    };
    let mut bob_live = chat_test_support::Live::open(client(&bob.secret)).await;
    let alice_live = chat_test_support::Live::open(client(&alice.secret)).await;

    // Renewal: the files are replaced; the server polls them.
    let (cert, key) = new_ca.issue_pem(&["localhost", "127.0.0.1"], Validity::Current);
    tls::write_files(&files, &cert, &key);
    let deadline = Instant::now() + chat_server::tls::POLL * 3 + WAIT;
    loop {
        if tls::channel(server.grpc_addr, &new_ca.cert_pem, "localhost")
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        old(&server).await.is_err(),
        "new handshakes no longer get the old certificate"
    );

    // The streams opened before the reload carry on.
    alice_live.send_to("bob", "after the renewal", "m1").await;
    assert_eq!(bob_live.message().await.body, "after the renewal");
    server.stop().await;
}

#[tokio::test]
async fn the_per_address_limits_see_the_client_address_over_tls() {
    let ca = TestCa::new("test CA");
    let server = TestServer::start_tls(&ca, |c| c.limits.registrations_per_minute = 1).await;
    let url = format!(
        "https://localhost:{}/v1/chat-apps/users",
        server.http_addr.port()
    );
    let register_http = |username: &str| {
        https_client(&ca.cert_pem)
            .post(url.clone())
            .json(&serde_json::json!({"username": username, "name": username, "phone": "8098080"}))
            .send()
    };
    assert_eq!(register_http("dave").await.unwrap().status(), 200);
    // The second registration from 127.0.0.1 is over the limit, over
    // HTTP and over gRPC alike: both listeners know who is calling.
    assert_eq!(register_http("erin").await.unwrap().status(), 429);
    let refused = register(server.channel().await, "frank").await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_files_whose_change_the_poll_cannot_see() {
    let _reloads = RELOADS.lock().await;
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let hosts = ["localhost", "127.0.0.1"];
    let files = old_ca.issue("server", &hosts, Validity::Current);
    let server = TestServer::start_with(|c| c.tls = Some(files.clone())).await;
    tls::channel(server.grpc_addr, &old_ca.cert_pem, "localhost")
        .await
        .expect("the old certificate verifies");
    // New files of the same sizes and times as the old ones: the poll
    // cannot see the change (its stamps are equal), only the signal tells.
    let stamps = |files: &chat_server::tls::TlsFiles| {
        [&files.cert, &files.key].map(|path| {
            let meta = std::fs::metadata(path).unwrap();
            (meta.len(), meta.modified().unwrap())
        })
    };
    let before = stamps(&files);
    let (cert, key) = loop {
        let (cert, key) = new_ca.issue_pem(&hosts, Validity::Current);
        if (cert.len() as u64, key.len() as u64) == (before[0].0, before[1].0) {
            break (cert, key);
        }
    };
    tls::write_files(&files, &cert, &key);
    for (path, (_, modified)) in [&files.cert, &files.key].into_iter().zip(before) {
        std::fs::File::options()
            .append(true)
            .open(path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    }
    assert_eq!(stamps(&files), before);
    // The handler is installed before the signal is raised, whoever's it
    // is: a SIGHUP without one would end the test process.
    let _handler = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    // SAFETY: raising a signal this process handles.
    assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
    let deadline = Instant::now() + WAIT;
    while tls::channel(server.grpc_addr, &new_ca.cert_pem, "localhost")
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "SIGHUP never reloads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}
