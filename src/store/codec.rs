//! Values bound as each schema stores them, so one statement serves both backends: timestamps
//! (`timestamptz` on PostgreSQL, fixed-width RFC 3339 text on SQLite) and token ids (`uuid` on
//! PostgreSQL, text on SQLite).

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgTypeInfo},
    sqlite::{SqliteArgumentValue, SqliteTypeInfo},
    Encode, Postgres, Sqlite, Type,
};
use uuid::Uuid;

/// A point in time as a bind parameter.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ts(pub DateTime<Utc>);

/// The statement's clock, for `COALESCE($n, CURRENT_TIMESTAMP)`: NULL on PostgreSQL, so the
/// server's clock decides (one clock for every replica, as the revocation feed's order needs);
/// the process's clock on SQLite, whose `CURRENT_TIMESTAMP` is not in the schema's format.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now;

/// A token id (jti) as a bind parameter. (Rows read it back as text: `CAST(jti AS TEXT)`.)
#[derive(Debug, Clone, Copy)]
pub(super) struct Jti(pub Uuid);

/// SQLite timestamps are fixed-width RFC 3339 UTC text (microseconds, `Z`), so they also compare
/// as text.
fn sqlite_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Type<Postgres> for Ts {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Ts {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

impl Type<Sqlite> for Ts {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Ts {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(sqlite_text(self.0), buf)
    }
}

impl Type<Postgres> for Now {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Now {
    fn encode_by_ref(&self, _: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Ok(IsNull::Yes)
    }
}

impl Type<Sqlite> for Now {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Now {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(sqlite_text(Utc::now()), buf)
    }
}

impl Type<Postgres> for Jti {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Jti {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

impl Type<Sqlite> for Jti {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Jti {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.0.to_string(), buf)
    }
}
