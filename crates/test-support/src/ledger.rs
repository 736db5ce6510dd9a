//! The ledger of a fault test: what senders saw acknowledged, what
//! recipients were shown, and the check that they add up, against the
//! server's history and unread counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use chat_proto as pb;
use tonic::transport::Endpoint;

use crate::{AuthedChatClient, WAIT};

/// A chat client for `secret` whose connection goes through `addr` (a
/// proxy), opened afresh.
pub async fn chat_via(addr: SocketAddr, secret: &str) -> AuthedChatClient {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(WAIT)
        .connect()
        .await
        .expect("connect through the proxy");
    let bearer = pb::Bearer::new(secret).expect("a header-safe secret");
    pb::chat_service_client::ChatServiceClient::with_interceptor(channel, bearer)
}

/// The whole history of `conversation_id` as `client` sees it, oldest
/// first.
pub async fn history(client: &mut AuthedChatClient, conversation_id: &str) -> Vec<pb::Message> {
    let mut all = Vec::new();
    let mut before_seq = 0;
    loop {
        let page = client
            .get_history(pb::GetHistoryRequest {
                conversation_id: conversation_id.into(),
                limit: 200,
                before_seq,
                ..Default::default()
            })
            .await
            .expect("history")
            .into_inner();
        let oldest = page.messages.first().map(|m| m.seq);
        all.splice(0..0, page.messages);
        match oldest {
            Some(seq) if page.has_more => before_seq = seq,
            _ => return all,
        }
    }
}

/// The unread count `client` sees for `conversation_id`.
pub async fn unread(client: &mut AuthedChatClient, conversation_id: &str) -> u64 {
    client
        .list_conversations(pb::ListConversationsRequest::default())
        .await
        .expect("conversations")
        .into_inner()
        .conversations
        .into_iter()
        .find(|c| c.conversation_id == conversation_id)
        .expect("the conversation is listed")
        .unread_count
}

/// What the messages a sender saw acknowledged must add up to.
#[derive(Default)]
pub struct Ledger {
    /// seq → the acknowledged message.
    pub acked: BTreeMap<u64, pb::Message>,
}

impl Ledger {
    pub fn ack(&mut self, message: pb::Message) {
        if let Some(before) = self.acked.insert(message.seq, message.clone()) {
            assert_eq!(before, message, "two messages acknowledged with one seq");
        }
    }

    /// The history holds exactly the acknowledged messages, once each, in
    /// seq order with no gap, and the recipient's unread count is theirs.
    pub async fn check(
        &self,
        recipient: &mut AuthedChatClient,
        conversation_id: &str,
        shown: &BTreeMap<u64, pb::Message>,
    ) {
        let history = history(recipient, conversation_id).await;
        let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
        let expected: Vec<u64> = (1..=self.acked.len() as u64).collect();
        assert_eq!(seqs, expected, "history is every acknowledged seq, once");
        for message in &history {
            assert_eq!(
                self.acked.get(&message.seq),
                Some(message),
                "history holds a message nobody saw acknowledged"
            );
        }
        assert_eq!(
            shown.keys().collect::<Vec<_>>(),
            self.acked.keys().collect::<Vec<_>>(),
            "the recipient was shown every acknowledged seq, and only those"
        );
        assert!(
            shown == &self.acked,
            "the recipient was shown other messages than those acknowledged"
        );
        assert_eq!(
            unread(recipient, conversation_id).await,
            self.acked.len() as u64,
            "unread count"
        );
    }
}

/// Records a message shown to a recipient; a seq already shown is dropped
/// as a client does, and must be the same message.
pub fn show(shown: &mut BTreeMap<u64, pb::Message>, message: pb::Message) {
    if let Some(before) = shown.insert(message.seq, message.clone()) {
        assert_eq!(before, message, "one seq, two different messages");
    }
}

/// Fills the gaps in what a recipient was shown from the history, as a
/// client does on reconnect: everything after the last seq it has without
/// a gap.
pub async fn catch_up(
    client: &mut AuthedChatClient,
    conversation_id: &str,
    shown: &mut BTreeMap<u64, pb::Message>,
) {
    let mut after_seq = 0;
    while shown.contains_key(&(after_seq + 1)) {
        after_seq += 1;
    }
    if after_seq == 0 {
        // after_seq 0 means "no lower bound" (the newest page): read it all.
        for message in history(client, conversation_id).await {
            show(shown, message);
        }
        return;
    }
    loop {
        let page = client
            .get_history(pb::GetHistoryRequest {
                conversation_id: conversation_id.into(),
                after_seq,
                limit: 200,
                ..Default::default()
            })
            .await
            .expect("history")
            .into_inner();
        for message in page.messages {
            after_seq = message.seq;
            show(shown, message);
        }
        if !page.has_more {
            return;
        }
    }
}
