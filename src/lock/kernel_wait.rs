//! Waiting for a flock that another process holds, in a way a waiter can walk away from;
//! and in the same way for the writers' gate (`lock/gate.rs`), an OFD lock of the same file.
//!
//! A blocked `flock(2)` cannot be called off: only the grant (or a signal) ends it. So the
//! wait runs neither on a runtime thread nor on tokio's blocking pool, whose shutdown waits
//! for every one of its threads, and it holds nothing of the store. It runs on a thread of
//! its own, on a descriptor of its own (a second open of the lock file, so that its lock is
//! distinct from the one the store's descriptor may hold), and hands that descriptor,
//! holding the lock, to whoever waits when the kernel grants it. A waiter that gives up only
//! drops its receiver; if nobody waits at the grant, the lock is released at once.
//!
//! The kernel keeps the waiter in its queue meanwhile (it shows in `/proc/locks`) and wakes
//! it the moment the lock is free, so a busy process cannot starve it, as it could a waiter
//! that polls. A thread left waiting by a waiter that gave up serves the next waiter of the
//! same kind on the same file, from any store of this process, so waits that give up one
//! after another behind a long holder leave one thread, not one each. Waiters that give up
//! together leave one thread each (per lock file and kind, as many as waited at once), and
//! each keeps its descriptor until the lock comes, even past the store's `close`; then it
//! holds the lock for an instant before releasing it.
//!
//! A forked child has none of these threads, so the table is per process: a child makes a
//! table of its own at its first wait, and leaves the one it inherited alone (its mutex may
//! have been held by a thread of the parent at the fork).
//!
//! A writer that must wait makes two such waits, one after the other: for the gate, which it
//! then keeps in its future, and for the flock. So a writer that gives up while it waits
//! for the flock lets go of the gate at once, as its future drops it.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{FlockOperation, Mode, OFlags, flock, fstat, open};
use rustix::io::Errno;
use tokio::sync::oneshot;

use crate::lock::fork_guard::{self, TrackedFd};
use crate::lock::gate;
use crate::lock::hold::LockMode;

/// What a waiting thread waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// The flock: `LOCK_SH` or `LOCK_EX`.
    Flock(LockMode),
    /// The writers' gate, shared: granted once no writer holds it.
    GatePass,
    /// The writers' gate, exclusive: a writer's place in front of every later reader.
    Gate,
}

impl Kind {
    /// Takes the lock on `fd`, blocking until it is granted.
    fn take(self, fd: &TrackedFd) -> Result<(), Errno> {
        let op = match self {
            Kind::Flock(LockMode::Shared) => FlockOperation::LockShared,
            Kind::Flock(LockMode::Exclusive) => FlockOperation::LockExclusive,
            Kind::GatePass => return gate::pass_wait(fd.as_fd()),
            Kind::Gate => return gate::take(fd.as_fd()),
        };
        loop {
            match flock(fd, op) {
                Ok(()) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A descriptor that holds a flock (or the gate), and releases it when dropped: with an
/// explicit `LOCK_UN` (or `F_UNLCK`), not only by closing, in case a process that does not
/// run the fork handlers ([`crate::lock::fork_guard`]) shares the open file description. In a
/// forked child it does nothing: the descriptor is no longer the parent's.
#[derive(Debug)]
pub(crate) struct Locked(TrackedFd, Kind);

impl Drop for Locked {
    fn drop(&mut self) {
        if self.0.inherited() {
            return;
        }
        match self.1 {
            Kind::Flock(_) => {
                while let Err(Errno::INTR) = flock(&self.0, FlockOperation::Unlock) {}
            }
            // Fails only on a bad descriptor; closing it then releases what it holds.
            Kind::GatePass | Kind::Gate => {
                let _ = gate::release(self.0.as_fd());
            }
        }
    }
}

/// What a waiter receives: a descriptor of the lock file that holds the lock, or why the
/// wait failed.
pub(crate) type Granted = Result<Locked, Errno>;

/// The threads of this process that are still waiting, by lock file (device and inode) and
/// kind.
type Table = HashMap<(u64, u64, Kind), Vec<Arc<Mutex<Bell>>>>;

/// The waiting threads of one process ([`fork_guard::generation`]).
struct Waiting {
    generation: u64,
    table: Mutex<Table>,
}

/// This process's [`Waiting`], made at its first wait; a forked child makes its own.
static WAITING: AtomicPtr<Waiting> = AtomicPtr::new(std::ptr::null_mut());

/// This process's table of waiting threads. One the process inherited through a fork lists
/// threads it does not have, so it is left as it is (never freed: its senders belong to the
/// parent's waiters) and replaced.
fn waiting() -> &'static Waiting {
    let now = fork_guard::generation();
    loop {
        let current = WAITING.load(Ordering::Acquire);
        // SAFETY: a published table is never freed.
        if let Some(waiting) = unsafe { current.as_ref() } {
            if waiting.generation == now {
                return waiting;
            }
        }
        let fresh = Box::into_raw(Box::new(Waiting {
            generation: now,
            table: Mutex::new(HashMap::new()),
        }));
        match WAITING.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: just published, never freed from now on.
            Ok(_) => return unsafe { &*fresh },
            // SAFETY: made above and never published.
            Err(_) => drop(unsafe { Box::from_raw(fresh) }),
        }
    }
}

/// What a waiting thread and its waiter share.
#[derive(Debug)]
struct Bell {
    /// Who gets the lock when it comes.
    waiter: Option<oneshot::Sender<Granted>>,
}

/// A poisoned lock here still holds consistent data: each critical section is a few plain
/// assignments.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts waiting for the lock `kind` on the open lock file `file`: takes over
/// a thread of this process that waits for it and whose waiter gave up, or starts one on a
/// new descriptor of that file. (Each store of the process has its own waiters, so several
/// may wait for one file at once, each with its own thread.) Never blocks. Fails if the file
/// cannot be opened again (there is no `/proc`) or no thread can be started; the caller then
/// waits another way.
pub(crate) fn start(file: impl AsFd, kind: Kind) -> std::io::Result<oneshot::Receiver<Granted>> {
    let (tx, rx) = oneshot::channel();
    let st = fstat(&file)?;
    let key = (st.st_dev, st.st_ino, kind);
    let waiting = waiting();
    let mut table = lock(&waiting.table);
    for bell in table.get(&key).into_iter().flatten() {
        let mut bell = lock(bell);
        if bell.waiter.as_ref().is_none_or(|w| w.is_closed()) {
            bell.waiter = Some(tx);
            return Ok(rx);
        }
    }
    // Opened here if no fork is in the way; otherwise by the thread, which may wait for the
    // fork, through an anchor that holds no lock (a child may keep it unlisted) and keeps
    // the file for it.
    let own = match reopen(file.as_fd()) {
        Ok(own) => Ok(own),
        Err(e) if fork_guard::busy(&e) => Err(open(
            format!("/proc/self/fd/{}", file.as_fd().as_raw_fd()),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
        )?),
        Err(e) => return Err(e),
    };
    let bell = Arc::new(Mutex::new(Bell { waiter: Some(tx) }));
    let ring = bell.clone();
    std::thread::Builder::new()
        .name("runstate-flock".into())
        .stack_size(64 << 10)
        .spawn(move || {
            let own = own.or_else(|anchor| fork_guard::may_wait(true, || reopen(&anchor)));
            let got = match own {
                Ok(own) => kind.take(&own).map(|()| Locked(own, kind)),
                Err(e) => Err(Errno::from_io_error(&e).unwrap_or(Errno::IO)),
            };
            // Out of the table first, under its lock, so that no waiter joins a thread that
            // has had its answer.
            let mut table = lock(&waiting.table);
            if let Some(threads) = table.get_mut(&key) {
                threads.retain(|b| !Arc::ptr_eq(b, &ring));
                if threads.is_empty() {
                    table.remove(&key);
                }
            }
            let waiter = lock(&ring).waiter.take();
            drop(table);
            if let Some(waiter) = waiter {
                // If the waiter has gone, the lock comes back and is released here; one left
                // unreceived in the channel is released when the receiver is dropped.
                drop(waiter.send(got));
            }
        })?;
    // Listed only once the thread runs, so a failure above leaves nothing behind.
    table.entry(key).or_default().push(bell);
    Ok(rx)
}

/// A second open file description of the same file: through `/proc/self/fd`, so it is the
/// very file the store has open, even if its name has been replaced since. Tracked, so that
/// no forked child keeps the lock it will hold.
fn reopen(file: impl AsFd) -> std::io::Result<TrackedFd> {
    let path = format!("/proc/self/fd/{}", file.as_fd().as_raw_fd());
    TrackedFd::open(
        || Ok(open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?),
        |e| e,
    )
}
