//! Following the audit log as it commits, for what reacts to events (containment, Shared
//! Signals): every committed event of the kinds asked for, exactly once, in order.
//!
//! Most events reach the store through the group-commit writer, whose observers hear of
//! them at once; state changes that commit their own transaction (a task's end, an agent's
//! status, an approval's answer) do not pass through it. So a [`Tap`] (the writer's
//! observer) passes on the kinds asked for with the range of sequence numbers it saw, and
//! the [`Tail`] reading it fills every gap from the store: a sequence number the writer did
//! not report (another transaction's) is read back when the next batch shows the gap, or
//! within [`POLL`] when nothing else commits. A batch the bounded queue had to drop is a
//! gap too, read back the same way, so nothing committed is ever skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mandate_audit::Event;
use mandate_store::Store;
use tokio::sync::mpsc;

use crate::audit_writer::CommitObserver;

/// How often the tail looks for events committed outside the writer when the writer is
/// quiet.
pub const POLL: Duration = Duration::from_millis(50);

/// Most batches waiting; beyond it batches are dropped and read back from the store.
const QUEUE: usize = 256;

/// Most events of the kinds asked for carried in one batch; a larger batch carries only
/// its range, and the tail reads it back from the store.
const BATCH_EVENTS: usize = 1024;

/// Events read back from the store per query.
const PAGE: i64 = 512;

/// Pages read back per call of [`Tail::next`]; the rest follows on the next calls, so a
/// long gap costs bounded memory.
const PAGES: usize = 8;

/// How far back a tail resumes from a stored position: older events are history.
pub const MAX_REPLAY: i64 = 100_000;

/// What a tail follows: the committed events it is told of (by kind, and where a cheap
/// look at the details rules most out, by that too).
pub type Kinds = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// One committed batch, as the writer reported it.
#[derive(Debug)]
struct Batch {
    first: i64,
    last: i64,
    /// The events of the kinds asked for; `None` when there were too many to carry (read
    /// the range back instead).
    events: Option<Vec<Event>>,
    at: Instant,
}

/// The writer's observer feeding one [`Tail`]; never blocks the writer.
pub struct Tap {
    tx: mpsc::Sender<Batch>,
    kinds: Kinds,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl CommitObserver for Tap {
    fn committed(&self, events: &[Event]) {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let wanted = events.iter().filter(|e| (self.kinds)(e));
        let batch = Batch {
            first: first.seq,
            last: last.seq,
            events: (wanted.clone().count() <= BATCH_EVENTS).then(|| wanted.cloned().collect()),
            at: Instant::now(),
        };
        if self.tx.try_send(batch).is_err() {
            // Not lost: the tail sees the gap and reads it back from the store.
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "event tail behind: batches are read back from the store"
                );
            }
        }
    }
}

/// The reading end: committed events of the kinds asked for, in sequence order, each with
/// the moment it was known to be committed.
pub struct Tail {
    rx: mpsc::Receiver<Batch>,
    store: Arc<dyn Store>,
    kinds: Kinds,
    /// The next sequence number not yet passed on (`None` until the head is read).
    next: Option<i64>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// A tap for the writer and the tail that follows it.
pub fn tail(store: Arc<dyn Store>, kinds: Kinds) -> (Arc<Tap>, Tail) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        Arc::new(Tap {
            tx,
            kinds: Arc::clone(&kinds),
            dropped: AtomicU64::new(0),
        }),
        Tail {
            rx,
            store,
            kinds,
            next: None,
        },
    )
}

impl Tail {
    /// Starts after `position` (the last event handled before a restart), or after the
    /// events committed so far when there is none; never more than [`MAX_REPLAY`] events
    /// back.
    pub async fn resume(&mut self, position: Option<i64>) {
        loop {
            match self.store.audit_head().await {
                Ok(head) => {
                    let head = head.map_or(0, |(seq, _)| seq);
                    let from = position.map_or(head, |p| p.clamp(head - MAX_REPLAY, head));
                    self.next = Some(from.max(0) + 1);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event tail cannot read the chain head yet");
                    #[expect(
                        clippy::disallowed_methods,
                        reason = "retrying a failed read of the head, once per poll period"
                    )]
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    /// The next committed events of the kinds asked for (possibly none after a quiet poll
    /// period); `None` once the writer is gone.
    pub async fn next(&mut self) -> Option<Vec<(Event, Instant)>> {
        let next = match self.next {
            Some(n) => n,
            None => {
                self.resume(None).await;
                self.next.unwrap_or(1)
            }
        };
        match tokio::time::timeout(POLL, self.rx.recv()).await {
            Ok(None) => None,
            Ok(Some(batch)) => {
                let mut out = Vec::new();
                if batch.first > next {
                    out.extend(self.read_back(next, batch.first - 1).await);
                    if self.next.is_some_and(|n| n < batch.first) {
                        // The gap could not be read yet: this batch waits with it, and the
                        // next poll reads both back in order.
                        return Some(out);
                    }
                }
                let floor = self.next.unwrap_or(next);
                match batch.events {
                    Some(events) => {
                        out.extend(
                            events
                                .into_iter()
                                .filter(|e| e.seq >= floor)
                                .map(|e| (e, batch.at)),
                        );
                        self.next = Some(floor.max(batch.last + 1));
                    }
                    None if batch.last >= floor => {
                        out.extend(self.read_back(floor, batch.last).await);
                    }
                    None => {}
                }
                Some(out)
            }
            Err(_quiet) => {
                let head = match self.store.audit_head().await {
                    Ok(h) => h.map_or(0, |(seq, _)| seq),
                    Err(_) => return Some(Vec::new()),
                };
                if head >= next {
                    return Some(self.read_back(next, head).await);
                }
                Some(Vec::new())
            }
        }
    }

    /// Reads `from..=to` back from the store, keeping the kinds asked for; moves `next` past
    /// what was read. A failed read is retried at the next call (nothing is skipped).
    async fn read_back(&mut self, from: i64, to: i64) -> Vec<(Event, Instant)> {
        let mut out = Vec::new();
        let mut after = from - 1;
        let mut pages = 0;
        while after < to && pages < PAGES {
            pages += 1;
            let page = match self.store.events_after(after, PAGE.min(to - after)).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "event tail cannot read events back yet");
                    break;
                }
            };
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            let at = Instant::now();
            out.extend(
                page.into_iter()
                    .filter(|e| e.seq <= to && (self.kinds)(e))
                    .map(|e| (e, at)),
            );
            after = last;
        }
        self.next = Some(after + 1);
        out
    }

    /// The last sequence number handed out (to store, and resume from after a restart).
    pub fn position(&self) -> Option<i64> {
        self.next.map(|n| n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_audit::{Body, NewEvent, StoreRecovered};
    use mandate_store::SqliteStore;

    fn ev(n: usize) -> NewEvent {
        NewEvent {
            ts_ms: 1,
            agent: None,
            task_id: None,
            body: Body::StoreRecovered(StoreRecovered {
                failure: format!("e{n}"),
            }),
        }
    }

    async fn seqs(tail: &mut Tail) -> Vec<i64> {
        tail.next()
            .await
            .unwrap()
            .into_iter()
            .map(|(e, _)| e.seq)
            .collect()
    }

    #[tokio::test]
    async fn every_committed_event_once_in_order_whichever_way_it_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
        store.append_events(vec![ev(0)]).await.unwrap();
        let (tap, mut tail) = tail(Arc::clone(&store), Arc::new(|_: &Event| true));
        tail.resume(None).await;
        assert_eq!(
            tail.position(),
            Some(1),
            "history before the start is not news"
        );

        // Committed outside the writer: read back when the writer is quiet.
        store.append_events(vec![ev(1), ev(2)]).await.unwrap();
        assert_eq!(seqs(&mut tail).await, vec![2, 3]);

        // One outside the writer (4), then a batch the writer reports (5, 6): the gap is
        // read back first, then the batch, each once.
        store.append_events(vec![ev(3)]).await.unwrap();
        let batch = store.append_events(vec![ev(4), ev(5)]).await.unwrap();
        tap.committed(&batch);
        assert_eq!(seqs(&mut tail).await, vec![4, 5, 6]);

        // A batch the writer reports after the poll already read it is not repeated.
        let late = store.append_events(vec![ev(6)]).await.unwrap();
        assert_eq!(seqs(&mut tail).await, vec![7]);
        tap.committed(&late);
        assert_eq!(seqs(&mut tail).await, Vec::<i64>::new());

        // Resuming from a stored position replays what came after it.
        let (_tap2, mut again) = super::tail(Arc::clone(&store), Arc::new(|_: &Event| true));
        again.resume(Some(5)).await;
        assert_eq!(seqs(&mut again).await, vec![6, 7]);
    }
}
