//! Who is calling, once the bearer layer has resolved the credential.

use axum::{extract::FromRequestParts, http::request::Parts};
use uuid::Uuid;

use crate::http::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An API key of one tenant; `platform` when that tenant is the platform tenant.
    ServiceAccount {
        tenant_id: String,
        key_id: String,
        platform: bool,
    },
    /// A dashboard user, signed in with Microsoft Entra ID: `(tid, oid)` is the stable user key.
    DashboardUser {
        tenant_id: String,
        tid: String,
        oid: String,
    },
    /// The holder of a session token we minted: may talk to one chat session, never mint.
    EndUser {
        tenant_id: String,
        session_id: String,
        jti: Uuid,
    },
}

impl Principal {
    /// For logs and the mint record.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServiceAccount { .. } => "api_key",
            Self::DashboardUser { .. } => "entra_user",
            Self::EndUser { .. } => "end_user",
        }
    }

    pub fn tenant_id(&self) -> &str {
        match self {
            Self::ServiceAccount { tenant_id, .. }
            | Self::DashboardUser { tenant_id, .. }
            | Self::EndUser { tenant_id, .. } => tenant_id,
        }
    }

    pub fn is_platform(&self) -> bool {
        matches!(self, Self::ServiceAccount { platform: true, .. })
    }

    /// A stable, non-secret name of the principal: the key id, `tid:oid`, or the token's jti.
    pub fn id(&self) -> String {
        match self {
            Self::ServiceAccount { key_id, .. } => key_id.clone(),
            Self::DashboardUser { tid, oid, .. } => format!("{tid}:{oid}"),
            Self::EndUser { jti, .. } => jti.to_string(),
        }
    }
}

/// A principal allowed to mint: service accounts and dashboard users. End users get 403.
#[derive(Debug, Clone)]
pub struct MintingPrincipal(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for MintingPrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Principal>() {
            // Only reachable if a route forgot the bearer layer: refuse rather than serve anonymously.
            None => Err(ApiError::MissingCredentials),
            Some(Principal::EndUser { .. }) => Err(ApiError::InsufficientScope),
            Some(principal) => Ok(Self(principal.clone())),
        }
    }
}
