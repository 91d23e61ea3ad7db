//! Who is calling, once the bearer layer has resolved the credential. A type of the lowest layer:
//! it names no HTTP, store or app type, so everything above may use it.

use std::fmt;

use uuid::Uuid;

/// What an API key may do. Each route needs one; a key holds a set of them (`api-key create
/// --scope`). The names are the words of the CLI, the database and the `403 insufficient_scope`
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `POST /public-api/sessions`.
    Mint,
    /// Read, list, revoke and introspect minted tokens.
    ManageTokens,
    /// `GET /public-api/sessions/revocations`: what a verifier needs, and nothing else.
    ReadRevocations,
    /// Read the directory: a tenant its own rows, the platform every tenant's.
    ReadDirectory,
    /// Write the directory of tenants, end companies, agents and sessions (the platform's keys
    /// only; implies [`Scope::ReadDirectory`]).
    WriteDirectory,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Self::Mint,
        Self::ManageTokens,
        Self::ReadRevocations,
        Self::ReadDirectory,
        Self::WriteDirectory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Mint => "sessions:mint",
            Self::ManageTokens => "tokens:manage",
            Self::ReadRevocations => "revocations:read",
            Self::ReadDirectory => "directory:read",
            Self::WriteDirectory => "directory:write",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.name() == name)
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Scope`]s, stored as their names separated by spaces (as OAuth writes `scope`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub const NONE: Scopes = Scopes(0);

    /// What every key could do before keys had scopes, and what a key gets when none are named:
    /// mint, manage tokens, read the revocation feed, and read its own tenant's directory rows.
    /// Writing the directory is never implied.
    pub const LEGACY: Scopes = Scopes(
        Scope::Mint.bit()
            | Scope::ManageTokens.bit()
            | Scope::ReadRevocations.bit()
            | Scope::ReadDirectory.bit(),
    );

    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self(scopes.into_iter().fold(0, |bits, scope| bits | scope.bit()))
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL
            .into_iter()
            .filter(move |scope| self.contains(*scope))
    }

    /// The stored form: `NULL` (a key made before scopes) is [`Self::LEGACY`]; a name this
    /// build does not know grants nothing (a newer build's scope is never widened into another).
    pub fn from_stored(stored: Option<&str>) -> Self {
        match stored {
            None => Self::LEGACY,
            Some(names) => Self::of(names.split_whitespace().filter_map(Scope::parse)),
        }
    }

    /// The scopes an operator named (a fixture's list, `--scope`): every name must be known and
    /// at least one given; the error names the first unknown one.
    pub fn parse_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut scopes = Self::NONE;
        for name in names {
            let scope = Scope::parse(name.trim()).ok_or_else(|| {
                let known: Vec<&str> = Scope::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scope {name:?} (known: {})", known.join(", "))
            })?;
            scopes.0 |= scope.bit();
        }
        if scopes == Self::NONE {
            return Err("name at least one scope".to_owned());
        }
        Ok(scopes)
    }

    /// The stored form of a set: names separated by single spaces, in a fixed order.
    pub fn to_stored(self) -> String {
        self.iter().map(Scope::name).collect::<Vec<_>>().join(" ")
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(Scope::name)).finish()
    }
}

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
        /// What this key may do.
        scopes: Scopes,
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

    /// What this principal may do: a key what it was given; a dashboard user what keys could
    /// do before scopes (mint, manage its tenant's tokens, read the feed; never write the
    /// directory); the holder of a session token nothing on this service.
    pub fn scopes(&self) -> Scopes {
        match self {
            // Writing the directory is the platform's alone, whatever a row says; it implies
            // reading it.
            Self::ApiKey {
                scopes, platform, ..
            } => {
                if !platform {
                    Scopes(scopes.0 & !Scope::WriteDirectory.bit())
                } else if scopes.contains(Scope::WriteDirectory) {
                    Scopes(scopes.0 | Scope::ReadDirectory.bit())
                } else {
                    *scopes
                }
            }
            Self::EntraUser { .. } => Scopes::LEGACY,
            Self::EndUser { .. } => Scopes::NONE,
        }
    }

    pub fn may(&self, scope: Scope) -> bool {
        self.scopes().contains(scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_through_their_stored_form() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.name()), Some(scope));
            let one = Scopes::of([scope]);
            assert_eq!(Scopes::from_stored(Some(&one.to_stored())), one);
        }
        let two = Scopes::of([Scope::ReadRevocations, Scope::Mint]);
        assert_eq!(two.to_stored(), "sessions:mint revocations:read");
        assert_eq!(
            Scopes::from_stored(Some("revocations:read  sessions:mint")),
            two
        );
    }

    #[test]
    fn a_key_without_stored_scopes_keeps_what_keys_could_do_before() {
        let legacy = Scopes::from_stored(None);
        assert!(legacy.contains(Scope::Mint));
        assert!(legacy.contains(Scope::ManageTokens));
        assert!(legacy.contains(Scope::ReadRevocations));
        assert!(legacy.contains(Scope::ReadDirectory));
        assert!(!legacy.contains(Scope::WriteDirectory));
    }

    #[test]
    fn operators_name_known_scopes_and_at_least_one() {
        assert_eq!(
            Scopes::parse_names(["revocations:read"]),
            Ok(Scopes::of([Scope::ReadRevocations]))
        );
        assert!(Scopes::parse_names(["revocations:write"])
            .unwrap_err()
            .contains("revocations:write"));
        assert!(Scopes::parse_names([]).is_err());
    }

    #[test]
    fn unknown_or_empty_stored_scopes_grant_nothing() {
        assert_eq!(Scopes::from_stored(Some("")), Scopes::NONE);
        assert_eq!(Scopes::from_stored(Some("admin:all")), Scopes::NONE);
        assert_eq!(
            Scopes::from_stored(Some("admin:all revocations:read")),
            Scopes::of([Scope::ReadRevocations])
        );
    }

    #[test]
    fn end_users_hold_no_scope_and_dashboard_users_never_write_the_directory() {
        let end_user = Principal::EndUser {
            tenant_id: "acme".into(),
            session_id: "s".into(),
            jti: Uuid::nil(),
        };
        assert!(Scope::ALL.iter().all(|scope| !end_user.may(*scope)));
        let dashboard = Principal::EntraUser {
            tenant_id: "acme".into(),
            tid: "t".into(),
            oid: "o".into(),
        };
        assert!(dashboard.may(Scope::Mint));
        assert!(!dashboard.may(Scope::WriteDirectory));
    }
}
