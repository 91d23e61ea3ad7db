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

/// Binds each type on both backends: on PostgreSQL as `$pg` (the value `$to_pg`, where `None`
/// binds NULL), on SQLite as the text `$to_sqlite`.
macro_rules! bound_as {
    ($($name:ty: $pg:ty, |$v:ident| postgres $to_pg:expr, sqlite $to_sqlite:expr;)+) => {$(
        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <$pg as Type<Postgres>>::type_info()
            }
        }

        impl Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                let $v = self;
                Encode::<Postgres>::encode($to_pg, buf)
            }
        }

        impl Type<Sqlite> for $name {
            fn type_info() -> SqliteTypeInfo {
                <String as Type<Sqlite>>::type_info()
            }
        }

        impl<'q> Encode<'q, Sqlite> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut Vec<SqliteArgumentValue<'q>>,
            ) -> Result<IsNull, BoxDynError> {
                let $v = self;
                Encode::<Sqlite>::encode($to_sqlite, buf)
            }
        }
    )+};
}

bound_as! {
    Ts: DateTime<Utc>, |t| postgres t.0, sqlite sqlite_text(t.0);
    Now: DateTime<Utc>, |_now| postgres None::<DateTime<Utc>>, sqlite sqlite_text(Utc::now());
    Jti: Uuid, |jti| postgres jti.0, sqlite jti.0.to_string();
}
