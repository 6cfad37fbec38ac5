//! Store settings.

use std::path::{Path, PathBuf};

/// How a store behaves; pass it to [`AsyncStore::with_options`](crate::AsyncStore::with_options).
///
/// A by-value builder: each setter takes the options and returns them changed (so a setter
/// whose result is dropped changes nothing, and the compiler says so). Each setting's getter
/// is its setter's name after `get_`, as on `std::process::Command`: `durable(true)` is read
/// back with `get_durable()`.
///
/// ```
/// use runstate::{AsyncStore, Options};
///
/// // On a disk rather than tmpfs, where a power cut should not lose saved entries.
/// let store: AsyncStore<String> =
///     AsyncStore::with_options("/var/lib/launcher", Options::new().durable(true));
/// assert!(store.options().get_durable());
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
    #[must_use]
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
    #[must_use = "a setter returns the changed options and leaves its receiver as it was"]
    pub fn durable(mut self, on: bool) -> Options {
        self.durable = on;
        self
    }

    /// Entry files larger than `bytes` are reported as [`Corrupt`](crate::Error::Corrupt)
    /// without being read, and `save` refuses a larger entry with
    /// [`Error::TooLarge`](crate::Error::TooLarge). The cap bounds the memory a hostile file
    /// can make a reader use.
    #[must_use = "a setter returns the changed options and leaves its receiver as it was"]
    pub fn max_entry_size(mut self, bytes: u64) -> Options {
        self.max_entry_size = bytes;
        self
    }

    /// Where to read process identities from instead of `/proc`: for tests with a fake
    /// `/proc`, or a store that watches another pid namespace's mounted proc.
    #[must_use = "a setter returns the changed options and leaves its receiver as it was"]
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
    /// assert_eq!(options.get_open_aids(), 16);
    /// ```
    #[must_use = "a setter returns the changed options and leaves its receiver as it was"]
    pub fn open_aids(mut self, aids: usize) -> Options {
        self.open_aids = aids;
        self
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
    /// assert!(Options::new().work_on_pool(true).get_work_on_pool());
    /// ```
    #[must_use = "a setter returns the changed options and leaves its receiver as it was"]
    pub fn work_on_pool(mut self, on: bool) -> Options {
        self.on_pool = on;
        self
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
    /// assert!(!polling.get_use_pidfds());
    /// assert!(Options::new().get_use_pidfds());
    /// ```
    #[must_use = "a setter returns the changed options and leaves its receiver as it was"]
    pub fn use_pidfds(mut self, on: bool) -> Options {
        self.use_pidfds = on;
        self
    }

    /// Whether saves and destroys are fsynced; see [`durable`](Options::durable).
    pub fn get_durable(&self) -> bool {
        self.durable
    }

    /// The entry size cap in bytes; see [`max_entry_size`](Options::max_entry_size).
    pub fn get_max_entry_size(&self) -> u64 {
        self.max_entry_size
    }

    /// The proc file system that liveness is read from; see [`proc_root`](Options::proc_root).
    pub fn get_proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// How many unheld aids keep their files open; see [`open_aids`](Options::open_aids).
    pub fn get_open_aids(&self) -> usize {
        self.open_aids
    }

    /// Whether all file work goes to the blocking pool; see
    /// [`work_on_pool`](Options::work_on_pool).
    pub fn get_work_on_pool(&self) -> bool {
        self.on_pool
    }

    /// Whether [`wait_exit`](crate::AsyncStore::wait_exit) may use pidfds; see
    /// [`use_pidfds`](Options::use_pidfds).
    pub fn get_use_pidfds(&self) -> bool {
        self.use_pidfds
    }

    /// Former name of [`get_durable`](Options::get_durable).
    #[deprecated(note = "renamed `get_durable`: each getter is its setter's name after `get_`")]
    pub fn is_durable(&self) -> bool {
        self.get_durable()
    }

    /// Former name of [`get_max_entry_size`](Options::get_max_entry_size).
    #[deprecated(
        note = "renamed `get_max_entry_size`: each getter is its setter's name after `get_`"
    )]
    pub fn entry_size_cap(&self) -> u64 {
        self.get_max_entry_size()
    }

    /// Former name of [`get_proc_root`](Options::get_proc_root).
    #[deprecated(note = "renamed `get_proc_root`: each getter is its setter's name after `get_`")]
    pub fn proc_dir(&self) -> &Path {
        self.get_proc_root()
    }

    /// Former name of [`get_open_aids`](Options::get_open_aids).
    #[deprecated(note = "renamed `get_open_aids`: each getter is its setter's name after `get_`")]
    pub fn open_aid_limit(&self) -> usize {
        self.get_open_aids()
    }

    /// Former name of [`get_work_on_pool`](Options::get_work_on_pool).
    #[deprecated(
        note = "renamed `get_work_on_pool`: each getter is its setter's name after `get_`"
    )]
    pub fn is_work_on_pool(&self) -> bool {
        self.get_work_on_pool()
    }

    /// Former name of [`get_use_pidfds`](Options::get_use_pidfds).
    #[deprecated(note = "renamed `get_use_pidfds`: each getter is its setter's name after `get_`")]
    pub fn uses_pidfds(&self) -> bool {
        self.get_use_pidfds()
    }
}

impl Default for Options {
    fn default() -> Options {
        Options::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_getter_returns_what_its_setter_set() {
        let defaults = Options::new();
        assert!(!defaults.get_durable());
        assert_eq!(
            defaults.get_max_entry_size(),
            Options::DEFAULT_MAX_ENTRY_SIZE
        );
        assert_eq!(defaults.get_proc_root(), Path::new("/proc"));
        assert_eq!(defaults.get_open_aids(), Options::DEFAULT_OPEN_AIDS);
        assert!(!defaults.get_work_on_pool());
        assert!(defaults.get_use_pidfds());

        let set = Options::new()
            .durable(true)
            .max_entry_size(77)
            .proc_root("/elsewhere/proc")
            .open_aids(3)
            .work_on_pool(true)
            .use_pidfds(false);
        assert!(set.get_durable());
        assert_eq!(set.get_max_entry_size(), 77);
        assert_eq!(set.get_proc_root(), Path::new("/elsewhere/proc"));
        assert_eq!(set.get_open_aids(), 3);
        assert!(set.get_work_on_pool());
        assert!(!set.get_use_pidfds());
        assert_eq!(Options::default(), defaults);
    }

    #[test]
    #[allow(deprecated)]
    fn the_former_getter_names_still_answer() {
        let set = Options::new()
            .durable(true)
            .max_entry_size(77)
            .proc_root("/p")
            .open_aids(3)
            .work_on_pool(true)
            .use_pidfds(false);
        assert!(set.is_durable());
        assert_eq!(set.entry_size_cap(), 77);
        assert_eq!(set.proc_dir(), Path::new("/p"));
        assert_eq!(set.open_aid_limit(), 3);
        assert!(set.is_work_on_pool());
        assert!(!set.uses_pidfds());
    }
}
