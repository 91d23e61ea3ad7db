//! The revocation feed's wire types (`GET /public-api/sessions/revocations`): the server writes
//! them, [`crate::Verifier`] reads them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One revoked token, for a verifier's deny-list: drop it at `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct RevokedToken {
    // The token's `jti`, a UUID in its hyphenated form. (No doc comment: it would change the
    // server's OpenAPI document.)
    #[cfg_attr(feature = "schema", schema(value_type = String))]
    pub jti: String,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct RevocationFeed {
    /// Oldest revocation first.
    pub revocations: Vec<RevokedToken>,
    /// Pass as `since` next time (the last revocation's time, or the `since` given).
    pub next_since: DateTime<Utc>,
    /// Pass as `after` next time, with `next_since` (the last revocation's jti, or the `after`
    /// given): one bulk revoke gives many tokens the same `revoked_at`.
    #[cfg_attr(feature = "schema", schema(value_type = Option<String>))]
    pub next_after: Option<String>,
    /// More revocations wait: ask again at once with `next_since` and `next_after`.
    pub has_more: bool,
}

/// What the feed answers: the page in the success envelope (its `meta` is not read).
#[derive(Debug, Deserialize)]
pub(crate) struct FeedResponse {
    pub data: RevocationFeed,
}
