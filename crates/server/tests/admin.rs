//! The admin API and `chat-server admin` against a real two-server
//! cluster (PostgreSQL store, Redis registry, Redis bus): users paged by
//! name, who is connected to which server, the live servers, and an
//! operator's revocation of a user's secret ending the user's streams on
//! every server; plus the admin token's guard on every route.
//! (Dead letters are in `dead_letters.rs`.)

use std::collections::BTreeSet;
use std::time::Duration;

use chat_proto as pb;
use chat_server::http::types::{NodeList, Revoked, SessionList, UserPage};
use chat_test_support::services::{fresh_postgres, unique};
use chat_test_support::{
    admin_cli, admin_http, admin_token, cluster_node, http, http_as, http_with, HttpAnswer, Live,
    TestServer, TestUser, TEST_ADMIN_TOKEN, WAIT,
};
use serde::de::DeserializeOwned;
use tonic::Code;

/// Two servers of one cluster, both with the admin API.
struct Cluster {
    a: TestServer,
    b: TestServer,
    a_node: String,
    b_node: String,
}

async fn cluster() -> Cluster {
    let postgres = fresh_postgres().await;
    let prefix = format!("{}:", unique("t"));
    let configure = |node: String| {
        let (postgres, prefix) = (postgres.clone(), prefix.clone());
        move |c: &mut chat_server::Config| {
            cluster_node(c, &node, &postgres, &prefix);
            c.admin_token = Some(admin_token());
        }
    };
    let (a_node, b_node) = (unique("a-"), unique("b-"));
    let a = TestServer::start_with(configure(a_node.clone())).await;
    let b = TestServer::start_with(configure(b_node.clone())).await;
    Cluster {
        a,
        b,
        a_node,
        b_node,
    }
}

/// An admin request that must succeed.
async fn admin_ok(server: &TestServer, method: &str, path: &str) -> HttpAnswer {
    let answer = admin_http(server.http_addr, method, path).await;
    assert_eq!(answer.status, 200, "{method} {path}: {}", answer.body);
    answer
}

/// The `data` of an admin request that must succeed.
async fn admin_data<T: DeserializeOwned>(server: &TestServer, method: &str, path: &str) -> T {
    admin_ok(server, method, path).await.data()
}

/// `(username, node, session)` of every listed session.
fn sessions(data: &SessionList) -> Vec<(String, String, u64)> {
    data.sessions
        .iter()
        .map(|s| (s.username.clone(), s.node.clone(), s.session))
        .collect()
}

/// `(username, node)` of every listed session.
fn who_where(data: &SessionList) -> BTreeSet<(String, String)> {
    sessions(data).into_iter().map(|(u, n, _)| (u, n)).collect()
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(u, n)| (u.to_string(), n.to_string()))
        .collect()
}

/// Polls `GET path` on `server` until `done` holds for its data (bounded
/// by [`WAIT`]); the data that satisfied it.
async fn until<T: DeserializeOwned + std::fmt::Debug>(
    server: &TestServer,
    path: &str,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let data = admin_data(server, "GET", path).await;
        if done(&data) {
            return data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never got there: {data:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next error of a stream, skipping frames before it.
async fn ended(stream: &mut Live) -> tonic::Status {
    loop {
        match stream.next().await {
            Some(Err(status)) => return status,
            Some(Ok(_)) => {}
            None => panic!("the stream ended without a status"),
        }
    }
}

fn node_ids(data: &NodeList) -> Vec<String> {
    data.nodes.iter().map(|n| n.node.clone()).collect()
}

/// Users page by name, 2 at a time, each page after the previous one's
/// last name; an uppercase cursor is the same as a lowercase one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_listed_in_pages_by_name() {
    let c = cluster().await;
    let names = ["erin", "alice", "dave", "bob", "carol"];
    for (i, name) in names.iter().enumerate() {
        let server = if i % 2 == 0 { &c.a } else { &c.b };
        server.register(name).await;
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(after) => format!("/admin/users?limit=2&after={after}"),
            None => "/admin/users?limit=2".to_owned(),
        };
        let answer = admin_ok(&c.b, "GET", &path).await;
        let data: UserPage = answer.data();
        assert!(data.users.len() <= 2, "{data:?}");
        for user in &data.users {
            assert_eq!(user.name, format!("{} name", user.username));
            let created =
                chrono::DateTime::parse_from_rfc3339(&user.created_at).expect("an RFC 3339 time");
            assert_eq!(created.timestamp_millis(), user.created_at_unix_ms);
            seen.push(user.username.clone());
        }
        // No more than the listed fields go out: never a phone or secret.
        for user in answer.json["data"]["users"].as_array().unwrap() {
            assert!(user.get("phone").is_none() && user.get("secret").is_none());
        }
        pages += 1;
        assert!(pages <= names.len(), "paging does not end");
        if !data.has_more {
            break;
        }
        after = Some(data.next_after.expect("a cursor"));
    }
    assert_eq!(seen, ["alice", "bob", "carol", "dave", "erin"]);
    assert_eq!(pages, 3);
    let data: UserPage = admin_data(&c.a, "GET", "/admin/users?after=BOB").await;
    let rest: Vec<&str> = data.users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(rest, ["carol", "dave", "erin"]);
    assert!(!data.has_more);
    assert_eq!(data.next_after.as_deref(), Some("erin"));
    let none = admin_ok(&c.a, "GET", "/admin/users?after=zzz").await;
    assert_eq!(
        none.json["data"],
        serde_json::json!({ "users": [], "has_more": false, "next_after": null })
    );
    c.a.stop().await;
    c.b.stop().await;
}

/// Who is connected where: each user on the server they connected to,
/// filtered by node or user, gone once they disconnect; and the live
/// servers, listed with their addresses whether they hold sessions or
/// not, until they shut down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_nodes_show_the_cluster() {
    let c = cluster().await;
    // No sessions anywhere yet: both servers show.
    let data: NodeList = until(&c.a, "/admin/nodes", |d| node_ids(d).len() == 2).await;
    let mut expected = vec![
        (c.a_node.clone(), c.a.grpc_addr, c.a.http_addr),
        (c.b_node.clone(), c.b.grpc_addr, c.b.http_addr),
    ];
    expected.sort();
    for (node, (id, grpc, http)) in data.nodes.iter().zip(&expected) {
        assert_eq!(&node.node, id);
        assert_eq!(node.grpc_addr, grpc.to_string());
        assert_eq!(node.http_addr, http.to_string());
        let (started, beat) = (node.started_at_unix_ms, node.heartbeat_at_unix_ms);
        assert!(started > 0 && started <= beat, "{node:?}");
        for time in [&node.started_at, &node.heartbeat_at] {
            chrono::DateTime::parse_from_rfc3339(time).expect("an RFC 3339 time");
        }
    }
    assert!(sessions(&admin_data(&c.b, "GET", "/admin/sessions").await).is_empty());

    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let alice_a = c.a.connect(&alice).await;
    let bob_b = c.b.connect(&bob).await;
    let bob_b2 = c.b.connect(&bob).await;
    let everyone = pairs(&[("alice", &c.a_node), ("bob", &c.b_node)]);
    let data = until(&c.b, "/admin/sessions", |d| sessions(d).len() == 3).await;
    assert_eq!(who_where(&data), everyone);
    assert!(!data.truncated);
    let listed = sessions(&data);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "sorted");
    // The session ids are the ones the streams were told.
    let alice_id: u64 = alice_a.ready.session_id.parse().unwrap();
    assert!(listed.contains(&("alice".into(), c.a_node.clone(), alice_id)));
    for bob_stream in [&bob_b, &bob_b2] {
        let id: u64 = bob_stream.ready.session_id.parse().unwrap();
        assert!(listed.contains(&("bob".into(), c.b_node.clone(), id)));
    }

    let on_a = admin_data(&c.b, "GET", &format!("/admin/sessions?node={}", c.a_node)).await;
    assert_eq!(who_where(&on_a), pairs(&[("alice", &c.a_node)]));
    let bobs = admin_data(&c.a, "GET", "/admin/sessions?user=BOB").await;
    assert_eq!(sessions(&bobs).len(), 2);
    assert_eq!(who_where(&bobs), pairs(&[("bob", &c.b_node)]));
    let bob_on_a = admin_data(
        &c.a,
        "GET",
        &format!("/admin/sessions?user=bob&node={}", c.a_node),
    )
    .await;
    assert!(sessions(&bob_on_a).is_empty());
    let one: SessionList = admin_data(&c.a, "GET", "/admin/sessions?limit=1").await;
    assert_eq!(sessions(&one).len(), 1);
    assert!(one.truncated);

    // Disconnecting removes a session; the others stay.
    drop(bob_b2);
    until(&c.a, "/admin/sessions", |d: &SessionList| {
        sessions(d).len() == 2
    })
    .await;
    drop(bob_b);
    let data = until(&c.a, "/admin/sessions", |d| sessions(d).len() == 1).await;
    assert_eq!(who_where(&data), pairs(&[("alice", &c.a_node)]));

    // A server that shuts down leaves the list at once.
    let b_node = c.b_node.clone();
    c.b.stop().await;
    let data = admin_data(&c.a, "GET", "/admin/nodes").await;
    assert_eq!(node_ids(&data), [c.a_node.as_str()], "{b_node} is gone");
    drop(alice_a);
    until(&c.a, "/admin/sessions", |d: &SessionList| {
        sessions(d).is_empty()
    })
    .await;
    c.a.stop().await;
}

/// An operator revokes a user's secret through server A: the user's
/// streams on A and B end with UNAUTHENTICATED, the old secret is refused
/// over gRPC and HTTP on both servers, and the new one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_ends_the_users_streams_on_every_server() {
    let c = cluster().await;
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let mut alice_a = c.a.connect(&alice).await;
    let mut alice_b = c.b.connect(&alice).await;
    let mut bob_b = c.b.connect(&bob).await;
    // B's session must be in the registry before A looks for it.
    until(&c.a, "/admin/sessions?user=alice", |d: &SessionList| {
        sessions(d).len() == 2
    })
    .await;

    let data: Revoked = admin_data(&c.a, "POST", "/admin/users/Alice/revoke").await;
    assert_eq!(data.username, "alice");
    let secret = data.secret;
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(secret, alice.secret);
    assert_eq!(data.local_sessions, 1);
    assert_eq!(data.nodes, vec![c.b_node.clone()]);
    assert!(data.undelivered.is_empty());

    for stream in [&mut alice_a, &mut alice_b] {
        let status = ended(stream).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    for server in [&c.a, &c.b] {
        let refused = server
            .chat_as(&alice.secret)
            .await
            .list_conversations(pb::ListConversationsRequest {})
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        let refused = conversations_over_http(server, &alice.secret).await;
        assert_eq!(refused.status, 401, "{}", refused.body);
        let accepted = conversations_over_http(server, &secret).await;
        assert_eq!(accepted.status, 200, "{}", accepted.body);
    }

    // The new secret opens a stream that stays and gets what is sent.
    let renewed = TestUser {
        username: "alice".into(),
        secret: secret.clone(),
    };
    let mut alice_new = c.b.connect(&renewed).await;
    let sent =
        c.a.chat(&bob)
            .await
            .send_message(chat_test_support::send_request(
                "alice",
                "welcome back",
                "w1",
            ))
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap();
    assert_eq!(alice_new.message().await, sent);
    // Bob's stream was never touched.
    assert_eq!(bob_b.message().await, sent);

    // Revoking again replaces the new secret too.
    let again: Revoked = admin_data(&c.b, "POST", "/admin/users/alice/revoke").await;
    assert_eq!(again.local_sessions, 1);
    assert_ne!(again.secret, secret);
    assert_eq!(ended(&mut alice_new).await.code(), Code::Unauthenticated);

    let unknown = admin_http(c.a.http_addr, "POST", "/admin/users/nobody/revoke").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(unknown.json["code"], 404);
    assert_eq!(unknown.json["error"]["kind"], "not_found");
    assert_eq!(unknown.json["error"]["message"], "user not found");
    c.a.stop().await;
    c.b.stop().await;
}

async fn conversations_over_http(server: &TestServer, secret: &str) -> HttpAnswer {
    http_as(
        server.http_addr,
        secret,
        "GET",
        "/v1/chat-apps/conversations",
        None,
    )
    .await
}

/// Every new admin route (and any other method on it): 404 like an
/// unknown route without a configured token, 401 without the right token,
/// 400 for bad parameters, before anything is looked at or changed.
#[tokio::test]
async fn every_admin_route_wants_the_token() {
    let routes = [
        ("GET", "/admin/users"),
        ("POST", "/admin/users/alice/revoke"),
        ("GET", "/admin/sessions"),
        ("GET", "/admin/nodes"),
        ("DELETE", "/admin/users"),
        ("GET", "/admin/users/alice/revoke"),
        ("POST", "/admin/sessions"),
        ("PUT", "/admin/nodes"),
    ];
    let without = TestServer::start().await;
    let unknown = http(without.http_addr, "GET", "/no-such-route", None).await;
    assert_eq!(unknown.status, 404);
    for (method, path) in routes {
        for answer in [
            admin_http(without.http_addr, method, path).await,
            http(without.http_addr, method, path, None).await,
        ] {
            assert_eq!(answer.status, 404, "{method} {path}: {}", answer.body);
            assert_eq!(
                answer.json["error"], unknown.json["error"],
                "{method} {path}"
            );
        }
    }
    without.stop().await;

    let server = TestServer::start_with(|c| c.admin_token = Some(admin_token())).await;
    let addr = server.http_addr;
    let alice = server.register("alice").await;
    for (method, path) in routes {
        for auth in [
            None,
            Some("Bearer not-the-admin-token-at-all"),
            Some("Basic test-admin-token-0123456789"),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("Authorization", a)).into_iter().collect();
            let answer = http_with(addr, method, path, &headers, None).await;
            assert_eq!(
                answer.status, 401,
                "{method} {path} {auth:?}: {}",
                answer.body
            );
            assert_eq!(answer.json["error"]["kind"], "unauthenticated");
        }
    }
    // Nothing was revoked by the refused requests.
    let still = conversations_over_http(&server, &alice.secret).await;
    assert_eq!(still.status, 200, "{}", still.body);

    for (method, path, status) in [
        ("GET", "/admin/users?limit=0", 400),
        ("GET", "/admin/users?limit=201", 400),
        ("GET", "/admin/users?limit=x", 400),
        ("GET", "/admin/sessions?limit=0", 400),
        ("GET", "/admin/sessions?limit=10001", 400),
        ("GET", "/admin/sessions?node=no%20spaces", 400),
        ("GET", "/admin/sessions?node=", 400),
        ("GET", "/admin/sessions?user=x", 400),
        ("POST", "/admin/users/x/revoke", 400),
        ("POST", "/admin/users/%FF%FE%FD/revoke", 400),
        ("POST", "/admin/users/nobody/revoke", 404),
        ("DELETE", "/admin/users", 404),
        ("PUT", "/admin/nodes", 404),
    ] {
        let answer = admin_http(addr, method, path).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        assert_eq!(answer.json["code"], status, "{method} {path}: the envelope");
    }
    let still = conversations_over_http(&server, &alice.secret).await;
    assert_eq!(still.status, 200, "{}", still.body);

    // A single server lists itself, and its own sessions.
    let nodes: NodeList = admin_data(&server, "GET", "/admin/nodes").await;
    assert_eq!(nodes.nodes.len(), 1);
    assert_eq!(nodes.nodes[0].http_addr, addr.to_string());
    let live = server.connect(&alice).await;
    let data = admin_data(&server, "GET", "/admin/sessions").await;
    assert_eq!(who_where(&data), pairs(&[("alice", &nodes.nodes[0].node)]));
    drop(live);
    server.stop().await;
}

fn columns(stdout: &str) -> Vec<Vec<&str>> {
    stdout.lines().map(|l| l.split('\t').collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_command_lists_users_sessions_and_nodes_and_revokes() {
    let c = cluster().await;
    let url = c.a.http_url();
    let token = Some(TEST_ADMIN_TOKEN);
    let alice = c.a.register("alice").await;
    c.b.register("bob").await;
    c.a.register("carol").await;

    let list = admin_cli!(&url, token, &["users", "list"]).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    let lines = columns(&list.stdout);
    assert_eq!(lines.len(), 3, "{}", list.stdout);
    for (line, name) in lines.iter().zip(["alice", "bob", "carol"]) {
        assert_eq!(line.len(), 3, "{line:?}");
        assert_eq!((line[0], line[1]), (name, format!("{name} name").as_str()));
        chrono::DateTime::parse_from_rfc3339(line[2]).expect("an RFC 3339 time");
    }
    let page = admin_cli!(
        &url,
        token,
        &["users", "list", "--after", "alice", "--limit", "1"],
    )
    .await;
    assert_eq!(page.code, 0, "{}", page.stderr);
    assert_eq!(columns(&page.stdout).len(), 1);
    assert_eq!(columns(&page.stdout)[0][0], "bob");

    // Nodes: both servers, with their addresses.
    let deadline = tokio::time::Instant::now() + WAIT;
    let nodes = loop {
        let nodes = admin_cli!(&url, token, &["nodes"]).await;
        assert_eq!(nodes.code, 0, "{}", nodes.stderr);
        if nodes.stdout.lines().count() == 2 {
            break nodes;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", nodes.stdout);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut expected = [
        (c.a_node.clone(), c.a.grpc_addr, c.a.http_addr),
        (c.b_node.clone(), c.b.grpc_addr, c.b.http_addr),
    ];
    expected.sort();
    for (line, (id, grpc, http)) in columns(&nodes.stdout).iter().zip(&expected) {
        assert_eq!(line.len(), 5, "{line:?}");
        assert_eq!(line[0], id);
        assert_eq!(line[1], grpc.to_string());
        assert_eq!(line[2], http.to_string());
        chrono::DateTime::parse_from_rfc3339(line[3]).expect("an RFC 3339 time");
        chrono::DateTime::parse_from_rfc3339(line[4]).expect("an RFC 3339 time");
    }

    // Sessions: alice on B.
    let mut alice_b = c.b.connect(&alice).await;
    let session_id = alice_b.ready.session_id.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    let listed = loop {
        let listed = admin_cli!(&url, token, &["sessions"]).await;
        assert_eq!(listed.code, 0, "{}", listed.stderr);
        if !listed.stdout.is_empty() {
            break listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "alice never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        listed.stdout,
        format!("alice\t{}\t{session_id}\n", c.b_node)
    );
    let on_a = admin_cli!(&url, token, &["sessions", "--node", &c.a_node]).await;
    assert_eq!(
        (on_a.code, on_a.stdout.as_str()),
        (0, ""),
        "{}",
        on_a.stderr
    );
    let hers = admin_cli!(&url, token, &["sessions", "--user", "alice"]).await;
    assert_eq!(hers.stdout, listed.stdout);

    // Revoke: the new secret alone on stdout; alice's stream on B ends.
    let revoked = admin_cli!(&url, token, &["users", "revoke", "alice"]).await;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let secret = revoked.stdout.trim_end_matches('\n');
    assert_eq!(revoked.stdout, format!("{secret}\n"));
    assert_eq!(secret.len(), 64);
    assert!(revoked.stderr.contains(&c.b_node), "{}", revoked.stderr);
    assert_eq!(ended(&mut alice_b).await.code(), Code::Unauthenticated);
    let renewed = TestUser {
        username: "alice".into(),
        secret: secret.to_owned(),
    };
    c.a.connect(&renewed).await;

    // Failures: unknown user, bad usage, wrong token, no admin API.
    let unknown = admin_cli!(&url, token, &["users", "revoke", "nobody"]).await;
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("user not found"),
        "{}",
        unknown.stderr
    );
    assert!(unknown.stdout.is_empty());
    let invalid = admin_cli!(&url, token, &["sessions", "--user", "x"]).await;
    assert_eq!(invalid.code, 1, "{}", invalid.stderr);
    let usage = admin_cli!(&url, token, &["users", "revoke"]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let wrong = admin_cli!(&url, Some("not-the-admin-token-at-all"), &["nodes"]).await;
    assert_eq!(wrong.code, 3, "{}", wrong.stderr);
    let missing = admin_cli!(&url, None, &["users", "list"]).await;
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    let plain = TestServer::start().await;
    let absent = admin_cli!(&plain.http_url(), token, &["users", "list"]).await;
    assert_eq!(absent.code, 4, "{}", absent.stderr);
    assert!(absent.stderr.contains("no admin API"), "{}", absent.stderr);
    plain.stop().await;

    // The dead-letter commands still answer.
    let letters = admin_cli!(&url, token, &["dead-letters", "list"]).await;
    assert_eq!(
        (letters.code, letters.stdout.as_str()),
        (0, ""),
        "{}",
        letters.stderr
    );
    c.a.stop().await;
    c.b.stop().await;
}
