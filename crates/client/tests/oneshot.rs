//! The one-shot subcommands end to end: the real binary against a real
//! server, their output formats and their exit codes.

mod common;

use chat_test_support::TestServer;
use common::{dead_address, Client};

#[tokio::test(flavor = "multi_thread")]
async fn register_send_history_unread_and_exit_codes() {
    let server = TestServer::start().await;
    let client = Client::new(server.grpc_url());

    // register: prints the username, saves the secret privately.
    assert_eq!(
        client
            .run(&["register", "user1", "--name", "User One"])
            .await
            .ok(),
        "user1\n"
    );
    assert_eq!(
        client.run(&["register", "User2"]).await.ok(),
        "user2\n",
        "names are lowercased"
    );
    let saved = client.credentials();
    assert_eq!(
        saved["default_user"], "user2",
        "the last registered user is the default"
    );
    for user in ["user1", "user2"] {
        let secret = saved["users"][user]["secret"]
            .as_str()
            .expect("a saved secret");
        assert_eq!(secret.len(), 64, "{user}'s secret");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = client.home.path().join("credentials.json");
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "credentials.json is private");
    }

    // send: `<conversation_id> <seq>`, seq counting up.
    let first = client
        .run(&["--user", "user1", "send", "user2", "hello", "there"])
        .await;
    let (conversation, seq) = first.ok().trim_end().split_once(' ').expect("two fields");
    assert_eq!(seq, "1");
    assert!(!conversation.is_empty());
    // --user is for that run only: user2, registered last, stays the
    // default.
    assert_eq!(client.credentials()["default_user"], "user2");
    assert_eq!(client.run(&["unread"]).await.ok(), "user1\t1\t1\n");
    let second = client
        .run(&["--user", "user1", "send", "user2", "line one\nline\ttwo"])
        .await;
    assert_eq!(second.ok(), format!("{conversation} 2\n"));

    // history as user2: both, oldest first, one line each.
    let history = client.run(&["--user", "user2", "history", "user1"]).await;
    let lines: Vec<&str> = history.ok().lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    assert_eq!(fields[0][0], "1");
    assert_eq!(fields[0][2], "user1");
    assert_eq!(fields[0][3], "hello there");
    assert_eq!(fields[1][0], "2");
    assert_eq!(
        fields[1][3], "line one\\nline\\ttwo",
        "escaped to stay on one line"
    );
    chrono::DateTime::parse_from_rfc3339(fields[0][1]).expect("sent_at is RFC 3339");
    // --limit keeps the newest.
    let newest = client
        .run(&["--user", "user2", "history", "user1", "--limit", "1"])
        .await;
    assert!(newest.ok().starts_with("2\t"), "{}", newest.stdout);
    let older = client
        .run(&["--user", "user2", "history", "user1", "--before", "2"])
        .await;
    assert!(older.ok().starts_with("1\t") && older.stdout.lines().count() == 1);

    // unread as user2: 2 from user1; user1 has nothing unread (it sent them).
    let unread = client.run(&["--user", "user2", "unread"]).await;
    assert_eq!(unread.ok(), "user1\t2\t2\n");
    assert_eq!(client.run(&["--user", "user1", "unread"]).await.ok(), "");
    assert_eq!(
        client
            .run(&["--user", "user1", "unread", "--all"])
            .await
            .ok(),
        "user2\t0\t2\n"
    );

    // No conversation yet: nothing, and success.
    client.run(&["register", "user3"]).await.ok();
    assert_eq!(
        client
            .run(&["--user", "user3", "history", "user1"])
            .await
            .ok(),
        ""
    );

    // An unknown user, or yourself: not an empty history.
    let nobody = client.run(&["--user", "user3", "history", "nobody"]).await;
    assert!(nobody.fails(4).contains("no such user: nobody"));
    let yourself = client.run(&["--user", "user3", "history", "user3"]).await;
    assert!(yourself.fails(2).contains("yourself"));

    // Exit codes.
    let taken = client.run(&["register", "user1"]).await;
    assert!(taken.fails(5).contains("taken"));
    let unknown = client
        .run(&["--user", "user1", "send", "nobody", "hi"])
        .await;
    assert!(unknown.fails(4).contains("nobody"));
    let no_credentials = Client::new(server.grpc_url());
    no_credentials.run(&["unread"]).await.fails(3);
    no_credentials.run(&["send", "user1", "hi"]).await.fails(3);
    client.run(&["--user", "stranger", "unread"]).await.fails(3);
    let bad_name = client.run(&["register", "no way"]).await;
    assert_eq!(bad_name.code, 2, "{bad_name:?}");
    assert!(
        bad_name.stderr.starts_with("error: "),
        "{}",
        bad_name.stderr
    );
    let bad_server = client.run(&["--server", "https://x:1", "unread"]).await;
    assert!(bad_server.fails(2).contains("TLS"), "{}", bad_server.stderr);
    let dead = dead_address();
    let unreachable = client
        .run(&["--server", &dead, "--user", "user1", "unread"])
        .await;
    assert!(
        unreachable.fails(1).contains(&dead),
        "{}",
        unreachable.stderr
    );
    client
        .run(&["--server", &dead, "register", "user9"])
        .await
        .fails(1);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn login_saves_a_secret_from_stdin_after_checking_it() {
    let server = TestServer::start().await;
    // Registered elsewhere (as with curl on the HTTP API).
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let client = Client::new(server.grpc_url());

    assert_eq!(
        client
            .run_with_stdin(&["login", "alice"], &format!("{}\n", alice.secret))
            .await
            .ok(),
        "alice\n"
    );
    assert_eq!(
        client.credentials()["users"]["alice"]["secret"],
        alice.secret.as_str()
    );
    // The saved secret works.
    let sent = client.run(&["send", "bob", "hi bob"]).await;
    assert!(sent.ok().ends_with(" 1\n"), "{}", sent.stdout);

    // Someone else's secret, a wrong one, none.
    let wrong_owner = client
        .run_with_stdin(&["login", "carol"], &bob.secret)
        .await;
    assert!(
        wrong_owner.fails(3).contains("bob"),
        "{}",
        wrong_owner.stderr
    );
    client
        .run_with_stdin(&["login", "bob"], &"0".repeat(64))
        .await
        .fails(3);
    client.run_with_stdin(&["login", "bob"], "").await.fails(2);
    // An unknown user is told apart from a wrong secret no more than the
    // server does, but is named as a possibility.
    let unknown = client
        .run_with_stdin(&["login", "nosuchuser"], &"1".repeat(64))
        .await;
    assert!(
        unknown
            .fails(3)
            .contains("an unknown user, or not their secret"),
        "{}",
        unknown.stderr
    );
    let saved = client.credentials();
    assert!(saved["users"].get("bob").is_none() && saved["users"].get("carol").is_none());

    // send reads the body from stdin when none is given.
    let piped = client
        .run_with_stdin(&["send", "bob"], "from stdin\n")
        .await;
    assert!(piped.ok().ends_with(" 2\n"), "{}", piped.stdout);
    let history = client.run(&["history", "bob"]).await;
    assert!(
        history
            .ok()
            .lines()
            .last()
            .unwrap()
            .ends_with("\talice\tfrom stdin"),
        "{}",
        history.stdout
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn edit_and_delete_own_messages() {
    let server = TestServer::start().await;
    let client = Client::new(server.grpc_url());
    client.run(&["register", "user2"]).await.ok();
    client.run(&["register", "user1"]).await.ok();
    client.run(&["send", "user2", "first"]).await.ok();
    client.run(&["send", "user2", "second"]).await.ok();

    assert_eq!(
        client
            .run(&["edit", "user2", "1", "first", "fixed"])
            .await
            .ok(),
        ""
    );
    assert_eq!(client.run(&["delete", "user2", "2"]).await.ok(), "");
    let history = client.run(&["history", "user2"]).await;
    let history = history.ok();
    assert!(history.starts_with("1\t"), "{history}");
    assert!(history.contains("\tuser1\tfirst fixed"), "{history}");
    assert!(!history.contains("\tsecond"), "{history}");

    // Not found: an unknown seq, someone else's message, no conversation.
    let missing = client.run(&["edit", "user2", "99", "x"]).await;
    assert!(missing.fails(4).contains("no message 99"));
    client
        .run(&["--user", "user2", "send", "user1", "theirs"])
        .await
        .ok();
    let theirs = client
        .run(&["--user", "user1", "delete", "user2", "3"])
        .await;
    theirs.fails(4);
    client.run(&["register", "user3"]).await.ok();
    client
        .run(&["--user", "user3", "delete", "user1", "1"])
        .await
        .fails(4);
}
