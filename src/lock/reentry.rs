//! Re-entry detection: a hold asked for from inside a closure that holds the same aid of the
//! same store would wait for that closure, which waits for it: a deadlock. It is refused
//! with [`Error::Reentrant`] instead.
//!
//! While a `with_aid*` closure's future is polled, its (store, aid) is pushed on a
//! thread-local list; a hold asked for during that poll, on the same thread, sees it. This
//! follows the poll, not the task: two holds of one aid joined in one task (`join!`) are not
//! nested and wait for each other as usual, and a closure run by `block_on`, outside any
//! task, is covered too. What it cannot see: a hold asked for by another task the closure
//! waits for (a `spawn`ed one), or one kept between polls by a stream of `entries`.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::{Aid, Error};

/// Which store: the address of its shared state, the same for all its clones.
pub(crate) type StoreKey = usize;

thread_local! {
    /// The holds whose closures are being polled on this thread, innermost last.
    static POLLING: RefCell<Vec<(StoreKey, Aid)>> = const { RefCell::new(Vec::new()) };
}

/// Pops its entry when the poll ends, however it ends.
struct Polling;

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.with_borrow_mut(|held| held.pop());
    }
}

/// Polls `fut`, the closure of a hold of `aid` in `store`, marking that hold as being polled.
pub(crate) fn poll_holding<F: Future + ?Sized>(
    store: StoreKey,
    aid: Aid,
    fut: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    POLLING.with_borrow_mut(|held| held.push((store, aid)));
    let _polling = Polling;
    fut.poll(cx)
}

/// `Err(Reentrant)` if this thread is polling a closure that holds `aid` of `store`.
pub(crate) fn check(store: StoreKey, aid: Aid) -> Result<(), Error> {
    let nested = POLLING.with_borrow(|held| held.contains(&(store, aid)));
    match nested {
        true => Err(Error::Reentrant { aid }),
        false => Ok(()),
    }
}

/// `Err(Reentrant)` with the held aid if this thread is polling a closure that holds any aid
/// of `store`: for `close`, which waits for every hold.
pub(crate) fn check_store(store: StoreKey) -> Result<(), Error> {
    let held = POLLING.with_borrow(|held| held.iter().find(|h| h.0 == store).map(|h| h.1));
    match held {
        Some(aid) => Err(Error::Reentrant { aid }),
        None => Ok(()),
    }
}
