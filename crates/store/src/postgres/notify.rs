//! Wake-ups: the listener connection that LISTENs on [`NOTIFY_CHANNEL`]
//! and the head it announces to [`crate::EventLog::wait_for_append`].

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::{AsyncMessage, NoTls};

use super::{NOTIFY_CHANNEL, Shared, classify, to_u64};
use crate::StoreError;

/// The highest head any notification (or catch-up) announced, and the
/// threads waiting for it to pass theirs.
#[derive(Default)]
pub(super) struct Wake {
    state: Mutex<WakeState>,
    changed: Condvar,
}

#[derive(Default)]
struct WakeState {
    head: u64,
    listening: bool,
}

impl Wake {
    fn lock(&self) -> std::sync::MutexGuard<'_, WakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn raise(&self, head: u64) {
        let mut s = self.lock();
        if head > s.head {
            s.head = head;
            self.changed.notify_all();
        }
    }

    pub(super) fn set_listening(&self, listening: bool) {
        self.lock().listening = listening;
    }

    pub(super) fn listening(&self) -> bool {
        self.lock().listening
    }

    pub(super) fn wait(&self, after: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.head <= after {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Keeps a connection LISTENing on [`NOTIFY_CHANNEL`], reconnecting after
/// every failure (with a growing pause) for as long as the log lives.
pub(super) async fn listen_forever(shared: Arc<Shared>) {
    const PAUSE_MIN: Duration = Duration::from_millis(50);
    const PAUSE_MAX: Duration = Duration::from_secs(2);
    let mut pause = PAUSE_MIN;
    loop {
        let started = Instant::now();
        let _ = listen_once(&shared).await;
        shared.wake.set_listening(false);
        if started.elapsed() > PAUSE_MAX {
            pause = PAUSE_MIN;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PAUSE_MAX);
    }
}

async fn listen_once(shared: &Arc<Shared>) -> Result<(), StoreError> {
    let (client, mut connection) = shared
        .config
        .connect(NoTls)
        .await
        .map_err(|e| classify("connecting the listener", &e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let listened = async {
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await?;
        // Whatever was appended before the LISTEN took effect: announced by
        // reading the head once it has.
        client
            .query_one(
                "SELECT coalesce(max(position), 0) FROM keyledger.events",
                &[],
            )
            .await
    }
    .await;
    match listened {
        Ok(row) => {
            shared.wake.raise(to_u64(row.get::<_, i64>(0)));
            shared.wake.set_listening(true);
        }
        Err(e) => {
            driver.abort();
            return Err(classify("starting to listen", &e));
        }
    }
    while let Some(payload) = rx.recv().await {
        // Another process may notify on the channel too: a payload that
        // is not a position wakes nobody (tailing is by position anyway).
        if let Ok(head) = payload.parse::<u64>() {
            shared.wake.raise(head);
        }
    }
    drop(client);
    Ok(())
}
