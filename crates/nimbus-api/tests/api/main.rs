//! The native API driven through the real router, engine and SQLite store on the sim driver: the stories a
//! user of `/v1` lives through.

mod addresses;
mod common;
mod console;
mod host;
mod idempotency;
mod input;
mod lifecycle;
mod operations;
mod role_matrix;
mod security;
mod templates;
mod tenancy;
mod updates;
mod volumes;
mod web_session;
