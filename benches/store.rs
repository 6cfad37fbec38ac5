//! `cargo bench --bench store`: every workload against three implementations, side by side.
//!
//! - `runstate`: the crate's public API on a tokio multi-thread runtime with 2 workers.
//! - `floor`: the same on-disk work (names, encoding, O_TMPFILE + linkat publish, one flock
//!   per hold) as plain synchronous rustix code on one thread: the cost of the system calls
//!   and the encoding by themselves.
//! - `tokio-fs`: the same layout written by hand on `tokio::fs`, one `.await` per file
//!   operation, flock through `spawn_blocking`, a `tokio::sync::Mutex` per aid.
//!
//! Runs on tmpfs (`/dev/shm`, or `RUNSTATE_BENCH_DIR`); refuses a disk unless
//! `RUNSTATE_BENCH_ALLOW_DISK=1`. `RUNSTATE_BENCH_QUICK=1` runs a shorter version.
//! Prints a table and writes the medians to `target/runstate-bench.json`.
//!
//! For profiling: `RUNSTATE_BENCH_ONLY=W1,W4` runs only those workloads (`R` for the
//! responsiveness test), `RUNSTATE_BENCH_IMPL=runstate` only that implementation (no JSON is
//! written then), and `RUNSTATE_BENCH_MARK=1` makes every timed section start and end with a
//! failing `faccessat2("/runstate-bench-mark/{start,end}")`, so an `strace -f` log can be cut
//! to the timed sections to count system calls per operation.
//! Figures are medians over repetitions; each repetition works in a fresh directory, made
//! and filled outside the timed section and removed afterwards.

#[path = "store/common.rs"]
mod common;
#[path = "store/floor.rs"]
mod floor;
#[path = "store/tokio_fs.rs"]
mod tokio_fs;

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use runstate::{Aid, AsyncStore, Error, InstanceId};
use tokio::runtime::Runtime;

use common::{Entry, LaunchConfig};
use floor::FloorAid;
use tokio_fs::TfsAid;

const TMPFS_MAGIC: u64 = 0x0102_1994;
/// The aid the single-aid workloads use.
const AID: u16 = 42;
const N: usize = 1000;
const HOLDS: usize = 10_000;
const TASKS: usize = 8;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Imp {
    Runstate,
    Floor,
    TokioFs,
    /// W9 only: `Cursor::load_all` over the same entries.
    LoadAll,
}

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Runstate => "runstate",
            Imp::Floor => "floor",
            Imp::TokioFs => "tokio-fs",
            Imp::LoadAll => "load_all",
        }
    }
}

const IMPS: [Imp; 3] = [Imp::Runstate, Imp::Floor, Imp::TokioFs];

/// One timed run: its duration and, where measured, the growth of peak RSS.
struct Sample {
    elapsed: Duration,
    rss: Option<u64>,
}

impl From<Duration> for Sample {
    fn from(elapsed: Duration) -> Sample {
        Sample { elapsed, rss: None }
    }
}

#[derive(Default, Clone)]
struct Series {
    ns: Vec<f64>,
    rss: Vec<u64>,
}

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(v: &[f64]) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some(Stats {
        median,
        min: v[0],
        max: v[v.len() - 1],
    })
}

fn median_u64(v: &[u64]) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Fresh directories under the bench directory, all removed at the end.
struct Scratch {
    root: PathBuf,
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

    fn fresh(&self, what: &str) -> PathBuf {
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

struct Ctx {
    rt: Runtime,
    template: Entry,
    scratch: Scratch,
    reps: usize,
    w9_n: usize,
    /// `RUNSTATE_BENCH_ONLY`: the workloads to run (all when empty), for profiling.
    only: Vec<String>,
    /// `RUNSTATE_BENCH_IMPL`: the implementations to run (all when empty), for profiling.
    impls: Vec<String>,
}

impl Ctx {
    fn wants(&self, key: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|k| k.eq_ignore_ascii_case(key))
    }

    fn runs(&self, imp: Imp) -> bool {
        self.impls.is_empty() || self.impls.iter().any(|k| k == imp.name())
    }

    fn filtered(&self) -> bool {
        !self.only.is_empty() || !self.impls.is_empty()
    }
}

fn aid(n: u16) -> Aid {
    Aid::new(n).expect("valid aid")
}

type Store = AsyncStore<LaunchConfig>;

/// A store whose aid is already open (directory made, lock file open, temporaries swept),
/// so the timed section measures steady-state holds, not the first open.
async fn warm_store(dir: &Path, aids: &[u16]) -> Store {
    let store = Store::new(dir);
    for &a in aids {
        store
            .with_aid(aid(a), async |_| Ok::<_, Error>(()))
            .await
            .expect("warm-up hold");
    }
    store
}

/// Runs `f` for every implementation in `imps`, `reps` times, in rotating order, each time in
/// a fresh directory; returns ns per op (and RSS growth where measured) per implementation.
fn bench(
    ctx: &Ctx,
    label: &str,
    imps: &[Imp],
    reps: usize,
    ops: usize,
    mut f: impl FnMut(&Ctx, Imp, &Path) -> Sample,
) -> Vec<Series> {
    let mut out = vec![Series::default(); imps.len()];
    if !ctx.wants(label) {
        return out;
    }
    let started = Instant::now();
    for rep in 0..reps {
        for k in 0..imps.len() {
            let i = (k + rep) % imps.len();
            if !ctx.runs(imps[i]) {
                continue;
            }
            let dir = ctx.scratch.fresh(label);
            let s = f(ctx, imps[i], &dir);
            std::fs::remove_dir_all(&dir).expect("clean up");
            out[i].ns.push(s.elapsed.as_nanos() as f64 / ops as f64);
            out[i].rss.extend(s.rss);
        }
    }
    eprintln!(
        "  {label}: {reps} reps in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    out
}

/// The clock of a timed section. With `RUNSTATE_BENCH_MARK=1`, its start and end also make
/// a failing `faccessat2` on `/runstate-bench-mark/{start,end}`, so that `strace -f` output can
/// be cut to the timed sections (to count system calls per operation).
struct Timer(Instant);

fn mark(path: &std::ffi::CStr) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| env_on("RUNSTATE_BENCH_MARK")) {
        let _ = rustix::fs::access(path, rustix::fs::Access::EXISTS);
    }
}

impl Timer {
    fn start() -> Timer {
        mark(c"/runstate-bench-mark/start");
        Timer(Instant::now())
    }

    fn stop(self) -> Duration {
        let elapsed = self.0.elapsed();
        mark(c"/runstate-bench-mark/end");
        elapsed
    }
}

// ---------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------

fn count_entries(dir: &Path, a: u16) -> usize {
    FloorAid::open(dir, a).expect("open").len().expect("len")
}

/// W1: 1000 saves in one hold. W7 (`each`): 1000 holds of one save each.
fn saves(ctx: &Ctx, imp: Imp, dir: &Path, each: bool) -> Sample {
    let ids = common::ids(N);
    let mut st = ctx.template.clone();
    let elapsed = match imp {
        Imp::Runstate => ctx.rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            let t = Timer::start();
            if each {
                for &id in &ids {
                    st.id = id;
                    store
                        .with_aid(aid(AID), async |c| c.save(&st).await)
                        .await
                        .expect("save");
                }
            } else {
                store
                    .with_aid(aid(AID), async |c| {
                        for &id in &ids {
                            st.id = id;
                            c.save(&st).await?;
                        }
                        Ok::<_, Error>(())
                    })
                    .await
                    .expect("save");
            }
            let e = t.stop();
            store.close().await.expect("close");
            e
        }),
        Imp::Floor => {
            let mut a = FloorAid::open(dir, AID).expect("open");
            let t = Timer::start();
            if !each {
                a.lock();
            }
            for &id in &ids {
                st.id = id;
                if each {
                    a.lock();
                }
                a.save(&st).expect("save");
                if each {
                    a.unlock();
                }
            }
            if !each {
                a.unlock();
            }
            t.stop()
        }
        Imp::TokioFs => ctx.rt.block_on(async {
            let a = TfsAid::open(dir, AID).expect("open");
            let t = Timer::start();
            if each {
                for &id in &ids {
                    st.id = id;
                    let _h = a.hold().await;
                    a.save(&st).await.expect("save");
                }
            } else {
                let _h = a.hold().await;
                for &id in &ids {
                    st.id = id;
                    a.save(&st).await.expect("save");
                }
            }
            t.stop()
        }),
        Imp::LoadAll => unreachable!(),
    };
    assert_eq!(count_entries(dir, AID), N, "{} saved them all", imp.name());
    elapsed.into()
}

/// W2 and W9: every entry of one aid, decoded, one at a time; with `rss`, the growth of peak
/// RSS during the run.
fn stream(ctx: &Ctx, imp: Imp, dir: &Path, n: usize, rss: bool) -> Sample {
    floor::populate(dir, AID, &common::ids(n), &ctx.template).expect("populate");
    let begin = || rss.then(rss_begin);
    let (elapsed, start) = match imp {
        Imp::Runstate | Imp::LoadAll => ctx.rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            let start = begin();
            let t = Timer::start();
            let got = store
                .with_aid(aid(AID), async |c| {
                    if imp == Imp::LoadAll {
                        let all = c.load_all().await?;
                        return Ok::<_, Error>(black_box(all).len());
                    }
                    let mut entries = pin!(c.entries());
                    let mut got = 0;
                    while let Some(state) = entries.next().await {
                        black_box(state?);
                        got += 1;
                    }
                    Ok(got)
                })
                .await
                .expect("entries");
            let e = t.stop();
            assert_eq!(got, n, "{} read them all", imp.name());
            store.close().await.expect("close");
            (e, start)
        }),
        Imp::Floor => {
            let mut a = FloorAid::open(dir, AID).expect("open");
            let start = begin();
            let t = Timer::start();
            a.lock();
            let got = a
                .entries(|s| {
                    black_box(s);
                })
                .expect("entries");
            a.unlock();
            let e = t.stop();
            assert_eq!(got, n, "floor read them all");
            (e, start)
        }
        Imp::TokioFs => ctx.rt.block_on(async {
            let a = TfsAid::open(dir, AID).expect("open");
            let start = begin();
            let t = Timer::start();
            let got = {
                let _h = a.hold().await;
                a.entries(|s| {
                    black_box(s);
                })
                .await
                .expect("entries")
            };
            let e = t.stop();
            assert_eq!(got, n, "tokio-fs read them all");
            (e, start)
        }),
    };
    Sample {
        elapsed,
        rss: start.map(|s| rss_peak().saturating_sub(s)),
    }
}

/// W3: count 1000 entries by name.
fn len(ctx: &Ctx, imp: Imp, dir: &Path) -> Sample {
    floor::populate(dir, AID, &common::ids(N), &ctx.template).expect("populate");
    let (elapsed, got) = match imp {
        Imp::Runstate => ctx.rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            let t = Timer::start();
            let got = store
                .with_aid(aid(AID), async |c| c.len().await)
                .await
                .expect("len");
            (t.stop(), got)
        }),
        Imp::Floor => {
            let a = FloorAid::open(dir, AID).expect("open");
            let t = Timer::start();
            a.lock();
            let got = a.len().expect("len");
            a.unlock();
            (t.stop(), got)
        }
        Imp::TokioFs => ctx.rt.block_on(async {
            let a = TfsAid::open(dir, AID).expect("open");
            let t = Timer::start();
            let got = {
                let _h = a.hold().await;
                a.len().await.expect("len")
            };
            (t.stop(), got)
        }),
        Imp::LoadAll => unreachable!(),
    };
    assert_eq!(got, N, "{} counted them all", imp.name());
    elapsed.into()
}

/// W4: 1000 destroys in one hold.
fn destroys(ctx: &Ctx, imp: Imp, dir: &Path) -> Sample {
    let ids = common::ids(N);
    floor::populate(dir, AID, &ids, &ctx.template).expect("populate");
    let elapsed = match imp {
        Imp::Runstate => ctx.rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            let t = Timer::start();
            store
                .with_aid(aid(AID), async |c| {
                    for &id in &ids {
                        assert!(c.destroy(id).await?);
                    }
                    Ok::<_, Error>(())
                })
                .await
                .expect("destroy");
            t.stop()
        }),
        Imp::Floor => {
            let a = FloorAid::open(dir, AID).expect("open");
            let t = Timer::start();
            a.lock();
            for &id in &ids {
                assert!(a.destroy(id).expect("destroy"));
            }
            a.unlock();
            t.stop()
        }
        Imp::TokioFs => ctx.rt.block_on(async {
            let a = TfsAid::open(dir, AID).expect("open");
            let t = Timer::start();
            {
                let _h = a.hold().await;
                for &id in &ids {
                    assert!(a.destroy(id).await.expect("destroy"));
                }
            }
            t.stop()
        }),
        Imp::LoadAll => unreachable!(),
    };
    assert_eq!(
        count_entries(dir, AID),
        0,
        "{} destroyed them all",
        imp.name()
    );
    elapsed.into()
}

/// W5: 10,000 sequential, uncontended holds doing nothing.
fn empty_holds(ctx: &Ctx, imp: Imp, dir: &Path) -> Sample {
    match imp {
        Imp::Runstate => ctx.rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            let t = Timer::start();
            for _ in 0..HOLDS {
                store
                    .with_aid(aid(AID), async |_| Ok::<_, Error>(()))
                    .await
                    .expect("hold");
            }
            t.stop()
        }),
        Imp::Floor => {
            let a = FloorAid::open(dir, AID).expect("open");
            let t = Timer::start();
            for _ in 0..HOLDS {
                a.lock();
                a.unlock();
            }
            t.stop()
        }
        Imp::TokioFs => ctx.rt.block_on(async {
            let a = TfsAid::open(dir, AID).expect("open");
            let t = Timer::start();
            for _ in 0..HOLDS {
                drop(black_box(a.hold().await));
            }
            t.stop()
        }),
        Imp::LoadAll => unreachable!(),
    }
    .into()
}

/// W6: list 1000 aid directories (each with its lock file beside it).
fn list_aids(ctx: &Ctx, imp: Imp, dir: &Path) -> Sample {
    for a in 0..N as u16 {
        FloorAid::open(dir, a).expect("make aid");
    }
    let (elapsed, got) = match imp {
        Imp::Runstate => ctx.rt.block_on(async {
            let store = Store::new(dir);
            let t = Timer::start();
            let got = store.aids().await.expect("aids").len();
            (t.stop(), got)
        }),
        Imp::Floor => {
            let t = Timer::start();
            let got = floor::aids(dir).expect("aids").len();
            (t.stop(), got)
        }
        Imp::TokioFs => ctx.rt.block_on(async {
            let t = Timer::start();
            let got = tokio_fs::aids(dir).await.expect("aids").len();
            (t.stop(), got)
        }),
        Imp::LoadAll => unreachable!(),
    };
    assert_eq!(got, N, "{} listed every aid", imp.name());
    elapsed.into()
}

/// W8: 8 tasks x 1000 holds on one aid, each saving then destroying its own entry
/// (floor: 8000 sequential holds doing the same).
fn contended(ctx: &Ctx, imp: Imp, dir: &Path) -> Sample {
    let states: Vec<Entry> = common::ids(TASKS)
        .into_iter()
        .map(|id| {
            let mut s = ctx.template.clone();
            s.id = id;
            s
        })
        .collect();
    let elapsed = match imp {
        Imp::Runstate => ctx.rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            let t = Timer::start();
            let tasks: Vec<_> = states
                .into_iter()
                .map(|st| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for _ in 0..N {
                            store
                                .with_aid(aid(AID), async |c| {
                                    c.save(&st).await?;
                                    assert!(c.destroy(st.id).await?);
                                    Ok::<_, Error>(())
                                })
                                .await
                                .expect("hold");
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
            t.stop()
        }),
        Imp::Floor => {
            let mut a = FloorAid::open(dir, AID).expect("open");
            let t = Timer::start();
            for _ in 0..N {
                for st in &states {
                    a.lock();
                    a.save(st).expect("save");
                    assert!(a.destroy(st.id).expect("destroy"));
                    a.unlock();
                }
            }
            t.stop()
        }
        Imp::TokioFs => ctx.rt.block_on(async {
            let a = TfsAid::open(dir, AID).expect("open");
            let t = Timer::start();
            let tasks: Vec<_> = states
                .into_iter()
                .map(|st| {
                    let a = a.clone();
                    tokio::spawn(async move {
                        for _ in 0..N {
                            let _h = a.hold().await;
                            a.save(&st).await.expect("save");
                            assert!(a.destroy(st.id).await.expect("destroy"));
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
            t.stop()
        }),
        Imp::LoadAll => unreachable!(),
    };
    assert_eq!(count_entries(dir, AID), 0, "{} left nothing", imp.name());
    elapsed.into()
}

// ---------------------------------------------------------------------------------------
// R: responsiveness of a current-thread runtime while the store works on it
// ---------------------------------------------------------------------------------------

/// Runs `work` while a task on the same (current-thread) runtime wakes every millisecond;
/// returns the worst lateness of a wake-up: actual minus requested.
async fn with_ticker<F: Future>(work: F) -> (F::Output, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (stop, worst) = (stop.clone(), worst.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let due = tokio::time::Instant::now() + Duration::from_millis(1);
                tokio::time::sleep_until(due).await;
                let late = tokio::time::Instant::now().saturating_duration_since(due);
                worst.fetch_max(late.as_nanos() as u64, Ordering::Relaxed);
            }
        })
    };
    // Let the ticker arm its first timer before the work starts.
    tokio::task::yield_now().await;
    let out = work.await;
    stop.store(true, Ordering::Relaxed);
    ticker.await.expect("ticker");
    (out, Duration::from_nanos(worst.load(Ordering::Relaxed)))
}

struct Responsiveness {
    idle: Vec<u64>,
    busy: Vec<u64>,
}

fn responsiveness(ctx: &Ctx) -> Responsiveness {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime");
    let (mut idle, mut busy) = (Vec::new(), Vec::new());
    if !ctx.wants("R") || !ctx.runs(Imp::Runstate) {
        return Responsiveness { idle, busy };
    }
    let started = Instant::now();
    for _ in 0..ctx.reps {
        let dir = ctx.scratch.fresh("R");
        let (w1, w2, w9) = (1u16, 2u16, 9u16);
        floor::populate(&dir, w2, &common::ids(N), &ctx.template).expect("populate");
        floor::populate(&dir, w9, &common::ids(ctx.w9_n), &ctx.template).expect("populate");
        let ids = common::ids(N);
        let mut st = ctx.template.clone();
        let (baseline, worst) = rt.block_on(async {
            let store = warm_store(&dir, &[w1, w2, w9]).await;
            let ((), baseline) = with_ticker(tokio::time::sleep(Duration::from_millis(100))).await;
            let ((), worst) = with_ticker(async {
                store
                    .with_aid(aid(w1), async |c| {
                        for &id in &ids {
                            st.id = id;
                            c.save(&st).await?;
                        }
                        Ok::<_, Error>(())
                    })
                    .await
                    .expect("W1");
                for (a, n) in [(w2, N), (w9, ctx.w9_n)] {
                    let got = store
                        .with_aid(aid(a), async |c| {
                            let mut entries = pin!(c.entries());
                            let mut got = 0;
                            while let Some(state) = entries.next().await {
                                black_box(state?);
                                got += 1;
                            }
                            Ok::<_, Error>(got)
                        })
                        .await
                        .expect("stream");
                    assert_eq!(got, n);
                }
            })
            .await;
            store.close().await.expect("close");
            (baseline, worst)
        });
        std::fs::remove_dir_all(&dir).expect("clean up");
        idle.push(baseline.as_nanos() as u64);
        busy.push(worst.as_nanos() as u64);
    }
    eprintln!(
        "  R: {} reps in {:.1} s",
        ctx.reps,
        started.elapsed().as_secs_f64()
    );
    Responsiveness { idle, busy }
}

// ---------------------------------------------------------------------------------------
// Peak RSS
// ---------------------------------------------------------------------------------------

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"))
}

/// Starts a phase: returns freed heap to the kernel (so earlier phases' memory cannot be
/// reused unseen), resets the peak RSS to the current RSS, and returns the RSS now.
fn rss_begin() -> u64 {
    trim_heap();
    std::fs::write("/proc/self/clear_refs", "5").expect("reset peak RSS via /proc/self/clear_refs");
    status_kib("VmRSS:") * 1024
}

fn rss_peak() -> u64 {
    status_kib("VmHWM:") * 1024
}

// ---------------------------------------------------------------------------------------
// Setup, report
// ---------------------------------------------------------------------------------------

fn env_on(name: &str) -> bool {
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

fn machine() -> String {
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
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

/// Checks that the floor writer produces exactly the crate's bytes, so both do the same work.
fn check_encoding(ctx: &Ctx) -> usize {
    let dir = ctx.scratch.fresh("encoding");
    let mut st = ctx.template.clone();
    st.id = InstanceId::random();
    ctx.rt.block_on(async {
        let store = Store::new(&dir);
        store
            .with_aid(aid(AID), async |c| c.save(&st).await)
            .await
            .expect("save");
        store.close().await.expect("close");
    });
    let crate_bytes = std::fs::read(
        dir.join("state")
            .join(AID.to_string())
            .join(st.id.to_string()),
    )
    .expect("read the crate's entry");
    let mut ours = Vec::new();
    let process = floor::identify(st.pid);
    assert!(process.is_some(), "/proc shows this process");
    common::encode(&st, process.as_ref(), &mut ours);
    assert!(
        crate_bytes == ours,
        "the bench's encoding differs from the crate's: update benches/store/common.rs"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
    ours.len()
}

/// What identifying the process costs per save, read the floor's way and the crate's way
/// (`std::fs::read` of both files, as src/liveness.rs does), in ns: (floor, std::fs).
fn identify_cost(pid: u32) -> (f64, f64) {
    const K: usize = 2000;
    let t = Instant::now();
    for _ in 0..K {
        black_box(floor::identify(black_box(pid)));
    }
    let fl = t.elapsed().as_nanos() as f64 / K as f64;
    let t = Instant::now();
    for _ in 0..K {
        let stat = std::fs::read(Path::new("/proc").join(pid.to_string()).join("stat"));
        let boot = std::fs::read_to_string(Path::new("/proc").join("sys/kernel/random/boot_id"));
        black_box((stat.ok(), boot.ok()));
    }
    (fl, t.elapsed().as_nanos() as f64 / K as f64)
}

/// What one round trip to tokio's blocking pool costs on the multi-thread runtime: the
/// per-operation overhead runstate pays over the floor (one hop per save, destroy, len...).
fn hop_cost(rt: &Runtime) -> f64 {
    const K: usize = 5000;
    rt.block_on(async {
        // Warm the pool up.
        tokio::task::spawn_blocking(|| ()).await.expect("hop");
        let t = Instant::now();
        for _ in 0..K {
            tokio::task::spawn_blocking(|| black_box(()))
                .await
                .expect("hop");
        }
        t.elapsed().as_nanos() as f64 / K as f64
    })
}

struct Row {
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    series: Vec<Series>,
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

fn cell(s: Option<Stats>) -> String {
    s.map_or_else(
        || "-".into(),
        |s| format!("{} ({}-{})", fmt_ns(s.median), fmt_ns(s.min), fmt_ns(s.max)),
    )
}

/// `a / b` of two medians, when both ran.
fn ratio(a: Option<Stats>, b: Option<Stats>) -> Option<f64> {
    Some(a?.median / b?.median)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

fn list(v: impl IntoIterator<Item = f64>) -> String {
    v.into_iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
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
                "refusing to run: {} is not tmpfs. The store lives on tmpfs (/run); on a disk \
                 file creation costs the file system's journal, not the store, and the figures \
                 would not compare. Set RUNSTATE_BENCH_DIR to a tmpfs directory, or \
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

    let reps = if quick { 3 } else { 7 };
    let w9_reps = if quick { 3 } else { 5 };
    let w9_n = if quick { 20_000 } else { 100_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The instance every entry records: a real, single-threaded child, as a launcher's is.
    let child = Child(
        std::process::Command::new("sleep")
            .arg("3600")
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn the `sleep` child that the entries record"),
    );
    let ctx = Ctx {
        rt,
        template: common::template(child.0.id()),
        scratch: Scratch::new(&base),
        reps,
        w9_n,
        only: env_list("RUNSTATE_BENCH_ONLY"),
        impls: env_list("RUNSTATE_BENCH_IMPL"),
    };
    let entry_size = check_encoding(&ctx);

    println!(
        "runstate store benchmark{}",
        if quick { " (quick mode)" } else { "" }
    );
    println!("machine: {}", machine());
    println!("dir:     {} ({fs_kind})", ctx.scratch.root.display());
    println!("load:    {} (at start)", loadavg());
    println!(
        "runtime: runstate and tokio-fs on a tokio multi-thread runtime, 2 workers; \
         floor on the main thread, no runtime; R on a current-thread runtime"
    );
    println!(
        "entry:   {entry_size} bytes encoded (same bytes as the crate: checked); \
         {reps} repetitions per figure, W9 {w9_reps} with {w9_n} entries{}",
        if quick {
            " (quick mode: fewer than the full 100,000)"
        } else {
            ""
        }
    );
    let (id_floor, id_std) = identify_cost(ctx.template.pid);
    println!(
        "saves:   entries record a live `sleep` child; each save identifies it from /proc \
         (stat + boot_id): {} ns the floor's way (openat+read+close x2), {} ns with \
         std::fs::read x2 (as src/liveness.rs reads them now)",
        fmt_ns(id_floor),
        fmt_ns(id_std)
    );
    println!(
        "hop:     one spawn_blocking round trip (empty closure) on the 2-worker runtime: {} ns",
        fmt_ns(hop_cost(&ctx.rt))
    );
    println!(
        "setup:   not timed; each repetition gets a fresh directory, and runstate a store \
         whose aid was opened by one untimed hold"
    );
    eprintln!("running ...");

    let mut rows = vec![
        Row {
            key: "W1",
            title: "W1 save-batch",
            unit: "ns/save",
            series: bench(&ctx, "W1", &IMPS, reps, N, |c, i, d| saves(c, i, d, false)),
        },
        Row {
            key: "W2",
            title: "W2 stream 1k",
            unit: "ns/entry",
            series: bench(&ctx, "W2", &IMPS, reps, N, |c, i, d| {
                stream(c, i, d, N, false)
            }),
        },
        Row {
            key: "W3",
            title: "W3 len",
            unit: "ns/entry",
            series: bench(&ctx, "W3", &IMPS, reps, N, len),
        },
        Row {
            key: "W4",
            title: "W4 destroy-batch",
            unit: "ns/destroy",
            series: bench(&ctx, "W4", &IMPS, reps, N, destroys),
        },
        Row {
            key: "W5",
            title: "W5 empty hold",
            unit: "ns/hold",
            series: bench(&ctx, "W5", &IMPS, reps, HOLDS, empty_holds),
        },
        Row {
            key: "W6",
            title: "W6 aids",
            unit: "ns/aid",
            series: bench(&ctx, "W6", &IMPS, reps, N, list_aids),
        },
        Row {
            key: "W7",
            title: "W7 save-each",
            unit: "ns/save",
            series: bench(&ctx, "W7", &IMPS, reps, N, |c, i, d| saves(c, i, d, true)),
        },
        Row {
            key: "W8",
            title: "W8 contended",
            unit: "ns/hold",
            series: bench(&ctx, "W8", &IMPS, reps, TASKS * N, contended),
        },
    ];
    let w9_imps = [Imp::Runstate, Imp::Floor, Imp::TokioFs, Imp::LoadAll];
    let w9 = bench(&ctx, "W9", &w9_imps, w9_reps, w9_n, |c, i, d| {
        stream(c, i, d, w9_n, true)
    });
    rows.push(Row {
        key: "W9",
        title: "W9 big stream",
        unit: "ns/entry",
        series: w9[..3].to_vec(),
    });
    let load_all = stats(&w9[3].ns);
    let r = responsiveness(&ctx);

    // The table.
    println!();
    println!(
        "{:<17} {:<10} {:>26} {:>26} {:>26} {:>9} {:>9}",
        "workload", "unit", "runstate", "floor", "tokio-fs", "rs/floor", "tfs/floor"
    );
    let med = |row: &Row, i: usize| stats(&row.series[i].ns);
    for row in rows.iter().filter(|r| ctx.wants(r.key)) {
        let (rs, fl, tf) = (med(row, 0), med(row, 1), med(row, 2));
        println!(
            "{:<17} {:<10} {:>26} {:>26} {:>26} {:>9} {:>9}",
            row.title,
            row.unit,
            cell(rs),
            cell(fl),
            cell(tf),
            fmt_ratio(ratio(rs, fl)),
            fmt_ratio(ratio(tf, fl)),
        );
    }
    let by_key = |k: &str| rows.iter().find(|r| r.key == k).expect("row");
    if ctx.wants("W9") {
        println!(
            "{:<17} {:<10} {:>26} {:>26} {:>26} {:>9}",
            "W9 load_all",
            "ns/entry",
            cell(load_all),
            "",
            "",
            fmt_ratio(ratio(load_all, med(by_key("W9"), 1)))
        );
    }
    println!("(median over repetitions, min-max in parentheses; ratios of medians)");

    let growth = |i: usize| median_u64(&w9[i].rss);
    if ctx.wants("W9") {
        println!();
        println!("W9 peak RSS growth over {w9_n} entries (median; VmHWM after clear_refs):");
        for (i, imp) in w9_imps.iter().enumerate() {
            let Some(g) = growth(i) else { continue };
            let mut all = w9[i].rss.clone();
            all.sort_unstable();
            println!(
                "  {:<9} {:>8.2} MiB   (runs: {})",
                imp.name(),
                g as f64 / MIB,
                list(all.iter().map(|b| *b as f64 / MIB))
            );
        }
    }
    let worst = median_u64(&r.busy);
    if let Some(worst) = worst {
        println!();
        println!(
            "R worst lateness of a 1 ms ticker on a current-thread runtime during W1 + W2 + \
             W9 stream ({w9_n} entries): median {:.2} ms (runs: {}); the same ticker with \
             nothing else to do: median {:.2} ms (runs: {})",
            worst as f64 / 1e6,
            list(r.busy.iter().map(|n| *n as f64 / 1e6)),
            median_u64(&r.idle).unwrap_or(0) as f64 / 1e6,
            list(r.idle.iter().map(|n| *n as f64 / 1e6)),
        );
    }

    // Targets.
    println!();
    println!("targets (reported, never fatal):");
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "-",
    };
    for (k, limit) in [
        ("W1", 1.25),
        ("W2", 1.25),
        ("W3", 1.25),
        ("W4", 1.25),
        ("W7", 1.5),
        ("W8", 1.5),
    ] {
        let row = by_key(k);
        let r = ratio(med(row, 0), med(row, 1));
        println!(
            "  {k} runstate/floor    {:>7} <= {limit:.2}x   {}",
            fmt_ratio(r),
            verdict(r.map(|r| r <= limit))
        );
    }
    let w5 = med(by_key("W5"), 0).map(|s| s.median / 1000.0);
    println!(
        "  W5 runstate          {:>7} us/hold <= 1.50 us   {}",
        w5.map_or_else(|| "-".into(), |w| format!("{w:.2}")),
        verdict(w5.map(|w| w <= 1.5))
    );
    for row in &rows {
        let speedup = ratio(med(row, 2), med(row, 0));
        let need = if matches!(row.key, "W2" | "W9") {
            3.0
        } else {
            1.0
        };
        println!(
            "  {} tokio-fs/runstate {:>7} {} {need:.0}x   {}",
            row.key,
            fmt_ratio(speedup),
            if need > 1.0 { ">=" } else { "> " },
            verdict(speedup.map(|s| if need > 1.0 { s >= need } else { s > 1.0 }))
        );
    }
    let g = growth(0);
    println!(
        "  W9 runstate RSS growth {:>7} MiB < 16 MiB   {}",
        g.map_or_else(|| "-".into(), |g| format!("{:.2}", g as f64 / MIB)),
        verdict(g.map(|g| g < 16 << 20))
    );
    println!(
        "  R worst lateness       {:>7} ms < 5 ms      {}",
        worst.map_or_else(|| "-".into(), |w| format!("{:.2}", w as f64 / 1e6)),
        verdict(worst.map(|w| w < 5_000_000))
    );
    println!();
    println!("load:    {} (at end)", loadavg());

    // JSON.
    if ctx.filtered() {
        println!("(RUNSTATE_BENCH_ONLY / RUNSTATE_BENCH_IMPL set: no JSON written)");
        return;
    }
    let m = |row: &Row, i: usize| med(row, i).map_or(0.0, |s| s.median);
    let mut json = String::from("{\n");
    for row in &rows {
        let _ = write!(
            json,
            "  \"{}\": {{\"runstate\": {:.1}, \"floor\": {:.1}, \"tokio-fs\": {:.1}",
            row.key,
            m(row, 0),
            m(row, 1),
            m(row, 2)
        );
        if row.key == "W9" {
            let _ = write!(
                json,
                ", \"load_all\": {:.1}, \"runstate_rss_growth_bytes\": {}, \
                 \"load_all_rss_growth_bytes\": {}",
                load_all.map_or(0.0, |s| s.median),
                growth(0).unwrap_or(0),
                growth(3).unwrap_or(0)
            );
        }
        json.push_str("},\n");
    }
    let _ = writeln!(
        json,
        "  \"R\": {{\"worst_lateness_ns\": {}}}\n}}",
        worst.unwrap_or(0)
    );
    let target = target_dir();
    let path = target.join("runstate-bench.json");
    match std::fs::create_dir_all(&target).and_then(|()| std::fs::write(&path, &json)) {
        Ok(()) => println!("medians written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
