//! Shared helpers of the in-process integration tests.
//!
//! Every test body runs twice, on a current-thread and on a multi-thread tokio runtime:
//! `both_runtimes!(name);` next to `async fn name()` makes `name::current_thread` and
//! `name::multi_thread`. `all_places!(name);` adds `name::on_disk_current_thread` and
//! `name::on_disk_multi_thread`, whose [`run_dir`] is off tmpfs: the store's pool path.
//!
//! The one harness of every suite:
//! - runtimes: [`both_runtimes!`], [`run_current_thread`], [`run_multi_thread`],
//!   [`runtimes`]; each shuts down without hanging on a parked blocking thread ([`run_on`]);
//! - other processes: [`child`], the test binary re-run in a role ([`child::role_command`],
//!   `@@` lines on stdout, [`child::Kid`]), and [`child::isolated`] for a test that may abort;
//! - configs: [`AppConfig`] ([`config`]) as a launcher stores it, and [`checked::Filled`]
//!   where a reader must tell a whole entry from a torn or mixed one;
//! - randomness: [`XorShift`], seeded by [`seed`] (`RUNSTATE_SEED=<seed>` replays a run);
//! - suite-specific pieces shared by split suites: [`locking`] (`tests/lock_*.rs`),
//!   [`hostile`] (`tests/hostile_*.rs`) and [`multiprocess`] (`tests/multiprocess_*.rs`).

#![allow(dead_code)]

pub mod checked;
pub mod child;
pub mod events;
pub mod hostile;
pub mod locking;
pub mod multiprocess;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use runstate::{Aid, InstanceId, State};
use serde::{Deserialize, Serialize};

/// Generous bound for "this must not hang", in one process or across several: a deadlock
/// detector (or a lock never released), never a speed check.
pub const DEADLOCK: Duration = Duration::from_secs(30);

/// Makes `#[test]`s running `async fn $name()` on both tokio runtimes. Declare the module
/// with `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn current_thread() {
                    $crate::common::run_current_thread(super::$name());
                }

                #[test]
                fn multi_thread() {
                    $crate::common::run_multi_thread(super::$name());
                }
            }
        )*
    };
}

/// Like `both_runtimes!`, and each body runs twice more with [`run_dir`] on a file system
/// that is not tmpfs ([`Place::Disk`]), where the store sends its file work to the blocking
/// pool: `name::current_thread`, `name::multi_thread`, `name::on_disk_current_thread` and
/// `name::on_disk_multi_thread`.
#[allow(unused_macros)]
macro_rules! all_places {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn current_thread() {
                    $crate::common::run_current_thread(super::$name());
                }

                #[test]
                fn multi_thread() {
                    $crate::common::run_multi_thread(super::$name());
                }

                #[test]
                fn on_disk_current_thread() {
                    $crate::common::on_disk(|| {
                        $crate::common::run_current_thread(super::$name())
                    });
                }

                #[test]
                fn on_disk_multi_thread() {
                    $crate::common::on_disk(|| $crate::common::run_multi_thread(super::$name()));
                }
            }
        )*
    };
}

/// Where [`run_dir`] makes its directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// On tmpfs (`/dev/shm`), the store's normal home: short file work runs in place.
    Tmpfs,
    /// On a file system that is not tmpfs or ramfs: file work runs on the blocking pool.
    Disk,
}

thread_local! {
    static PLACE: std::cell::Cell<Place> = const { std::cell::Cell::new(Place::Tmpfs) };
}

/// The place of this thread's test body. A runtime's `block_on` polls the body on the
/// calling thread, so the body (not tasks it spawns) sees the place its runner set.
pub fn place() -> Place {
    PLACE.with(|p| p.get())
}

/// Runs `f` with [`run_dir`] making its directories off tmpfs ([`Place::Disk`]).
pub fn on_disk<T>(f: impl FnOnce() -> T) -> T {
    struct Back(Place);
    impl Drop for Back {
        fn drop(&mut self) {
            PLACE.with(|p| p.set(self.0));
        }
    }
    let _back = Back(PLACE.with(|p| p.replace(Place::Disk)));
    f()
}

/// tmpfs's `statfs` magic number, as libc names it.
// libc's type differs between targets (c_long, or c_uint on s390x).
#[allow(clippy::unnecessary_cast)]
pub const TMPFS_MAGIC: i64 = libc::TMPFS_MAGIC as i64;
/// ramfs's `statfs` magic number (`<linux/magic.h>`), which libc does not export.
pub const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// The `statfs` magic number of the file system `path` is on; `None` if `statfs` fails.
pub fn fs_magic(path: &Path) -> Option<i64> {
    // f_type's width differs between targets.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(path).ok().map(|fs| fs.f_type as i64)
}

/// Whether `path` is on tmpfs or ramfs, where the store does short file work in place.
pub fn on_memory(path: &Path) -> bool {
    let kind = fs_magic(path).unwrap_or_else(|| panic!("statfs {path:?} failed"));
    matches!(kind, TMPFS_MAGIC | RAMFS_MAGIC)
}

/// Whether `path` is on tmpfs itself (not ramfs): for a test that needs tmpfs's own
/// behaviour, such as a size limit.
pub fn on_tmpfs(path: &Path) -> bool {
    fs_magic(path) == Some(TMPFS_MAGIC)
}

/// A temporary directory on a file system that is not tmpfs or ramfs: cargo's temporary
/// directory under `target/`, else `/var/tmp`, else the system's temporary directory.
/// Panics if all of them are in memory: the tests meant for the pool path would not take it.
pub fn disk_dir() -> tempfile::TempDir {
    let candidates = [
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        PathBuf::from("/var/tmp"),
        std::env::temp_dir(),
    ];
    for base in &candidates {
        if std::fs::create_dir_all(base).is_ok() && !on_memory(base) {
            if let Ok(dir) = tempfile::tempdir_in(base) {
                return dir;
            }
        }
    }
    panic!("no directory off tmpfs among {candidates:?}: the pool path cannot be tested here")
}

pub fn run_current_thread<F: Future<Output = ()>>(body: F) {
    run_on(current_thread_runtime(), body);
}

pub fn run_multi_thread<F: Future<Output = ()>>(body: F) {
    run_on(multi_thread_runtime(4), body);
}

/// A current-thread tokio runtime with timers and I/O.
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A multi-thread tokio runtime of `workers` worker threads, with timers and I/O.
pub fn multi_thread_runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// One runtime of each flavor: current-thread, then multi-thread with two workers.
pub fn runtimes() -> [tokio::runtime::Runtime; 2] {
    [current_thread_runtime(), multi_thread_runtime(2)]
}

/// Runs `body` on `rt`, then shuts the runtime down without waiting forever for its blocking
/// pool: a bug that leaves a thread parked (in `flock`, say) must fail the test, not hang it
/// (dropping a runtime waits for every blocking task).
pub fn run_on<F: Future<Output = ()>>(rt: tokio::runtime::Runtime, body: F) {
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(body)));
    match out {
        Ok(()) => rt.shutdown_timeout(DEADLOCK),
        Err(panic) => {
            rt.shutdown_background();
            std::panic::resume_unwind(panic);
        }
    }
}

/// `fut`, or a panic naming `what` if it does not finish within [`DEADLOCK`].
pub async fn no_deadlock<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLOCK, fut).await {
        Ok(out) => out,
        Err(_) => panic!("deadlock: {what} did not finish within {DEADLOCK:?}"),
    }
}

/// Marks the critical section; panics if two holders are ever inside at once.
pub struct Inside<'a>(&'a AtomicBool);

impl<'a> Inside<'a> {
    pub fn enter(flag: &'a AtomicBool) -> Inside<'a> {
        assert!(
            !flag.swap(true, Ordering::SeqCst),
            "two holders of one aid at once"
        );
        Inside(flag)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Saves `states` in `aid`, under one hold.
pub async fn save_all(
    store: &runstate::AsyncStore<AppConfig>,
    aid: Aid,
    states: &[State<AppConfig>],
) {
    store
        .with_aid(aid, async |c| {
            for s in states {
                c.save(s).await?;
            }
            Ok::<_, runstate::Error>(())
        })
        .await
        .unwrap();
}

/// A temporary run directory: on tmpfs, or off it ([`disk_dir`]) where this thread's
/// [`place`] says so (`all_places!`).
pub fn run_dir() -> tempfile::TempDir {
    run_dir_in(place())
}

/// A temporary run directory at `place`, whatever this thread's [`place`] says.
pub fn run_dir_in(place: Place) -> tempfile::TempDir {
    match place {
        Place::Tmpfs => tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap(),
        Place::Disk => disk_dir(),
    }
}

/// A realistic application config, as a launcher would store it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppConfig {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub flags: Flags,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flags {
    pub network: bool,
    pub read_only_root: bool,
    pub memory_limit: Option<u64>,
}

/// A config that differs with `n`.
pub fn config(n: u64) -> AppConfig {
    AppConfig {
        command: vec![
            "/usr/bin/sleep".to_string(),
            n.to_string(),
            "--label=été ✓".to_string(),
        ],
        env: BTreeMap::from([
            ("HOME".to_string(), "/home/app".to_string()),
            ("N".to_string(), n.to_string()),
        ]),
        flags: Flags {
            network: n % 2 == 0,
            read_only_root: true,
            memory_limit: (n % 3 != 0).then_some(n << 20),
        },
    }
}

pub fn state_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("state")
}

pub fn aid_dir(run_dir: &Path, aid: runstate::Aid) -> PathBuf {
    state_dir(run_dir).join(aid.to_string())
}

pub fn entry_path(run_dir: &Path, aid: runstate::Aid, id: runstate::InstanceId) -> PathBuf {
    aid_dir(run_dir, aid).join(id.to_string())
}

/// The names in a directory, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The seed of a random test: `RUNSTATE_SEED` (or the older `RUNSTATE_TEST_SEED`; decimal
/// or `0x` hex) if set, else `default`. It is printed, so that a failing run can be replayed
/// with `RUNSTATE_SEED=<seed>`.
pub fn seed(default: u64) -> u64 {
    let given = ["RUNSTATE_SEED", "RUNSTATE_TEST_SEED"]
        .iter()
        .find_map(|name| std::env::var(name).ok())
        .and_then(|s| match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        });
    let seed = given.unwrap_or(default);
    println!("seed {seed:#x} (replay with RUNSTATE_SEED={seed:#x})");
    seed
}

/// A [`XorShift`] seeded by [`seed`]`(default)`, and its seed.
pub fn seeded_rng(default: u64) -> (u64, XorShift) {
    let seed = seed(default);
    (seed, XorShift::new(seed))
}

/// A tiny seeded PRNG (xorshift64*), so failures replay.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A pid that no process can have: above the kernel's `PID_MAX_LIMIT` (2^22). `save` records
/// no process identity for it, so a loaded entry equals the state that was saved.
pub fn pid(n: u32) -> u32 {
    (1 << 30) + n
}

/// An aid the tests know to be valid.
pub fn aid(n: u16) -> Aid {
    Aid::new(n).unwrap()
}

/// Makes a named pipe at `path`: a file that blocks whoever opens it to read.
pub fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// `len` bytes of the alphabet, starting at a letter set by `seq`: content a reader can check.
pub fn pattern(seq: u64, len: usize) -> String {
    let start = (seq % 26) as u8;
    let cycle: Vec<u8> = (0..26u8).map(|i| b'a' + (start + i) % 26).collect();
    let mut out = Vec::with_capacity(len + cycle.len());
    while out.len() < len {
        out.extend_from_slice(&cycle);
    }
    out.truncate(len);
    String::from_utf8(out).unwrap()
}

/// A config that can tell whether it is intact, e.g. by holding a [`pattern`].
pub trait Checked {
    fn check(&self) -> Result<(), String>;
}

/// Every entry is listed under its own id and holds an intact config.
pub fn check_states<C: Checked>(all: &BTreeMap<InstanceId, State<C>>) -> Result<(), String> {
    for (id, state) in all {
        if state.id != *id {
            return Err(format!("entry listed as {id} holds {}", state.id));
        }
        state
            .config
            .check()
            .map_err(|e| format!("entry {id}: {e}"))?;
    }
    Ok(())
}

/// Names under `<run_dir>/state/<aid>` that are not entry files: temporary files, orphans,
/// anything else; sorted.
pub fn foreign_names(run_dir: &Path, aid: Aid) -> Vec<String> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(aid_dir(run_dir, aid)).unwrap() {
        let item = item.unwrap();
        let name = item.file_name().to_string_lossy().into_owned();
        if name.parse::<InstanceId>().is_err() || !item.file_type().unwrap().is_file() {
            out.push(name);
        }
    }
    out.sort();
    out
}

/// Names under `<run_dir>/state` other than the given aids' directories and lock files.
pub fn foreign_state_names(run_dir: &Path, aids: &[Aid]) -> Vec<String> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(state_dir(run_dir)).unwrap() {
        let name = item.unwrap().file_name().to_string_lossy().into_owned();
        let ours = aids
            .iter()
            .any(|a| name == a.to_string() || name == format!("{a}.lock"));
        if !ours {
            out.push(name);
        }
    }
    out
}

/// How many flock waiters the kernel shows on `path` in /proc/locks: proof that some
/// process is blocked on the lock, with no guessing about timing.
pub fn flock_waiters(path: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).unwrap();
    let dev = md.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let key = format!("{major:02x}:{minor:02x}:{}", md.ino());
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&"->")
                && fields.get(2) == Some(&"FLOCK")
                && fields.contains(&key.as_str())
        })
        .count()
}

/// The executable of example `name`, built now: `cargo test` builds examples, but a run of
/// one test file alone (`cargo test --test NAME`) does not, and would run a stale one.
pub fn example_binary(name: &str) -> PathBuf {
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "--example",
            name,
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    let out = cargo.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo build --example {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["target"]["name"] == name)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reports the {name} executable"))
}
