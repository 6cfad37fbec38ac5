//! A kit for tests of code that uses the store (feature `test-util`): a temporary store, fake
//! processes for liveness, a holder of an aid in "another process", and a way to keep
//! tokio's paused clock honest around other waits.
//!
//! ```
//! use runstate::testing::{FakeProc, TempStore};
//! use runstate::{Aid, Liveness};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let procs = FakeProc::new()?;
//! let t = TempStore::<String>::with_options(procs.options())?; // removed when dropped
//! let aid = Aid::new(1)?;
//!
//! let state = procs.start("web".to_string())?; // a fake process and its entry
//! t.save(aid, &state).await?;
//! assert_eq!(t.liveness(&state).await, Liveness::Alive);
//!
//! procs.end(state.pid)?; // it exits: no real process, no signal
//! t.wait_exit(&state).await?;
//! assert_eq!(t.prune_dead().await?.len(), 1);
//! # Ok(()) }
//! ```
//!
//! Under a paused clock (`#[tokio::test(start_paused = true)]`), `wait_exit` on a fake
//! process is woken by [`FakeProc::end`] at once, and meanwhile lets tokio move the clock as
//! it likes: fake processes live on the test's clock, real ones on the real clock.

use std::collections::HashSet;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::{Aid, AsyncStore, Error, InstanceId, Options, ProcessIdentity, State};

/// A fresh, private directory: on tmpfs (`/dev/shm`) where there is one, else in the
/// temporary directory. Removed, with everything in it, when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> std::io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let shm = Path::new("/dev/shm");
        let base = match std::fs::metadata(shm) {
            Ok(m)
                if m.is_dir() && rustix::fs::access(shm, rustix::fs::Access::WRITE_OK).is_ok() =>
            {
                shm.to_owned()
            }
            _ => std::env::temp_dir(),
        };
        loop {
            let path = base.join(format!("runstate-{what}-{}", InstanceId::random()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store in a fresh run directory of its own, removed with everything in it when the
/// `TempStore` is dropped, also when a test panics (unless panics abort). It derefs to its
/// [`AsyncStore`], so a test is one line away from using it.
///
/// ```
/// use runstate::testing::TempStore;
/// use runstate::{Aid, InstanceId, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let t = TempStore::<u32>::new()?;
/// let state = State::new(InstanceId::random(), std::process::id(), 7);
/// t.save(Aid::new(3)?, &state).await?;
/// assert_eq!(t.load(Aid::new(3)?, state.id).await?, Some(state));
/// let dir = t.path().to_owned();
/// drop(t);
/// assert!(!dir.exists());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TempStore<C> {
    store: AsyncStore<C>,
    dir: TempDir,
}

impl<C> TempStore<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A store with the default [`Options`] in a new run directory.
    ///
    /// # Errors
    ///
    /// If the directory cannot be made.
    pub fn new() -> std::io::Result<TempStore<C>> {
        TempStore::with_options(Options::new())
    }

    /// A store with `options` (such as [`FakeProc::options`]) in a new run directory.
    ///
    /// # Errors
    ///
    /// If the directory cannot be made.
    pub fn with_options(options: Options) -> std::io::Result<TempStore<C>> {
        let dir = TempDir::new("store")?;
        Ok(TempStore {
            store: AsyncStore::with_options(&dir.0, options),
            dir,
        })
    }

    /// The store.
    pub fn store(&self) -> &AsyncStore<C> {
        &self.store
    }

    /// The run directory, removed on drop.
    pub fn path(&self) -> &Path {
        &self.dir.0
    }

    /// Has `aid` held by another holder, as another process would hold it: a second store on
    /// the same run directory, on a thread and runtime of its own. Returns once it holds the
    /// aid (exclusively, or with `shared`, shared); dropping the [`ForeignHold`] lets go.
    ///
    /// ```
    /// use std::time::Duration;
    /// use runstate::testing::TempStore;
    /// use runstate::{Aid, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let t = TempStore::<()>::new()?;
    /// let aid = Aid::new(1)?;
    /// let other = t.hold_elsewhere(aid, false)?;
    /// let busy = t.try_with_aid(aid, async |_| Ok::<_, Error>(())).await;
    /// assert!(matches!(busy, Err(Error::WouldBlock { .. })));
    /// other.release_after(Duration::from_millis(10));
    /// t.with_aid(aid, async |_| Ok::<_, Error>(())).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// If the other store cannot take the aid, or its thread or runtime cannot be started.
    pub fn hold_elsewhere(&self, aid: Aid, shared: bool) -> Result<ForeignHold, Error> {
        ForeignHold::start(
            self.path().to_owned(),
            self.store.options().clone(),
            aid,
            shared,
        )
    }
}

impl<C> Deref for TempStore<C> {
    type Target = AsyncStore<C>;

    fn deref(&self) -> &AsyncStore<C> {
        &self.store
    }
}

/// An aid held by another store on a thread of its own, as another process would hold it;
/// see [`TempStore::hold_elsewhere`]. Dropping it lets go of the aid and waits until it has.
#[derive(Debug)]
#[must_use = "the aid is let go when this is dropped"]
pub struct ForeignHold {
    release: Option<tokio::sync::oneshot::Sender<Duration>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ForeignHold {
    fn start(
        run_dir: PathBuf,
        options: Options,
        aid: Aid,
        shared: bool,
    ) -> Result<ForeignHold, Error> {
        let (held_tx, held_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
        let (release, released) = tokio::sync::oneshot::channel::<Duration>();
        let failed = |e| Error::io("start a foreign holder", &run_dir, e);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(failed)?;
        let dir = run_dir.clone();
        let thread = std::thread::Builder::new()
            .name("runstate-foreign-hold".into())
            .spawn(move || {
                rt.block_on(async move {
                    let store = AsyncStore::<()>::with_options(&dir, options);
                    let hold = async |held: std::sync::mpsc::Sender<Result<(), Error>>| {
                        let _ = held.send(Ok(()));
                        // On this thread's own runtime, whose clock is never paused.
                        let after = released.await.unwrap_or_default();
                        tokio::time::sleep(after).await;
                        Ok::<_, Error>(())
                    };
                    let tx = held_tx.clone();
                    let done = match shared {
                        true => store.with_aid_shared(aid, async |_| hold(tx).await).await,
                        false => store.with_aid(aid, async |_| hold(tx).await).await,
                    };
                    if let Err(e) = done {
                        let _ = held_tx.send(Err(e));
                    }
                    let _ = store.close().await;
                });
            })
            .map_err(failed)?;
        let mut hold = ForeignHold {
            release: Some(release),
            thread: Some(thread),
        };
        match held_rx.recv() {
            Ok(Ok(())) => Ok(hold),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                hold.release = None;
                Err(Error::Blocking {
                    op: "foreign hold",
                    panicked: true,
                })
            }
        }
    }

    /// Lets go of the aid `after` this much real time, without waiting for it.
    pub fn release_after(mut self, after: Duration) {
        if let Some(release) = self.release.take() {
            let _ = release.send(after);
        }
        // Detached: it ends by itself.
        self.thread = None;
    }
}

impl Drop for ForeignHold {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(Duration::ZERO);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Fake processes: a `/proc`-like tree to point [`Options::proc_root`] at, whose processes a
/// test starts, ends and hands pids to, so that the store's
/// [`liveness`](AsyncStore::liveness), [`prune_dead`](AsyncStore::prune_dead) and
/// [`wait_exit`](AsyncStore::wait_exit) follow without real processes. The tree is removed
/// when dropped.
///
/// It holds what the store reads: `<pid>/stat` (state, thread count and start time),
/// `sys/kernel/random/boot_id`, and `self/timens_offsets` (no offset). Its pids are above
/// the kernel's largest, so they never name a real process. `wait_exit` on a fake process
/// looks at the tree at each change made through this type (not on a timer, and not at
/// changes made to the files by other means), so under a paused clock it returns at the
/// instant of the test's clock when the process was ended, and meanwhile leaves tokio free
/// to move the clock.
///
/// ```
/// use runstate::testing::{FakeProc, TempStore};
/// use runstate::{Aid, Liveness};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let procs = FakeProc::new()?;
/// let t = TempStore::<()>::with_options(procs.options())?;
/// let state = procs.start(())?;
/// t.save(Aid::new(2)?, &state).await?;
///
/// // Its pid is given to another process: the entry's process is gone all the same.
/// procs.reuse(state.pid)?;
/// assert_eq!(t.liveness(&state).await, Liveness::Dead);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FakeProc {
    dir: TempDir,
    next_pid: AtomicU32,
    /// Clock ticks since the fake boot: each process starts a little after the last.
    ticks: AtomicU64,
    boot_id: Mutex<String>,
}

/// The fake trees alive in this process, by path: `wait_exit` looks at those at each
/// [`CHANGED`], without a timer and without holding the clock.
static FAKE_ROOTS: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Rung at each change to a fake tree.
static CHANGED: Notify = Notify::const_new();

fn roots() -> MutexGuard<'static, Option<HashSet<PathBuf>>> {
    FAKE_ROOTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `proc_root` is a live [`FakeProc`] tree.
pub(crate) fn is_fake(proc_root: &Path) -> bool {
    roots().as_ref().is_some_and(|r| r.contains(proc_root))
}

/// Completes at the next change to any fake tree made after this call.
pub(crate) fn changed() -> std::pin::Pin<Box<tokio::sync::futures::Notified<'static>>> {
    Box::pin(CHANGED.notified())
}

/// Clock ticks between two fake starts: more than the tick the store allows for rounding.
const TICKS_APART: u64 = 100;

/// The first fake pid: above `PID_MAX_LIMIT` (2^22), so no real process has it.
const FIRST_PID: u32 = 1 << 22 | 1;

impl FakeProc {
    /// A new tree with no processes, of a new boot.
    ///
    /// # Errors
    ///
    /// If the tree cannot be made.
    pub fn new() -> std::io::Result<FakeProc> {
        let dir = TempDir::new("proc")?;
        std::fs::create_dir_all(dir.0.join("sys/kernel/random"))?;
        std::fs::create_dir(dir.0.join("self"))?;
        let procs = FakeProc {
            dir,
            next_pid: AtomicU32::new(FIRST_PID),
            ticks: AtomicU64::new(1000),
            boot_id: Mutex::new(String::new()),
        };
        procs.write("self/timens_offsets", "monotonic 0 0\nboottime 0 0\n")?;
        procs.reboot()?;
        roots()
            .get_or_insert_with(HashSet::new)
            .insert(procs.dir.0.clone());
        Ok(procs)
    }

    /// The tree's root, for [`Options::proc_root`].
    pub fn path(&self) -> &Path {
        &self.dir.0
    }

    /// Default [`Options`] that read liveness from this tree.
    pub fn options(&self) -> Options {
        Options::new().proc_root(self.path())
    }

    /// Starts a fake process and returns the entry that records it (a random id, its pid
    /// and identity, and `config`), ready to save.
    ///
    /// # Errors
    ///
    /// If the tree cannot be written.
    pub fn start<C>(&self, config: C) -> std::io::Result<State<C>> {
        let pid = self.start_pid()?;
        Ok(State::unidentified(InstanceId::random(), pid, config).with_process(self.identity(pid)))
    }

    /// Starts a fake process and returns its pid.
    ///
    /// # Errors
    ///
    /// If the tree cannot be written.
    pub fn start_pid(&self) -> std::io::Result<u32> {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        self.run(pid)?;
        Ok(pid)
    }

    /// The identity of `pid` as the tree shows it now; `None` if it shows no such process.
    pub fn identity(&self, pid: u32) -> Option<ProcessIdentity> {
        ProcessIdentity::read(self.path(), pid)
    }

    /// Ends `pid`: it has exited and been reaped, and the tree no longer shows it.
    ///
    /// # Errors
    ///
    /// If the tree cannot be written; ending a process it does not show is not an error.
    pub fn end(&self, pid: u32) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.path().join(pid.to_string())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        CHANGED.notify_waiters();
        Ok(())
    }

    /// `pid` exits but its parent has not reaped it: a zombie, which counts as exited.
    ///
    /// # Errors
    ///
    /// If the tree cannot be written.
    pub fn exit(&self, pid: u32) -> std::io::Result<()> {
        let start = self.identity(pid).map_or_else(
            || self.ticks.fetch_add(TICKS_APART, Ordering::Relaxed),
            |i| i.start_time,
        );
        self.stat(pid, 'Z', start)
    }

    /// Hands `pid` to a new process, as the kernel does once the old one is gone: the entry
    /// of the old one is then dead, and one made now (with [`identity`](FakeProc::identity))
    /// is the new one's.
    ///
    /// # Errors
    ///
    /// If the tree cannot be written.
    pub fn reuse(&self, pid: u32) -> std::io::Result<()> {
        self.run(pid)
    }

    /// A new boot: every process recorded before it is dead, whatever pid it had. The
    /// processes the tree shows stay, as a new boot's processes with the same pids.
    ///
    /// # Errors
    ///
    /// If the tree cannot be written.
    pub fn reboot(&self) -> std::io::Result<()> {
        let id = InstanceId::random().to_string();
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &id[..8],
            &id[8..12],
            &id[12..16],
            &id[16..20],
            &id[20..]
        );
        self.write("sys/kernel/random/boot_id", &format!("{uuid}\n"))?;
        *self.boot_id.lock().unwrap_or_else(|e| e.into_inner()) = uuid;
        CHANGED.notify_waiters();
        Ok(())
    }

    /// `pid` runs, started now.
    fn run(&self, pid: u32) -> std::io::Result<()> {
        let start = self.ticks.fetch_add(TICKS_APART, Ordering::Relaxed);
        std::fs::create_dir_all(self.path().join(pid.to_string()))?;
        self.stat(pid, 'S', start)
    }

    /// Writes `pid`'s stat line: fields 3 (state), 20 (one thread) and 22 (start time) are
    /// what the store reads.
    fn stat(&self, pid: u32, state: char, start: u64) -> std::io::Result<()> {
        let middle = ["0"; 16].join(" ");
        let line = format!("{pid} (fake) {state} {middle} 1 0 {start} 0 0 0\n");
        self.write(&format!("{pid}/stat"), &line)?;
        CHANGED.notify_waiters();
        Ok(())
    }

    /// Replaces `name` whole, so that a concurrent reader sees the old or the new text.
    fn write(&self, name: &str, text: &str) -> std::io::Result<()> {
        let path = self.path().join(name);
        let tmp = self.path().join(format!(".tmp-{}", InstanceId::random()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        if let Some(roots) = roots().as_mut() {
            roots.remove(&self.dir.0);
        }
    }
}

/// Runs `fut`, which waits for something outside tokio's sight (another process, a real
/// child, a file changed by another process), with a paused clock kept moving at real speed
/// while it is pending, as the store does for its own waits on other processes. Without a
/// paused clock it is `fut` itself.
///
/// tokio moves a paused clock to the next timer whenever the runtime is idle, so a
/// `tokio::time::timeout` around such a wait would fire at once, however soon the other
/// process acted. [`AsyncStore::watch`] and [`AsyncStore::wait_empty`] do not do this by
/// themselves: the changes they report normally come from the test's own tasks, and a
/// watcher left running would keep the clock at real speed for the whole test.
///
/// ```
/// use std::time::Duration;
/// use runstate::testing::{real_time, TempStore};
/// use runstate::{Aid, InstanceId, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let t = TempStore::<()>::new()?;
/// let aid = Aid::new(4)?;
/// let id = InstanceId::random();
/// t.save(aid, &State::new(id, 1, ())).await?;
/// // Another process would destroy it; here, another thread does.
/// let other = runstate::AsyncStore::<()>::new(t.path());
/// std::thread::spawn(move || {
///     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
///     rt.block_on(async { other.destroy(aid, id).await })
/// });
/// tokio::time::timeout(Duration::from_secs(30), real_time(t.wait_empty(aid))).await??;
/// # Ok(()) }
/// ```
pub async fn real_time<F: Future>(fut: F) -> F::Output {
    crate::exec::clock_hold::outside(fut).await
}
