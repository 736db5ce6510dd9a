//! The conformance suite against the SQLite backend, plus what only SQLite
//! has: reopening the same file.

mod conformance;

use std::sync::Arc;

use chat_store::sqlite::{SqliteConfig, SqliteStore};
use chat_store::{NewMessage, Store, Target, UserStore};

fn fresh() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("chat.db"))).unwrap();
    (dir, Arc::new(store))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, store) = fresh();
            conformance::$name(store).await;
        }
    )*};
}

conformance!(
    users_are_unique_and_found_by_token,
    users_page_by_name_and_tokens_reset,
    direct_messages_get_gap_free_seqs_and_members,
    concurrent_appends_are_gap_free,
    retries_return_the_original,
    batched_appends_keep_order_and_fail_alone,
    history_is_for_members_only_and_pages,
    cursors_move_forward_only_and_unread_is_exact,
    groups_change_membership_with_ordered_events,
    group_limits_are_enforced,
    senders_edit_and_delete_their_messages_through_ordered_events,
    dead_letters_keep_reason_time_and_payload,
    dead_letter_pages_are_bounded,
    dead_letter_replays_are_recorded_and_purges_select,
    retention_deletes_old_messages_in_bounded_batches,
    health_probe_answers_and_refusals_are_not_failures,
);

#[tokio::test]
async fn data_survives_reopening_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/chat.db");
    {
        let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
        for name in ["alice", "bob"] {
            store
                .create_user(chat_store::NewUser {
                    username: name.into(),
                    name: String::new(),
                    phone: String::new(),
                    token_hash: [name.len() as u8 + name.as_bytes()[0]; 32],
                })
                .await
                .unwrap();
        }
        use chat_store::MessageStore;
        store
            .append_message(NewMessage {
                sender: "alice".into(),
                target: Target::Direct("bob".into()),
                body: "kept".into(),
                client_msg_id: "1".into(),
                sent_at_unix_ms: None,
            })
            .await
            .unwrap();
    }
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    use chat_store::MessageStore;
    let list = store.conversations("bob").await.unwrap();
    assert_eq!(list[0].last_message.as_ref().unwrap().body, "kept");
}

/// Checkpoints run in the background, and the writer checkpoints itself
/// when they fall behind: the WAL is copied back into the database file and
/// started over, so it stays under its bound instead of holding everything
/// ever written, however slow the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded() {
    use chat_store::MessageStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let mut config = SqliteConfig::new(&path);
    config.durability = chat_store::sqlite::Durability::Normal;
    let store = SqliteStore::open(config).unwrap();
    for name in ["alice", "bob"] {
        store
            .create_user(chat_store::NewUser {
                username: name.into(),
                name: String::new(),
                phone: String::new(),
                token_hash: [name.as_bytes()[0]; 32],
            })
            .await
            .unwrap();
    }
    // 4,000 commits of 3.5 KB: 14 MB of rows, several WAL pages each, far
    // past the bound if nothing were checkpointed.
    let body = "x".repeat(3500);
    for i in 0..4000 {
        store
            .append_message(NewMessage {
                sender: "alice".into(),
                target: Target::Direct("bob".into()),
                body: body.clone(),
                client_msg_id: i.to_string(),
                sent_at_unix_ms: None,
            })
            .await
            .unwrap();
    }
    let wal = std::fs::metadata(dir.path().join("chat.db-wal"))
        .unwrap()
        .len();
    let db = std::fs::metadata(&path).unwrap().len();
    // One batch (here one commit of a few pages) may land past the bound.
    let frame = 4096 + 24;
    let bound = (chat_store::sqlite::WAL_LIMIT_PAGES as u64 + 64) * frame + 32;
    assert!(wal <= bound, "the WAL grew to {wal} bytes, past {bound}");
    assert!(db > 10 << 20, "the database file holds only {db} bytes");
}
