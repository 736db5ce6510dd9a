//! The interactive client in pseudo-terminals: two users chat live, and a
//! client that was offline catches up on start, in order and once.

mod common;

use chat_test_support::TestServer;
use common::{blocking, count, echo_on, exit_code, expect, Client};

#[tokio::test(flavor = "multi_thread")]
async fn two_users_chat_live_and_an_offline_user_catches_up() {
    let server = TestServer::start().await;
    let one = Client::new(server.grpc_url());
    let two = Client::new(server.grpc_url());
    two.run(&["register", "user2"]).await.ok();

    // user1 has no credentials: the client asks for a name and registers it.
    let mut first = one.interactive(&[]);
    let mut second = two.interactive(&[]);
    let first = blocking(move || {
        expect(&mut first, "username: ");
        first.send_line("user1").unwrap();
        expect(&mut first, "registered user1");
        expect(&mut first, "connected as user1 — no unread messages");
        expect(&mut second, "connected as user2 — no unread messages");

        // Plain text with no peer chosen: a hint, nothing sent.
        first.send_line("into the void").unwrap();
        expect(&mut first, "choose who to talk to first: /to <user>");
        first.send_line("/to nobody").unwrap();
        expect(&mut first, "no such user: nobody");

        first.send_line("/to user2").unwrap();
        expect(&mut first, "talking to user2");
        first.send_line("hello from one").unwrap();
        let before = expect(&mut second, "user1: hello from one");
        assert!(!before.contains("into the void"), "{before}");

        second.send_line("/to user1").unwrap();
        expect(&mut second, "talking to user1");
        second.send_line("hi from two").unwrap();
        expect(&mut first, "user2: hi from two");

        second.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut second), 0, "/quit exits with 0");
        first
    })
    .await;
    assert!(
        one.credentials()["users"]["user1"]["secret"].is_string(),
        "the prompt saved user1"
    );

    // user2 is offline: user1 sends three (from another device: one-shot).
    for n in 1..=3 {
        one.run(&["send", "user2", &format!("offline {n}")])
            .await
            .ok();
    }
    let mut first = first;
    let first = blocking(move || {
        // user1's own interactive client shows what its other device sent.
        expect(&mut first, "you → user2: offline 3");
        first
    })
    .await;

    // user2 comes back: the three, in order, once.
    let mut again = two.interactive(&[]);
    let (again, mut before_marker) = blocking(move || {
        let summary = expect(&mut again, "connected as user2");
        let rest = expect(&mut again, "user1: offline 3");
        (again, format!("{summary}{rest}user1: offline 3"))
    })
    .await;
    // A live message after the catch-up: everything before it is the replay.
    one.run(&["send", "user2", "marker"]).await.ok();
    let mut again = again;
    let (mut again, mut first, tail) = blocking(move || {
        let tail = expect(&mut again, "user1: marker");
        (again, first, tail)
    })
    .await;
    before_marker.push_str(&tail);
    assert!(
        before_marker.contains(" — 3 unread in 1 conversation"),
        "{before_marker}"
    );
    let positions: Vec<usize> = (1..=3)
        .map(|n| {
            let line = format!("user1: offline {n}");
            assert_eq!(
                count(&before_marker, &line),
                1,
                "{line:?} once in {before_marker:?}"
            );
            before_marker.find(&line).unwrap()
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order: {before_marker:?}"
    );
    assert_eq!(
        count(&before_marker, "hello from one"),
        0,
        "already delivered: not replayed"
    );

    blocking(move || {
        // ctrl-d ends the session like /quit.
        again.send_control('d').unwrap();
        assert_eq!(exit_code(&mut again), 0);
        first.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut first), 0);
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_unread_and_a_failed_send() {
    // A small body limit, so a line typed on a terminal can break it.
    let server = TestServer::start_with(|config| config.limits.max_body_bytes = 100).await;
    let client = Client::new(server.grpc_url());
    client.run(&["register", "bob"]).await.ok();
    client.run(&["register", "alice"]).await.ok();
    for n in 1..=3 {
        client
            .run(&["--user", "bob", "send", "alice", &format!("note {n}")])
            .await
            .ok();
    }

    let mut alice = client.interactive(&["--user", "alice"]);
    blocking(move || {
        expect(
            &mut alice,
            "connected as alice — 3 unread in 1 conversation",
        );
        expect(&mut alice, "bob: note 3");
        alice.send_line("/unread").unwrap();
        expect(&mut alice, "bob: 3 unread");
        // Choosing the conversation marks what was shown read.
        alice.send_line("/to bob").unwrap();
        expect(&mut alice, "talking to bob");
        alice.send_line("/unread").unwrap();
        expect(&mut alice, "no unread messages");

        alice.send_line("/history 2").unwrap();
        expect(&mut alice, "--- the last 2 message(s) with bob ---");
        let shown = expect(&mut alice, "bob: note 3");
        assert!(
            shown.contains("bob: note 2") && !shown.contains("note 1"),
            "{shown:?}"
        );

        // Over the server's body limit: the ack carries the error.
        alice.send_line(&"x".repeat(150)).unwrap();
        expect(&mut alice, "error: not sent to bob");

        alice.send_line("/bogus").unwrap();
        expect(&mut alice, "unknown command /bogus");
        alice.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut alice), 0);
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_username_logs_in_with_its_secret() {
    let server = TestServer::start().await;
    let carol = server.register("carol").await;
    let client = Client::new(server.grpc_url());

    // No credentials and no input to ask for a name: exit code 3.
    let no_input = client.run(&[]).await;
    assert!(
        no_input.stderr.contains("error: no saved credentials"),
        "{no_input:?}"
    );
    assert_eq!(no_input.code, 3);

    let mut session = client.interactive(&[]);
    let secret = carol.secret.clone();
    blocking(move || {
        expect(&mut session, "username: ");
        session.send_line("x").unwrap();
        expect(&mut session, "3 to 32 characters");
        expect(&mut session, "username: ");
        session.send_line("carol").unwrap();
        expect(&mut session, "carol is taken");
        expect(&mut session, "secret: ");
        session.send_line(&"0".repeat(64)).unwrap();
        expect(&mut session, "does not accept this secret");
        expect(&mut session, "username: ");
        session.send_line("Carol").unwrap();
        expect(&mut session, "secret: ");
        session.send_line(&secret).unwrap();
        expect(&mut session, "logged in as carol");
        expect(&mut session, "connected as carol");
        session.send_control('d').unwrap();
        assert_eq!(exit_code(&mut session), 0);
    })
    .await;
    assert_eq!(
        client.credentials()["users"]["carol"]["secret"],
        carol.secret.as_str()
    );
    assert_eq!(client.credentials()["default_user"], "carol");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_receipts_and_edits_show_live() {
    let server = TestServer::start().await;
    let one = Client::new(server.grpc_url());
    let two = Client::new(server.grpc_url());
    one.run(&["register", "user1"]).await.ok();
    two.run(&["register", "user2"]).await.ok();
    let mut first = one.interactive(&[]);
    let mut second = two.interactive(&[]);
    blocking(move || {
        expect(&mut first, "connected as user1");
        expect(&mut second, "connected as user2");
        first.send_line("/to user2").unwrap();
        expect(&mut first, "talking to user2");
        first.send_line("hello there").unwrap();
        expect(&mut second, "user1: hello there");

        // Choosing the conversation reads it: user1 gets the receipt.
        second.send_line("/to user1").unwrap();
        expect(&mut second, "talking to user1");
        expect(&mut first, "* user2 read up to 1");

        first.send_line("/edit 1 hello again").unwrap();
        expect(&mut second, "* user1 edited message 1: hello again");
        expect(&mut first, "* you edited message 1: hello again");
        first.send_line("/edit 99 nope").unwrap();
        expect(&mut first, "no message 99 of yours here");

        first.send_line("/history").unwrap();
        expect(&mut first, "you → user2: hello again (edited) ✓");

        // A receipt is about our own messages: user2 writing (and so
        // reading up to its own message) tells user1 nothing; user2
        // reading what user1 wrote next does.
        second.send_line("theirs").unwrap();
        expect(&mut first, "user2: theirs");
        first.send_line("mine again").unwrap();
        let between = expect(&mut first, "* user2 read up to 4");
        assert!(!between.contains("read up to 3"), "{between}");

        first.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut first), 0);
        second.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut second), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secret_typed_is_not_echoed() {
    let server = TestServer::start().await;
    let carol = server.register("carol").await;
    let client = Client::new(server.grpc_url());
    let mut session = client.interactive(&[]);
    let secret = carol.secret.clone();
    blocking(move || {
        expect(&mut session, "username: ");
        // Once the client runs (rexpect turned echo off before starting it).
        echo_on(&session);
        session.send_line("carol").unwrap();
        expect(&mut session, "carol\r\n");
        expect(&mut session, "secret: ");
        session.send_line(&secret).unwrap();
        let shown = expect(&mut session, "logged in as carol");
        assert!(
            !shown.contains(&secret[..16]),
            "the secret was echoed: {shown}"
        );
        // The echo is back for what follows.
        expect(&mut session, "connected as carol");
        session.send_line("/to carol").unwrap();
        expect(&mut session, "/to carol");
        session.send_control('d').unwrap();
        assert_eq!(exit_code(&mut session), 0);
    })
    .await;
    server.stop().await;
}
