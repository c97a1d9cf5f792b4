//! Group commit for audit events: callers hand an event to one writer task and wait for
//! it to be durable; the writer commits whatever has queued up in one transaction.

use std::sync::Arc;

use mandate_audit::{Event, NewEvent};
use mandate_store::Store;
use tokio::sync::{mpsc, oneshot};

/// Most events committed in one transaction.
const MAX_BATCH: usize = 512;
/// Most events waiting for the writer; callers beyond it wait (backpressure).
const QUEUE: usize = 8192;

type Job = (NewEvent, oneshot::Sender<Result<Event, String>>);

/// Handle to the writer task.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Job>,
}

impl AuditWriter {
    /// Starts the writer on the current runtime.
    pub fn spawn(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        tokio::spawn(async move {
            let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (events, waiters): (Vec<NewEvent>, Vec<_>) = batch.drain(..).unzip();
                match store.append_events(events).await {
                    Ok(stored) => {
                        for (waiter, event) in waiters.into_iter().zip(stored) {
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
        Self { tx }
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
