//! What a run is given: the environment knobs, the bench directory (tmpfs unless told
//! otherwise), the runtimes, the recorded child process, and the scratch directories.

use std::path::{Path, PathBuf};

use tokio::runtime::Runtime;

use crate::common::{self, Entry};

const TMPFS_MAGIC: u64 = 0x0102_1994;

/// The runtime a workload runs on. The floor never uses one: it runs on the main thread.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flavor {
    /// A multi-thread runtime with 2 workers: the figures under today's JSON keys.
    Multi,
    /// A current-thread runtime, as every `#[tokio::test]` uses: the `"CT"` figures.
    Current,
}

impl Flavor {
    pub const ALL: [Flavor; 2] = [Flavor::Multi, Flavor::Current];

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Multi => "multi-thread",
            Flavor::Current => "current-thread",
        }
    }
}

/// The multi-thread runtime's workers, in every workload that uses one.
pub const WORKERS: usize = 2;

pub fn multi_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("multi-thread runtime")
}

pub fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime")
}

/// Fresh directories under the bench directory, all removed at the end.
pub struct Scratch {
    pub root: PathBuf,
    next: std::cell::Cell<u32>,
}

impl Scratch {
    fn new(base: &Path) -> Scratch {
        let root = base.join(format!("runstate-bench-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("make the scratch directory");
        Scratch {
            root,
            next: std::cell::Cell::new(0),
        }
    }

    pub fn fresh(&self, what: &str) -> PathBuf {
        let n = self.next.get();
        self.next.set(n + 1);
        let dir = self.root.join(format!("{what}-{n}"));
        std::fs::create_dir(&dir).expect("make a fresh directory");
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The recorded child, killed and reaped when the bench ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything a workload needs, for the whole run.
pub struct Ctx {
    multi: Runtime,
    current: Runtime,
    pub template: Entry,
    pub scratch: Scratch,
    pub quick: bool,
    /// Repetitions per figure (W9: `w9_reps`).
    pub reps: usize,
    pub w9_reps: usize,
    /// Entries in W9's aid.
    pub w9_n: usize,
    /// What the bench directory is: "tmpfs", or a warning.
    pub fs_kind: &'static str,
    /// `RUNSTATE_BENCH_ONLY`: the workloads to run (all when empty), for profiling.
    only: Vec<String>,
    /// `RUNSTATE_BENCH_IMPL`: the implementations to run (all when empty), for profiling.
    impls: Vec<String>,
    /// `RUNSTATE_BENCH_FLAVOR`: the runtimes to run on (`multi`, `ct`; both when empty).
    flavors: Vec<String>,
    /// Whether a counting tool cuts its figures to the timed sections (`RUNSTATE_BENCH_MARK`
    /// or `RUNSTATE_BENCH_PERF_CTL`): then each timed section's operations are printed.
    pub counting: bool,
    _child: Child,
}

impl Ctx {
    /// Reads the environment; exits with a message if the bench directory will not do.
    pub fn from_env() -> Ctx {
        let quick = env_on("RUNSTATE_BENCH_QUICK");
        let base = std::env::var_os("RUNSTATE_BENCH_DIR")
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
        let fs_kind = match is_tmpfs(&base) {
            Ok(true) => "tmpfs",
            Ok(false) if env_on("RUNSTATE_BENCH_ALLOW_DISK") => {
                eprintln!(
                    "warning: {} is not tmpfs; running anyway (RUNSTATE_BENCH_ALLOW_DISK)",
                    base.display()
                );
                "NOT tmpfs: figures do not compare with tmpfs runs"
            }
            Ok(false) => {
                eprintln!(
                    "refusing to run: {} is not tmpfs. The store lives on tmpfs (/run); on a \
                     disk file creation costs the file system's journal, not the store, and the \
                     figures would not compare. Set RUNSTATE_BENCH_DIR to a tmpfs directory, or \
                     RUNSTATE_BENCH_ALLOW_DISK=1 to run here anyway.",
                    base.display()
                );
                std::process::exit(2);
            }
            Err(e) => {
                eprintln!("cannot use the bench directory: {e}");
                std::process::exit(2);
            }
        };
        raise_open_files_limit();
        // The instance every entry records: a real, single-threaded child, as a launcher's is.
        let child = Child(
            std::process::Command::new("sleep")
                .arg("3600")
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("spawn the `sleep` child that the entries record"),
        );
        // `RUNSTATE_BENCH_REPS`: repetitions of every figure, W9's too (for counting tools).
        let reps_override = std::env::var("RUNSTATE_BENCH_REPS")
            .ok()
            .and_then(|r| r.trim().parse::<usize>().ok())
            .filter(|&r| r > 0);
        let reps = reps_override.unwrap_or(if quick { 3 } else { 7 });
        Ctx {
            multi: multi_thread_runtime(),
            current: current_thread_runtime(),
            template: common::template(child.0.id()),
            scratch: Scratch::new(&base),
            quick,
            reps,
            w9_reps: reps_override.unwrap_or(if quick { 3 } else { 5 }),
            w9_n: if quick { 20_000 } else { 100_000 },
            fs_kind,
            only: env_list("RUNSTATE_BENCH_ONLY"),
            impls: env_list("RUNSTATE_BENCH_IMPL"),
            flavors: env_list("RUNSTATE_BENCH_FLAVOR"),
            counting: env_on("RUNSTATE_BENCH_MARK")
                || std::env::var_os("RUNSTATE_BENCH_PERF_CTL").is_some(),
            _child: child,
        }
    }

    pub fn rt(&self, flavor: Flavor) -> &Runtime {
        match flavor {
            Flavor::Multi => &self.multi,
            Flavor::Current => &self.current,
        }
    }

    /// Whether `RUNSTATE_BENCH_ONLY` lets the workload (or probe) `key` run.
    pub fn wants(&self, key: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|k| k.eq_ignore_ascii_case(key))
    }

    /// Whether `RUNSTATE_BENCH_IMPL` lets the implementation `name` run.
    pub fn runs(&self, name: &str) -> bool {
        self.impls.is_empty() || self.impls.iter().any(|k| k == name)
    }

    /// Whether `RUNSTATE_BENCH_FLAVOR` lets workloads run on `flavor`'s runtime.
    pub fn on(&self, flavor: Flavor) -> bool {
        let key = match flavor {
            Flavor::Multi => "multi",
            Flavor::Current => "ct",
        };
        self.flavors.is_empty() || self.flavors.iter().any(|k| k.eq_ignore_ascii_case(key))
    }

    /// Whether a knob left something out (then no JSON is written).
    pub fn filtered(&self) -> bool {
        !self.only.is_empty() || !self.impls.is_empty() || !self.flavors.is_empty()
    }
}

/// Raises the soft limit of open files to the hard limit: the threads probe and W10 to W12
/// hold hundreds to thousands of aids, and a store may keep two descriptors per aid.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            eprintln!("warning: could not raise the open files limit: {e}");
        }
    }
}

pub fn env_on(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// A comma-separated list from the environment.
fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn is_tmpfs(dir: &Path) -> Result<bool, String> {
    let st = rustix::fs::statfs(dir).map_err(|e| format!("statfs {}: {e}", dir.display()))?;
    Ok(st.f_type as u64 == TMPFS_MAGIC)
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("nproc {nproc}, CPU {cpu}, kernel {kernel}")
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(d)
            }
        }
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}
