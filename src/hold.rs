//! Holding an aid: the in-process turn and the cross-process flock, as one owned value.
//!
//! Exclusion has two layers. Inside the process, each aid has a fair (FIFO) async
//! read-write lock: an exclusive holder alone, or shared holders together, may touch the
//! aid's lock file. Across processes, the holder then takes `flock`: first without blocking
//! on the calling thread, and only if another process has it, by waiting in the kernel on a
//! thread of its own (`flock_wait.rs`), which a waiter that is dropped simply walks away from.
//! A waiting writer first queues at the writers' gate (`gate.rs`), which holds back new
//! readers in every process until it is in.
//!
//! A [`Hold`] owns both layers and releases them when dropped. Everything that may still use
//! the aid keeps an `Arc<Hold>`: the cursor, and every blocking operation in flight. So the
//! lock outlives a dropped future until the work it started has finished, and no write can
//! land after the lock has passed to someone else. A lock granted on the blocking pool after
//! its waiter was dropped is dropped there at once, since the `Hold` is built on that thread.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, oneshot};

use futures::StreamExt;

use crate::aid_dir::{AidDir, StateDir};
use crate::batch::{self, SweepSteps};
use crate::blocking::{self, Step};
use crate::flock_wait::{Granted, Kind, Locked};
use crate::lock::LockFile;
use crate::{Aid, Error, Options, fork_guard};

/// Whether a holder excludes everyone or only exclusive holders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Exclusive,
    Shared,
}

/// How long a holder is willing to wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    Forever,
    /// Fail with `WouldBlock` rather than wait at all.
    Never,
    /// Fail with `Timeout` at this instant (needs tokio's timer).
    Until(Instant, Duration),
}

/// Everything this process keeps about one aid.
#[derive(Debug, Default)]
struct Slot {
    turn: Arc<RwLock<()>>,
    /// Serialises the shared holders of this process that wait for its first `LOCK_SH`.
    first_reader: Arc<tokio::sync::Mutex<()>>,
    /// The aid's open directory and lock file, while it is held or among the recently used
    /// ([`Locks::keep_open`]); closed once it is neither, so that a store that touches every
    /// aid keeps a bounded number of descriptors.
    dir: tokio::sync::Mutex<Option<Arc<AidDir>>>,
    /// Used since the cache last looked: spares the directory from one eviction round.
    used: AtomicBool,
    /// Set once an exclusive holder has removed temporary files a killed process left.
    swept: AtomicBool,
}

#[derive(Debug)]
enum Turn {
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
}

/// An aid's in-process turn, before (or without) its flock.
#[derive(Debug)]
struct Claim {
    aid: Aid,
    dir: Arc<AidDir>,
    turn: Turn,
    _open: OwnedRwLockReadGuard<()>,
}

impl Claim {
    /// The claim now owns the flock too.
    fn granted(self) -> Hold {
        let flock = Flock {
            dir: self.dir.clone(),
            shared: matches!(self.turn, Turn::Shared(_)),
        };
        Hold {
            flock,
            claim: self,
            ops: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

/// The flock of a hold; dropping it lets go of the lock (the last shared holder of the
/// process drops the shared one).
#[derive(Debug)]
struct Flock {
    dir: Arc<AidDir>,
    shared: bool,
}

impl Drop for Flock {
    fn drop(&mut self) {
        match self.shared {
            false => self.dir.lock.unlock(),
            true => self.dir.lock.leave_shared(),
        }
    }
}

/// An aid held: turn and flock. Dropping it releases the flock, then the turn (fields drop
/// in order).
#[derive(Debug)]
pub(crate) struct Hold {
    flock: Flock,
    claim: Claim,
    /// Orders the holder's operations. An operation whose future was dropped may still be
    /// running on the blocking pool; the next one must wait for it, or a dropped save could
    /// land after a later `len` of the same holder.
    ops: Arc<tokio::sync::Mutex<()>>,
}

impl Hold {
    pub(crate) fn aid(&self) -> Aid {
        self.claim.aid
    }

    pub(crate) fn dir(&self) -> &AidDir {
        &self.claim.dir
    }

    /// Whether short work on this aid runs in place (see `blocking.rs`).
    pub(crate) fn in_place(&self) -> bool {
        self.claim.dir.in_place()
    }

    /// Runs `f`, one logical operation (or one step of a long one) on the held aid, after
    /// every earlier operation of this hold has finished: in place when the store's files
    /// allow it and the work is not `big`, on the blocking pool otherwise. The work keeps the
    /// hold alive, so the lock outlives a dropped future until it is done.
    pub(crate) async fn run<T, F>(
        self: &Arc<Self>,
        op: &'static str,
        big: bool,
        f: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Hold, Step) -> Result<T, Error> + Send + 'static,
    {
        let turn = self.ops.clone().lock_owned().await;
        let hold = self.clone();
        blocking::run(op, !big && self.in_place(), move |step| {
            let _turn = turn;
            f(&hold, step)
        })
        .await
    }
}

/// A waiting writer's place at the writers' gate ([`crate::gate`]), released when dropped.
#[derive(Debug)]
enum AtGate {
    /// Taken on the store's descriptor, which no other holder of this store uses for the
    /// gate while this writer has the exclusive turn.
    Store(Arc<AidDir>),
    /// Handed over by a waiting thread, on that thread's descriptor; released as dropped.
    Handed(#[allow(dead_code)] Locked),
}

impl Drop for AtGate {
    fn drop(&mut self) {
        if let AtGate::Store(dir) = self {
            dir.lock.open_gate();
        }
    }
}

/// The per-store table of aids and the gate that `close` shuts.
#[derive(Debug)]
pub(crate) struct Locks {
    pub(crate) run_dir: PathBuf,
    pub(crate) options: Options,
    slots: Mutex<HashMap<Aid, Arc<Slot>>>,
    /// The open `state` directory, once an aid has been opened.
    state_dir: Mutex<Option<Arc<StateDir>>>,
    /// The aids whose directory is open, oldest first (see [`Locks::keep_open`]).
    open: Mutex<VecDeque<Aid>>,
    /// Every hold keeps a read guard; `close` takes the write side to wait for them all.
    gate: Arc<RwLock<()>>,
    closed: AtomicBool,
    /// The process the store was made in: a forked child may not use it.
    made_in: fork_guard::Epoch,
}

/// Raises its flag when dropped: tells blocking work that its waiter has gone.
#[derive(Debug, Default)]
pub(crate) struct GoneOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A wait for another process's lock longer than this is worth telling the operator of.
const SLOW_LOCK: Duration = Duration::from_secs(1);

/// How many times a holder opens an aid's files again after finding them removed.
const MAX_REOPENS: u32 = 8;

/// Each critical section on these mutexes is a few plain assignments, so a poisoned one
/// still holds consistent data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits for `fut` as `wait` allows.
async fn within<T>(
    aid: Aid,
    wait: Wait,
    now: impl FnOnce() -> Option<T>,
    fut: impl Future<Output = T>,
) -> Result<T, Error> {
    match wait {
        Wait::Forever => Ok(fut.await),
        Wait::Never => now().ok_or(Error::WouldBlock { aid }),
        Wait::Until(deadline, waited) => tokio::time::timeout_at(deadline.into(), fut)
            .await
            .map_err(|_| Error::Timeout { aid, waited }),
    }
}

impl Locks {
    pub(crate) fn new(run_dir: PathBuf, options: Options) -> Locks {
        Locks {
            run_dir,
            options,
            slots: Mutex::new(HashMap::new()),
            state_dir: Mutex::new(None),
            open: Mutex::new(VecDeque::new()),
            gate: Arc::new(RwLock::new(())),
            closed: AtomicBool::new(false),
            made_in: fork_guard::Epoch::now(),
        }
    }

    /// A read guard on the gate, or `Closed`.
    pub(crate) fn enter(&self) -> Result<OwnedRwLockReadGuard<()>, Error> {
        self.made_in.check()?;
        let open = self
            .gate
            .clone()
            .try_read_owned()
            .map_err(|_| Error::Closed)?;
        // close() raises the flag before it waits, so a guard taken after it is refused here.
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(open)
    }

    /// The aid's open directory: the cached one, or opened now (and the state directory
    /// with it if need be), leaving the least recently used beyond the cache's size closed.
    async fn open_dir(&self, aid: Aid, slot: &Slot) -> Result<Arc<AidDir>, Error> {
        slot.used.store(true, Ordering::Relaxed);
        let mut cached = slot.dir.lock().await;
        if let Some(dir) = &*cached {
            return Ok(dir.clone());
        }
        let state = lock(&self.state_dir).clone();
        // Until the state directory is open, its file system is unknown: the pool.
        let here = state.as_ref().is_some_and(|s| s.in_place());
        let (run_dir, options) = (self.run_dir.clone(), self.options.clone());
        let (state, dir) = blocking::run("open", here, move |_| {
            let state = match state {
                Some(state) => state,
                None => Arc::new(StateDir::open(&run_dir, &options)?),
            };
            let dir = AidDir::open(state.clone(), aid, &options)?;
            Ok((state, dir))
        })
        .await?;
        let dir = Arc::new(dir);
        lock(&self.state_dir).get_or_insert(state);
        *cached = Some(dir.clone());
        drop(cached);
        self.keep_open(aid);
        Ok(dir)
    }

    /// Drops the cached directory of an aid once found stale, and the state directory too if
    /// it was the one removed.
    async fn forget_dir(&self, slot: &Slot, stale: &Arc<AidDir>) {
        let mut cached = slot.dir.lock().await;
        if cached.as_ref().is_some_and(|dir| Arc::ptr_eq(dir, stale)) {
            *cached = None;
        }
        let mut state = lock(&self.state_dir);
        if state.as_ref().is_some_and(|s| !s.is_current()) {
            *state = None;
        }
    }

    /// Lists `aid` among those whose directory is open, and closes the directories of the
    /// least recently used aids that nobody holds beyond the cache's size: a clock, so a hit
    /// costs one relaxed store and no lock. Held aids keep theirs whatever the size.
    fn keep_open(&self, aid: Aid) {
        let mut open = lock(&self.open);
        open.push_back(aid);
        let mut closing = Vec::new();
        let mut looked = 0;
        while open.len() > self.options.open_aids && looked < 2 * open.len() {
            looked += 1;
            let Some(oldest) = open.pop_front() else {
                break;
            };
            let slot = self.slot(oldest);
            let evicted = !slot.used.swap(false, Ordering::Relaxed)
                && slot.dir.try_lock().is_ok_and(|mut dir| {
                    // Only the cache has it: no holder, no operation in flight.
                    match dir.take_if(|d| Arc::strong_count(d) == 1) {
                        Some(d) => {
                            closing.push(d);
                            true
                        }
                        None => dir.is_none(),
                    }
                });
            if !evicted {
                open.push_back(oldest);
            }
        }
        drop(open);
        // Two close(2) calls each, outside the table's lock.
        drop(closing);
    }

    fn slot(&self, aid: Aid) -> Arc<Slot> {
        lock(&self.slots).entry(aid).or_default().clone()
    }

    /// Waits for the aid, in this process and then across processes.
    pub(crate) async fn hold(&self, aid: Aid, mode: Mode, wait: Wait) -> Result<Arc<Hold>, Error> {
        let open = self.enter()?;
        let slot = self.slot(aid);
        let turn = match mode {
            Mode::Exclusive => Turn::Exclusive(
                within(
                    aid,
                    wait,
                    || slot.turn.clone().try_write_owned().ok(),
                    slot.turn.clone().write_owned(),
                )
                .await?,
            ),
            Mode::Shared => Turn::Shared(
                within(
                    aid,
                    wait,
                    || slot.turn.clone().try_read_owned().ok(),
                    slot.turn.clone().read_owned(),
                )
                .await?,
            ),
        };
        let mut claim = Claim {
            aid,
            dir: self.open_dir(aid, &slot).await?,
            turn,
            _open: open,
        };
        // Revalidated under the lock: a lock file removed and made anew by another store
        // would otherwise split exclusion between the two files. Bounded, in case a cleaner
        // keeps removing the directory.
        let mut reopened = 0;
        let hold = loop {
            let hold = match mode {
                Mode::Exclusive => Self::flock_exclusive(claim, wait).await?,
                Mode::Shared => Self::flock_shared(claim, &slot, wait).await?,
            };
            if hold.claim.dir.is_current() {
                break hold;
            }
            let Hold {
                flock,
                claim: stale,
                ..
            } = hold;
            drop(flock);
            reopened += 1;
            if reopened > MAX_REOPENS {
                return Err(Error::io(
                    "lock",
                    stale.dir.lock_path(),
                    std::io::Error::other("the lock file keeps being removed"),
                ));
            }
            tracing::warn!(
                path = %stale.dir.path().display(),
                "the aid's lock file or directory was removed while open; opening them again"
            );
            self.forget_dir(&slot, &stale.dir).await;
            claim = Claim {
                dir: self.open_dir(aid, &slot).await?,
                ..stale
            };
        };
        let hold = Arc::new(hold);
        if mode == Mode::Exclusive && !slot.swept.load(Ordering::Acquire) {
            // The first exclusive holder in this store clears what a killed process left.
            // A whole listing of the directory, once per aid and store: in steps.
            let sweep = SweepSteps {
                hold: hold.clone(),
                sweep: None,
            };
            if let Some(Err(e)) = batch::stream("sweep", sweep).next().await {
                return Err(e);
            }
            slot.swept.store(true, Ordering::Release);
        }
        Ok(hold)
    }

    /// Takes the flock for a claim with an exclusive turn. A claim dropped on the way gives
    /// back its turn without unlocking: it owns no flock, and the descriptor's flock may be
    /// another holder's.
    async fn flock_exclusive(claim: Claim, wait: Wait) -> Result<Hold, Error> {
        if claim.dir.lock.try_exclusive()? {
            return Ok(claim.granted());
        }
        Self::wait_for_flock(claim, wait, false, ()).await
    }

    /// Takes (or joins) this process's shared flock for a claim with a shared turn. Only a
    /// writer, holding the aid or queued for it in any process, makes it wait (or with
    /// `Wait::Never`, fail): readers never wait for one another.
    async fn flock_shared(claim: Claim, slot: &Slot, wait: Wait) -> Result<Hold, Error> {
        if claim.dir.lock.try_shared()? {
            return Ok(claim.granted());
        }
        if let Wait::Never = wait {
            return Err(Error::WouldBlock { aid: claim.aid });
        }
        // One reader of this process waits for the lock; the others wait for it here.
        let first = slot.first_reader.clone();
        let first: OwnedMutexGuard<()> = within(
            claim.aid,
            wait,
            || first.clone().try_lock_owned().ok(),
            first.clone().lock_owned(),
        )
        .await?;
        // Another reader may have taken it while we queued.
        if claim.dir.lock.try_shared()? {
            return Ok(claim.granted());
        }
        Self::wait_for_flock(claim, wait, true, first).await
    }

    /// Waits for the flock that another process keeps from a claim, exclusive or `shared`,
    /// as `wait` allows, keeping `guard` until then: first at the writers' gate
    /// ([`crate::gate`]), then for the flock in the kernel, on a thread of its own
    /// ([`crate::flock_wait`]), or where no such thread can be had, by polling on the pool.
    async fn wait_for_flock<G: Send + 'static>(
        claim: Claim,
        wait: Wait,
        shared: bool,
        guard: G,
    ) -> Result<Hold, Error> {
        // Timed here, off the uncontended path, where a clock read would be a tenth of a hold.
        let (aid, asked) = (claim.aid, Instant::now());
        let held = Self::queue_for_flock(claim, wait, shared, guard).await;
        let waited = asked.elapsed();
        if waited > SLOW_LOCK {
            tracing::info!(%aid, shared, ?waited, "waited for another process's lock");
        }
        held
    }

    /// [`Locks::wait_for_flock`], untimed.
    async fn queue_for_flock<G: Send + 'static>(
        claim: Claim,
        wait: Wait,
        shared: bool,
        guard: G,
    ) -> Result<Hold, Error> {
        if let Wait::Never = wait {
            return Err(Error::WouldBlock { aid: claim.aid });
        }
        let gate = Self::at_gate(&claim, wait, shared).await?;
        // The lock may have come free while we were at the gate.
        let taken = match shared {
            true => claim.dir.lock.try_shared()?,
            false => claim.dir.lock.try_exclusive()?,
        };
        if taken {
            return Ok(claim.granted());
        }
        // A writer keeps its place at the gate until it has the flock, or gives up.
        let guard = (guard, gate);
        let kind = match shared {
            true => Kind::Shared,
            false => Kind::Exclusive,
        };
        match claim.dir.lock.wait(kind) {
            Ok(handed) => Self::handed_over(claim, wait, handed, shared, guard).await,
            Err(_) => {
                let take = match shared {
                    true => LockFile::first_shared,
                    false => LockFile::exclusive,
                };
                Self::poll_for_flock(claim, wait, guard, take).await
            }
        }
    }

    /// A writer takes its place at the writers' gate, behind the writers there, and gets it
    /// back to keep while it waits for the flock; a reader waits until no writer is there,
    /// and keeps nothing. As `wait` allows: given up, it holds nothing (the thread releases
    /// the gate when it comes). Where no thread can wait for the gate, it goes on without.
    async fn at_gate(claim: &Claim, wait: Wait, shared: bool) -> Result<Option<AtGate>, Error> {
        if shared && !claim.dir.lock.writer_queued()? {
            return Ok(None);
        }
        // On the store's descriptor, without a thread, if no other writer is there.
        if !shared && claim.dir.lock.try_gate()? {
            return Ok(Some(AtGate::Store(claim.dir.clone())));
        }
        let kind = match shared {
            true => Kind::GatePass,
            false => Kind::Gate,
        };
        let Ok(handed) = claim.dir.lock.wait(kind) else {
            return Ok(None);
        };
        let granted = within(claim.aid, wait, || None, handed)
            .await?
            // The thread answers unless it panicked.
            .map_err(|_| Error::Blocking {
                op: "lock",
                panicked: true,
            })?;
        let gate = claim.dir.lock.gate_granted(granted)?;
        // A reader lets go at once: it only had to get past the writers in front.
        Ok((!shared).then_some(AtGate::Handed(gate)))
    }

    /// Waits, as `wait` allows and keeping `guard` until then, for the flock that a waiting
    /// thread ([`crate::flock_wait`]) hands over once another process lets go. Dropped on the
    /// way, it lets go of everything at once, and the thread releases the lock when it comes.
    async fn handed_over<G>(
        claim: Claim,
        wait: Wait,
        handed: oneshot::Receiver<Granted>,
        shared: bool,
        guard: G,
    ) -> Result<Hold, Error> {
        let granted = within(claim.aid, wait, || None, handed)
            .await?
            // The thread answers unless it panicked.
            .map_err(|_| Error::Blocking {
                op: "lock",
                panicked: true,
            })?;
        claim.dir.lock.adopt(granted, shared)?;
        drop(guard);
        Ok(claim.granted())
    }

    /// Waits on the blocking pool for a flock that another process holds by polling it, as
    /// `wait` allows, keeping `guard` until then. The hold is built on that thread, so if our
    /// caller is gone by the time the lock comes, it is dropped there and the lock released
    /// at once; a dropped waiter also ends the polling within one pause.
    async fn poll_for_flock<G: Send + 'static>(
        claim: Claim,
        wait: Wait,
        guard: G,
        take: fn(&LockFile, Option<Instant>, &AtomicBool) -> Result<bool, Error>,
    ) -> Result<Hold, Error> {
        let (aid, until) = match wait {
            Wait::Never => return Err(Error::WouldBlock { aid: claim.aid }),
            Wait::Forever => (claim.aid, None),
            Wait::Until(deadline, _) => (claim.aid, Some(deadline)),
        };
        let waiter = GoneOnDrop::default();
        let gone = waiter.0.clone();
        blocking::on_pool("lock", move || {
            let _guard = guard;
            match take(&claim.dir.lock, until, &gone)? {
                true => Ok(claim.granted()),
                false => Err(match wait {
                    Wait::Until(_, waited) => Error::Timeout { aid, waited },
                    _ => Error::WouldBlock { aid },
                }),
            }
        })
        .await?
    }

    /// Refuses new holds, waits for the current ones, and closes every file of the store.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _all = self.gate.write().await;
        lock(&self.slots).clear();
        lock(&self.open).clear();
        *lock(&self.state_dir) = None;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
