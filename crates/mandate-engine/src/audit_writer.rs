//! Group commit for audit events: callers hand an event to one writer task and wait for
//! it to be durable; the writer commits whatever has queued up in one transaction.
//! Events nobody waits for (what an upstream answered to an allowed call) ride along with
//! the next transaction instead of paying a commit of their own, or are flushed after
//! [`DEFERRED_FLUSH`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mandate_audit::{Event, NewEvent};
use mandate_store::{HistoryRow, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::error::Kind;

/// Most events committed in one transaction.
const MAX_BATCH: usize = 512;
/// Most events waiting for the writer; callers beyond it wait (backpressure).
const QUEUE: usize = 8192;
/// Longest a deferred event waits for a transaction to join.
pub const DEFERRED_FLUSH: Duration = Duration::from_millis(20);
/// Most deferred events held; beyond, one is committed on its own at once.
const MAX_DEFERRED: usize = 4096;

/// Why an event was not recorded. Either way the caller must not act as if it were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The store could not commit (full disk, I/O error, lost database...).
    #[error("the audit store cannot commit: {0}")]
    Unavailable(String),
    /// The chain is broken: nothing is appended to it until an operator repairs it.
    #[error("the audit chain is broken: {0}")]
    ChainBroken(String),
}

impl From<AuditError> for Error {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Unavailable(_) => Error::audit(),
            AuditError::ChainBroken(why) => Error::new(
                Kind::Unavailable,
                "audit_chain_broken",
                format!(
                    "the audit chain is broken, so nothing is decided or recorded until an operator restores it (run `mandate audit verify`): {why}"
                ),
            ),
        }
    }
}

/// Whether the store commits, as the writer last saw it, and whether the chain may be
/// appended to. Read by readiness; decisions need a commit anyway, so they fail closed on
/// their own while it fails, and succeed again with the first commit that does.
#[derive(Debug, Default)]
pub struct StoreHealth {
    failing: AtomicBool,
    reason: Mutex<Option<String>>,
    chain_break: Mutex<Option<String>>,
}

impl StoreHealth {
    fn committed(&self) {
        if self.failing.swap(false, Ordering::SeqCst) {
            tracing::warn!("the audit store commits again");
            *crate::sync::lock(&self.reason) = None;
        }
    }

    fn failed(&self, why: &str) {
        *crate::sync::lock(&self.reason) = Some(why.to_owned());
        self.failing.store(true, Ordering::SeqCst);
    }

    /// Why the store cannot commit, while it cannot.
    pub fn failure(&self) -> Option<String> {
        if self.failing.load(Ordering::SeqCst) {
            crate::sync::lock(&self.reason).clone()
        } else {
            None
        }
    }

    /// Why the chain may not be appended to, once it is found broken.
    pub fn chain_break(&self) -> Option<String> {
        crate::sync::lock(&self.chain_break).clone()
    }

    /// Stops every append: the chain was found broken (at start-up, by verification, or
    /// by the store refusing an append).
    pub fn halt(&self, why: &str) {
        let mut b = crate::sync::lock(&self.chain_break);
        if b.is_none() {
            tracing::error!(
                reason = why,
                "audit chain broken: refusing every append and decision"
            );
            *b = Some(why.to_owned());
        }
    }
}

/// One event to commit, with the task history it changes, and who waits for it.
struct Job {
    /// None: a barrier, answered once everything deferred before it is committed.
    event: Option<NewEvent>,
    history: Option<HistoryRow>,
    done: oneshot::Sender<Result<Option<Event>, AuditError>>,
}

/// Events and history snapshots nobody waits for.
#[derive(Debug, Default)]
struct Deferred {
    events: Vec<NewEvent>,
    histories: Vec<HistoryRow>,
}

/// Told of every event after its transaction commits, in chain order, by the writer
/// task: how later work (containment, telemetry, exports) reacts to what happened without
/// touching the decide path. `committed` runs on the writer, after the callers waiting on
/// the batch have their answers; it must not block (hand the events to a bounded channel
/// or counter). Events of a transaction that failed are never observed.
pub trait CommitObserver: std::fmt::Debug + Send + Sync + 'static {
    /// Events just committed, in sequence order.
    fn committed(&self, events: &[Event]);
}

/// Handle to the writer task.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Job>,
    deferred: Arc<Mutex<Deferred>>,
    health: Arc<StoreHealth>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("kind", &self.event.as_ref().map(NewEvent::kind))
            .finish()
    }
}

impl AuditWriter {
    /// Starts the writer on the current runtime, without observers.
    pub fn spawn(store: Arc<dyn Store>) -> Self {
        Self::spawn_observed(store, Vec::new())
    }

    /// Starts the writer on the current runtime; `observers` are told of every commit.
    pub fn spawn_observed(store: Arc<dyn Store>, observers: Vec<Arc<dyn CommitObserver>>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let deferred: Arc<Mutex<Deferred>> = Arc::default();
        let health: Arc<StoreHealth> = Arc::default();
        let pending = Arc::clone(&deferred);
        let state = Arc::clone(&health);
        #[expect(
            clippy::disallowed_methods,
            reason = "the single audit writer: one task for the server life, ended when every sender is dropped"
        )]
        tokio::spawn(async move {
            let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
            let mut tick = tokio::time::interval(DEFERRED_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, MAX_BATCH) => {
                        if n == 0 {
                            break;
                        }
                    }
                    _ = tick.tick() => {}
                }
                if let Some(why) = state.chain_break() {
                    for job in batch.drain(..) {
                        let _ = job.done.send(Err(AuditError::ChainBroken(why.clone())));
                    }
                    continue;
                }
                let riders = std::mem::take(&mut *crate::sync::lock(&pending));
                if batch.is_empty() && riders.events.is_empty() && riders.histories.is_empty() {
                    continue;
                }
                // Deferred events happened before the ones now waiting: they go first.
                let skip = riders.events.len();
                let mut events = riders.events.clone();
                let mut histories = riders.histories.clone();
                let mut waiters = Vec::with_capacity(batch.len());
                for job in batch.drain(..) {
                    let waits_for_event = job.event.is_some();
                    events.extend(job.event);
                    histories.extend(job.history);
                    waiters.push((job.done, waits_for_event));
                }
                match store.append_batch(events, histories).await {
                    Ok(stored) => {
                        state.committed();
                        let mut answers = stored.iter().skip(skip);
                        for (waiter, waits_for_event) in waiters {
                            let event = if waits_for_event {
                                answers.next().cloned()
                            } else {
                                None
                            };
                            let _ = waiter.send(Ok(event));
                        }
                        for o in &observers {
                            o.committed(&stored);
                        }
                    }
                    Err(e) => {
                        let err = match &e {
                            StoreError::ChainBroken(why) => {
                                state.halt(why);
                                AuditError::ChainBroken(why.clone())
                            }
                            other => {
                                tracing::error!(error = %other, "audit append failed; the batch is refused");
                                state.failed(&other.to_string());
                                AuditError::Unavailable(other.to_string())
                            }
                        };
                        for (waiter, _) in waiters {
                            let _ = waiter.send(Err(err.clone()));
                        }
                        // Nobody was told the deferred ones failed: they wait for the next
                        // transaction, ahead of anything deferred since.
                        let mut d = crate::sync::lock(&pending);
                        let mut events = riders.events;
                        events.append(&mut d.events);
                        events.truncate(MAX_DEFERRED);
                        d.events = events;
                        let mut histories = riders.histories;
                        histories.append(&mut d.histories);
                        d.histories = histories;
                    }
                }
            }
        });
        Self {
            tx,
            deferred,
            health,
        }
    }

    /// Returns once everything deferred so far is committed (at shutdown: nothing
    /// recorded in memory is left behind).
    pub async fn flush(&self) -> Result<(), AuditError> {
        self.submit(None, None).await.map(|_| ())
    }

    /// What the writer knows of the store's health.
    pub fn health(&self) -> &StoreHealth {
        &self.health
    }

    /// Records an event nobody waits for with the next transaction (at most
    /// [`DEFERRED_FLUSH`] later). A store failure is logged, like any unawaited write.
    pub fn append_deferred(&self, event: NewEvent) {
        let mut d = crate::sync::lock(&self.deferred);
        if d.events.len() < MAX_DEFERRED {
            d.events.push(event);
            return;
        }
        drop(d);
        let this = self.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if this.append(event).await.is_err() {
                    tracing::error!("could not record a deferred audit event");
                }
            });
        }
    }

    /// Writes a task history snapshot with the next transaction (at most
    /// [`DEFERRED_FLUSH`] later); only the newest snapshot of a task is kept.
    pub fn defer_history(&self, row: HistoryRow) {
        let mut d = crate::sync::lock(&self.deferred);
        if let Some(old) = d.histories.iter_mut().find(|h| h.task_id == row.task_id) {
            if row.rev > old.rev {
                *old = row;
            }
        } else {
            d.histories.push(row);
        }
    }

    /// Appends one event and returns once it is durable. Any failure is an error: the
    /// caller must not act as if the event were recorded.
    pub async fn append(&self, event: NewEvent) -> Result<Event, AuditError> {
        self.record(event, None).await
    }

    /// Appends one event, with the history snapshot it brings about, in one transaction,
    /// and returns once both are durable.
    pub async fn record(
        &self,
        event: NewEvent,
        history: Option<HistoryRow>,
    ) -> Result<Event, AuditError> {
        match self.submit(Some(event), history).await? {
            Some(stored) => Ok(stored),
            None => Err(AuditError::Unavailable(
                "audit writer dropped the event".to_owned(),
            )),
        }
    }

    async fn submit(
        &self,
        event: Option<NewEvent>,
        history: Option<HistoryRow>,
    ) -> Result<Option<Event>, AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job {
                event,
                history,
                done,
            })
            .await
            .map_err(|_| AuditError::Unavailable("audit writer stopped".to_owned()))?;
        rx.await
            .map_err(|_| AuditError::Unavailable("audit writer dropped the event".to_owned()))?
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::disallowed_methods,
        reason = "test code: waits out the deferred flush"
    )]

    use mandate_store::SqliteStore;

    use super::*;

    fn ev(n: i64) -> NewEvent {
        NewEvent {
            ts_ms: n,
            agent: None,
            task_id: None,
            body: mandate_audit::Body::JoinTokenIssued(mandate_audit::JoinTokenIssued {
                expires_at_ms: n,
            }),
        }
    }

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<i64>>);

    impl CommitObserver for Seen {
        fn committed(&self, events: &[Event]) {
            let mut seen = crate::sync::lock(&self.0);
            seen.extend(events.iter().map(|e| e.seq));
        }
    }

    #[tokio::test]
    async fn observers_see_each_committed_event_once_in_order_after_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
        let seen = Arc::new(Seen::default());
        let w = AuditWriter::spawn_observed(
            Arc::clone(&store),
            vec![Arc::clone(&seen) as Arc<dyn CommitObserver>],
        );
        w.append_deferred(ev(1));
        let second = w.append(ev(2)).await.unwrap();
        let third = w.append(ev(3)).await.unwrap();
        w.flush().await.unwrap();
        let stored: Vec<i64> = store
            .events_after(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(stored, [1, 2, 3]);
        assert_eq!(second.seq, 2);
        assert_eq!(third.seq, 3);
        // The observer runs after the waiters are answered: wait for it by flushing once
        // more (its call for the batch before has returned when the next batch commits).
        w.flush().await.unwrap();
        assert_eq!(
            *crate::sync::lock(&seen.0),
            [1, 2, 3],
            "every commit, once, in order"
        );
    }

    #[tokio::test]
    async fn deferred_events_ride_along_or_flush_alone_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
        let w = AuditWriter::spawn(Arc::clone(&store));
        w.append_deferred(ev(1));
        let urgent = w.append(ev(2)).await.unwrap();
        let all = store.events_after(0, 100).await.unwrap();
        let ns: Vec<i64> = all
            .iter()
            .filter_map(|e| e.data["expires_at_ms"].as_i64())
            .collect();
        assert_eq!(
            ns,
            [1, 2],
            "the deferred event joined the transaction, before the waiter's"
        );
        assert_eq!(
            urgent.data["expires_at_ms"], 2,
            "the waiter gets its own event back"
        );
        w.append_deferred(ev(3));
        tokio::time::sleep(DEFERRED_FLUSH * 5).await;
        let all = store.events_after(0, 100).await.unwrap();
        assert_eq!(
            all.iter()
                .filter_map(|e| e.data["expires_at_ms"].as_i64())
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
}
