//! Waiting for a flock that another process holds, in a way a waiter can walk away from.
//!
//! A blocked `flock(2)` cannot be called off: only the grant (or a signal) ends it. So the
//! wait runs neither on a runtime thread nor on tokio's blocking pool, whose shutdown waits
//! for every one of its threads, and it holds nothing of the store. It runs on a thread of
//! its own, on a descriptor of its own (a second open of the lock file, so that its lock is
//! distinct from the one the store's descriptor may hold), and hands that descriptor,
//! holding the lock, to whoever waits when the kernel grants it. A waiter that gives up only
//! drops its receiver; if nobody waits at the grant, the thread releases the lock at once.
//!
//! The kernel keeps the waiter in its queue meanwhile (it shows in `/proc/locks`) and wakes
//! it the moment the lock is free, so a busy process cannot starve it, as it could a waiter
//! that polls. A thread left waiting by a waiter that gave up serves the next waiter of the
//! same kind, so threads do not pile up behind a long holder.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{FlockOperation, Mode, OFlags, flock, open};
use rustix::io::Errno;
use tokio::sync::oneshot;

/// What a waiter receives: a descriptor of the lock file that holds the lock, or why the
/// wait failed.
pub(crate) type Granted = Result<OwnedFd, Errno>;

/// The waits of one kind (exclusive or shared) on one lock file.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    /// The thread started last, whether still waiting or done.
    last: Mutex<Option<Arc<Mutex<Bell>>>>,
}

/// What a waiting thread and its waiter share.
#[derive(Debug, Default)]
struct Bell {
    /// Who gets the lock when it comes.
    waiter: Option<oneshot::Sender<Granted>>,
    /// The thread has had its answer and is gone.
    done: bool,
}

/// A poisoned lock here still holds consistent data: each critical section is one or two
/// plain assignments.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Waits {
    /// Starts waiting for `op` (a blocking `LockExclusive` or `LockShared`) on a new
    /// descriptor of the open lock file `file`, or joins the thread a waiter that gave up
    /// left waiting. Never blocks. Fails if the file cannot be opened again (there is no
    /// `/proc`) or no thread can be started; the caller then waits another way.
    pub(crate) fn start(
        &self,
        file: &OwnedFd,
        op: FlockOperation,
    ) -> std::io::Result<oneshot::Receiver<Granted>> {
        let (tx, rx) = oneshot::channel();
        let mut last = lock(&self.last);
        if let Some(bell) = last.as_ref() {
            let mut bell = lock(bell);
            if !bell.done {
                bell.waiter = Some(tx);
                return Ok(rx);
            }
        }
        let own = reopen(file)?;
        let bell = Arc::new(Mutex::new(Bell {
            waiter: Some(tx),
            done: false,
        }));
        let ring = bell.clone();
        std::thread::Builder::new()
            .name("runstate-flock".into())
            .stack_size(64 << 10)
            .spawn(move || {
                let got = loop {
                    match flock(&own, op) {
                        Ok(()) => break Ok(own),
                        Err(Errno::INTR) => continue,
                        Err(e) => break Err(e),
                    }
                };
                let mut bell = lock(&ring);
                bell.done = true;
                if let Some(waiter) = bell.waiter.take() {
                    // If the waiter has gone, the descriptor comes back and is dropped here,
                    // which releases the lock.
                    drop(waiter.send(got));
                }
            })?;
        *last = Some(bell);
        Ok(rx)
    }
}

/// A second open file description of the same file: through `/proc/self/fd`, so it is the
/// very file the store has open, even if its name has been replaced since.
fn reopen(file: &OwnedFd) -> std::io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    Ok(open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?)
}
