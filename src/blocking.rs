//! Running file work where it cannot stall the runtime.
//!
//! Every store operation is one call here with the whole logical operation (or one batch of
//! a stream) as a plain synchronous closure. File operations are short but may sleep: on a
//! directory lock held by another process, or on a disk for a durable store. So they never
//! run on a runtime thread as if they were cheap:
//!
//! - On a multi-thread runtime they run in place through `tokio::task::block_in_place`,
//!   which first hands this worker's other tasks to another thread, so nothing waits behind
//!   them. That saves the round trip to the blocking pool and back, which on a small VM costs
//!   more than the operation itself (17-35 us measured here, against 5-25 us for a save).
//! - On a current-thread runtime, where `block_in_place` is not allowed, they go to the
//!   blocking pool with `spawn_blocking`.
//!
//! Waiting for a lock another process holds does not come here but to a thread of its own
//! (`flock_wait.rs`): the wait can be long, and its waiter must stay free to give up. Only
//! its fallback, a polling wait, runs on the pool ([`on_pool`]).

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::Error;

/// Runs `f` on the blocking pool. A panic or cancellation there becomes [`Error::Blocking`].
/// Outside any runtime there is no pool (and no runtime thread to keep free): `f` runs in
/// place.
pub(crate) async fn on_pool<T, F>(op: &'static str, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if Handle::try_current().is_err() {
        return catch_unwind(AssertUnwindSafe(f))
            .map_err(|_| Error::Blocking { op, panicked: true });
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Blocking {
            op,
            panicked: e.is_panic(),
        })
}

/// Runs `f`, a short file operation, in place on a multi-thread runtime and on the blocking
/// pool otherwise. A panic in `f` becomes [`Error::Blocking`] either way.
pub(crate) async fn run<T, F>(op: &'static str, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    if !in_place_allowed() {
        return on_pool(op, f).await?;
    }
    let mut work = Some(f);
    // Unwinding stops here, as it would at the blocking pool's edge: the closure only holds
    // values it owns, and they are dropped on the way out.
    let ran = catch_unwind(AssertUnwindSafe(|| {
        tokio::task::block_in_place(|| work.take().map(|f| f()))
    }));
    match (ran, work) {
        (Ok(Some(done)), _) => done,
        // block_in_place refused before running the work: this thread runs a `LocalSet`
        // (tokio says so with a panic, printed once per thread, and fatal where panics
        // abort; see the crate docs). The pool serves it instead.
        (Err(_), Some(f)) => {
            REFUSED_HERE.with(|refused| refused.set(true));
            on_pool(op, f).await?
        }
        (Err(_), None) | (Ok(None), _) => Err(Error::Blocking { op, panicked: true }),
    }
}

thread_local! {
    /// Set on a thread where `block_in_place` has refused to run, so that it is not asked
    /// (and its panic not printed) again.
    static REFUSED_HERE: Cell<bool> = const { Cell::new(false) };
}

/// [`run`] for work that cannot fail.
pub(crate) async fn run_infallible<T, F>(op: &'static str, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run(op, move || Ok(f())).await
}

/// Whether `block_in_place` may be called here: only on a multi-thread runtime (it panics on
/// a current-thread one). Outside any runtime there is no runtime thread to protect, but
/// the pool is not there either, so such callers also run in place.
fn in_place_allowed() -> bool {
    !REFUSED_HERE.with(Cell::get)
        && Handle::try_current().map_or(true, |handle| {
            handle.runtime_flavor() == RuntimeFlavor::MultiThread
        })
}
