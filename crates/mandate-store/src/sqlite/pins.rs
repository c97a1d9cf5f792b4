//! Pinned MCP tool definitions in the embedded store.

use mandate_audit::NewEvent;
use sqlx::Row;

use super::{SqliteStore, append_one};
use crate::{StoreResult, ToolPin};

pub(super) async fn all(s: &SqliteStore) -> StoreResult<Vec<ToolPin>> {
    let rows = sqlx::query(
        "SELECT server, tool, digest, approved_digest, definition, status, reason, decided_by, updated_at_ms FROM tool_pins ORDER BY server, tool",
    )
    .fetch_all(&s.read)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ToolPin {
                server: r.try_get("server")?,
                tool: r.try_get("tool")?,
                digest: r.try_get("digest")?,
                approved_digest: r.try_get("approved_digest")?,
                definition: r.try_get("definition")?,
                status: r.try_get("status")?,
                reason: r.try_get("reason")?,
                decided_by: r.try_get("decided_by")?,
                updated_at_ms: r.try_get("updated_at_ms")?,
            })
        })
        .collect()
}

pub(super) async fn put(s: &SqliteStore, pins: &[ToolPin], event: NewEvent) -> StoreResult<()> {
    let mut w = s.writer().await?;
    let mut tx = w.begin().await?;
    for p in pins {
        sqlx::query(
            "INSERT INTO tool_pins (server, tool, digest, approved_digest, definition, status, reason, decided_by, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (server, tool) DO UPDATE SET digest = excluded.digest, approved_digest = excluded.approved_digest, \
             definition = excluded.definition, status = excluded.status, reason = excluded.reason, decided_by = excluded.decided_by, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&p.server)
        .bind(&p.tool)
        .bind(&p.digest)
        .bind(&p.approved_digest)
        .bind(&p.definition)
        .bind(&p.status)
        .bind(&p.reason)
        .bind(&p.decided_by)
        .bind(p.updated_at_ms)
        .execute(&mut *tx)
        .await?;
    }
    append_one(&mut tx, event).await?;
    tx.commit().await?;
    w.keep();
    Ok(())
}
