//! Admin API server and the CLI-side client.
//!
//! The server ([`server::AdminServer`]) authenticates, routes and validates requests, then
//! delegates every operation to an [`ops::AdminOps`] implementation (the control plane).

pub mod client;
pub mod key_json;
pub mod ops;
pub mod routes;
pub mod server;
pub mod token;

pub use client::{AdminClient, ClientError};
pub use key_json::{CreatedKeyJson, KeyJson, key_state};
pub use ops::{
    AdminOps, AllowlistRequest, ApiError, CreateKeyRequest, ExplainRequest, ListKeysQuery,
    OpFuture, Readiness, RotateRequest, UserAction,
};
pub use server::{AdminHandle, AdminServer, ServerError};
pub use token::{AdminToken, TokenError};
