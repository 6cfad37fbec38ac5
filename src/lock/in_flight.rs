//! The store's holds in flight, counted, so that `close` can refuse new ones and wait for
//! the rest: two atomic operations a hold, where a tokio `RwLock` took its semaphore's
//! mutex on every release.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Set in the count once the store is closing: no hold may enter after it.
const CLOSED: usize = 1 << (usize::BITS - 1);

#[derive(Debug, Default)]
struct Count {
    /// Holds in flight, with [`CLOSED`] once `close` has begun.
    count: AtomicUsize,
    /// Told when the last hold leaves a closing store.
    idle: Notify,
}

/// The holds in flight of one store.
#[derive(Debug, Default)]
pub(crate) struct InFlight(Arc<Count>);

/// One hold in flight, counted until dropped.
#[derive(Debug)]
pub(crate) struct Entered(Arc<Count>);

impl InFlight {
    /// Counts one more hold in flight, or `None` once the store is closing.
    pub(crate) fn enter(&self) -> Option<Entered> {
        let entered = Entered(self.0.clone());
        // A refused hold is counted out again as `entered` drops, waking a waiting close if
        // it was the last.
        match self.0.count.fetch_add(1, Ordering::Acquire) & CLOSED {
            0 => Some(entered),
            _ => None,
        }
    }

    /// Refuses every later hold, then waits until those in flight have left.
    pub(crate) async fn close(&self) {
        self.0.count.fetch_or(CLOSED, Ordering::AcqRel);
        loop {
            let mut idle = pin!(self.0.idle.notified());
            idle.as_mut().enable();
            if self.0.count.load(Ordering::Acquire) == CLOSED {
                return;
            }
            idle.await;
        }
    }

    /// Whether `close` has begun.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.count.load(Ordering::Acquire) & CLOSED != 0
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::Release) == CLOSED | 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn close_refuses_new_holds_and_waits_for_the_ones_in_flight() {
        let in_flight = Arc::new(InFlight::default());
        let first = in_flight.enter().expect("open store");
        let second = in_flight.enter().expect("open store");
        let closing = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.close().await }
        });
        while !in_flight.is_closed() {
            tokio::task::yield_now().await;
        }
        assert!(
            in_flight.enter().is_none(),
            "a hold entered a closing store"
        );
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !closing.is_finished(),
            "close returned with a hold in flight"
        );
        drop(second);
        tokio::time::timeout(Duration::from_secs(30), closing)
            .await
            .expect("close ended once the last hold left")
            .expect("close task");
        // Closing again waits for nothing.
        in_flight.close().await;
    }
}
