//! Sealed secrets in the embedded store.

use mandate_audit::NewEvent;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, append_one};
use crate::{SecretRecord, StoreError, StoreResult};

const COLUMNS: &str = "name, key_id, sealed, description, created_at_ms, updated_at_ms";

fn row(r: &SqliteRow) -> StoreResult<SecretRecord> {
    Ok(SecretRecord {
        name: r.try_get("name")?,
        key_id: r.try_get("key_id")?,
        sealed: r.try_get("sealed")?,
        description: r.try_get("description")?,
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

pub(super) async fn put(s: &SqliteStore, rec: &SecretRecord, event: NewEvent) -> StoreResult<()> {
    let mut w = s.writer().await?;
    let mut tx = w.begin().await?;
    sqlx::query(
        "INSERT INTO secrets (name, key_id, sealed, description, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (name) DO UPDATE SET key_id = excluded.key_id, sealed = excluded.sealed, description = excluded.description, updated_at_ms = excluded.updated_at_ms",
    )
    .bind(&rec.name)
    .bind(&rec.key_id)
    .bind(&rec.sealed)
    .bind(&rec.description)
    .bind(rec.created_at_ms)
    .bind(rec.updated_at_ms)
    .execute(&mut *tx)
    .await?;
    append_one(&mut tx, event).await?;
    tx.commit().await?;
    w.keep();
    Ok(())
}

pub(super) async fn get(s: &SqliteStore, name: &str) -> StoreResult<Option<SecretRecord>> {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM secrets WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(&s.read)
    .await?;
    r.as_ref().map(row).transpose()
}

pub(super) async fn all(s: &SqliteStore) -> StoreResult<Vec<SecretRecord>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM secrets ORDER BY name"
    )))
    .fetch_all(&s.read)
    .await?;
    rows.iter().map(row).collect()
}

pub(super) async fn delete(s: &SqliteStore, name: &str, event: NewEvent) -> StoreResult<bool> {
    let mut w = s.writer().await?;
    let mut tx = w.begin().await?;
    let gone = sqlx::query("DELETE FROM secrets WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    if gone.rows_affected() == 0 {
        return Ok(false);
    }
    append_one(&mut tx, event).await?;
    tx.commit().await?;
    w.keep();
    Ok(true)
}

pub(super) async fn reseal(
    s: &SqliteStore,
    resealed: &[(SecretRecord, i64)],
    event: NewEvent,
) -> StoreResult<()> {
    let mut w = s.writer().await?;
    let mut tx = w.begin().await?;
    for (rec, read_at) in resealed {
        let done = sqlx::query(
            "UPDATE secrets SET key_id = $1, sealed = $2, updated_at_ms = $3 WHERE name = $4 AND updated_at_ms = $5",
        )
        .bind(&rec.key_id)
        .bind(&rec.sealed)
        .bind(rec.updated_at_ms)
        .bind(&rec.name)
        .bind(read_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "secret {:?} changed during the re-seal; run it again",
                rec.name
            )));
        }
    }
    append_one(&mut tx, event).await?;
    tx.commit().await?;
    w.keep();
    Ok(())
}
