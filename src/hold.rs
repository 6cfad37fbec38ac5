//! Holding an aid: the in-process turn and the cross-process flock, as one owned value.
//!
//! Exclusion has two layers. Inside the process, each aid has a fair (FIFO) async
//! read-write lock: an exclusive holder alone, or shared holders together, may touch the
//! aid's lock file. Across processes, the holder then takes `flock`: first without blocking
//! on the calling thread, and only if another process has it, by waiting on the blocking pool.
//!
//! A [`Hold`] owns both layers and releases them when dropped. Everything that may still use
//! the aid keeps an `Arc<Hold>`: the cursor, and every blocking operation in flight. So the
//! lock outlives a dropped future until the work it started has finished, and no write can
//! land after the lock has passed to someone else. A lock granted on the blocking pool after
//! its waiter was dropped is dropped there at once, since the `Hold` is built on that thread.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::aid_dir::AidDir;
use crate::lock::LockFile;
use crate::{Aid, Error, Options, blocking};

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
    /// Serialises the shared holder that takes the first `LOCK_SH` of this process.
    first_reader: Arc<tokio::sync::Mutex<()>>,
    dir: OnceCell<Arc<AidDir>>,
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
        Hold(self)
    }
}

/// An aid held: turn and flock. Dropping it releases the flock, then the turn.
#[derive(Debug)]
pub(crate) struct Hold(Claim);

impl Hold {
    pub(crate) fn aid(&self) -> Aid {
        self.0.aid
    }

    pub(crate) fn dir(&self) -> &AidDir {
        &self.0.dir
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        match self.0.turn {
            Turn::Exclusive(_) => self.0.dir.lock.unlock(),
            Turn::Shared(_) => self.0.dir.lock.leave_shared(),
        }
    }
}

/// The per-store table of aids and the gate that `close` shuts.
#[derive(Debug)]
pub(crate) struct Locks {
    pub(crate) run_dir: PathBuf,
    pub(crate) options: Options,
    slots: Mutex<HashMap<Aid, Arc<Slot>>>,
    /// Every hold keeps a read guard; `close` takes the write side to wait for them all.
    gate: Arc<RwLock<()>>,
    closed: AtomicBool,
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
            gate: Arc::new(RwLock::new(())),
            closed: AtomicBool::new(false),
        }
    }

    /// A read guard on the gate, or `Closed`.
    pub(crate) fn enter(&self) -> Result<OwnedRwLockReadGuard<()>, Error> {
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

    fn slot(&self, aid: Aid) -> Arc<Slot> {
        // The table only ever gains entries; a poisoned mutex still holds a valid map.
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(aid).or_default().clone()
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
        let dir = slot
            .dir
            .get_or_try_init(|| {
                let (run_dir, options) = (self.run_dir.clone(), self.options.clone());
                async move {
                    blocking::run("open", move || AidDir::open(&run_dir, aid, &options))
                        .await
                        .map(Arc::new)
                }
            })
            .await?
            .clone();
        let claim = Claim {
            aid,
            dir,
            turn,
            _open: open,
        };
        let hold = match mode {
            Mode::Exclusive => Self::flock_exclusive(claim, wait).await?,
            Mode::Shared => Self::flock_shared(claim, &slot, wait).await?,
        };
        let hold = Arc::new(hold);
        if mode == Mode::Exclusive && !slot.swept.load(Ordering::Acquire) {
            // The first exclusive holder in this store clears what a killed process left.
            let sweeper = hold.clone();
            blocking::run("sweep", move || sweeper.dir().sweep_temps()).await?;
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
        Self::wait_for_flock(claim, wait, (), LockFile::exclusive).await
    }

    /// Takes (or joins) this process's shared flock for a claim with a shared turn.
    async fn flock_shared(claim: Claim, slot: &Slot, wait: Wait) -> Result<Hold, Error> {
        if claim.dir.lock.join_shared() {
            return Ok(claim.granted());
        }
        let first = slot.first_reader.clone();
        let first: OwnedMutexGuard<()> = within(
            claim.aid,
            wait,
            || first.clone().try_lock_owned().ok(),
            first.clone().lock_owned(),
        )
        .await?;
        // Another reader may have taken it while we queued.
        if claim.dir.lock.join_shared() || claim.dir.lock.try_first_shared()? {
            return Ok(claim.granted());
        }
        Self::wait_for_flock(claim, wait, first, LockFile::first_shared).await
    }

    /// Waits on the blocking pool for a flock that another process holds, as `wait` allows,
    /// keeping `guard` until then. The hold is built on that thread, so if our caller is
    /// gone by the time the lock comes, it is dropped there and the lock released at once.
    async fn wait_for_flock<G: Send + 'static>(
        claim: Claim,
        wait: Wait,
        guard: G,
        take: fn(&LockFile, Option<Instant>) -> Result<bool, Error>,
    ) -> Result<Hold, Error> {
        let (aid, until) = match wait {
            Wait::Never => return Err(Error::WouldBlock { aid: claim.aid }),
            Wait::Forever => (claim.aid, None),
            Wait::Until(deadline, _) => (claim.aid, Some(deadline)),
        };
        blocking::on_pool("lock", move || {
            let _guard = guard;
            match take(&claim.dir.lock, until)? {
                true => Ok(claim.granted()),
                false => Err(match wait {
                    Wait::Until(_, waited) => Error::Timeout { aid, waited },
                    _ => Error::WouldBlock { aid },
                }),
            }
        })
        .await?
    }

    /// Refuses new holds, waits for the current ones, and closes every file.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _all = self.gate.write().await;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.clear();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
