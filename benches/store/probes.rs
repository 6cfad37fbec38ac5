//! Measurements beside the workload table: the floor's encoding check, what identifying a
//! process and one blocking-pool round trip cost, R (the responsiveness of a runtime while
//! the store works on it), the peak thread count of many tasks holding many aids, and how
//! long single polls of the store's futures hold a thread.

use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use runstate::{Error, InstanceId};
use tokio::runtime::Runtime;

use crate::common;
use crate::config::{self, Ctx, Flavor};
use crate::floor;
use crate::measure::{PollLog, PollStats, PollTime};
use crate::runstate_imp::{Runstate, Store, aid, warm_store};
use crate::workloads::{self, AID, N};

/// Checks that the floor writer produces exactly the crate's bytes, so both do the same work;
/// returns the entry's size.
pub fn check_encoding(ctx: &Ctx) -> usize {
    let dir = ctx.scratch.fresh("encoding");
    let mut st = ctx.template.clone();
    st.id = InstanceId::random();
    ctx.rt(Flavor::Multi).block_on(async {
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
    let process = common::identity(&st, floor::identify);
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
pub fn identify_cost(pid: u32) -> (f64, f64) {
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
/// per-operation overhead of any work sent to the pool.
pub fn hop_cost(rt: &Runtime) -> f64 {
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

/// R, per repetition: the ticker's worst lateness with nothing else running (`idle`) and
/// during W1 + W2 + W9's stream (`busy`), in ns.
pub struct Responsiveness {
    pub idle: Vec<u64>,
    pub busy: Vec<u64>,
}

pub fn responsiveness(ctx: &Ctx) -> Responsiveness {
    let rt = ctx.rt(Flavor::Current);
    let (mut idle, mut busy) = (Vec::new(), Vec::new());
    if !ctx.wants("R") || !ctx.runs("runstate") {
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

/// Tasks in the threads probe, each with its own aid.
const THREAD_TASKS: usize = 400;
/// Holds per task in the threads probe.
const THREAD_HOLDS: usize = 20;

/// The threads probe: the process's thread count before the probe's runtime was built
/// (main thread, sampler, the bench's own runtimes), its peak while the probe ran, and how
/// long the probe took.
pub struct Threads {
    pub before: usize,
    pub peak: usize,
    pub elapsed: Duration,
}

impl Threads {
    /// The peak's threads beyond those that were there before: the probe runtime's workers
    /// and whatever it added.
    pub fn added(&self) -> usize {
        self.peak.saturating_sub(self.before)
    }
}

/// The process's thread count, from /proc/self/status.
fn thread_count() -> usize {
    crate::measure::status_value("Threads:") as usize
}

/// 400 tasks on a fresh multi-thread runtime (2 workers), each making 20 holds of its own
/// aid (save, a 200 us sleep inside the hold, destroy), while a thread samples the process's
/// thread count every half millisecond. Run it before anything else has used the blocking
/// pool of the bench's own runtime, whose idle threads would otherwise count as "before"
/// and then leave during the probe.
pub fn threads(ctx: &Ctx) -> Option<Threads> {
    if !ctx.wants("threads") || !ctx.runs("runstate") {
        return None;
    }
    let dir = ctx.scratch.fresh("threads");
    let states = common::states(&ctx.template, THREAD_TASKS);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            let _ = started_tx.send(());
            loop {
                peak.fetch_max(thread_count(), Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    started_rx.recv().expect("the sampler started");
    let before = thread_count();
    let started = Instant::now();
    let rt = config::multi_thread_runtime();
    rt.block_on(async {
        let store = Store::new(&dir);
        let tasks: Vec<_> = states
            .into_iter()
            .enumerate()
            .map(|(i, st)| {
                let store = store.clone();
                let a = aid(i as u16);
                tokio::spawn(async move {
                    for _ in 0..THREAD_HOLDS {
                        store
                            .with_aid(a, async |c| {
                                c.save(&st).await?;
                                tokio::time::sleep(Duration::from_micros(200)).await;
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
        store.close().await.expect("close");
    });
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    drop(rt);
    std::fs::remove_dir_all(&dir).expect("clean up");
    eprintln!("  threads: 1 run in {:.1} s", elapsed.as_secs_f64());
    Some(Threads {
        before,
        peak: peak.load(Ordering::Relaxed),
        elapsed,
    })
}

/// The workloads whose polls the stall probe times.
pub const STALL_KEYS: [&str; 5] = ["W1", "W2", "W7", "W8", "W9"];

/// The stall probe: for each runtime and workload, the wall and CPU time of every poll of
/// every hold's future, in ns.
pub struct Stall {
    pub polls: Vec<(Flavor, &'static str, Vec<PollTime>)>,
    /// The control: runs of plain arithmetic about as long as a poll that spends its budget,
    /// as many as the store's polls on one runtime ([`crate::measure::control`]).
    pub control: Vec<PollTime>,
}

/// What the polls' CPU times say about the longest ones: whether a long poll was the store's
/// own work or its thread kept off the CPU.
pub struct CpuView {
    /// The most CPU time one poll used.
    pub worst_cpu: u64,
    /// The longest poll (wall) that was on the CPU for at least half of it: a long poll of
    /// the store's own work, not a preempted one.
    pub worst_on_cpu: u64,
    /// Polls over 1 ms of wall time, and the most CPU time any of them used.
    pub over_1ms: usize,
    pub over_1ms_worst_cpu: u64,
}

impl Stall {
    fn of(&self, flavor: Flavor) -> impl Iterator<Item = PollTime> + '_ {
        self.polls
            .iter()
            .filter(move |(f, _, _)| *f == flavor)
            .flat_map(|(_, _, v)| v.iter().copied())
    }

    /// The percentiles of the polls' wall times over every workload on `flavor`'s runtime.
    pub fn stats(&self, flavor: Flavor) -> Option<PollStats> {
        PollStats::of(self.of(flavor).map(|p| p.wall))
    }

    /// The polls' CPU times on `flavor`'s runtime, beside their wall times.
    pub fn cpu(&self, flavor: Flavor) -> CpuView {
        CpuView::of(self.of(flavor))
    }
}

impl CpuView {
    pub fn of(polls: impl IntoIterator<Item = PollTime>) -> CpuView {
        let mut v = CpuView {
            worst_cpu: 0,
            worst_on_cpu: 0,
            over_1ms: 0,
            over_1ms_worst_cpu: 0,
        };
        for p in polls {
            v.worst_cpu = v.worst_cpu.max(p.cpu);
            if p.cpu * 2 >= p.wall {
                v.worst_on_cpu = v.worst_on_cpu.max(p.wall);
            }
            if p.wall > 1_000_000 {
                v.over_1ms += 1;
                v.over_1ms_worst_cpu = v.over_1ms_worst_cpu.max(p.cpu);
            }
        }
        v
    }
}

/// Runs W1, W2, W7, W8 and W9 once more for runstate on each runtime, untimed, with every
/// hold's future wrapped in [`Timed`]: how long single polls of the store's futures hold
/// the thread. (Each poll of a `with_aid` future includes its closure and the streams the
/// closure polls; the closures only call the store.)
pub fn stall(ctx: &Ctx) -> Option<Stall> {
    if !ctx.wants("stall") || !ctx.runs("runstate") {
        return None;
    }
    let started = Instant::now();
    let mut polls = Vec::new();
    let mut dirs = Vec::new();
    let workloads = workloads::all(ctx);
    for flavor in Flavor::ALL {
        for w in workloads.iter().filter(|w| STALL_KEYS.contains(&w.key)) {
            let log = Arc::new(PollLog::default());
            let dir = ctx.scratch.fresh("stall");
            w.once(
                ctx,
                ctx.rt(flavor),
                &Runstate::logging_polls(log.clone()),
                &dir,
            );
            polls.push((flavor, w.key, log.take()));
            dirs.push(dir);
        }
    }
    // As many runs as the store's polls on one runtime, each about as long as a poll that
    // spends the budget, on the thread that polled most of them.
    let n = polls
        .iter()
        .filter(|(f, _, _)| *f == Flavor::Multi)
        .map(|(_, _, v)| v.len())
        .sum();
    let control = crate::measure::control(n, 35_000);
    // Removed only now: the kernel frees a removed file's inode and name in RCU callbacks
    // (softirq, batched), and without IRQ time accounting their time lands on whatever
    // thread runs then, as CPU time of a poll of the next workload.
    for dir in dirs {
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
    eprintln!(
        "  stall: 1 run each in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Some(Stall { polls, control })
}
