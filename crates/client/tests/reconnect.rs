//! The interactive client finds a server and comes back on its own: the
//! next server of the list when one is down, and the same one after a
//! restart, with what was typed while it was down sent once it is back.

mod common;

use chat_proto::chat_service_client::ChatServiceClient;
use chat_proto::client_frame::Frame as Up;
use chat_proto::server_frame::Frame as Down;
use chat_test_support::{Live, TestServer};
use common::{blocking, count, dead_address, exit_code, expect, Client, Restarted};

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_is_down_is_skipped_for_the_next_one() {
    let server = TestServer::start().await;
    let dead = dead_address();
    let url = server.grpc_url();
    let client = Client::new(format!("{dead},{url}"));
    // One-shot commands use the first server that answers.
    client.run(&["register", "user1"]).await.ok();

    let mut session = client.interactive(&[]);
    blocking(move || {
        expect(&mut session, &format!("cannot connect to http://{dead}"));
        expect(
            &mut session,
            &format!("connected as user1 — no unread messages (via {url})"),
        );
        session.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut session), 0);
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_reconnects_after_a_server_restart() {
    let mut server = TestServer::start().await;
    let grpc_addr = server.grpc_addr;
    let client = Client::new(server.grpc_url());
    client.run(&["register", "user1"]).await.ok();
    client.run(&["register", "user2"]).await.ok();
    let user1_secret = client.credentials()["users"]["user1"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut session = client.interactive(&["--user", "user2"]);
    let session = blocking(move || {
        expect(&mut session, "connected as user2");
        session.send_line("/to user1").unwrap();
        expect(&mut session, "talking to user1");
        session
    })
    .await;

    // Stop the server but keep its data for the restart.
    let data_dir = std::mem::replace(&mut server.data_dir, tempfile::tempdir().unwrap());
    server.stop().await;
    let mut session = session;
    let session = blocking(move || {
        expect(&mut session, "disconnected: ");
        expect(&mut session, "reconnecting…");
        session.send_line("sent while down").unwrap();
        expect(
            &mut session,
            "not connected: the message will be sent once reconnected",
        );
        session
    })
    .await;

    let restarted = Restarted::start(grpc_addr, data_dir.path()).await;
    let mut session = session;
    let session = blocking(move || {
        expect(&mut session, "connected as user2");
        session
    })
    .await;

    // The line typed while down reaches user1 once the client is back.
    let channel = tonic::transport::Endpoint::from_shared(restarted.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = chat_proto::Bearer::new(&user1_secret).unwrap();
    let mut user1 = Live::open(ChatServiceClient::with_interceptor(channel, bearer)).await;
    loop {
        // Bounded: each wait for a frame panics after WAIT.
        let message = user1.message().await;
        if message.body == "sent while down" {
            assert_eq!(message.sender, "user2");
            break;
        }
    }
    // And what is sent now reaches the reconnected client live.
    client
        .run(&["--user", "user1", "send", "user2", "after the restart"])
        .await
        .ok();
    let mut session = session;
    blocking(move || {
        expect(&mut session, "user1: after the restart");
        session.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut session), 0);
    })
    .await;
    let history = client.run(&["--user", "user1", "history", "user2"]).await;
    assert_eq!(
        count(history.ok(), "\tsent while down"),
        1,
        "{}",
        history.stdout
    );

    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_another_device_got_meanwhile_are_fetched_after_a_reconnect() {
    let mut server = TestServer::start().await;
    let grpc_addr = server.grpc_addr;
    let client = Client::new(server.grpc_url());
    client.run(&["register", "user1"]).await.ok();
    client.run(&["register", "user2"]).await.ok();
    let user2_secret = client.credentials()["users"]["user2"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    client
        .run(&["--user", "user1", "send", "user2", "m1"])
        .await
        .ok();

    let mut session = client.interactive(&["--user", "user2"]);
    let session = blocking(move || {
        expect(&mut session, "user1: m1");
        session
    })
    .await;

    // The server goes away, and comes back at another address that this
    // client does not know.
    let data_dir = std::mem::replace(&mut server.data_dir, tempfile::tempdir().unwrap());
    server.stop().await;
    let mut session = session;
    let session = blocking(move || {
        expect(&mut session, "disconnected: ");
        session
    })
    .await;
    let elsewhere =
        TestServer::start_with(|config| config.data_dir = data_dir.path().to_owned()).await;
    let there = elsewhere.grpc_url();
    for body in ["m2", "m3"] {
        client
            .run(&["--server", &there, "--user", "user1", "send", "user2", body])
            .await
            .ok();
    }
    // user2's other device gets them there and tells the server so: the
    // server will not replay them to this client.
    let mut other = Live::open(elsewhere.chat_as(&user2_secret).await).await;
    let last = loop {
        let message = other.message().await;
        if message.body == "m3" {
            break message;
        }
    };
    let delivered = chat_proto::Delivered {
        conversation_id: last.conversation_id,
        seq: last.seq,
    };
    other.push(Up::Delivered(delivered)).await;
    // Frames are handled in order: the pong means `delivered` is stored.
    other.push(Up::Ping(chat_proto::Ping { nonce: 7 })).await;
    while !matches!(other.frame().await, Down::Pong(_)) {}
    drop(other);
    elsewhere.stop().await;

    // Back at the address this client knows: it fetches what it missed.
    let restarted = Restarted::start(grpc_addr, data_dir.path()).await;
    let mut session = session;
    let (session, shown) = blocking(move || {
        expect(&mut session, "connected as user2");
        let before = expect(&mut session, "user1: m3");
        (session, before)
    })
    .await;
    assert_eq!(count(&shown, "user1: m2"), 1, "{shown:?}");
    assert_eq!(
        count(&shown, "user1: m1"),
        0,
        "m1 was shown before: {shown:?}"
    );

    // Live again, and nothing printed twice on the way.
    client
        .run(&["--user", "user1", "send", "user2", "m4"])
        .await
        .ok();
    let mut session = session;
    blocking(move || {
        let between = expect(&mut session, "user1: m4");
        assert!(
            !between.contains("user1: m"),
            "nothing repeated: {between:?}"
        );
        session.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut session), 0);
    })
    .await;
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_that_changed_while_disconnected_is_caught_up_from_the_rejoin() {
    let mut server = TestServer::start().await;
    let grpc_addr = server.grpc_addr;
    let client = Client::new(server.grpc_url());
    client.run(&["register", "alice"]).await.ok();
    client.run(&["register", "bob"]).await.ok();
    let created = client
        .run(&["--user", "alice", "group", "create", "Team", "bob"])
        .await;
    let group = created.ok().trim_end().to_owned();
    let to_group = format!("#{group}");
    client
        .run(&["--user", "alice", "send", &to_group, "g1"])
        .await
        .ok();

    let mut session = client.interactive(&["--user", "bob"]);
    let session = blocking(move || {
        expect(&mut session, "alice in #Team: g1");
        session
    })
    .await;

    // The server moves to an address this client does not know; there bob
    // is removed from the group and added again.
    let data_dir = std::mem::replace(&mut server.data_dir, tempfile::tempdir().unwrap());
    server.stop().await;
    let mut session = session;
    let session = blocking(move || {
        expect(&mut session, "disconnected: ");
        session
    })
    .await;
    let elsewhere =
        TestServer::start_with(|config| config.data_dir = data_dir.path().to_owned()).await;
    let there = elsewhere.grpc_url();
    let alice = |args: &[&str]| {
        let mut all = vec!["--server", there.as_str(), "--user", "alice"];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    for args in [
        alice(&["send", &to_group, "g2 before the removal"]),
        alice(&["group", "remove", &group, "bob"]),
        alice(&["send", &to_group, "g3 while bob is out"]),
        alice(&["group", "add", &group, "bob"]),
        alice(&["send", &to_group, "g4 after the rejoin"]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client.run(&args).await.ok();
    }
    elsewhere.stop().await;

    // Back at the known address: bob sees the group from his rejoin on.
    let restarted = Restarted::start(grpc_addr, data_dir.path()).await;
    let mut session = session;
    let (session, shown) = blocking(move || {
        expect(&mut session, "connected as bob");
        let before = expect(&mut session, "alice in #Team: g4 after the rejoin");
        (session, before)
    })
    .await;
    assert_eq!(count(&shown, "* alice added you to #Team"), 1, "{shown:?}");
    for unseen in ["g2", "g3", "removed"] {
        assert!(!shown.contains(unseen), "{unseen} is not bob's: {shown:?}");
    }
    assert!(!shown.contains("warning"), "{shown:?}");

    // Live again: nothing repeated, and the delivered cursor follows (a
    // new session replays nothing it has shown).
    client
        .run(&["--user", "alice", "send", &to_group, "g5 live"])
        .await
        .ok();
    let mut session = session;
    blocking(move || {
        let between = expect(&mut session, "alice in #Team: g5 live");
        assert!(!between.contains("in #Team"), "{between:?}");
        session.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut session), 0);
    })
    .await;
    client
        .run(&["--user", "alice", "send", &to_group, "g6 marker"])
        .await
        .ok();
    let mut again = client.interactive(&["--user", "bob"]);
    blocking(move || {
        let replayed = expect(&mut again, "alice in #Team: g6 marker");
        assert!(
            !replayed.contains("g4") && !replayed.contains("g5"),
            "{replayed:?}"
        );
        again.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut again), 0);
    })
    .await;
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_credentials_an_unreachable_server_is_said_before_any_question() {
    let dead = dead_address();
    let client = Client::new(dead.clone());
    let run = client.run_with_stdin(&[], "user1\n").await;
    assert!(run.fails(1).contains(&dead), "{}", run.stderr);
    assert!(!run.stdout.contains("username"), "{}", run.stdout);
}
