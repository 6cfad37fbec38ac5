//! Keeping tokio's paused clock honest while the store waits on another process.
//!
//! Under a paused clock (tokio's `test-util`, `start_paused`), tokio moves the clock straight
//! to the next timer whenever the runtime has nothing to do, except while a `spawn_blocking`
//! task runs. A wait for another process (its lock, handed over by a thread of the store's
//! own, or its exit, seen through a pidfd or `/proc`) leaves the runtime idle, so a timeout
//! around it would fire at once, however soon the other process lets go. [`ClockHold`] holds
//! the clock with a tiny blocking task for a slice of real time, then lets it move on by the
//! real time that passed, and again: the paused clock runs at real speed while the wait lasts.
//!
//! It costs nothing unless the clock is paused: whether it is, is learned at the start of
//! each wait that has to wait, from two reads of tokio's clock (tens of nanoseconds).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;

/// How long one blocking task holds the clock: the paused clock moves in steps of about this
/// much real time, so a timeout fires at most about this late in real time.
const SLICE: Duration = Duration::from_millis(20);

/// Whether tokio's clock, as the current runtime sees it, is paused. An unpaused tokio clock
/// is the monotonic clock and moves between two reads; a paused one stands still. Spins at
/// most a few microseconds, and only when paused.
pub(crate) fn paused() -> bool {
    let before = tokio::time::Instant::now();
    let started = std::time::Instant::now();
    loop {
        if tokio::time::Instant::now() != before {
            return false;
        }
        if started.elapsed() > Duration::from_micros(5) {
            return true;
        }
        std::hint::spin_loop();
    }
}

/// While its waiter is pending, keeps a paused clock moving at real speed; see the module.
#[derive(Debug, Default)]
pub(crate) struct ClockHold {
    phase: Phase,
    /// When the wait began holding the clock, in real time and on the paused clock.
    since: Option<(std::time::Instant, tokio::time::Instant)>,
}

/// tokio's timer rounds each deadline up to its next millisecond, so a catch-up can carry
/// the clock that much past the real time; aiming this much short keeps the paused clock
/// from ever running ahead of real time.
const TIMER_TICK: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
enum Phase {
    /// No wait under way: whether the clock is paused is asked at the next one.
    #[default]
    Idle,
    /// The clock is not paused: nothing to do until the wait ends.
    Running,
    /// A blocking task holds the clock for a slice of real time.
    Holding { task: JoinHandle<()>, _stop: Stop },
    /// The slice is over: the clock may move on by the real time it lasted.
    CatchingUp(Pin<Box<tokio::time::Sleep>>),
}

/// Ends its slice's blocking task when dropped, so a dropped waiter leaves no thread blocked.
#[derive(Debug)]
struct Stop(Arc<(Mutex<bool>, Condvar)>);

impl Drop for Stop {
    fn drop(&mut self) {
        let (stopped, bell) = &*self.0;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        bell.notify_one();
    }
}

impl Phase {
    /// A new slice, if the clock is (still) paused.
    fn hold() -> Phase {
        if !paused() {
            return Phase::Running;
        }
        let shared = Arc::new((Mutex::new(false), Condvar::new()));
        let theirs = shared.clone();
        // tokio holds a paused clock from here until the task has returned.
        let task = tokio::task::spawn_blocking(move || {
            let (stopped, bell) = &*theirs;
            let guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
            let _ = bell.wait_timeout_while(guard, SLICE, |stopped| !*stopped);
        });
        Phase::Holding {
            task,
            _stop: Stop(shared),
        }
    }
}

impl ClockHold {
    /// The awaited thing is pending: hold the clock, or go on holding it.
    pub(crate) fn pending(&mut self, cx: &mut Context<'_>) {
        loop {
            self.phase = match &mut self.phase {
                Phase::Idle => {
                    let since = (std::time::Instant::now(), tokio::time::Instant::now());
                    self.since = Some(since);
                    Phase::hold()
                }
                Phase::Running => return,
                Phase::Holding { task, .. } => match Pin::new(task).poll(cx) {
                    Poll::Pending => return,
                    // Measured from the start of the wait, so that rounding does not add up.
                    Poll::Ready(Ok(())) => {
                        let (real, paused) = self.since.unwrap_or_else(|| {
                            (std::time::Instant::now(), tokio::time::Instant::now())
                        });
                        let passed = real.elapsed().saturating_sub(TIMER_TICK);
                        Phase::CatchingUp(Box::pin(tokio::time::sleep_until(paused + passed)))
                    }
                    // Cancelled: the runtime is shutting down; hold no more.
                    Poll::Ready(Err(_)) => Phase::Running,
                },
                Phase::CatchingUp(sleep) => match sleep.as_mut().poll(cx) {
                    Poll::Pending => return,
                    Poll::Ready(()) => Phase::hold(),
                },
            }
        }
    }

    /// The wait is over: let go of the clock at once.
    pub(crate) fn done(&mut self) {
        self.phase = Phase::Idle;
        self.since = None;
    }
}

/// `fut`, which waits on something tokio cannot see, with a paused clock kept at real speed
/// while it is pending.
pub(crate) async fn outside<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut hold = ClockHold::default();
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => {
            hold.done();
            Poll::Ready(out)
        }
        Poll::Pending => {
            hold.pending(cx);
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_clock_is_told_from_a_running_one() {
        let rt = |paused| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(paused)
                .build()
                .expect("runtime")
        };
        assert!(rt(true).block_on(async { paused() }));
        assert!(!rt(false).block_on(async { paused() }));
        assert!(
            !paused(),
            "outside a runtime, tokio's clock is the monotonic one"
        );
    }
}
