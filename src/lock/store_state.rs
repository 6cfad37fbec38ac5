//! The store's shared state ([`StoreState`]): the table of the aids this process has
//! touched (each one's in-process turn and its open files, of which a bounded number are
//! kept), the open state directory, and the record of holds in flight that `close` waits for. Its `hold` is where a
//! holder waits for an aid, in this process and then across processes (`lock/hold.rs`).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::disk::state_dir::StateDir;
use crate::exec::{self, Where};
use crate::lock::fork_guard;
use crate::lock::hold::{Claim, Hold, LockMode, Wait, wait_as};
use crate::lock::in_flight::{Entered, InFlight};
use crate::lock::open_aid::OpenAid;
use crate::lock::reentry;
use crate::lock::turn::Turn;
use crate::{Aid, Error, Options};

/// Everything this process keeps about one aid.
#[derive(Debug, Default)]
pub(super) struct Slot {
    turn: Arc<Turn>,
    /// Serialises the shared holders of this process that wait for its first `LOCK_SH`.
    first_reader: Arc<tokio::sync::Mutex<()>>,
    /// The aid's open directory and lock file, while it is held or among the recently
    /// used ([`StoreState::keep_cached`]); closed once it is neither, so that a store that
    /// touches every aid keeps a bounded number of descriptors. A plain mutex, held for a
    /// clone: a hold of an open aid waits for nothing here.
    files: Mutex<Option<Arc<OpenAid>>>,
    /// Taken by the one task that opens the aid's files; the others wait for it.
    opening: tokio::sync::Mutex<()>,
    /// Used since the cache last looked: spares the directory from one eviction round.
    used: AtomicBool,
    /// Set once an exclusive holder has removed temporary files a killed process left.
    swept: AtomicBool,
}

/// A store's shared state: the table of aids, the open state directory, and the holds in
/// flight that `close` waits for. Every clone of an `AsyncStore` shares one.
#[derive(Debug)]
pub(crate) struct StoreState {
    run_dir: PathBuf,
    options: Options,
    slots: Mutex<HashMap<Aid, Arc<Slot>, BuildHasherDefault<AidHasher>>>,
    /// The open `state` directory, once an aid has been opened.
    state_dir: Mutex<Option<Arc<StateDir>>>,
    /// Taken by the one task that opens the state directory.
    state_dir_loading: tokio::sync::Mutex<()>,
    /// The aids whose files are cached, oldest first (see [`StoreState::keep_cached`]).
    cached: Mutex<VecDeque<Aid>>,
    /// Whether `cached` was left over the cache's size by aids held at the time.
    over: AtomicBool,
    /// Every hold is counted here; `close` waits for them all.
    in_flight: InFlight,
    /// The process the store was made in: a forked child may not use it.
    made_in: fork_guard::Epoch,
}

/// Hashes an aid (a `u16`, hashed as one) with a multiply: aids are few and not chosen by an
/// adversary, and SipHash was a tenth of an empty hold's own work.
#[derive(Default)]
struct AidHasher(u64);

impl Hasher for AidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u16(u16::from(b) ^ (self.0 as u16));
        }
    }

    fn write_u16(&mut self, n: u16) {
        // Fibonacci hashing: the multiply spreads the aid into the high bits that the table
        // uses.
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// How many times a holder opens an aid's files again after finding them removed.
const MAX_REOPENS: u32 = 8;

/// Each critical section on these mutexes is a few plain assignments, so a poisoned one
/// still holds consistent data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StoreState {
    pub(crate) fn new(run_dir: PathBuf, options: Options) -> StoreState {
        StoreState {
            run_dir,
            options,
            slots: Mutex::new(HashMap::default()),
            state_dir: Mutex::new(None),
            state_dir_loading: tokio::sync::Mutex::new(()),
            cached: Mutex::new(VecDeque::new()),
            over: AtomicBool::new(false),
            in_flight: InFlight::default(),
            made_in: fork_guard::Epoch::now(),
        }
    }

    /// The store's run directory.
    pub(crate) fn run_dir(&self) -> &std::path::Path {
        &self.run_dir
    }

    /// The store's options.
    pub(crate) fn options(&self) -> &Options {
        &self.options
    }

    /// This store, among others, for re-entry detection.
    pub(crate) fn key(&self) -> reentry::StoreKey {
        std::ptr::from_ref(self) as usize
    }

    /// Counts a hold in flight, or `Closed`.
    pub(crate) fn enter(&self) -> Result<Entered, Error> {
        self.made_in.check()?;
        match self.in_flight.enter() {
            Some(entered) => Ok(entered),
            None => Err(Error::Closed),
        }
    }

    /// The aid's open directory: the cached one, or opened now (and the state directory
    /// with it if need be), leaving the least recently used beyond the cache's size closed.
    /// The open state directory, opened on the pool the first time (its file system, and so
    /// where work may run, is not known before), by one task while the others wait: 400
    /// tasks holding their first aids at once would otherwise start 400 pool threads.
    async fn state_dir(&self) -> Result<Arc<StateDir>, Error> {
        if let Some(state) = lock(&self.state_dir).clone() {
            return Ok(state);
        }
        let _loading = self.state_dir_loading.lock().await;
        if let Some(state) = lock(&self.state_dir).clone() {
            return Ok(state);
        }
        let (run_dir, options) = (self.run_dir.clone(), self.options.clone());
        let state = exec::on_pool("open", move || StateDir::open(&run_dir, &options)).await??;
        let state = Arc::new(state);
        *lock(&self.state_dir) = Some(state.clone());
        Ok(state)
    }

    async fn open_files(&self, aid: Aid, slot: &Slot) -> Result<Arc<OpenAid>, Error> {
        slot.used.store(true, Ordering::Relaxed);
        let cached = lock(&slot.files).clone();
        if let Some(files) = cached {
            // Aids held together when they were opened are closed once let go, at the next
            // hold: one relaxed load while the cache is within its size.
            if self.over.load(Ordering::Relaxed) {
                self.trim(lock(&self.cached));
            }
            return Ok(files);
        }
        // Boxed, as every rare path of a hold: the future of each hold is as large as its
        // largest path, and moving it about was a tenth of an empty hold's own work.
        Box::pin(self.open_uncached(aid, slot)).await
    }

    /// [`StoreState::open_files`] for an aid whose files are not open: opens them (and the
    /// state directory if need be) into the slot's cache, one task at a time.
    async fn open_uncached(&self, aid: Aid, slot: &Slot) -> Result<Arc<OpenAid>, Error> {
        let _opening = slot.opening.lock().await;
        // Opened by the task this one waited for.
        let cached = lock(&slot.files).clone();
        if let Some(files) = cached {
            return Ok(files);
        }
        let mut state = self.state_dir().await?;
        let mut reopened = 0;
        let files = loop {
            match Self::open_aid(state.clone(), aid).await {
                Ok(files) => break Arc::new(files),
                // Nothing can be made in a removed state directory: open the one at its
                // path. Checked only here, when an open failed, so a store that has its aids
                // open pays nothing for it.
                Err(e) if e.is_not_found() && reopened < MAX_REOPENS && !state.is_current() => {
                    reopened += 1;
                    self.forget_state_dir(&state);
                    state = self.state_dir().await?;
                }
                Err(e) => return Err(e),
            }
        };
        *lock(&slot.files) = Some(files.clone());
        self.keep_cached(aid);
        Ok(files)
    }

    /// Opens an aid's files where the state directory says work runs; a fork under way in
    /// another thread sends the opening to the pool, which may wait for it.
    async fn open_aid(state: Arc<StateDir>, aid: Aid) -> Result<OpenAid, Error> {
        let (in_place, again) = (state.in_place(), state.clone());
        let open = move |_| fork_guard::may_wait(!in_place, || OpenAid::open(state, aid));
        let runs = match in_place {
            true => Where::InPlace,
            false => Where::OnPool,
        };
        match exec::run_step("open", runs, open).await {
            Err(e) if fork_guard::busy_error(&e) => {
                let open = move || fork_guard::may_wait(true, || OpenAid::open(again, aid));
                exec::on_pool("open", open).await?
            }
            files => files,
        }
    }

    /// Drops the cached directory of an aid once found stale, and the state directory too if
    /// it was the one removed.
    fn forget_files(&self, slot: &Slot, stale: &Arc<OpenAid>) {
        let mut cached = lock(&slot.files);
        if cached.as_ref().is_some_and(|dir| Arc::ptr_eq(dir, stale)) {
            *cached = None;
        }
        drop(cached);
        let mut state = lock(&self.state_dir);
        if state.as_ref().is_some_and(|s| !s.is_current()) {
            *state = None;
        }
    }

    /// Drops the cached state directory if it is still `stale`, so that the next use opens
    /// the one at its path.
    fn forget_state_dir(&self, stale: &Arc<StateDir>) {
        let mut state = lock(&self.state_dir);
        if state.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            tracing::warn!(
                path = %stale.path().display(),
                "the state directory was removed while open; opening it again"
            );
            *state = None;
        }
    }

    /// The store's state directory, checked against its path (two `stat` calls), opened
    /// again if it was removed or replaced: for the watch and `wait_empty`, which open names
    /// in it outside any hold, as a hold does. Unless `make`, nothing is made: `None` if
    /// there is no state directory.
    pub(crate) async fn current_state_dir(
        &self,
        make: bool,
    ) -> Result<Option<Arc<StateDir>>, Error> {
        let _in_flight = self.enter()?;
        let cached = lock(&self.state_dir).clone();
        if let Some(state) = cached {
            if state.is_current() {
                return Ok(Some(state));
            }
            self.forget_state_dir(&state);
        }
        if make {
            return self.state_dir().await.map(Some);
        }
        let (run_dir, options) = (self.run_dir.clone(), self.options.clone());
        let state = exec::on_pool("open", move || StateDir::open_existing(&run_dir, &options));
        Ok(state.await??.map(Arc::new))
    }

    /// Lists `aid` among those whose directory is open, and closes the directories of the
    /// least recently used aids that nobody holds beyond the cache's size: a clock, so a hit
    /// costs one relaxed store and no lock. Held aids keep theirs whatever the size.
    fn keep_cached(&self, aid: Aid) {
        let mut cached = lock(&self.cached);
        cached.push_back(aid);
        self.trim(cached);
    }

    /// Closes the least recently used unheld aids' files beyond the cache's size, and notes
    /// whether held aids keep it over its size, so that a later hold trims again.
    fn trim(&self, mut cached: std::sync::MutexGuard<'_, VecDeque<Aid>>) {
        // Usually one, kept in place: an eviction allocates nothing.
        let (mut first, mut closing) = (None, Vec::new());
        let mut looked = 0;
        while cached.len() > self.options.open_aids && looked < 2 * cached.len() {
            looked += 1;
            let Some(oldest) = cached.pop_front() else {
                break;
            };
            let slot = self.slot(oldest);
            let evicted = !slot.used.swap(false, Ordering::Relaxed)
                && slot.files.try_lock().is_ok_and(|mut dir| {
                    // Only the cache has it: no holder, no operation in flight.
                    match dir.take_if(|d| Arc::strong_count(d) == 1) {
                        Some(d) => {
                            match first {
                                None => first = Some(d),
                                Some(_) => closing.push(d),
                            }
                            true
                        }
                        None => dir.is_none(),
                    }
                });
            if !evicted {
                cached.push_back(oldest);
            }
        }
        self.over
            .store(cached.len() > self.options.open_aids, Ordering::Relaxed);
        drop(cached);
        // Two close(2) calls each, outside the table's lock.
        drop((first, closing));
    }

    fn slot(&self, aid: Aid) -> Arc<Slot> {
        lock(&self.slots).entry(aid).or_default().clone()
    }

    /// Waits for the aid, in this process and then across processes.
    pub(crate) async fn hold(
        &self,
        aid: Aid,
        mode: LockMode,
        wait: Wait,
    ) -> Result<Arc<Hold>, Error> {
        let in_flight = self.enter()?;
        if !matches!(wait, Wait::Never) {
            reentry::check(self.key(), aid)?;
        }
        let slot = self.slot(aid);
        let turn = wait_as(
            aid,
            wait,
            || slot.turn.try_take(mode),
            || slot.turn.take(mode),
        )
        .await?;
        let mut claim = Claim {
            aid,
            files: self.open_files(aid, &slot).await?,
            turn,
            _in_flight: in_flight,
        };
        // Revalidated under the lock: a lock file removed and made anew by another store
        // would otherwise split exclusion between the two files. Bounded, in case a cleaner
        // keeps removing the directory.
        let mut reopened = 0;
        let hold = loop {
            let hold = match mode {
                LockMode::Exclusive => Claim::flock_exclusive(claim, wait).await?,
                LockMode::Shared => Claim::flock_shared(claim, &slot.first_reader, wait).await?,
            };
            if hold.claim.files.is_current() {
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
                    stale.files.lock_path(),
                    std::io::Error::other("the lock file keeps being removed"),
                ));
            }
            tracing::warn!(
                path = %stale.files.dir().path().display(),
                "the aid's lock file or directory was removed while open; opening them again"
            );
            self.forget_files(&slot, &stale.files);
            claim = Claim {
                files: self.open_files(aid, &slot).await?,
                ..stale
            };
        };
        let hold = Arc::new(hold);
        if mode == LockMode::Exclusive && !slot.swept.load(Ordering::Acquire) {
            // The first exclusive holder in this store clears what a killed process left.
            // A whole listing of the directory, once per aid and store: in steps. Not even
            // a step when the lock's own fstat found the mark clear.
            if !hold.claim.files.lock().mark_known_clear() {
                Box::pin(hold.sweep_temps()).await?;
            }
            slot.swept.store(true, Ordering::Release);
        }
        Ok(hold)
    }

    /// Refuses new holds, waits for the current ones, and closes every file of the store.
    /// In a forked child it does nothing and fails with `Forked`: the holds it would wait
    /// for belong to threads the child does not have, and the files are the parent's.
    pub(crate) async fn close(&self) -> Result<(), Error> {
        self.made_in.check()?;
        self.in_flight.close().await;
        lock(&self.slots).clear();
        lock(&self.cached).clear();
        *lock(&self.state_dir) = None;
        Ok(())
    }

    /// The process the store was made in.
    pub(crate) fn made_in(&self) -> fork_guard::Epoch {
        self.made_in
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.in_flight.is_closed()
    }
}
