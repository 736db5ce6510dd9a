//! The rules of groups: who may change one, the order of the refusals and
//! what each says, the event every change commits, where new members start
//! reading, who takes over from an owner who leaves, and who must hear of
//! a change.
//!
//! A backend provides [`GroupTx`], its primitives inside one transaction,
//! and runs [`change_group`] in it; it must not decide any of the above.

use crate::domain::messages::Draft;
use crate::{
    new_id, GroupChange, GroupChanged, GroupInfo, GroupLimits, GroupMember, GroupRole, MessageKind,
    Result, StoreError, StoredMessage,
};

/// What a backend does for a group change, inside the change's
/// transaction. A rule calls them in the order it needs; each reads what
/// the earlier ones wrote.
#[allow(async_fn_in_trait)] // crate-private; each backend's futures are as `Send` as it needs
pub(crate) trait GroupTx {
    /// Locks `group_id` against every other writer of it (sends, changes)
    /// until the transaction ends, and reads it under the lock, members
    /// sorted by username. `None` when there is no such group or `actor`
    /// is not a member of it (the same answer, on purpose).
    async fn lock_group(&mut self, actor: &str, group_id: &str) -> Result<Option<GroupInfo>>;
    /// Locks `users` (sorted, distinct) against other admissions until the
    /// transaction ends, and says how many of them exist and the first
    /// (by username) who is already in `max_groups` groups or more.
    async fn admit(&mut self, users: &[String], max_groups: usize) -> Result<Admission>;
    /// Creates `group` (its conversation with `last_seq` 1 and its members
    /// with their roles, reading from seq 1) and commits `event`, seq 1.
    async fn insert_group(&mut self, group: &GroupInfo, event: &StoredMessage) -> Result<()>;
    /// Inserts `event` with the conversation's next seq and returns it.
    async fn insert_event(&mut self, event: Draft) -> Result<StoredMessage>;
    /// Adds `usernames` as members who read from `joined_seq` on (nothing
    /// before it is unread for them).
    async fn add_members(
        &mut self,
        group_id: &str,
        usernames: &[String],
        joined_seq: u64,
    ) -> Result<()>;
    /// Removes `username` from the group.
    async fn delete_member(&mut self, group_id: &str, username: &str) -> Result<()>;
    /// Makes `username` the owner of the group.
    async fn set_owner(&mut self, group_id: &str, username: &str) -> Result<()>;
}

/// The answer of [`GroupTx::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admission {
    /// How many of the users exist.
    pub found: usize,
    /// The first user already in the most groups allowed, if any.
    pub full: Option<String>,
}

/// Applies `change` through `tx`; the caller commits on `Ok` and rolls
/// back on `Err`.
pub(crate) async fn change_group<T: GroupTx>(
    tx: &mut T,
    change: GroupChange,
    limits: GroupLimits,
    now: i64,
) -> Result<GroupChanged> {
    match change {
        GroupChange::Create {
            owner,
            name,
            members,
        } => create(tx, owner, name, members, limits, now).await,
        GroupChange::Add {
            actor,
            group_id,
            usernames,
        } => add(tx, actor, group_id, usernames, limits, now).await,
        GroupChange::Remove {
            actor,
            group_id,
            username,
        } if actor == username => leave(tx, actor, group_id, now).await,
        GroupChange::Remove {
            actor,
            group_id,
            username,
        } => remove(tx, actor, group_id, username, now).await,
    }
}

/// The refusal of a member who is neither owner nor admin.
pub(crate) fn only_managers(what: &str) -> StoreError {
    StoreError::Forbidden(format!("only the owner and admins {what}"))
}

/// The refusal of removing the owner.
pub(crate) fn owner_stays() -> StoreError {
    StoreError::Forbidden("the owner of a group cannot be removed".into())
}

/// The refusal of a group that would be too large.
pub(crate) fn too_many_members(limits: GroupLimits) -> StoreError {
    StoreError::Limit(format!(
        "a group has at most {} members",
        limits.max_members
    ))
}

/// The refusal of a user who is in too many groups.
pub(crate) fn too_many_groups(user: &str, limits: GroupLimits) -> StoreError {
    StoreError::Limit(format!(
        "{user} is already in {} groups, the most allowed",
        limits.max_groups_per_user
    ))
}

/// The group locked for a change by `actor`, who must be a member.
async fn locked<T: GroupTx>(tx: &mut T, actor: &str, group_id: &str) -> Result<GroupInfo> {
    tx.lock_group(actor, group_id)
        .await?
        .ok_or(StoreError::NotFound)
}

/// Only the owner and admins change who is in a group.
fn may_manage(group: &GroupInfo, actor: &str, what: &str) -> Result<()> {
    if role_of(group, actor) < Some(GroupRole::Admin) {
        return Err(only_managers(what));
    }
    Ok(())
}

/// Takes `gone` out of `group` with its event (`kind`, made by `actor`).
async fn depart<T: GroupTx>(
    tx: &mut T,
    group: &mut GroupInfo,
    actor: &str,
    gone: &str,
    kind: MessageKind,
    now: i64,
) -> Result<StoredMessage> {
    tx.delete_member(&group.id, gone).await?;
    let concerned = [gone.to_owned()];
    let draft = Draft::membership(&group.id, actor, kind, &concerned, now);
    let event = tx.insert_event(draft).await?;
    group.members.retain(|m| m.username != gone);
    group.last_seq = event.seq;
    Ok(event)
}

fn role_of(group: &GroupInfo, username: &str) -> Option<GroupRole> {
    group
        .members
        .iter()
        .find(|m| m.username == username)
        .map(|m| m.role)
}

/// Who hears of a change: every member after it, and whoever left or was
/// removed, sorted by username.
fn notified(group: &GroupInfo, gone: Option<String>) -> Vec<String> {
    let mut notify: Vec<String> = group.members.iter().map(|m| m.username.clone()).collect();
    notify.extend(gone);
    notify.sort();
    notify
}

/// Checks that `users` (sorted, distinct, locked by this call) exist, that
/// a group of `group_size` is allowed, and that each may join one more
/// group, in that order.
async fn admit<T: GroupTx>(
    tx: &mut T,
    users: &[String],
    group_size: usize,
    limits: GroupLimits,
) -> Result<()> {
    let admission = tx.admit(users, limits.max_groups_per_user).await?;
    if admission.found < users.len() {
        return Err(StoreError::NotFound);
    }
    if group_size > limits.max_members {
        return Err(too_many_members(limits));
    }
    if limits.max_groups_per_user == 0 {
        return Err(StoreError::Limit("no user may be in a group".into()));
    }
    match admission.full {
        Some(user) => Err(too_many_groups(&user, limits)),
        None => Ok(()),
    }
}

async fn create<T: GroupTx>(
    tx: &mut T,
    owner: String,
    name: String,
    members: Vec<String>,
    limits: GroupLimits,
    now: i64,
) -> Result<GroupChanged> {
    let mut everyone = members;
    everyone.push(owner.clone());
    everyone.sort();
    everyone.dedup();
    admit(tx, &everyone, everyone.len(), limits).await?;
    let id = new_id('g');
    let others: Vec<String> = everyone.iter().filter(|u| **u != owner).cloned().collect();
    let event =
        Draft::membership(&id, &owner, MessageKind::GroupCreated, &others, now).committed(1);
    let group = GroupInfo {
        id,
        name,
        members: everyone
            .into_iter()
            .map(|username| GroupMember {
                role: if username == owner {
                    GroupRole::Owner
                } else {
                    GroupRole::Member
                },
                username,
                joined_seq: 1,
            })
            .collect(),
        last_seq: 1,
    };
    tx.insert_group(&group, &event).await?;
    Ok(GroupChanged {
        notify: notified(&group, None),
        group,
        event: Some(event),
    })
}

async fn add<T: GroupTx>(
    tx: &mut T,
    actor: String,
    group_id: String,
    usernames: Vec<String>,
    limits: GroupLimits,
    now: i64,
) -> Result<GroupChanged> {
    let mut group = locked(tx, &actor, &group_id).await?;
    may_manage(&group, &actor, "add members")?;
    let mut new: Vec<String> = usernames
        .into_iter()
        .filter(|u| role_of(&group, u).is_none())
        .collect();
    new.sort();
    new.dedup();
    if new.is_empty() {
        // Everyone listed is a member already: nothing changes.
        return Ok(GroupChanged {
            notify: notified(&group, None),
            group,
            event: None,
        });
    }
    admit(tx, &new, group.members.len() + new.len(), limits).await?;
    let draft = Draft::membership(&group_id, &actor, MessageKind::MembersAdded, &new, now);
    let event = tx.insert_event(draft).await?;
    // New members read from the event on: nothing before it is theirs to
    // read or to be told about.
    tx.add_members(&group_id, &new, event.seq).await?;
    group
        .members
        .extend(new.into_iter().map(|username| GroupMember {
            username,
            role: GroupRole::Member,
            joined_seq: event.seq,
        }));
    group.members.sort_by(|a, b| a.username.cmp(&b.username));
    group.last_seq = event.seq;
    Ok(GroupChanged {
        notify: notified(&group, None),
        group,
        event: Some(event),
    })
}

async fn remove<T: GroupTx>(
    tx: &mut T,
    actor: String,
    group_id: String,
    username: String,
    now: i64,
) -> Result<GroupChanged> {
    let mut group = locked(tx, &actor, &group_id).await?;
    may_manage(&group, &actor, "remove members")?;
    match role_of(&group, &username) {
        None => return Err(StoreError::NotFound),
        Some(GroupRole::Owner) => return Err(owner_stays()),
        Some(_) => {}
    }
    let event = depart(
        tx,
        &mut group,
        &actor,
        &username,
        MessageKind::MemberRemoved,
        now,
    )
    .await?;
    Ok(GroupChanged {
        notify: notified(&group, Some(username)),
        group,
        event: Some(event),
    })
}

/// Anyone may leave, the owner too: the longest-standing member (then the
/// first by name) takes over.
async fn leave<T: GroupTx>(
    tx: &mut T,
    actor: String,
    group_id: String,
    now: i64,
) -> Result<GroupChanged> {
    let mut group = locked(tx, &actor, &group_id).await?;
    let was_owner = role_of(&group, &actor) == Some(GroupRole::Owner);
    let event = depart(tx, &mut group, &actor, &actor, MessageKind::MemberLeft, now).await?;
    if was_owner {
        let heir = group.members.iter_mut().min_by(|a, b| {
            a.joined_seq
                .cmp(&b.joined_seq)
                .then_with(|| a.username.cmp(&b.username))
        });
        if let Some(heir) = heir {
            tx.set_owner(&group.id, &heir.username).await?;
            heir.role = GroupRole::Owner;
        }
    }
    Ok(GroupChanged {
        notify: notified(&group, Some(actor)),
        group,
        event: Some(event),
    })
}
