//! Presence: which of the users you share a conversation with are online.
//!
//! "Online" means the user has at least one session in the registry. Two
//! mechanisms keep sessions told:
//!
//! - a push when it happens: a user's first session anywhere announces them
//!   online to their contacts, their last session's end announces them
//!   offline;
//! - a sweep on every heartbeat: each node asks the registry about the
//!   contacts its own sessions watch and tells those sessions of any
//!   change. This is what notices a server that died (its sessions expire
//!   from the registry without anyone announcing it), within the TTL plus
//!   one heartbeat.
//!
//! Presence is a state, not a log: a session may hear the same state twice
//! (push and sweep), and that is harmless.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use chat_store::Store;

use crate::routing::{Delivery, Mode};
use crate::sessions::Event;

/// The contacts this node's sessions watch, with their last known state.
#[derive(Default)]
pub struct PresenceWatch {
    /// A std mutex: held only for map edits, never across an await.
    watched: Mutex<HashMap<String, Watched>>,
}

struct Watched {
    online: bool,
    /// Local users watching this contact, with how many sessions each.
    watchers: HashMap<String, usize>,
}

/// A contact whose state changed, and the local users to tell.
pub struct Change {
    pub username: String,
    pub online: bool,
    pub watchers: Vec<String>,
}

impl PresenceWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session of `watcher` watches `contacts`, of which `online` are
    /// online now.
    pub fn watch(&self, watcher: &str, contacts: &[String], online: &BTreeSet<String>) {
        let mut map = self.lock();
        for contact in contacts {
            let entry = map.entry(contact.clone()).or_insert_with(|| Watched {
                online: online.contains(contact),
                watchers: HashMap::new(),
            });
            *entry.watchers.entry(watcher.to_owned()).or_default() += 1;
        }
    }

    /// A session of `watcher` ended.
    pub fn unwatch(&self, watcher: &str, contacts: &[String]) {
        let mut map = self.lock();
        for contact in contacts {
            let Some(entry) = map.get_mut(contact) else {
                continue;
            };
            if let Some(count) = entry.watchers.get_mut(watcher) {
                *count -= 1;
                if *count == 0 {
                    entry.watchers.remove(watcher);
                }
            }
            if entry.watchers.is_empty() {
                map.remove(contact);
            }
        }
    }

    /// Every watched contact.
    pub fn contacts(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Applies the registry's answer (`online` = the watched contacts that
    /// have a session) and returns what changed.
    pub fn update(&self, online: &BTreeSet<String>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (username, entry) in self.lock().iter_mut() {
            let now = online.contains(username);
            if now != entry.online {
                entry.online = now;
                changes.push(Change {
                    username: username.clone(),
                    online: now,
                    watchers: entry.watchers.keys().cloned().collect(),
                });
            }
        }
        changes
    }
}

/// Presence: who of a user's contacts is online, pushed on change.
pub struct Presence {
    watch: PresenceWatch,
    store: Arc<dyn Store>,
    delivery: Arc<Delivery>,
    /// Members of groups at most this large see each other's presence
    /// (`presence_group_members`).
    largest_group: usize,
}

impl Presence {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        delivery: Arc<Delivery>,
        largest_group: usize,
    ) -> Self {
        Self {
            watch: PresenceWatch::default(),
            store,
            delivery,
            largest_group,
        }
    }

    /// A session of `username` started (and is in the registry): watches
    /// the user's contacts, announces the user online if this is their
    /// first session anywhere, and returns the contacts with who of them
    /// is online, for `ready`.
    pub async fn on_connect(&self, username: &str) -> (Vec<String>, BTreeSet<String>) {
        let contacts = match self.store.contacts(username, self.largest_group).await {
            Ok(contacts) => contacts,
            Err(e) => {
                tracing::warn!(user = %username, error = %e, "cannot load contacts; no presence for this session");
                return (Vec::new(), BTreeSet::new());
            }
        };
        let online = self.online_among(&contacts).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "registry lookup failed; presence starts unknown");
            BTreeSet::new()
        });
        self.watch.watch(username, &contacts, &online);
        if matches!(self.delivery.registry.sessions_of(username).await, Ok(s) if s.len() == 1) {
            let event = Event::Presence {
                username: username.to_owned(),
                online: true,
            };
            self.delivery
                .deliver(contacts.clone(), event, None, Mode::Background)
                .await;
        }
        (contacts, online)
    }

    /// A session of `username` ended (and left the registry): announces
    /// the user offline if it was their last session anywhere.
    pub async fn on_disconnect(&self, username: &str, contacts: &[String]) {
        self.watch.unwatch(username, contacts);
        if contacts.is_empty() {
            return;
        }
        if matches!(self.delivery.registry.sessions_of(username).await, Ok(s) if s.is_empty()) {
            let event = Event::Presence {
                username: username.to_owned(),
                online: false,
            };
            self.delivery
                .deliver(contacts.to_vec(), event, None, Mode::Background)
                .await;
        }
    }

    /// Which of `users` have a session anywhere in the cluster.
    async fn online_among(
        &self,
        users: &[String],
    ) -> Result<BTreeSet<String>, chat_cluster::ClusterError> {
        let names: Vec<&str> = users.iter().map(String::as_str).collect();
        Ok(self
            .delivery
            .registry
            .locate(&names)
            .await?
            .into_keys()
            .collect())
    }

    /// The sweep: asks the registry about every watched contact and tells
    /// this node's watching sessions what changed.
    pub async fn sweep(&self) {
        let contacts = self.watch.contacts();
        if contacts.is_empty() {
            return;
        }
        let online = match self.online_among(&contacts).await {
            Ok(online) => online,
            Err(e) => {
                tracing::warn!(error = %e, "presence sweep: registry lookup failed");
                return;
            }
        };
        for change in self.watch.update(&online) {
            let event = Event::Presence {
                username: change.username,
                online: change.online,
            };
            self.delivery.sessions.deliver(
                change.watchers.iter().map(String::as_str),
                &event,
                None,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changes_are_reported_once_to_the_watchers() {
        let watch = PresenceWatch::default();
        let contacts = vec!["bob".to_string(), "carol".to_string()];
        watch.watch("alice", &contacts, &set(&["bob"]));
        watch.watch("alice", &contacts, &set(&["bob"]));
        assert!(watch.update(&set(&["bob"])).is_empty());
        let changes = watch.update(&set(&["carol"]));
        let mut seen: Vec<(String, bool, Vec<String>)> = changes
            .into_iter()
            .map(|c| (c.username, c.online, c.watchers))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("bob".into(), false, vec!["alice".into()]),
                ("carol".into(), true, vec!["alice".into()])
            ]
        );
        assert!(watch.update(&set(&["carol"])).is_empty());
        watch.unwatch("alice", &contacts);
        assert_eq!(watch.contacts().len(), 2);
        watch.unwatch("alice", &contacts);
        assert!(watch.contacts().is_empty());
    }
}
