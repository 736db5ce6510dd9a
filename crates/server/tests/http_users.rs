//! The HTTP user API, with the seed's envelope, against a real server.

use chat_test_support::{http, TestServer};

const REGISTER: &str = "/v1/chat-apps/users";

#[tokio::test]
async fn register_returns_the_seed_envelope_with_a_secret_shown_once() {
    let server = TestServer::start().await;
    let body = br#"{ "username":"user1","name":"bar", "phone": "8098080"}"#;
    let answer = http(server.http_addr, "POST", REGISTER, Some(body)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // The seed's field order, byte for byte up to the values.
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&answer.json), ["req_id", "status", "data", "code"]);
    assert_eq!(
        keys(&answer.json["data"]),
        ["username", "name", "phone", "secret"]
    );
    assert!(answer.body.starts_with(r#"{"req_id":""#), "{}", answer.body);
    let json = &answer.json;
    assert_eq!(json["status"], "success");
    assert_eq!(json["code"], 200);
    assert!(json["req_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(json["data"]["username"], "user1");
    assert_eq!(json["data"]["name"], "bar");
    assert_eq!(json["data"]["phone"], "8098080");
    let secret = json["data"]["secret"].as_str().expect("a secret");
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));

    let profile = http(
        server.http_addr,
        "GET",
        "/v1/chat-apps/users?username=user1",
        None,
    )
    .await;
    assert_eq!(profile.status, 200);
    assert_eq!(profile.json["data"]["username"], "user1");
    assert_eq!(profile.json["data"]["phone"], "8098080");
    assert!(
        profile.json["data"].get("secret").is_none(),
        "{}",
        profile.body
    );
    assert!(!profile.body.contains(secret));

    // The secret from HTTP works over gRPC.
    let mut chat = server.chat_as(secret).await;
    let list = chat
        .list_conversations(chat_proto::ListConversationsRequest {})
        .await
        .expect("authenticated");
    assert!(list.into_inner().conversations.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn duplicate_names_are_refused_without_regard_to_case() {
    let server = TestServer::start().await;
    let first = http(
        server.http_addr,
        "POST",
        REGISTER,
        Some(br#"{"username":"user1"}"#),
    )
    .await;
    assert_eq!(first.status, 200);
    let again = http(
        server.http_addr,
        "POST",
        REGISTER,
        Some(br#"{"username":"User1","name":"x"}"#),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.json["status"], "error");
    assert_eq!(again.json["code"], 409);
    assert_eq!(again.json["error"]["kind"], "already_exists");
    assert!(again.json.get("data").is_none());
    server.stop().await;
}

#[tokio::test]
async fn bad_names_and_bad_json_get_400_and_change_nothing() {
    let server = TestServer::start().await;
    for bad in [
        r#"{"username":"ab"}"#.to_owned(),
        r#"{"username":"has space"}"#.to_owned(),
        r#"{"username":"../etc"}"#.to_owned(),
        r#"{"username":"üser"}"#.to_owned(),
        format!(r#"{{"username":"{}"}}"#, "a".repeat(33)),
        r#"{"username":"okname","name":"a\u0000b"}"#.to_owned(),
    ] {
        let answer = http(server.http_addr, "POST", REGISTER, Some(bad.as_bytes())).await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        assert_eq!(answer.json["error"]["kind"], "invalid_argument");
        assert_eq!(answer.json["code"], 400);
    }
    for bad in [
        &b"{"[..],
        b"not json",
        b"",
        br#"{"username": 5}"#,
        br#"{"name":"x"}"#,
    ] {
        let answer = http(server.http_addr, "POST", REGISTER, Some(bad)).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.json["status"], "error");
        assert!(answer.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("JSON")));
    }
    // Nothing was created along the way: "okname" is still free.
    let ok = http(
        server.http_addr,
        "POST",
        REGISTER,
        Some(br#"{"username":"okname"}"#),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    server.stop().await;
}

#[tokio::test]
async fn unknown_users_routes_and_missing_parameters() {
    let server = TestServer::start().await;
    let missing = http(
        server.http_addr,
        "GET",
        "/v1/chat-apps/users?username=nobody",
        None,
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json["error"]["kind"], "not_found");
    let no_param = http(server.http_addr, "GET", "/v1/chat-apps/users", None).await;
    assert_eq!(no_param.status, 400);
    let route = http(server.http_addr, "GET", "/nope", None).await;
    assert_eq!(route.status, 404);
    assert_eq!(route.json["status"], "error");
    let health = http(server.http_addr, "GET", "/healthz", None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json["data"]["healthy"], true);
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let server = TestServer::start().await;
    // The limit is the larger of 16 KiB and 6 × max_body_bytes + 4 KiB:
    // 28,672 bytes with the defaults. At it: read (and refused for what it
    // says); one byte over: 413, in the envelope.
    let limit = 6 * 4096 + 4096;
    let body_of = |len: usize| {
        let head = r#"{"username":"big","name":""#;
        let tail = r#""}"#;
        format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
    };
    let at = http(
        server.http_addr,
        "POST",
        REGISTER,
        Some(body_of(limit).as_bytes()),
    )
    .await;
    assert_eq!(at.status, 400, "{}", at.body);
    let over = body_of(limit + 1);
    let answer = http(server.http_addr, "POST", REGISTER, Some(over.as_bytes())).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_eq!(answer.json["status"], "error", "{}", answer.body);
    assert_eq!(answer.json["code"], 413);
    assert_eq!(answer.json["error"]["kind"], "payload_too_large");
    assert!(
        answer.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("28672")),
        "{}",
        answer.body
    );
    assert!(answer.json["req_id"].is_string());
    let user = http(
        server.http_addr,
        "GET",
        "/v1/chat-apps/users?username=big",
        None,
    )
    .await;
    assert_eq!(user.status, 404);
    server.stop().await;
}
