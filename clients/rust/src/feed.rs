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
    /// Oldest first: by `revoked_at` on a first poll, then in the order the feed hands them out.
    pub revocations: Vec<RevokedToken>,
    /// Pass as `cursor` next time: the feed goes on from there, and delivers every revocation
    /// after it, however late it commits. Opaque: pass it back as it is.
    pub next_cursor: String,
    /// Deprecated (use `next_cursor`): the latest revocation time of the answer, or the
    /// `since` given. A revocation that commits after a later one can be missed by following it.
    pub next_since: DateTime<Utc>,
    /// Deprecated (use `next_cursor`): with `next_since`, the greatest jti revoked at exactly
    /// `next_since` in the answer, or the `after` given.
    #[cfg_attr(feature = "schema", schema(value_type = Option<String>))]
    pub next_after: Option<String>,
    /// More revocations wait: ask again at once with `next_cursor`.
    pub has_more: bool,
}

/// What the feed answers: the page in the success envelope (its `meta` is not read).
#[derive(Debug, Deserialize)]
pub(crate) struct FeedResponse {
    pub data: RevocationFeed,
}
