//! Holding an aid: the in-process turn and the cross-process flock, as one owned value.
//!
//! Exclusion has two layers. Inside the process, each aid has a fair (FIFO) async
//! read-write lock: an exclusive holder alone, or shared holders together, may touch the
//! aid's lock file. Across processes, the holder then takes `flock`: first without blocking
//! on the calling thread, and only if another process has it, by waiting in the kernel on a
//! thread of its own (`lock/kernel_wait.rs`), which a waiter that is dropped simply walks
//! away from. A waiting writer first queues at the writers' gate (`lock/gate.rs`), which
//! holds back new readers in every process until it is in.
//!
//! A [`Hold`] owns both layers and releases them when dropped. Everything that may still use
//! the aid keeps an `Arc<Hold>`: the cursor, and every blocking operation in flight. So the
//! lock outlives a dropped future until the work it started has finished, and no write can
//! land after the lock has passed to someone else. A lock granted after its waiter was
//! dropped is released at once: by its waiting thread (`lock/kernel_wait.rs`), or, in the
//! polling fallback, on the pool, where the `Hold` is built.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedMutexGuard, oneshot};

use crate::disk::aid_dir::{AidDir, TempMark};
use crate::exec::{self, Step, Where, Work, clock_hold};
use crate::lock::file::LockFile;
use crate::lock::in_flight::Entered;
use crate::lock::kernel_wait::{Granted, Kind, Locked};
use crate::lock::open_aid::OpenAid;
use crate::lock::turn::TurnGuard;
use crate::{Aid, Error};

/// Whether a holder excludes everyone or only exclusive holders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LockMode {
    Exclusive,
    Shared,
}

/// How long a holder is willing to wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    Forever,
    /// Fail with `WouldBlock` rather than wait at all.
    Never,
    /// Fail with `Timeout` at this instant of tokio's clock (needs tokio's timer), which a
    /// paused clock keeps at real speed while the wait is on another process.
    Until(tokio::time::Instant, Duration),
}

/// An aid's in-process turn, before (or without) its flock.
#[derive(Debug)]
pub(super) struct Claim {
    pub(super) aid: Aid,
    pub(super) files: Arc<OpenAid>,
    pub(super) turn: TurnGuard,
    /// Counts the hold among those in flight, which `close` waits for.
    pub(super) _in_flight: Entered,
}

/// What a waiting thread ([`crate::lock::kernel_wait`]) hands over, waited for as `wait`
/// allows.
async fn handed_by_thread(
    aid: Aid,
    wait: Wait,
    handed: oneshot::Receiver<Granted>,
) -> Result<Granted, Error> {
    // The thread is out of tokio's sight: keep a paused clock from jumping past the wait.
    wait_as(aid, wait, || None, || clock_hold::outside(handed))
        .await?
        // The thread answers unless it panicked.
        .map_err(|_| Error::Blocking {
            op: "lock",
            panicked: true,
        })
}

impl Claim {
    /// The claim now owns the flock too.
    pub(super) fn granted(self) -> Hold {
        let flock = Flock {
            files: self.files.clone(),
            mode: self.turn.mode(),
        };
        Hold {
            flock,
            claim: self,
            on_pool: AtomicUsize::new(0),
            pool_done: Notify::const_new(),
        }
    }
}

/// The flock of a hold; dropping it lets go of the lock (the last shared holder of the
/// process drops the shared one).
#[derive(Debug)]
pub(super) struct Flock {
    files: Arc<OpenAid>,
    mode: LockMode,
}

impl Drop for Flock {
    fn drop(&mut self) {
        // In a forked child the lock is the parent's, and the counts' mutexes may have been
        // held by a thread the child does not have.
        if self.files.lock().inherited() {
            return;
        }
        match self.mode {
            LockMode::Exclusive => self.files.lock().unlock(),
            LockMode::Shared => self.files.lock().leave_shared(),
        }
    }
}

/// An aid held: turn and flock. Dropping it releases the flock, then the turn (fields drop
/// in order).
#[derive(Debug)]
pub(crate) struct Hold {
    pub(super) flock: Flock,
    pub(super) claim: Claim,
    /// Operations of this hold running on the blocking pool (none, or one). One whose future
    /// was dropped may still be running; the next operation waits for it, or a dropped save
    /// could land after a later `len` of the same holder. Work in place ends within the poll
    /// that starts it, so with none on the pool an operation waits for nothing: one load.
    on_pool: AtomicUsize,
    /// Told when `on_pool` falls to zero.
    pool_done: Notify,
}

impl Hold {
    pub(crate) fn aid(&self) -> Aid {
        self.claim.aid
    }

    /// The held aid's directory: the core, whose methods are whole operations.
    pub(crate) fn dir(&self) -> &AidDir {
        self.claim.files.dir()
    }

    /// The lock file's temporary-file mark, for the core's writes that may leave a file
    /// (the hold is exclusive wherever the cursor lets them run).
    pub(crate) fn temp_mark(&self) -> TempMark<'_> {
        self.claim.files.temp_mark()
    }

    /// Whether short work on this aid runs in place (see `exec/`).
    pub(crate) fn in_place(&self) -> bool {
        self.claim.files.dir().in_place()
    }

    /// Runs `f`, one logical operation (or one step of a long one) on the held aid, after
    /// every earlier operation of this hold has finished: in place when the store's files
    /// allow it and the work is [`Work::Small`], on the blocking pool otherwise. The work
    /// keeps the hold alive, so the lock outlives a dropped future until it is done.
    pub(crate) async fn operate<T, F>(
        self: &Arc<Self>,
        op: &'static str,
        work: Work,
        f: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Hold, Step) -> Result<T, Error> + Send + 'static,
    {
        // A hold carried into a forked child: its aid is the parent's to touch.
        if self.claim.files.lock().inherited() {
            return Err(Error::Forked);
        }
        let runs = work.runs(self.in_place());
        let hold = self.clone();
        if runs == Where::InPlace {
            if self.on_pool.load(Ordering::Acquire) != 0 {
                self.after_pool_work(|_| true).await;
            }
            return exec::run_step(op, runs, move |step| f(&hold, step)).await;
        }
        self.after_pool_work(|on_pool| {
            on_pool
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
        .await;
        // Counted out when the work is done, or at once if this future is dropped first.
        let counted = OnPool(self.clone());
        exec::run_step(op, runs, move |step| {
            let _counted = counted;
            f(&hold, step)
        })
        .await
    }

    /// Waits until no operation of this hold runs on the pool and `now` (called with the
    /// count at zero, or just after) agrees.
    async fn after_pool_work(&self, now: impl Fn(&AtomicUsize) -> bool) {
        loop {
            let mut idle = pin!(self.pool_done.notified());
            idle.as_mut().enable();
            if self.on_pool.load(Ordering::Acquire) == 0 && now(&self.on_pool) {
                return;
            }
            idle.await;
        }
    }

    /// Removes the temporary files that a killed process left, and their mark: the core's
    /// sweep (`disk/scan.rs`), one directory buffer per operation, giving the runtime back
    /// between them. Call it on an exclusive hold.
    pub(crate) async fn sweep_temps(self: &Arc<Self>) -> Result<(), Error> {
        let mut sweep = None;
        loop {
            let step = self.operate("sweep", Work::Small, move |hold, _| {
                let dir = hold.dir();
                // Every write that makes a named temporary file marks the lock file first
                // and clears the mark once the file is gone, so an unmarked aid has nothing
                // to sweep: one read of the mark, not a listing.
                if sweep.is_none() && !hold.temp_mark().is_set()? {
                    return Ok(None);
                }
                let mut sweep = sweep.map_or_else(|| dir.sweep(), Ok)?;
                let more = dir.sweep_step(&mut sweep, hold.temp_mark())?;
                Ok(more.then_some(sweep))
            });
            match step.await? {
                Some(more) => sweep = Some(more),
                None => return Ok(()),
            }
            exec::pause().await;
        }
    }
}

/// A waiting writer's place at the writers' gate ([`crate::lock::gate`]), released when
/// dropped.
#[derive(Debug)]
enum AtGate {
    /// Taken on the store's descriptor, which no other holder of this store uses for the
    /// gate while this writer has the exclusive turn.
    Store(Arc<OpenAid>),
    /// Handed over by a waiting thread, on that thread's descriptor; released as dropped.
    Handed(#[allow(dead_code)] Locked),
}

impl Drop for AtGate {
    fn drop(&mut self) {
        if let AtGate::Store(files) = self {
            // In a forked child, the descriptor is no longer the lock file's.
            if !files.lock().inherited() {
                files.lock().leave_gate();
            }
        }
    }
}

/// Raises its flag when dropped: tells blocking work that its waiter has gone.
#[derive(Debug, Default)]
pub(crate) struct GoneOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// An operation of a hold counted in its `on_pool`: counts it out when dropped.
struct OnPool(Arc<Hold>);

impl Drop for OnPool {
    fn drop(&mut self) {
        if self.0.on_pool.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.pool_done.notify_waiters();
        }
    }
}

/// A wait for another process's lock longer than this is worth telling the operator of.
const SLOW_LOCK: Duration = Duration::from_secs(1);

/// What `now` gives at once, or else waits for the future `wait_for` makes, as `wait`
/// allows: an uncontended holder makes no future (nor, with a limit, a timer).
pub(super) async fn wait_as<T, F: Future<Output = T>>(
    aid: Aid,
    wait: Wait,
    now: impl FnOnce() -> Option<T>,
    wait_for: impl FnOnce() -> F,
) -> Result<T, Error> {
    if let Some(got) = now() {
        return Ok(got);
    }
    match wait {
        Wait::Forever => Ok(wait_for().await),
        Wait::Never => Err(Error::WouldBlock { aid }),
        Wait::Until(deadline, waited) => tokio::time::timeout_at(deadline, wait_for())
            .await
            .map_err(|_| Error::Timeout { aid, waited }),
    }
}

impl Claim {
    /// Takes the flock for a claim with an exclusive turn. A claim dropped on the way gives
    /// back its turn without unlocking: it owns no flock, and the descriptor's flock may be
    /// another holder's.
    pub(super) async fn flock_exclusive(claim: Claim, wait: Wait) -> Result<Hold, Error> {
        if claim.files.lock().try_exclusive()? {
            return Ok(claim.granted());
        }
        Box::pin(Self::wait_for_flock(claim, wait, LockMode::Exclusive, ())).await
    }

    /// Takes (or joins) this process's shared flock for a claim with a shared turn. Only a
    /// writer, holding the aid or queued for it in any process, makes it wait (or with
    /// `Wait::Never`, fail): readers never wait for one another.
    pub(super) async fn flock_shared(
        claim: Claim,
        first_reader: &Arc<tokio::sync::Mutex<()>>,
        wait: Wait,
    ) -> Result<Hold, Error> {
        if claim.files.lock().try_shared()? {
            return Ok(claim.granted());
        }
        if let Wait::Never = wait {
            return Err(Error::WouldBlock { aid: claim.aid });
        }
        // One reader of this process waits for the lock; the others wait for it here.
        let first = first_reader.clone();
        let first: OwnedMutexGuard<()> = wait_as(
            claim.aid,
            wait,
            || first.clone().try_lock_owned().ok(),
            || first.clone().lock_owned(),
        )
        .await?;
        // Another reader may have taken it while we queued.
        if claim.files.lock().try_shared()? {
            return Ok(claim.granted());
        }
        Box::pin(Self::wait_for_flock(claim, wait, LockMode::Shared, first)).await
    }

    /// Waits for the flock that another process keeps from a claim, in `mode`, as
    /// `wait` allows, keeping `guard` until then: first at the writers' gate
    /// ([`crate::lock::gate`]), then for the flock in the kernel, on a thread of its own
    /// ([`crate::lock::kernel_wait`]), or where no such thread can be had, by polling on the
    /// pool.
    async fn wait_for_flock<G: Send + 'static>(
        claim: Claim,
        wait: Wait,
        mode: LockMode,
        guard: G,
    ) -> Result<Hold, Error> {
        // Timed here, off the uncontended path, where a clock read would be a tenth of a hold.
        let (aid, asked) = (claim.aid, Instant::now());
        let held = Self::queue_for_flock(claim, wait, mode, guard).await;
        let waited = asked.elapsed();
        if waited > SLOW_LOCK {
            let shared = mode == LockMode::Shared;
            tracing::info!(%aid, shared, ?waited, "waited for another process's lock");
        }
        held
    }

    /// [`Claim::wait_for_flock`], untimed.
    async fn queue_for_flock<G: Send + 'static>(
        claim: Claim,
        wait: Wait,
        mode: LockMode,
        guard: G,
    ) -> Result<Hold, Error> {
        if let Wait::Never = wait {
            return Err(Error::WouldBlock { aid: claim.aid });
        }
        let gate = Self::at_gate(&claim, wait, mode).await?;
        // The lock may have come free while we were at the gate.
        let taken = match mode {
            LockMode::Shared => claim.files.lock().try_shared()?,
            LockMode::Exclusive => claim.files.lock().try_exclusive()?,
        };
        if taken {
            return Ok(claim.granted());
        }
        // A writer keeps its place at the gate until it has the flock, or gives up.
        let guard = (guard, gate);
        match claim.files.lock().wait(Kind::Flock(mode)) {
            Ok(handed) => Self::handed_over(claim, wait, handed, mode, guard).await,
            Err(_) => {
                let take = match mode {
                    LockMode::Shared => LockFile::first_shared,
                    LockMode::Exclusive => LockFile::exclusive,
                };
                Self::poll_for_flock(claim, wait, guard, take).await
            }
        }
    }

    /// A writer takes its place at the writers' gate, behind the writers there, and gets it
    /// back to keep while it waits for the flock; a reader waits until no writer is there,
    /// and keeps nothing. As `wait` allows: given up, it holds nothing (the thread releases
    /// the gate when it comes). Where no thread can wait for the gate, it goes on without.
    async fn at_gate(claim: &Claim, wait: Wait, mode: LockMode) -> Result<Option<AtGate>, Error> {
        let shared = mode == LockMode::Shared;
        if shared && !claim.files.lock().writer_queued()? {
            return Ok(None);
        }
        // On the store's descriptor, without a thread, if no other writer is there.
        if !shared && claim.files.lock().try_gate()? {
            return Ok(Some(AtGate::Store(claim.files.clone())));
        }
        let kind = match shared {
            true => Kind::GatePass,
            false => Kind::Gate,
        };
        let Ok(handed) = claim.files.lock().wait(kind) else {
            return Ok(None);
        };
        let granted = handed_by_thread(claim.aid, wait, handed).await?;
        let gate = claim.files.lock().gate_granted(granted)?;
        // A reader lets go at once: it only had to get past the writers in front.
        Ok((!shared).then_some(AtGate::Handed(gate)))
    }

    /// Waits, as `wait` allows and keeping `guard` until then, for the flock that a waiting
    /// thread ([`crate::lock::kernel_wait`]) hands over once another process lets go.
    /// Dropped on the way, it lets go of everything at once, and the thread releases the lock
    /// when it comes.
    async fn handed_over<G>(
        claim: Claim,
        wait: Wait,
        handed: oneshot::Receiver<Granted>,
        mode: LockMode,
        guard: G,
    ) -> Result<Hold, Error> {
        let granted = handed_by_thread(claim.aid, wait, handed).await?;
        claim.files.lock().adopt(granted, mode)?;
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
            // On the pool, whose task tokio counts as busy: the same limit, on the real clock.
            Wait::Until(deadline, _) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                (claim.aid, Instant::now().checked_add(left))
            }
        };
        let waiter = GoneOnDrop::default();
        let gone = waiter.0.clone();
        exec::on_pool("lock", move || {
            let _guard = guard;
            match take(claim.files.lock(), until, &gone)? {
                true => Ok(claim.granted()),
                false => Err(match wait {
                    Wait::Until(_, waited) => Error::Timeout { aid, waited },
                    _ => Error::WouldBlock { aid },
                }),
            }
        })
        .await?
    }
}
