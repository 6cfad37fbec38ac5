//! Store settings.

use std::path::{Path, PathBuf};

/// How a store behaves; pass it to [`AsyncStore::with_options`](crate::AsyncStore::with_options).
///
/// ```
/// use runstate::{AsyncStore, Options};
///
/// // On a disk rather than tmpfs, where a power cut should not lose saved entries.
/// let store: AsyncStore<String> =
///     AsyncStore::with_options("/var/lib/launcher", Options::new().durable(true));
/// assert!(store.options().is_durable());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Options {
    pub(crate) durable: bool,
    pub(crate) max_entry_size: u64,
    pub(crate) proc_root: PathBuf,
    pub(crate) open_aids: usize,
    pub(crate) on_pool: bool,
    pub(crate) use_pidfds: bool,
}

impl Options {
    /// The default size cap of one entry file: 1 MiB.
    pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 1 << 20;

    /// The default number of aids nobody holds that keep their files open: 64.
    pub const DEFAULT_OPEN_AIDS: usize = 64;

    /// How often [`wait_exit`](crate::AsyncStore::wait_exit) looks at `/proc` where it
    /// cannot use a pidfd: it learns of an exit at most this late.
    pub const EXIT_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(40);

    /// The defaults: not durable, 1 MiB entry cap, liveness read from `/proc`, 64 open aids,
    /// short tmpfs work in place, exits awaited with pidfds.
    pub fn new() -> Options {
        Options {
            durable: false,
            max_entry_size: Self::DEFAULT_MAX_ENTRY_SIZE,
            proc_root: PathBuf::from("/proc"),
            open_aids: Self::DEFAULT_OPEN_AIDS,
            on_pool: false,
            use_pidfds: true,
        }
    }

    /// With `true`, `save` fsyncs the entry file and its directory, and `destroy` the directory,
    /// before returning; the `state` directory, an aid's directory and its lock file, when the
    /// store makes them, have their parent directory fsynced too. Off by default: the store
    /// normally lives on tmpfs under `/run`, where fsync does nothing and entries do not
    /// outlive a reboot anyway. A durable store does all its file work on the blocking pool.
    pub fn durable(mut self, on: bool) -> Options {
        self.durable = on;
        self
    }

    /// Entry files larger than `bytes` are reported as [`Corrupt`](crate::Error::Corrupt)
    /// without being read, and `save` refuses a larger entry with
    /// [`Error::TooLarge`](crate::Error::TooLarge). The cap bounds the memory a hostile file
    /// can make a reader use.
    pub fn max_entry_size(mut self, bytes: u64) -> Options {
        self.max_entry_size = bytes;
        self
    }

    /// Where to read process identities from instead of `/proc`: for tests with a fake
    /// `/proc`, or a store that watches another pid namespace's mounted proc.
    pub fn proc_root(mut self, dir: impl Into<PathBuf>) -> Options {
        self.proc_root = dir.into();
        self
    }

    /// How many aids that nobody holds keep their directory and lock file open (two
    /// descriptors each), most recently used first; default [`DEFAULT_OPEN_AIDS`](Options::DEFAULT_OPEN_AIDS).
    /// Held aids keep theirs whatever this says, so a store's descriptors are bounded by this
    /// plus two per aid held at once, however many of the 10,000 aids it touches. A hold of
    /// a hot aid reuses its files; one of an aid not among them opens them again (see
    /// docs/performance.md for what that costs). `0` keeps only held aids open.
    ///
    /// ```
    /// use runstate::Options;
    /// let options = Options::new().open_aids(16);
    /// assert_eq!(options.open_aid_limit(), 16);
    /// ```
    pub fn open_aids(mut self, aids: usize) -> Options {
        self.open_aids = aids;
        self
    }

    /// How many unheld aids keep their files open; see [`Options::open_aids`].
    pub fn open_aid_limit(&self) -> usize {
        self.open_aids
    }

    /// With `true`, every file operation runs on tokio's blocking pool (`spawn_blocking`),
    /// even on tmpfs. Off by default: on tmpfs or ramfs, short file work never waits on a
    /// device, so the store runs it in place on the task's thread, in steps of tens of
    /// microseconds, and saves the hop to the pool, which costs more than a save (see
    /// docs/performance.md). Other file systems, durable stores and large entries
    /// use the pool whatever this says.
    ///
    /// ```
    /// use runstate::Options;
    /// assert!(Options::new().work_on_pool(true).is_work_on_pool());
    /// ```
    pub fn work_on_pool(mut self, on: bool) -> Options {
        self.on_pool = on;
        self
    }

    /// Whether all file work goes to the blocking pool; see [`Options::work_on_pool`].
    pub fn is_work_on_pool(&self) -> bool {
        self.on_pool
    }

    /// With `false`, [`wait_exit`](crate::AsyncStore::wait_exit) never opens a pidfd and
    /// looks at `/proc` every [`EXIT_POLL_INTERVAL`](Options::EXIT_POLL_INTERVAL) instead,
    /// as it does anyway where pidfds are unavailable (kernels before 5.3, a seccomp filter
    /// that refuses `pidfd_open`) or the store watches another pid namespace's `/proc`. On by
    /// default; turning it off is for tests and benchmarks of that fallback.
    ///
    /// ```
    /// use runstate::Options;
    ///
    /// let polling = Options::new().use_pidfds(false);
    /// assert!(!polling.uses_pidfds());
    /// assert!(Options::new().uses_pidfds());
    /// ```
    pub fn use_pidfds(mut self, on: bool) -> Options {
        self.use_pidfds = on;
        self
    }

    /// Whether saves and destroys are fsynced.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// The entry size cap in bytes.
    pub fn entry_size_cap(&self) -> u64 {
        self.max_entry_size
    }

    /// The proc file system that liveness is read from.
    pub fn proc_dir(&self) -> &Path {
        &self.proc_root
    }

    /// Whether [`wait_exit`](crate::AsyncStore::wait_exit) may use pidfds; see
    /// [`use_pidfds`](Options::use_pidfds).
    pub fn uses_pidfds(&self) -> bool {
        self.use_pidfds
    }
}

impl Default for Options {
    fn default() -> Options {
        Options::new()
    }
}
