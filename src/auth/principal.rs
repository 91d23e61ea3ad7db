//! Who is calling, once the bearer layer has resolved the credential. A type of the lowest layer:
//! it names no HTTP, store or app type, so everything above may use it.

use uuid::Uuid;

/// The variant names are the words logs and the mint record use (`api_key`, `entra_user`,
/// `end_user`), so a reader meets one vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A service account: an API key of one tenant; `platform` when that tenant is the platform
    /// tenant (it may mint into other tenants' Neo Support sessions).
    ApiKey {
        tenant_id: String,
        key_id: String,
        platform: bool,
    },
    /// A dashboard user, signed in with Microsoft Entra ID: `(tid, oid)` is the stable user key.
    EntraUser {
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
    /// The variant's name in logs and the mint record.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ApiKey { .. } => "api_key",
            Self::EntraUser { .. } => "entra_user",
            Self::EndUser { .. } => "end_user",
        }
    }

    pub fn tenant_id(&self) -> &str {
        match self {
            Self::ApiKey { tenant_id, .. }
            | Self::EntraUser { tenant_id, .. }
            | Self::EndUser { tenant_id, .. } => tenant_id,
        }
    }

    pub fn is_platform(&self) -> bool {
        matches!(self, Self::ApiKey { platform: true, .. })
    }

    /// A stable, non-secret name of the principal: the key id, `tid:oid`, or the token's jti.
    pub fn id(&self) -> String {
        match self {
            Self::ApiKey { key_id, .. } => key_id.clone(),
            Self::EntraUser { tid, oid, .. } => format!("{tid}:{oid}"),
            Self::EndUser { jti, .. } => jti.to_string(),
        }
    }

    /// Whether this principal may mint (service accounts and dashboard users; end users never).
    pub fn may_mint(&self) -> bool {
        !matches!(self, Self::EndUser { .. })
    }
}
