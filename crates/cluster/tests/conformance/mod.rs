//! What every registry and every bus backend must do. Each backend's test
//! file calls these with a fresh backend (its own key prefix / topics).
// Each test binary uses the part of the suite its backend implements.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use chat_cluster::{Bus, NodeEntry, SessionEntry, SessionRegistry};

/// Longest wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

fn entry(user: &str, node: &str, session: u64) -> SessionEntry {
    SessionEntry {
        username: user.into(),
        node: node.into(),
        session,
    }
}

fn nodes(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub async fn registry_adds_locates_and_removes(r: &dyn SessionRegistry) {
    r.ping()
        .await
        .expect("a reachable registry answers its probe");
    r.add(&entry("alice", "n1", 1)).await.unwrap();
    r.add(&entry("alice", "n2", 7)).await.unwrap();
    r.add(&entry("alice", "n2", 8)).await.unwrap();
    r.add(&entry("bob", "n1", 2)).await.unwrap();
    let found = r.locate(&["alice", "bob", "carol"]).await.unwrap();
    assert_eq!(found.get("alice"), Some(&nodes(&["n1", "n2"])));
    assert_eq!(found.get("bob"), Some(&nodes(&["n1"])));
    assert!(!found.contains_key("carol"));
    assert_eq!(
        r.sessions_of("alice").await.unwrap(),
        vec![
            entry("alice", "n1", 1),
            entry("alice", "n2", 7),
            entry("alice", "n2", 8)
        ]
    );

    r.remove(&entry("alice", "n2", 7)).await.unwrap();
    assert_eq!(
        r.locate(&["alice"]).await.unwrap()["alice"],
        nodes(&["n1", "n2"])
    );
    r.remove(&entry("alice", "n2", 8)).await.unwrap();
    r.remove(&entry("alice", "n1", 1)).await.unwrap();
    assert!(r.locate(&["alice"]).await.unwrap().is_empty());
    assert!(r.sessions_of("alice").await.unwrap().is_empty());
    // Removing what is not there is fine.
    r.remove(&entry("alice", "n1", 1)).await.unwrap();
    assert!(r.locate(&[]).await.unwrap().is_empty());
}

/// `r` must have been built with a TTL of `ttl`.
pub async fn registry_entries_expire_unless_refreshed(r: &dyn SessionRegistry, ttl: Duration) {
    r.add(&entry("dave", "dead-node", 1)).await.unwrap();
    r.add(&entry("dave", "live-node", 2)).await.unwrap();
    let started = tokio::time::Instant::now();
    // The live node refreshes; the dead one does not.
    loop {
        r.refresh(&[entry("dave", "live-node", 2)]).await.unwrap();
        let found = r.locate(&["dave"]).await.unwrap();
        if found["dave"] == nodes(&["live-node"]) {
            break;
        }
        assert!(
            started.elapsed() < ttl + WAIT,
            "the dead node's entry never expired"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    assert!(
        started.elapsed() >= ttl / 2,
        "expired too early: {:?}",
        started.elapsed()
    );
    assert_eq!(
        r.sessions_of("dave").await.unwrap(),
        vec![entry("dave", "live-node", 2)]
    );
    assert_eq!(
        r.list_sessions(None, 100).await.unwrap(),
        vec![entry("dave", "live-node", 2)]
    );
    assert!(r
        .list_sessions(Some("dead-node"), 100)
        .await
        .unwrap()
        .is_empty());
    // Refresh re-creates what was lost.
    r.refresh(&[entry("erin", "live-node", 3)]).await.unwrap();
    assert_eq!(
        r.locate(&["erin"]).await.unwrap()["erin"],
        nodes(&["live-node"])
    );
}

/// Operators list every live session, or one node's, sorted and bounded.
pub async fn registry_lists_sessions(r: &dyn SessionRegistry) {
    assert!(r.list_sessions(None, 100).await.unwrap().is_empty());
    let all = vec![
        entry("alice", "n1", 1),
        entry("alice", "n2", 7),
        entry("bob", "n1", 2),
        entry("carol", "n2", 3),
        entry("carol", "n2", 4),
        // Names that are glob patterns are listed as themselves.
        entry("d*[x]?", "n3", 5),
    ];
    for e in all.iter().rev() {
        r.add(e).await.unwrap();
    }
    assert_eq!(r.list_sessions(None, 100).await.unwrap(), all);
    assert_eq!(
        r.list_sessions(Some("n2"), 100).await.unwrap(),
        vec![
            entry("alice", "n2", 7),
            entry("carol", "n2", 3),
            entry("carol", "n2", 4)
        ]
    );
    assert!(r.list_sessions(Some("n9"), 100).await.unwrap().is_empty());
    assert!(r.list_sessions(Some("n"), 100).await.unwrap().is_empty());
    let some = r.list_sessions(None, 2).await.unwrap();
    assert_eq!(some.len(), 2, "{some:?}");
    assert!(some.iter().all(|e| all.contains(e)), "{some:?}");
    assert!(some[0] < some[1], "sorted: {some:?}");
    assert!(r.list_sessions(None, 0).await.unwrap().is_empty());

    r.remove(&entry("carol", "n2", 3)).await.unwrap();
    r.remove(&entry("d*[x]?", "n3", 5)).await.unwrap();
    assert_eq!(
        r.list_sessions(None, 100).await.unwrap(),
        vec![
            entry("alice", "n1", 1),
            entry("alice", "n2", 7),
            entry("bob", "n1", 2),
            entry("carol", "n2", 4)
        ]
    );
}

fn node(id: &str, port: u16) -> NodeEntry {
    NodeEntry {
        node: id.into(),
        grpc_addr: format!("127.0.0.1:{port}"),
        http_addr: format!("[::1]:{}", port + 1),
        started_at_unix_ms: 1_700_000_000_000 + i64::from(port),
        heartbeat_at_unix_ms: 0,
    }
}

/// Servers announce themselves: listed with their addresses and last
/// heartbeat while they refresh, gone when they retire or stop
/// refreshing. `r` must have been built with a TTL of `ttl`.
pub async fn registry_lists_live_nodes(r: &dyn SessionRegistry, ttl: Duration) {
    assert!(r.nodes().await.unwrap().is_empty());
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (id, port) in [("n2", 2000), ("n1", 1000), ("n3", 3000)] {
        r.announce_node(&node(id, port)).await.unwrap();
    }
    let listed = r.nodes().await.unwrap();
    assert_eq!(
        listed.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(),
        ["n1", "n2", "n3"]
    );
    for n in &listed {
        let port = n.grpc_addr.rsplit_once(':').unwrap().1.parse().unwrap();
        assert_eq!(
            NodeEntry {
                heartbeat_at_unix_ms: 0,
                ..n.clone()
            },
            node(&n.node, port)
        );
        assert!(n.heartbeat_at_unix_ms >= before, "{n:?}");
    }
    // A node with no session shows all the same; sessions do not make one.
    r.add(&entry("alice", "n9", 1)).await.unwrap();
    assert_eq!(r.nodes().await.unwrap().len(), 3);

    r.retire_node("n3").await.unwrap();
    r.retire_node("n3").await.unwrap();
    let ids = |nodes: Vec<NodeEntry>| nodes.into_iter().map(|n| n.node).collect::<Vec<_>>();
    assert_eq!(ids(r.nodes().await.unwrap()), ["n1", "n2"]);

    // n1 keeps announcing itself; n2 has died.
    let started = tokio::time::Instant::now();
    let mut last_beat = 0;
    loop {
        r.announce_node(&node("n1", 1000)).await.unwrap();
        let listed = r.nodes().await.unwrap();
        let beat = listed[0].heartbeat_at_unix_ms;
        assert!(beat >= last_beat, "the heartbeat moves forward");
        last_beat = beat;
        if ids(listed) == ["n1"] {
            break;
        }
        assert!(
            started.elapsed() < ttl + WAIT,
            "the dead node's entry never expired"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    assert!(
        started.elapsed() >= ttl / 2,
        "expired too early: {:?}",
        started.elapsed()
    );
    // A dead node that comes back is listed again.
    r.announce_node(&node("n2", 2000)).await.unwrap();
    assert_eq!(ids(r.nodes().await.unwrap()), ["n1", "n2"]);
}

async fn next(inbox: &mut chat_cluster::Inbox) -> Bytes {
    tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("a record within the wait")
        .expect("the inbox is open")
}

pub async fn bus_delivers_to_the_named_inbox_in_order(bus: &dyn Bus, a: &str, b: &str) {
    let mut inbox_a = bus.subscribe(a).await.unwrap();
    let mut inbox_b = bus.subscribe(b).await.unwrap();
    bus.ping()
        .await
        .expect("a reachable bus answers its probe, inbox subscribed");
    // No warm-up: a record published right after `subscribe` returned
    // must arrive.
    for i in 0..50u32 {
        bus.publish(a, Bytes::from(format!("a{i}"))).await.unwrap();
    }
    bus.publish(b, Bytes::from_static(b"for b")).await.unwrap();
    for i in 0..50u32 {
        assert_eq!(next(&mut inbox_a).await, Bytes::from(format!("a{i}")));
    }
    assert_eq!(next(&mut inbox_b).await, Bytes::from_static(b"for b"));
    // Arbitrary bytes pass unchanged.
    let binary = Bytes::from((0..=255u8).collect::<Vec<u8>>());
    bus.publish(b, binary.clone()).await.unwrap();
    assert_eq!(next(&mut inbox_b).await, binary);
    // Nothing crossed over.
    assert!(inbox_a.try_recv().is_err());
}

/// Publishing to a node nobody reads returns promptly: `Ok` (the record
/// is dropped) or, for brokers that need the inbox to exist first, an
/// error. It never hangs the sender.
pub async fn bus_publish_to_an_absent_node_returns(bus: &dyn Bus, absent: &str) -> bool {
    tokio::time::timeout(
        WAIT,
        bus.publish(absent, Bytes::from_static(b"nobody listens")),
    )
    .await
    .expect("publish returns within the wait")
    .is_ok()
}
