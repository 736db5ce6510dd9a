//! The admin API, for operators (and the `chat-server admin` command):
//! users and their secrets, who is connected to which server, the
//! servers of the cluster, and the dead-letter queue.
//!
//! Every request carries `Authorization: Bearer <admin token>`, the token
//! of the configuration ([`crate::config::AdminToken`]). Without a
//! configured token the admin API does not exist: every admin path answers
//! 404 exactly like an unknown route, so a server without one shows no
//! admin surface at all. A missing or wrong token answers 401; the check
//! runs before anything else (even before the id is parsed), so nothing
//! about the cluster leaks to an unauthenticated caller.
//!
//! | request | answer `data` |
//! |---|---|
//! | `GET /admin/users?after=&limit=` | `users` (by username: `username`, `name`, created time), `has_more`, `next_after` |
//! | `POST /admin/users/{username}/revoke` | `username`, the new `secret`, where the revocation went (`local_sessions`, `nodes`) and where not (`undelivered`) |
//! | `GET /admin/sessions?node=&user=&limit=` | `sessions` (`username`, `node`, `session`), `truncated` |
//! | `GET /admin/nodes` | `nodes`: the live servers (`node`, `grpc_addr`, `http_addr`, start and last heartbeat) |
//! | `GET /admin/dead-letters?limit=&after=&pending=` | `dead_letters` (oldest first, without payloads), `has_more`, `next_after` |
//! | `GET /admin/dead-letters/{id}` | the letter with `payload_text` (when UTF-8) and `payload_hex` |
//! | `POST /admin/dead-letters/{id}/replay` | `outcome: "replayed"`, `local_sessions`, `nodes`, `dead_letter`; 400 when not replayable, 503 when not deliverable now |
//! | `POST /admin/dead-letters/replay?after=&limit=` | `results` (one per pending letter tried), counts, `has_more`, `next_after` |
//! | `DELETE /admin/dead-letters?before=&replayed=` | `purged` (how many) |
//!
//! Payloads are shown as hex (always) and as text (when valid UTF-8, as
//! every envelope this server writes is): hex needs no dependency and no
//! guessing, text is what an operator reads.

use std::collections::HashMap;
use std::sync::Arc;

use super::types::{
    rfc3339, DeadLetterDetail, DeadLetterPage, DeadLetterSummary, NodeEntry, NodeList, Purged,
    ReplayBatch, ReplayOutcome, ReplayResult, Revoked, SessionEntry, SessionList, UserEntry,
    UserPage,
};
use super::{failure, req_id, success};
use crate::dead_letters::{Replay, Replayed};
use crate::{ApiError, AppState};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use chat_store::{DeadLetter, DeadLetterPurge, DeadLetterQuery, MAX_PAGE};

/// Letters (and users) listed per page unless `limit` says otherwise.
const DEFAULT_LIST: u32 = 50;
/// Sessions listed unless `limit` says otherwise.
const DEFAULT_SESSIONS: usize = 1000;
/// The most sessions one answer lists: the registry cannot page them in
/// order, so a larger cluster is narrowed down with `node` or `user`.
pub const MAX_SESSIONS: usize = 10_000;
/// Pending letters one replay request tries unless `limit` says otherwise.
const DEFAULT_REPLAY: u32 = 100;

/// Checks the admin token.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.config.admin_token else {
        return Err(ApiError::NotFound("route"));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(presented) if token.matches(presented) => Ok(()),
        _ => Err(ApiError::Unauthenticated),
    }
}

/// Runs `handle` for an authorized request, answering in the envelope.
async fn admin<F, T>(state: &AppState, headers: &HeaderMap, handle: F) -> Response
where
    F: std::future::Future<Output = Result<T, ApiError>>,
    T: serde::Serialize,
{
    let req_id = req_id(headers);
    if let Err(e) = authorize(state, headers) {
        return failure(&req_id, e);
    }
    match handle.await {
        Ok(data) => success(req_id, data),
        Err(e) => failure(&req_id, e),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(message.into())
}

/// Query parameter `name` parsed as `T`, if present.
fn param<T: std::str::FromStr>(
    query: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    query
        .get(name)
        .map(|v| {
            v.parse()
                .map_err(|_| invalid(format!("invalid {name}: {v:?}")))
        })
        .transpose()
}

fn flag(query: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(v) => Err(invalid(format!("invalid {name}: {v:?} (true or false)"))),
    }
}

fn limit(query: &HashMap<String, String>, default: u32) -> Result<u32, ApiError> {
    match param::<u32>(query, "limit")? {
        None => Ok(default),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(invalid(format!("limit must be 1 to {MAX_PAGE}"))),
    }
}

/// The `{id}` of a path. Extracted leniently (a segment that is not UTF-8
/// is an invalid id too), so that the token check still comes first.
fn id(raw: Result<Path<String>, PathRejection>) -> Result<u64, ApiError> {
    let Ok(Path(raw)) = raw else {
        return Err(invalid("invalid dead letter id: not UTF-8"));
    };
    raw.parse()
        .map_err(|_| invalid(format!("invalid dead letter id: {raw:?}")))
}

fn summary(letter: &DeadLetter) -> DeadLetterSummary {
    DeadLetterSummary {
        id: letter.id,
        node: letter.node.clone(),
        reason: letter.reason.clone(),
        created_at_unix_ms: letter.created_at_unix_ms,
        created_at: rfc3339(letter.created_at_unix_ms),
        replayed_at_unix_ms: letter.replayed_at_unix_ms,
        replay_attempts: letter.replay_attempts,
        payload_bytes: letter.payload.len(),
    }
}

fn result(replayed: &Replayed) -> ReplayResult {
    let outcome = match &replayed.replay {
        Replay::Delivered {
            local_sessions,
            nodes,
        } => ReplayOutcome::Replayed {
            local_sessions: *local_sessions,
            nodes: nodes.clone(),
        },
        Replay::NotReplayable(reason) => ReplayOutcome::NotReplayable {
            reason: reason.clone(),
        },
        Replay::Failed(reason) => ReplayOutcome::Failed {
            reason: reason.clone(),
        },
    };
    ReplayResult {
        outcome,
        id: replayed.letter.id,
        dead_letter: None,
    }
}

/// `GET /admin/dead-letters?limit=&after=&pending=`: a page, oldest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    admin(&state, &headers, async {
        let limit = limit(&query, DEFAULT_LIST)?;
        let page = state
            .dead_letters
            .page(DeadLetterQuery {
                limit,
                after_id: param(&query, "after")?,
                pending_only: flag(&query, "pending")?,
            })
            .await?;
        Ok(DeadLetterPage {
            dead_letters: page.iter().map(summary).collect(),
            has_more: page.len() >= limit as usize,
            next_after: page.last().map(|l| l.id),
        })
    })
    .await
}

/// `GET /admin/dead-letters/{id}`: one letter with its payload.
pub async fn show(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    admin(&state, &headers, async {
        let letter = state.dead_letters.get(id(raw)?).await?;
        Ok(DeadLetterDetail {
            letter: summary(&letter),
            payload_text: std::str::from_utf8(&letter.payload).ok().map(str::to_owned),
            payload_hex: hex::encode(&letter.payload),
        })
    })
    .await
}

/// `POST /admin/dead-letters/{id}/replay`: replays one letter, pending or
/// not (an operator may deliberately deliver one again).
pub async fn replay(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    admin(&state, &headers, async {
        let replayed = state.dead_letters.replay_one(id(raw)?).await?;
        match &replayed.replay {
            Replay::Delivered { .. } => Ok(ReplayResult {
                dead_letter: Some(summary(&replayed.letter)),
                ..result(&replayed)
            }),
            // Retrying unchanged fails again.
            Replay::NotReplayable(reason) => Err(invalid(format!("not replayable: {reason}"))),
            // Retrying later may succeed.
            Replay::Failed(reason) => {
                Err(ApiError::Unavailable(format!("not delivered: {reason}")))
            }
        }
    })
    .await
}

/// `POST /admin/dead-letters/replay?after=&limit=`: replays pending
/// letters, oldest first, stopping at the first that cannot be delivered
/// now. Always 200: each letter's outcome is in `results`.
pub async fn replay_pending(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    admin(&state, &headers, async {
        let batch = state
            .dead_letters
            .replay_pending(param(&query, "after")?, limit(&query, DEFAULT_REPLAY)?)
            .await?;
        let count = |f: fn(&Replay) -> bool| batch.results.iter().filter(|r| f(&r.replay)).count();
        Ok(ReplayBatch {
            results: batch.results.iter().map(result).collect(),
            replayed: count(|r| matches!(r, Replay::Delivered { .. })),
            not_replayable: count(|r| matches!(r, Replay::NotReplayable(_))),
            failed: count(|r| matches!(r, Replay::Failed(_))),
            has_more: batch.has_more,
            next_after: batch.results.last().map(|r| r.letter.id),
        })
    })
    .await
}

/// `DELETE /admin/dead-letters?before=<unix ms>&replayed=true`: deletes
/// every letter, or those created before `before` and/or already replayed.
pub async fn purge(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    admin(&state, &headers, async {
        let purged = state
            .dead_letters
            .purge(DeadLetterPurge {
                before_unix_ms: param(&query, "before")?,
                replayed_only: flag(&query, "replayed")?,
            })
            .await?;
        tracing::info!(purged, "dead letters purged");
        Ok(Purged { purged })
    })
    .await
}

/// `GET /admin/users?after=&limit=`: a page of users by username.
pub async fn users(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    admin(&state, &headers, async {
        let limit = limit(&query, DEFAULT_LIST)?;
        // Usernames are stored in lowercase; a cursor need not be a valid
        // name (any string sorts somewhere).
        let after = query.get("after").map(|a| a.to_ascii_lowercase());
        let page = state.accounts.list(after.as_deref(), limit).await?;
        Ok(UserPage {
            has_more: page.len() >= limit as usize,
            next_after: page.last().map(|u| u.username.clone()),
            users: page
                .into_iter()
                .map(|u| UserEntry {
                    created_at: rfc3339(u.created_at_unix_ms),
                    created_at_unix_ms: u.created_at_unix_ms,
                    username: u.username,
                    name: u.name,
                })
                .collect(),
        })
    })
    .await
}

/// `POST /admin/users/{username}/revoke`: a new secret for the user; every
/// stream opened with the old one ends, on every server.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    admin(&state, &headers, async {
        let Ok(Path(username)) = raw else {
            return Err(invalid("invalid username: not UTF-8"));
        };
        let done = state.accounts.revoke_secret(&username).await?;
        Ok(Revoked {
            username: done.username,
            secret: done.secret,
            local_sessions: done.local_sessions,
            nodes: done.nodes,
            undelivered: done.undelivered,
        })
    })
    .await
}

/// `GET /admin/sessions?node=&user=&limit=`: who is connected where.
pub async fn sessions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    admin(&state, &headers, async {
        let limit = match param::<usize>(&query, "limit")? {
            None => DEFAULT_SESSIONS,
            Some(n) if (1..=MAX_SESSIONS).contains(&n) => n,
            Some(_) => return Err(invalid(format!("limit must be 1 to {MAX_SESSIONS}"))),
        };
        let node = query.get("node").map(String::as_str);
        if let Some(node) = node {
            chat_cluster::check_node_id(node).map_err(|e| invalid(e.to_string()))?;
        }
        let mut found = match query.get("user") {
            Some(user) => {
                let user = crate::names::normalize_username(user)?;
                let mut found = state.delivery.sessions_of(&user).await.map_err(registry)?;
                found.retain(|e| node.is_none_or(|n| e.node == n));
                found
            }
            // One more than asked says whether there are more.
            None => state
                .delivery
                .list_sessions(node, limit + 1)
                .await
                .map_err(registry)?,
        };
        let truncated = found.len() > limit;
        found.truncate(limit);
        Ok(SessionList {
            sessions: found
                .into_iter()
                .map(|e| SessionEntry {
                    username: e.username,
                    node: e.node,
                    session: e.session,
                })
                .collect(),
            truncated,
        })
    })
    .await
}

/// `GET /admin/nodes`: the servers alive in the cluster.
pub async fn nodes(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    admin(&state, &headers, async {
        let nodes = state.delivery.nodes().await.map_err(registry)?;
        Ok(NodeList {
            nodes: nodes
                .into_iter()
                .map(|n| NodeEntry {
                    started_at: rfc3339(n.started_at_unix_ms),
                    heartbeat_at: rfc3339(n.heartbeat_at_unix_ms),
                    node: n.node,
                    grpc_addr: n.grpc_addr,
                    http_addr: n.http_addr,
                    started_at_unix_ms: n.started_at_unix_ms,
                    heartbeat_at_unix_ms: n.heartbeat_at_unix_ms,
                })
                .collect(),
        })
    })
    .await
}

fn registry(e: chat_cluster::ClusterError) -> ApiError {
    ApiError::Unavailable(format!("session registry: {e}"))
}

/// Any other method on an admin path: authorized first (so a disabled or
/// unauthenticated admin API shows nothing), then not found.
pub async fn other_method(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    admin(&state, &headers, async {
        Err::<(), _>(ApiError::NotFound("route"))
    })
    .await
}
