//! Holding an aid: the in-process turn and the cross-process flock, as one owned value.
//!
//! Exclusion has two layers. Inside the process, each aid has a fair (FIFO) async mutex; its
//! holder alone may touch the aid's lock file, so the flock on that descriptor is never shared
//! by two holders. Across processes, the holder then takes `flock(LOCK_EX)`: first without
//! blocking on the calling thread, and only if another process has it, by waiting on the
//! blocking pool.
//!
//! A [`Hold`] owns both layers and releases them when dropped. Everything that may still use
//! the aid keeps an `Arc<Hold>`: the cursor, and every blocking operation in flight. So the
//! lock outlives a dropped future until the work it started has finished, and no write can
//! land after the lock has passed to someone else.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedMutexGuard, OwnedRwLockReadGuard, RwLock};

use crate::aid_dir::AidDir;
use crate::{Aid, Error, Options, blocking};

/// The in-process turn for one aid; it guards the aid's open directory once it is opened.
type Turn = tokio::sync::Mutex<Option<Arc<AidDir>>>;

/// An aid held exclusively. Dropping it releases the flock, then the in-process turn.
#[derive(Debug)]
pub(crate) struct Hold {
    pub(crate) aid: Aid,
    pub(crate) dir: Arc<AidDir>,
    _turn: OwnedMutexGuard<Option<Arc<AidDir>>>,
    _open: OwnedRwLockReadGuard<()>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.dir.lock.unlock();
    }
}

/// The per-store table of aids and the gate that `close` shuts.
#[derive(Debug)]
pub(crate) struct Locks {
    pub(crate) run_dir: PathBuf,
    pub(crate) options: Options,
    turns: Mutex<HashMap<Aid, Arc<Turn>>>,
    /// Every hold keeps a read guard; `close` takes the write side to wait for them all.
    gate: Arc<RwLock<()>>,
    closed: AtomicBool,
}

impl Locks {
    pub(crate) fn new(run_dir: PathBuf, options: Options) -> Locks {
        Locks {
            run_dir,
            options,
            turns: Mutex::new(HashMap::new()),
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

    fn turn(&self, aid: Aid) -> Arc<Turn> {
        // The table only ever gains entries; a poisoned mutex still holds a valid map.
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        turns.entry(aid).or_default().clone()
    }

    /// Waits for the aid, in this process and then across processes.
    pub(crate) async fn hold(&self, aid: Aid) -> Result<Arc<Hold>, Error> {
        let open = self.enter()?;
        let mut turn = self.turn(aid).lock_owned().await;
        let (dir, fresh) = match &*turn {
            Some(dir) => (dir.clone(), false),
            None => {
                let (run_dir, options) = (self.run_dir.clone(), self.options.clone());
                let dir = Arc::new(
                    blocking::run("open", move || AidDir::open(&run_dir, aid, &options)).await?,
                );
                *turn = Some(dir.clone());
                (dir, true)
            }
        };
        let hold = if dir.lock.try_exclusive()? {
            Hold {
                aid,
                dir,
                _turn: turn,
                _open: open,
            }
        } else {
            // Built on the blocking thread: if our caller is gone by the time the lock is
            // granted, the Hold is dropped there and the lock released at once.
            blocking::run("lock", move || {
                dir.lock.exclusive()?;
                Ok(Hold {
                    aid,
                    dir,
                    _turn: turn,
                    _open: open,
                })
            })
            .await?
        };
        let hold = Arc::new(hold);
        if fresh {
            // The first holder in this store clears what a killed process may have left.
            let sweeper = hold.clone();
            blocking::run("sweep", move || sweeper.dir.sweep_temps()).await?;
        }
        Ok(hold)
    }

    /// Refuses new holds, waits for the current ones, and closes every file.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _all = self.gate.write().await;
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        turns.clear();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
