//! The in-process turn of an aid: a fair (first come, first served) async read-write lock.
//! An exclusive holder is alone; shared holders are together; a waiter is never overtaken
//! by a later one, so a queued exclusive holder keeps later shared ones out.
//!
//! tokio's `RwLock` does the same, but its release takes its waiter list's mutex every time
//! and its acquire builds a waiting future even when nothing is held: about a tenth of an
//! empty hold's own work. Here one plain mutex guards the counts and the queue, held for a
//! few assignments; a holder that finds nobody there and nobody queued waits for nothing.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::lock::hold::LockMode;

/// An aid's turn. Taken with [`Turn::try_take`] or [`Turn::take`], held as a [`TurnGuard`].
#[derive(Debug, Default)]
pub(crate) struct Turn {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Whether an exclusive holder has the turn.
    exclusive: bool,
    /// How many shared holders have it.
    shared: usize,
    /// The waiters, first come first.
    queue: VecDeque<Arc<Waiter>>,
}

#[derive(Debug)]
struct Waiter {
    mode: LockMode,
    /// Set, under the turn's mutex, when the turn is handed to this waiter.
    granted: AtomicBool,
    /// Whom to wake when it is; kept current by each poll, under the turn's mutex.
    waker: Mutex<Option<Waker>>,
}

/// The turn, held until dropped.
#[derive(Debug)]
pub(crate) struct TurnGuard {
    turn: Arc<Turn>,
    mode: LockMode,
}

impl TurnGuard {
    /// How the turn is held.
    pub(crate) fn mode(&self) -> LockMode {
        self.mode
    }
}

/// The critical sections only assign counts and move queue entries, so a poisoned mutex
/// still holds consistent data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Whether a newcomer in `mode` may have the turn now: nobody queued before it, and
    /// nobody holding it against that mode.
    fn free_for(&self, mode: LockMode) -> bool {
        !self.exclusive
            && match mode {
                LockMode::Exclusive => self.shared == 0,
                LockMode::Shared => true,
            }
    }

    fn enter(&mut self, mode: LockMode) {
        match mode {
            LockMode::Exclusive => self.exclusive = true,
            LockMode::Shared => self.shared += 1,
        }
    }

    fn leave(&mut self, mode: LockMode) {
        match mode {
            LockMode::Exclusive => self.exclusive = false,
            LockMode::Shared => self.shared = self.shared.saturating_sub(1),
        }
    }

    /// Hands the turn to the waiters at the front that may have it now (one exclusive, or a
    /// run of shared ones) and returns whom to wake, once the mutex is let go.
    fn grant(&mut self) -> Vec<Waker> {
        let mut wake = Vec::new();
        while let Some(front) = self.queue.front() {
            if !self.free_for(front.mode) {
                break;
            }
            let mode = front.mode;
            self.enter(mode);
            if let Some(waiter) = self.queue.pop_front() {
                waiter.granted.store(true, Ordering::Release);
                wake.extend(lock(&waiter.waker).take());
            }
        }
        wake
    }
}

impl Turn {
    /// The turn in `mode` if nobody holds it against that mode and nobody waits for it.
    pub(crate) fn try_take(self: &Arc<Self>, mode: LockMode) -> Option<TurnGuard> {
        let mut state = lock(&self.state);
        if !state.queue.is_empty() || !state.free_for(mode) {
            return None;
        }
        state.enter(mode);
        Some(self.guard(mode))
    }

    /// Waits for the turn in `mode`, behind everyone who asked before. Dropped while it
    /// waits, it leaves the queue; dropped once granted, it passes the turn on.
    pub(crate) fn take(self: &Arc<Self>, mode: LockMode) -> Take {
        Take {
            turn: self.clone(),
            mode,
            waiter: None,
        }
    }

    fn guard(self: &Arc<Self>, mode: LockMode) -> TurnGuard {
        TurnGuard {
            turn: self.clone(),
            mode,
        }
    }

    /// Gives back a turn held in `mode` and hands it on.
    fn release(&self, mode: LockMode) {
        let mut state = lock(&self.state);
        state.leave(mode);
        let wake = match state.queue.is_empty() {
            true => Vec::new(),
            false => state.grant(),
        };
        drop(state);
        wake.into_iter().for_each(Waker::wake);
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.turn.release(self.mode);
    }
}

/// The future of [`Turn::take`].
#[derive(Debug)]
pub(crate) struct Take {
    turn: Arc<Turn>,
    mode: LockMode,
    /// Its place in the queue, once it has one.
    waiter: Option<Arc<Waiter>>,
}

impl Future for Take {
    type Output = TurnGuard;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TurnGuard> {
        let this = &mut *self;
        let mut state = lock(&this.turn.state);
        match &this.waiter {
            None => {
                if state.queue.is_empty() && state.free_for(this.mode) {
                    state.enter(this.mode);
                    drop(state);
                    return Poll::Ready(this.turn.guard(this.mode));
                }
                let waiter = Arc::new(Waiter {
                    mode: this.mode,
                    granted: AtomicBool::new(false),
                    waker: Mutex::new(Some(cx.waker().clone())),
                });
                state.queue.push_back(waiter.clone());
                this.waiter = Some(waiter);
                Poll::Pending
            }
            Some(waiter) => {
                if waiter.granted.load(Ordering::Acquire) {
                    drop(state);
                    this.waiter = None;
                    return Poll::Ready(this.turn.guard(this.mode));
                }
                let mut waker = lock(&waiter.waker);
                match &mut *waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Take {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let mut state = lock(&self.turn.state);
        if waiter.granted.load(Ordering::Acquire) {
            // Granted but never taken: hand it on as a holder would.
            drop(state);
            self.turn.release(self.mode);
            return;
        }
        state.queue.retain(|w| !Arc::ptr_eq(w, &waiter));
        // A waiter gone from the front may let those behind it in.
        let wake = state.grant();
        drop(state);
        wake.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::Arc;

    use super::*;

    /// Polls `fut` once; `Some` if it was ready.
    async fn now<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        poll_fn(|cx| match Pin::new(&mut *fut).poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    #[tokio::test]
    async fn waiters_are_served_in_order_shared_ones_together() {
        let turn = Arc::new(Turn::default());
        let reader = turn.try_take(LockMode::Shared).expect("free");
        assert!(turn.try_take(LockMode::Shared).is_some(), "readers share");
        let mut writer = turn.take(LockMode::Exclusive);
        assert!(
            now(&mut writer).await.is_none(),
            "a writer waits for readers"
        );
        // A later reader does not overtake the queued writer.
        assert!(turn.try_take(LockMode::Shared).is_none());
        let (mut r1, mut r2) = (turn.take(LockMode::Shared), turn.take(LockMode::Shared));
        assert!(now(&mut r1).await.is_none());
        assert!(now(&mut r2).await.is_none());
        let mut w2 = turn.take(LockMode::Exclusive);
        assert!(now(&mut w2).await.is_none());
        drop(reader);
        let writer = now(&mut writer).await.expect("the writer comes first");
        assert_eq!(writer.mode(), LockMode::Exclusive);
        assert!(now(&mut r1).await.is_none(), "a reader ran beside a writer");
        drop(writer);
        // Both queued readers in together, the second writer still behind them.
        let g1 = now(&mut r1).await.expect("first reader");
        let g2 = now(&mut r2).await.expect("second reader");
        assert!(now(&mut w2).await.is_none());
        drop((g1, g2));
        assert!(now(&mut w2).await.is_some());
    }

    #[tokio::test]
    async fn a_dropped_waiter_neither_blocks_nor_keeps_the_turn() {
        let turn = Arc::new(Turn::default());
        let holder = turn.try_take(LockMode::Exclusive).expect("free");
        // Queued, then dropped: the one behind it is not held up by it.
        let mut gone = turn.take(LockMode::Exclusive);
        assert!(now(&mut gone).await.is_none());
        let mut next = turn.take(LockMode::Shared);
        assert!(now(&mut next).await.is_none());
        drop(gone);
        drop(holder);
        let next = now(&mut next)
            .await
            .expect("the waiter behind a dropped one");
        // Granted, then dropped before it was polled again: the turn passes on.
        let mut granted = turn.take(LockMode::Exclusive);
        assert!(now(&mut granted).await.is_none());
        drop(next);
        drop(granted);
        assert!(
            turn.try_take(LockMode::Exclusive).is_some(),
            "a dropped, granted waiter kept the turn"
        );
    }

    /// A queued writer dropped from the front lets the readers behind it in at once.
    #[tokio::test]
    async fn readers_behind_a_dropped_writer_go_in() {
        let turn = Arc::new(Turn::default());
        let reader = turn.try_take(LockMode::Shared).expect("free");
        let mut writer = turn.take(LockMode::Exclusive);
        assert!(now(&mut writer).await.is_none());
        let mut behind = turn.take(LockMode::Shared);
        assert!(now(&mut behind).await.is_none());
        drop(writer);
        assert!(
            now(&mut behind).await.is_some(),
            "held up by a writer now gone"
        );
        drop(reader);
    }
}
