//! Group commit for audit events: callers hand an event to one writer task and wait for
//! it to be durable; the writer commits whatever has queued up in one transaction.
//! Events nobody waits for (what an upstream answered to an allowed call) ride along with
//! the next transaction instead of paying a commit of their own, or are flushed after
//! [`DEFERRED_FLUSH`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mandate_audit::{Event, NewEvent};
use mandate_store::Store;
use tokio::sync::{mpsc, oneshot};

/// Most events committed in one transaction.
const MAX_BATCH: usize = 512;
/// Most events waiting for the writer; callers beyond it wait (backpressure).
const QUEUE: usize = 8192;
/// Longest a deferred event waits for a transaction to join.
pub const DEFERRED_FLUSH: Duration = Duration::from_millis(20);
/// Most deferred events held; beyond, one is committed on its own at once.
const MAX_DEFERRED: usize = 4096;

type Job = (NewEvent, oneshot::Sender<Result<Event, String>>);

/// Handle to the writer task.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Job>,
    deferred: Arc<Mutex<Vec<NewEvent>>>,
}

impl AuditWriter {
    /// Starts the writer on the current runtime.
    pub fn spawn(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let deferred: Arc<Mutex<Vec<NewEvent>>> = Arc::default();
        let pending = Arc::clone(&deferred);
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
                let riders = std::mem::take(&mut *crate::engine::lock(&pending));
                if batch.is_empty() && riders.is_empty() {
                    continue;
                }
                // Deferred events happened before the ones now waiting: they go first.
                let skip = riders.len();
                let (waited, waiters): (Vec<NewEvent>, Vec<_>) = batch.drain(..).unzip();
                let mut events = riders;
                events.extend(waited);
                match store.append_events(events).await {
                    Ok(stored) => {
                        for (waiter, event) in
                            waiters.into_iter().zip(stored.into_iter().skip(skip))
                        {
                            let _ = waiter.send(Ok(event));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit append failed; the batch is refused");
                        for waiter in waiters {
                            let _ = waiter.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        Self { tx, deferred }
    }

    /// Records an event nobody waits for with the next transaction (at most
    /// [`DEFERRED_FLUSH`] later). A store failure is logged, like any unawaited write.
    pub fn append_deferred(&self, event: NewEvent) {
        let mut d = crate::engine::lock(&self.deferred);
        if d.len() < MAX_DEFERRED {
            d.push(event);
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

    /// Appends one event and returns once it is durable. Any failure is an error: the
    /// caller must not act as if the event were recorded.
    pub async fn append(&self, event: NewEvent) -> Result<Event, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((event, tx))
            .await
            .map_err(|_| "audit writer stopped".to_owned())?;
        rx.await
            .map_err(|_| "audit writer dropped the event".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use mandate_audit::EventKind;
    use mandate_store::SqliteStore;

    use super::*;

    fn ev(n: i64) -> NewEvent {
        NewEvent {
            ts_ms: n,
            kind: EventKind::GatewayResult,
            agent: None,
            task_id: None,
            data: serde_json::json!({ "n": n }),
        }
    }

    #[tokio::test]
    async fn deferred_events_ride_along_or_flush_alone_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
        let w = AuditWriter::spawn(Arc::clone(&store));
        w.append_deferred(ev(1));
        let urgent = w.append(ev(2)).await.unwrap();
        let all = store.events_after(0, 100).await.unwrap();
        let ns: Vec<i64> = all.iter().filter_map(|e| e.data["n"].as_i64()).collect();
        assert_eq!(
            ns,
            [1, 2],
            "the deferred event joined the transaction, before the waiter's"
        );
        assert_eq!(urgent.data["n"], 2, "the waiter gets its own event back");
        w.append_deferred(ev(3));
        tokio::time::sleep(DEFERRED_FLUSH * 5).await;
        let all = store.events_after(0, 100).await.unwrap();
        assert_eq!(
            all.iter()
                .filter_map(|e| e.data["n"].as_i64())
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
}
