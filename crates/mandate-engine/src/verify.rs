//! Walking the audit chain, shared by the API and the offline `mandate audit verify`.

use mandate_audit::{ChainBreak, Verifier};
use mandate_store::{Store, StoreError};

/// Records read per query while verifying.
const PAGE: i64 = 10_000;

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: i64,
    /// The first bad record, if any.
    pub first_bad: Option<ChainBreak>,
}

/// Walks the whole chain up to the head recorded at the start, and checks the head.
/// Events appended while it runs are left for the next verification.
pub async fn verify_chain(store: &dyn Store) -> Result<VerifyReport, StoreError> {
    let Some((head_seq, head_hash)) = store.audit_head().await? else {
        return Ok(VerifyReport {
            records: 0,
            first_bad: Some(ChainBreak {
                seq: 0,
                problem: "the audit head row is missing: the store was altered".into(),
            }),
        });
    };
    let mut v = Verifier::new();
    let mut after = 0;
    let mut records = 0;
    let mut beyond_head = None;
    'pages: loop {
        let page = store.events_after(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            if e.seq > head_seq {
                // Past the head read above: appended after verification began, or written
                // around Mandate (checked against a fresh head below).
                beyond_head = Some(e.seq);
                break 'pages;
            }
            if let Err(b) = v.feed(e) {
                return Ok(VerifyReport {
                    records,
                    first_bad: Some(b),
                });
            }
            records += 1;
        }
    }
    let mut first_bad = v.finish(head_seq, &head_hash).err();
    if first_bad.is_none()
        && let Some(seq) = beyond_head
    {
        let now_head = store.audit_head().await?.map_or(0, |h| h.0);
        if now_head < seq {
            first_bad = Some(ChainBreak {
                seq,
                problem: format!(
                    "record {seq} lies beyond the recorded head ({now_head}): it was written outside Mandate or the head was rolled back"
                ),
            });
        }
    }
    Ok(VerifyReport { records, first_bad })
}
