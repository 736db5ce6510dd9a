//! Every ChatService call needs a valid bearer secret, and every failure
//! looks the same.

use chat_proto as pb;
use chat_test_support::{Live, TestServer};
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

/// Rotating a secret: the new one works at once, the old one finds no one,
/// the streams opened with the old one end with UNAUTHENTICATED on every
/// server of the cluster, and a stream opened with the new one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_stops_working_and_ends_its_streams_everywhere() {
    use std::sync::Arc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn chat_store::Store> = Arc::new(
        chat_store::sqlite::SqliteStore::open(chat_store::sqlite::SqliteConfig::new(
            dir.path().join("chat.db"),
        ))
        .unwrap(),
    );
    let backends = chat_server::Backends {
        store,
        registry: Arc::new(chat_cluster::registry::MemoryRegistry::new(
            Duration::from_secs(15),
        )),
        bus: Arc::new(chat_cluster::bus::MemoryBus::default()),
    };
    let a = TestServer::start_node(Some(backends.clone()), |c| {
        c.cluster.node_id = "a".into();
    })
    .await;
    let b = TestServer::start_node(Some(backends), |c| c.cluster.node_id = "b".into()).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let mut old_on_a = a.connect(&alice).await;
    let mut old_on_b = b.connect(&alice).await;

    let rotated = pb::user_service_client::UserServiceClient::with_interceptor(
        a.channel().await,
        pb::Bearer::new(&alice.secret).unwrap(),
    )
    .rotate_secret(pb::RotateSecretRequest {})
    .await
    .expect("rotate")
    .into_inner()
    .secret;
    assert_eq!(rotated.len(), 64);
    assert_ne!(rotated, alice.secret);

    for (server, stream) in [(&a, &mut old_on_a), (&b, &mut old_on_b)] {
        let status = loop {
            match stream.next().await {
                Some(Err(status)) => break status,
                Some(Ok(_)) => {}
                None => panic!("a stream of the old secret ended without a reason"),
            }
        };
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let old = server
            .chat_as(&alice.secret)
            .await
            .list_conversations(pb::ListConversationsRequest {})
            .await
            .unwrap_err();
        assert_eq!(old.code(), Code::Unauthenticated);
    }

    // The new secret works on both servers; its stream stays open and
    // gets what is sent after the rotation.
    let mut new_on_b = Live::open(b.chat_as(&rotated).await).await;
    let again = a
        .users()
        .await
        .rotate_secret(pb::RotateSecretRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        Code::Unauthenticated,
        "rotation needs a secret"
    );
    let sent = a
        .chat(&bob)
        .await
        .send_message(chat_test_support::send_request(
            "alice",
            "still here?",
            "k1",
        ))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(new_on_b.message().await, sent);

    // Rotating the old secret again fails: it is gone.
    let mut stale = pb::user_service_client::UserServiceClient::with_interceptor(
        a.channel().await,
        pb::Bearer::new(&alice.secret).unwrap(),
    );
    let stale = stale
        .rotate_secret(pb::RotateSecretRequest {})
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Unauthenticated);
}
