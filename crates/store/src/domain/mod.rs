//! The chat rules, written once above the backends.
//!
//! Each backend keeps only its SQL and its transaction machinery; what a
//! change *means* is decided here: who may change a group, in which order
//! the refusals come and what they say, what event a change makes, which
//! seq it takes, and who must hear of it. A backend implements the small
//! set of primitives a rule needs (lock a group, admit users, insert an
//! event, add or delete a member, …) on its own transaction type, and runs
//! the rule inside its transaction.
//!
//! The rules are `async` so that one text serves both backends:
//! PostgreSQL's primitives await the database, SQLite's never wait (its
//! single writer thread runs them with [`run_now`]).
//!
//! This module holds no SQL and knows no backend.

pub(crate) mod groups;
pub(crate) mod messages;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::{Result, StoreError};

/// Runs a rule whose primitives never wait (SQLite's, on the writer
/// thread) to its end.
pub(crate) fn run_now<T>(rule: impl Future<Output = Result<T>>) -> Result<T> {
    let mut rule = pin!(rule);
    match rule.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(StoreError::Internal(
            "a synchronous store operation waited".into(),
        )),
    }
}
