//! One statement of the store's SQL, run wherever the caller is: on the pool, on a connection of it, or on
//! the group committer's own SQLite connection ([`super::lite`]). Callers write `query(sql, args)` and
//! `.execute(on)` / `.fetch_optional(on)` alike for all three, and read the [`Row`]s back with [`column`].

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Row as _};

use super::lite::{self, LiteRow};
use super::Arg;
use crate::{StoreError, StoreResult};

/// `sql` with `args` bound to its numbered placeholders.
pub(crate) fn query(sql: &str, args: Vec<Arg>) -> Statement<'_> {
    Statement { sql, args }
}

pub(crate) struct Statement<'q> {
    sql: &'q str,
    args: Vec<Arg>,
}

/// A connection a write runs on: one of sqlx's, or the group committer's own SQLite connection.
pub(crate) enum Conn<'c> {
    Sqlx(&'c mut AnyConnection),
    Lite(&'c mut rusqlite::Connection),
}

/// Where a point read runs: in place when the store reads a SQLite file ([`lite::Readers`]), on the pool
/// otherwise (and whenever in place would have to wait).
#[derive(Clone, Copy)]
pub(crate) struct PointRead<'c> {
    pub(crate) pool: &'c AnyPool,
    pub(crate) in_place: Option<&'c lite::Readers>,
}

impl<'c> From<PointRead<'c>> for On<'c> {
    fn from(read: PointRead<'c>) -> On<'c> {
        On::Read(read)
    }
}

/// Where a statement runs.
pub(crate) enum On<'c> {
    Pool(&'c AnyPool),
    Read(PointRead<'c>),
    Sqlx(&'c mut AnyConnection),
    Lite(&'c mut rusqlite::Connection),
}

impl<'c> From<&'c AnyPool> for On<'c> {
    fn from(pool: &'c AnyPool) -> On<'c> {
        On::Pool(pool)
    }
}

impl<'c> From<&'c mut AnyConnection> for On<'c> {
    fn from(conn: &'c mut AnyConnection) -> On<'c> {
        On::Sqlx(conn)
    }
}

impl<'c> From<&'c mut rusqlite::Connection> for On<'c> {
    fn from(conn: &'c mut rusqlite::Connection) -> On<'c> {
        On::Lite(conn)
    }
}

impl<'c> From<Conn<'c>> for On<'c> {
    fn from(conn: Conn<'c>) -> On<'c> {
        match conn {
            Conn::Sqlx(c) => On::Sqlx(c),
            Conn::Lite(c) => On::Lite(c),
        }
    }
}

impl<'c, 'd> From<&'c mut Conn<'d>> for On<'c> {
    fn from(conn: &'c mut Conn<'d>) -> On<'c> {
        match conn {
            Conn::Sqlx(c) => On::Sqlx(c),
            Conn::Lite(c) => On::Lite(c),
        }
    }
}

/// What running a statement did.
pub(crate) struct Executed {
    rows_affected: u64,
}

impl Executed {
    pub(crate) fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

impl<'q> Statement<'q> {
    fn sqlx(self) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
        self.args.into_iter().fold(sqlx::query(self.sql), |q, arg| match arg {
            Arg::Text(s) => q.bind(s),
            Arg::Int(n) => q.bind(n),
            Arg::Null => q.bind(None::<String>),
        })
    }

    pub(crate) async fn execute<'c>(self, on: impl Into<On<'c>>) -> Result<Executed, sqlx::Error> {
        let rows_affected = match on.into() {
            On::Pool(pool) | On::Read(PointRead { pool, .. }) => self.sqlx().execute(pool).await?.rows_affected(),
            On::Sqlx(conn) => self.sqlx().execute(conn).await?.rows_affected(),
            On::Lite(conn) => lite::execute(conn, self.sql, &self.args)?,
        };
        Ok(Executed { rows_affected })
    }

    pub(crate) async fn fetch_all<'c>(self, on: impl Into<On<'c>>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match on.into() {
            On::Read(read) => match read.in_place.and_then(|r| r.fetch_all(self.sql, &self.args)) {
                Some(rows) => rows?.into_iter().map(Row::Lite).collect(),
                None => self.sqlx().fetch_all(read.pool).await?.into_iter().map(Row::Sqlx).collect(),
            },
            On::Pool(pool) => self.sqlx().fetch_all(pool).await?.into_iter().map(Row::Sqlx).collect(),
            On::Sqlx(conn) => self.sqlx().fetch_all(conn).await?.into_iter().map(Row::Sqlx).collect(),
            On::Lite(conn) => lite::fetch_all(conn, self.sql, &self.args)?.into_iter().map(Row::Lite).collect(),
        })
    }

    pub(crate) async fn fetch_optional<'c>(self, on: impl Into<On<'c>>) -> Result<Option<Row>, sqlx::Error> {
        Ok(match on.into() {
            On::Read(read) => self.fetch_all(read).await?.into_iter().next(),
            On::Pool(pool) => self.sqlx().fetch_optional(pool).await?.map(Row::Sqlx),
            On::Sqlx(conn) => self.sqlx().fetch_optional(conn).await?.map(Row::Sqlx),
            On::Lite(conn) => lite::fetch_all(conn, self.sql, &self.args)?.into_iter().next().map(Row::Lite),
        })
    }

    pub(crate) async fn fetch_one<'c>(self, on: impl Into<On<'c>>) -> Result<Row, sqlx::Error> {
        self.fetch_optional(on).await?.ok_or(sqlx::Error::RowNotFound)
    }
}

/// A row, from whichever connection read it.
pub(crate) enum Row {
    Sqlx(AnyRow),
    Lite(LiteRow),
}

/// A column of a row, or `Backend` naming the column when it holds something unexpected.
pub(crate) fn column<T: Column>(row: &Row, name: &str) -> StoreResult<T> {
    let read = match row {
        Row::Sqlx(row) => T::from_sqlx(row, name),
        Row::Lite(row) => row.get(name).ok_or_else(|| "no such column".to_string()).and_then(T::from_lite),
    };
    read.map_err(|e| StoreError::Backend(format!("reading column {name}: {e}")))
}

/// The column at `index` of a row (for statements whose one column has no stable name).
pub(crate) fn column_at<T: Column>(row: &Row, index: usize) -> StoreResult<T> {
    let read = match row {
        Row::Sqlx(row) => T::from_sqlx(row, index),
        Row::Lite(row) => row.get_at(index).ok_or_else(|| "no such column".to_string()).and_then(T::from_lite),
    };
    read.map_err(|e| StoreError::Backend(format!("reading column {index}: {e}")))
}

/// A type a column is read as, from either kind of row.
pub(crate) trait Column: Sized {
    fn from_sqlx<I: sqlx::ColumnIndex<AnyRow>>(row: &AnyRow, index: I) -> Result<Self, String>;
    fn from_lite(value: &rusqlite::types::Value) -> Result<Self, String>;
}

use rusqlite::types::Value;

fn unexpected<T>(value: &Value, wanted: &str) -> Result<T, String> {
    Err(format!("expected {wanted}, found {:?}", value.data_type()))
}

impl Column for String {
    fn from_sqlx<I: sqlx::ColumnIndex<AnyRow>>(row: &AnyRow, index: I) -> Result<Self, String> {
        row.try_get(index).map_err(|e| e.to_string())
    }
    fn from_lite(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            other => unexpected(other, "text"),
        }
    }
}

impl Column for i64 {
    fn from_sqlx<I: sqlx::ColumnIndex<AnyRow>>(row: &AnyRow, index: I) -> Result<Self, String> {
        row.try_get(index).map_err(|e| e.to_string())
    }
    fn from_lite(value: &Value) -> Result<Self, String> {
        match value {
            Value::Integer(n) => Ok(*n),
            other => unexpected(other, "an integer"),
        }
    }
}

impl Column for bool {
    fn from_sqlx<I: sqlx::ColumnIndex<AnyRow>>(row: &AnyRow, index: I) -> Result<Self, String> {
        row.try_get(index).map_err(|e| e.to_string())
    }
    fn from_lite(value: &Value) -> Result<Self, String> {
        match value {
            Value::Integer(n) => Ok(*n != 0),
            other => unexpected(other, "a boolean"),
        }
    }
}

impl<T: Column> Column for Option<T>
where
    Option<T>: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    fn from_sqlx<I: sqlx::ColumnIndex<AnyRow>>(row: &AnyRow, index: I) -> Result<Self, String> {
        row.try_get(index).map_err(|e| e.to_string())
    }
    fn from_lite(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_lite(other).map(Some),
        }
    }
}
