//! Admin API server and the CLI-side client.
//!
//! The server ([`server::AdminServer`]) authenticates, routes and validates requests, then
//! delegates every operation to an [`ops::AdminOps`] implementation (the control plane).

pub mod audit_json;
pub mod ban_json;
pub mod client;
pub mod key_json;
pub mod ops;
pub mod routes;
pub mod server;
pub mod stats_json;
pub mod token;

pub use crate::store::rules::key_state;
pub use audit_json::AuditJson;
pub use ban_json::BanJson;
pub use client::{AdminClient, ClientError};
pub use key_json::{CreatedKeyJson, KeyJson};
pub use ops::{
    ACTOR_HEADER, AdminOps, AllowlistRequest, ApiError, AuditQuery, CreateKeyRequest,
    CreditsRequest, DenylistRequest, ExplainRequest, ListKeysQuery, OpFuture, Readiness,
    RotateRequest, UserAction,
};
pub use server::{AdminHandle, AdminServer, PAUSE_GRACE, ReloadHook, ServerError};
pub use stats_json::StatsJson;
pub use token::{AdminToken, TokenError};
