//! Every ChatService call needs a valid bearer secret, and every failure
//! looks the same.

use chat_proto as pb;
use chat_test_support::TestServer;
use tonic::Code;

#[tokio::test]
async fn missing_garbage_and_unknown_secrets_are_rejected_alike() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let unknown = "0".repeat(64);
    let wrong_scheme = format!("Basic {}", alice.secret);

    let mut answers = Vec::new();
    // No header at all.
    let mut anonymous = pb::chat_service_client::ChatServiceClient::new(server.channel().await);
    answers.push(
        anonymous
            .list_conversations(pb::ListConversationsRequest {})
            .await
            .unwrap_err(),
    );
    for secret in ["garbage", unknown.as_str(), &alice.secret[..63]] {
        let mut chat = server.chat_as(secret).await;
        answers.push(
            chat.list_conversations(pb::ListConversationsRequest {})
                .await
                .unwrap_err(),
        );
    }
    let mut request = tonic::Request::new(pb::ListConversationsRequest {});
    request
        .metadata_mut()
        .insert("authorization", wrong_scheme.parse().unwrap());
    answers.push(anonymous.list_conversations(request).await.unwrap_err());

    for status in &answers {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(status.message(), answers[0].message());
    }

    // The stream is refused the same way, before anything is sent.
    let mut chat = server.chat_as(&unknown).await;
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::ClientFrame>(1);
    let refused = chat
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The real secret works, in upper case too (hex is case-insensitive).
    let mut chat = server.chat_as(&alice.secret.to_uppercase()).await;
    assert!(chat
        .list_conversations(pb::ListConversationsRequest {})
        .await
        .is_ok());
    server.stop().await;
}

#[tokio::test]
async fn get_user_never_returns_the_secret() {
    let server = TestServer::start().await;
    let alice = server.register("Alice").await;
    assert_eq!(alice.username, "alice");
    let user = server
        .users()
        .await
        .get_user(pb::GetUserRequest {
            username: "ALICE".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.username, "alice");
    let encoded = format!("{user:?}");
    assert!(!encoded.contains(&alice.secret));

    let taken = server
        .users()
        .await
        .register(pb::RegisterRequest {
            username: "aLiCe".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    let missing = server
        .users()
        .await
        .get_user(pb::GetUserRequest {
            username: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    server.stop().await;
}
