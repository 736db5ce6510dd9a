//! Groups end to end: the one-shot `group` commands, `send` and `history`
//! to `#<group_id>`, their formats and exit codes; and the interactive
//! client in pseudo-terminals creating a group, talking in it and showing
//! membership events.

mod common;

use chat_test_support::TestServer;
use common::{blocking, count, exit_code, expect, Client, Run};

/// A one-shot command as `user`.
async fn as_user(client: &Client, user: &str, args: &[&str]) -> Run {
    let mut all = vec!["--user", user];
    all.extend_from_slice(args);
    client.run(&all).await
}

/// The tab-separated fields of each line.
fn records(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn group_commands_end_to_end() {
    let server = TestServer::start_with(|config| config.limits.max_group_members = 4).await;
    let client = Client::new(server.grpc_url());
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        client.run(&["register", user]).await.ok();
    }

    // create: prints the id, and nothing else.
    let created = as_user(
        &client,
        "alice",
        &["group", "create", "Team", "bob", "Carol"],
    )
    .await;
    let out = created.ok();
    assert_eq!(out.lines().count(), 1, "{out:?}");
    let g = out.trim_end().to_owned();
    assert!(g.starts_with('g') && g.len() > 1, "{g}");
    let hash_g = format!("#{g}");

    // info: the group, then its members and their roles.
    let info = as_user(&client, "alice", &["group", "info", &g]).await;
    assert_eq!(
        info.ok(),
        format!("{g}\tTeam\nalice\towner\nbob\tmember\ncarol\tmember\n")
    );
    // The id may be written with its #.
    assert_eq!(
        as_user(&client, "bob", &["group", "info", &hash_g])
            .await
            .ok(),
        info.stdout
    );

    // send to #<group_id>: `<conversation_id> <seq>`; the event was seq 1.
    let sent = as_user(&client, "alice", &["send", &hash_g, "hello", "team"]).await;
    assert_eq!(sent.ok(), format!("{g} 2\n"));

    // A plain member may not add: exit 6, said clearly.
    let denied = as_user(&client, "bob", &["group", "add", &g, "dave"]).await;
    assert!(denied.fails(6).contains("not allowed"), "{}", denied.stderr);

    // An outsider: the group does not exist for them (exit 4).
    for args in [
        vec!["history", hash_g.as_str()],
        vec!["send", hash_g.as_str(), "let me in"],
        vec!["group", "info", g.as_str()],
        vec!["group", "add", g.as_str(), "dave"],
        vec!["group", "leave", g.as_str()],
    ] {
        let outsider = as_user(&client, "dave", &args).await;
        assert!(
            outsider.fails(4).contains("no such group"),
            "{args:?}: {}",
            outsider.stderr
        );
    }

    // The owner adds dave (and bob again, who is a member already).
    assert_eq!(
        as_user(&client, "alice", &["group", "add", &hash_g, "dave", "bob"])
            .await
            .ok(),
        ""
    );
    // A fifth member is over this server's limit of 4: exit 7.
    let full = as_user(&client, "alice", &["group", "add", &g, "erin"]).await;
    assert!(full.fails(7).contains("at most 4"), "{}", full.stderr);
    // Unknown users and malformed ids.
    let nobody = as_user(&client, "alice", &["group", "add", &g, "nobody"]).await;
    assert!(
        nobody.fails(4).contains("no such user: nobody"),
        "{}",
        nobody.stderr
    );
    let nobody = as_user(&client, "alice", &["group", "create", "Other", "nobody"]).await;
    assert!(nobody.fails(4).contains("nobody"), "{}", nobody.stderr);
    assert_eq!(
        as_user(&client, "alice", &["send", "#not/an/id", "x"])
            .await
            .code,
        2
    );
    as_user(&client, "alice", &["group", "create", ""])
        .await
        .fails(2);

    // history of a group: text as usual, membership events with their kind.
    let history = as_user(&client, "bob", &["history", &hash_g]).await;
    let lines = records(history.ok());
    let summary: Vec<Vec<&str>> = lines
        .iter()
        .map(|f| {
            let mut f: Vec<&str> = f.iter().map(String::as_str).collect();
            f.remove(1); // sent_at
            f
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            vec!["1", "alice", "bob carol", "group_created"],
            vec!["2", "alice", "hello team"],
            vec!["3", "alice", "dave", "members_added"],
        ],
        "{}",
        history.stdout
    );
    // Dave reads from the event that added him.
    let dave_history = as_user(&client, "dave", &["history", &hash_g]).await;
    assert!(
        dave_history.ok().starts_with("3\t"),
        "{}",
        dave_history.stdout
    );
    assert_eq!(dave_history.stdout.lines().count(), 1);

    // unread: the group as #<group_id> with its name as a 4th column; events
    // are never unread. group list: `<group_id>\t<name>\t<unread>`.
    assert_eq!(
        as_user(&client, "bob", &["unread"]).await.ok(),
        format!("{hash_g}\t1\t3\tTeam\n")
    );
    assert_eq!(
        as_user(&client, "bob", &["group", "list"]).await.ok(),
        format!("{g}\tTeam\t1\n")
    );
    assert_eq!(as_user(&client, "erin", &["group", "list"]).await.ok(), "");

    // remove: the owner removes carol; she is out (exit 4 from then on).
    assert_eq!(
        as_user(&client, "alice", &["group", "remove", &g, "carol"])
            .await
            .ok(),
        ""
    );
    as_user(&client, "carol", &["history", &hash_g])
        .await
        .fails(4);
    let not_member = as_user(&client, "alice", &["group", "remove", &g, "carol"]).await;
    assert!(
        not_member.fails(4).contains("carol is not a member"),
        "{}",
        not_member.stderr
    );
    let owner = as_user(&client, "bob", &["group", "remove", &g, "alice"]).await;
    owner.fails(6);

    // leave: dave leaves, then is out; leaving again is exit 4.
    assert_eq!(
        as_user(&client, "dave", &["group", "leave", &g]).await.ok(),
        ""
    );
    as_user(&client, "dave", &["group", "leave", &g])
        .await
        .fails(4);
    // The owner leaves: bob, the longest-standing member, takes over.
    as_user(&client, "alice", &["group", "leave", &g])
        .await
        .ok();
    assert_eq!(
        as_user(&client, "bob", &["group", "info", &g]).await.ok(),
        format!("{g}\tTeam\nbob\towner\n")
    );
    let tail = as_user(&client, "bob", &["history", &hash_g, "--limit", "3"]).await;
    let kinds: Vec<String> = records(tail.ok())
        .into_iter()
        .map(|f| format!("{} {} {}", f[2], f[3], f[4]))
        .collect();
    assert_eq!(
        kinds,
        [
            "alice carol member_removed",
            "dave dave member_left",
            "alice alice member_left"
        ]
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_users_talk_in_a_group_and_see_its_membership_change() {
    let server = TestServer::start().await;
    let url = server.grpc_url();
    let (alice, bob, carol, dave) = (
        Client::new(url.clone()),
        Client::new(url.clone()),
        Client::new(url.clone()),
        Client::new(url),
    );
    for (client, name) in [
        (&alice, "alice"),
        (&bob, "bob"),
        (&carol, "carol"),
        (&dave, "dave"),
    ] {
        client.run(&["register", name]).await.ok();
    }

    let mut a = alice.interactive(&[]);
    let mut b = bob.interactive(&[]);
    let mut c = carol.interactive(&[]);
    let mut d = dave.interactive(&[]);
    let (a, b, c, group_id) = blocking(move || {
        for (session, name) in [
            (&mut a, "alice"),
            (&mut b, "bob"),
            (&mut c, "carol"),
            (&mut d, "dave"),
        ] {
            expect(session, &format!("connected as {name}"));
        }
        a.send_line("/help").unwrap();
        expect(&mut a, "/group create <name> [members...]");

        // alice creates the group: the event, then the new id, and she
        // talks in it.
        a.send_line("/group create Team bob carol").unwrap();
        let mut alice_saw = expect(&mut a, "* you created #Team with bob, carol");
        alice_saw.push_str("* you created #Team with bob, carol");
        expect(&mut a, "talking in #Team (group ");
        let group_id = expect(&mut a, ")");
        assert!(group_id.starts_with('g'), "{group_id:?}");
        expect(&mut b, "* alice created #Team with you, carol");
        expect(&mut c, "* alice created #Team with bob, you");

        // A plain line reaches the two others as `… in #Team: …`.
        a.send_line("hello team").unwrap();
        expect(&mut b, "alice in #Team: hello team");
        expect(&mut c, "alice in #Team: hello team");

        // bob picks the group by name (any case) and answers.
        b.send_line("/to #team").unwrap();
        expect(&mut b, &format!("talking in #Team (group {group_id})"));
        b.send_line("hi all").unwrap();
        alice_saw.push_str(&expect(&mut a, "bob in #Team: hi all"));
        expect(&mut c, "bob in #Team: hi all");
        // The group's creation was shown once, though it came both as the
        // answer to /group create and on the stream.
        assert_eq!(count(&alice_saw, "* you created #Team"), 1, "{alice_saw:?}");
        assert!(!alice_saw.contains("warning"), "{alice_saw:?}");

        // Only the owner and admins add.
        b.send_line("/group add dave").unwrap();
        expect(
            &mut b,
            "error: not allowed: only the owner and admins add members",
        );

        // alice adds dave: everyone sees the event; dave starts there.
        a.send_line("/group add dave").unwrap();
        expect(&mut a, "* you added dave to #Team");
        expect(&mut b, "* alice added dave to #Team");
        expect(&mut c, "* alice added dave to #Team");
        let before_join = expect(&mut d, "* alice added you to #Team");
        assert!(!before_join.contains("hello team"), "{before_join:?}");
        a.send_line("welcome dave").unwrap();
        let dave_saw = expect(&mut d, "alice in #Team: welcome dave");
        assert!(!dave_saw.contains("warning"), "{dave_saw:?}");

        a.send_line("/group info").unwrap();
        expect(&mut a, &format!("#Team (group {group_id}), 4 members:"));
        expect(&mut a, "alice (owner)");
        expect(&mut a, "dave (member)");

        // carol leaves: the others see it; her lines go nowhere now.
        c.send_line("/to #Team").unwrap();
        expect(&mut c, "talking in #Team");
        c.send_line("/group leave").unwrap();
        expect(&mut c, "* you left #Team");
        expect(&mut a, "* carol left #Team");
        expect(&mut b, "* carol left #Team");
        c.send_line("anyone?").unwrap();
        expect(&mut c, "choose who to talk to first");
        c.send_line("/to #Team").unwrap();
        expect(&mut c, "no such group: #Team");

        // dave quits (his delivered cursor covers what he saw).
        d.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut d), 0);
        (a, b, c, group_id)
    })
    .await;

    // While dave is away, alice writes once more: on his return he gets
    // that, and only that.
    alice
        .run(&["send", &format!("#{group_id}"), "while you were out"])
        .await
        .ok();
    let mut again = dave.interactive(&[]);
    let id = group_id.clone();
    let again = blocking(move || {
        let caught_up = expect(&mut again, "alice in #Team: while you were out");
        assert!(
            !caught_up.contains("welcome dave") && !caught_up.contains("added you"),
            "{caught_up:?}"
        );
        assert!(
            caught_up.contains("2 unread in 1 conversation"),
            "{caught_up:?}"
        );
        again.send_line("/unread").unwrap();
        expect(&mut again, "#Team: 2 unread");
        // Choosing the group marks it read.
        again.send_line(&format!("/to #{id}")).unwrap();
        expect(&mut again, "talking in #Team");
        again.send_line("/unread").unwrap();
        expect(&mut again, "no unread messages");
        // His history starts where he joined.
        again.send_line("/history 10").unwrap();
        expect(&mut again, "--- the last 4 message(s) in #Team ---");
        expect(&mut again, "* alice added you to #Team");
        expect(&mut again, "alice in #Team: while you were out");
        again
    })
    .await;

    let (mut a, mut b, mut c, mut again, after_removal) = blocking(move || {
        let (mut a, mut b, mut again) = (a, b, again);
        // A second group of the same name: /to by name asks which one.
        a.send_line("/group create Team").unwrap();
        expect(&mut a, "* you created #Team");
        expect(&mut a, "talking in #Team");
        a.send_line("/to #Team").unwrap();
        expect(&mut a, "2 groups are called Team; choose one by id:");
        expect(&mut a, &format!("/to #{group_id}"));
        a.send_line(&format!("/to #{group_id}")).unwrap();
        expect(&mut a, &format!("talking in #Team (group {group_id})"));

        // dave is removed while he is there: he is told.
        a.send_line("/group remove dave").unwrap();
        expect(&mut a, "* you removed dave from #Team");
        expect(&mut b, "* alice removed dave from #Team");
        expect(&mut again, "* alice removed you from #Team");
        again.send_line("no longer heard").unwrap();
        let after_removal = expect(&mut again, "choose who to talk to first");
        (a, b, c, again, after_removal)
    })
    .await;

    // Nothing complains after the removal (no cursor of a group he is not
    // in is sent): up to the next frame dave gets, a direct message, no
    // error shows.
    alice.run(&["send", "dave", "ping"]).await.ok();
    blocking(move || {
        let between = after_removal + &expect(&mut again, "alice: ping");
        assert!(!between.contains("error"), "{between:?}");
        for session in [&mut a, &mut b, &mut c, &mut again] {
            session.send_line("/quit").unwrap();
            assert_eq!(exit_code(session), 0);
        }
    })
    .await;
    server.stop().await;
}
