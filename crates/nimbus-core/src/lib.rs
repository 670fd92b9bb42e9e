//! The domain of Nimbus, free of I/O: what an instance, an operation, a project or an instance type *is*,
//! which action is allowed in which state, and how input is validated.
//!
//! Invariant: nothing here knows HTTP, SQL, processes or the host. Every other crate depends on this one;
//! this one depends on no other Nimbus crate.

pub mod audit;
pub mod catalog;
pub mod error;
pub mod event;
pub mod host;
pub mod instance;
pub mod labels;
pub mod networking;
pub mod operation;
pub mod resources;
pub mod state_machine;
pub mod tenancy;
pub mod volume;

pub use error::{DomainError, Result};
pub use uuid::Uuid;

/// Current time, truncated to microseconds so that it survives a round trip through any store unchanged.
pub fn now() -> time::OffsetDateTime {
    let t = time::OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).unwrap_or(t)
}

/// A new time-ordered id: sorting by id sorts by creation, which keyset pagination relies on.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}
