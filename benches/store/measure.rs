//! How things are measured: the timed section, repetitions in rotating order, medians, and
//! the peak RSS.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Ctx;
use crate::workloads::Imp;

/// One timed run: its duration and, where measured, the growth of peak RSS.
pub struct Sample {
    pub elapsed: Duration,
    pub rss: Option<u64>,
}

/// The repetitions of one implementation in one workload: ns per op, RSS growth in bytes.
#[derive(Default, Clone)]
pub struct Series {
    pub ns: Vec<f64>,
    pub rss: Vec<u64>,
}

impl Series {
    pub fn stats(&self) -> Option<Stats> {
        stats(&self.ns)
    }
}

#[derive(Clone, Copy)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stats(v: &[f64]) -> Option<Stats> {
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

pub fn median_u64(v: &[u64]) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// The timed section of one run, started and stopped by the implementation around exactly
/// the work it measures (setup such as opening a store stays outside).
///
/// With `RUNSTATE_BENCH_MARK=1`, its start and end also make a failing `faccessat2` on
/// `/runstate-bench-mark/{start,end}`, so that `strace -f` output can be cut to the timed
/// sections (to count system calls per operation). With `rss`, starting also resets the
/// peak RSS, and the sample carries its growth.
pub struct Timing {
    rss: bool,
    rss_start: Option<u64>,
    began: Option<Instant>,
    elapsed: Option<Duration>,
}

/// The control and acknowledgement fifos of a `perf stat --control` (from
/// `RUNSTATE_BENCH_PERF_CTL` and `RUNSTATE_BENCH_PERF_ACK`), if it counts this run.
struct PerfCtl {
    ctl: std::fs::File,
    ack: std::io::BufReader<std::fs::File>,
}

/// Sends `cmd` (`enable` or `disable`) to the `perf stat` counting this process and waits
/// for its acknowledgement, so that the counters cover exactly the timed section.
fn perf(cmd: &str) {
    use std::io::{BufRead as _, Write as _};
    static CTL: std::sync::OnceLock<Option<std::sync::Mutex<PerfCtl>>> = std::sync::OnceLock::new();
    let ctl = CTL.get_or_init(|| {
        let ctl = std::env::var_os("RUNSTATE_BENCH_PERF_CTL")?;
        let ack = std::env::var_os("RUNSTATE_BENCH_PERF_ACK")?;
        let ctl = std::fs::OpenOptions::new()
            .write(true)
            .open(ctl)
            .expect("open perf's control fifo");
        let ack = std::fs::File::open(ack).expect("open perf's ack fifo");
        Some(std::sync::Mutex::new(PerfCtl {
            ctl,
            ack: std::io::BufReader::new(ack),
        }))
    });
    if let Some(ctl) = ctl {
        let mut ctl = ctl.lock().expect("perf control");
        writeln!(ctl.ctl, "{cmd}").expect("write to perf's control fifo");
        let mut line = String::new();
        ctl.ack.read_line(&mut line).expect("read perf's ack");
    }
}

fn mark(path: &std::ffi::CStr) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| crate::config::env_on("RUNSTATE_BENCH_MARK")) {
        let _ = rustix::fs::access(path, rustix::fs::Access::EXISTS);
    }
}

impl Timing {
    pub fn new(rss: bool) -> Timing {
        Timing {
            rss,
            rss_start: None,
            began: None,
            elapsed: None,
        }
    }

    pub fn start(&mut self) {
        self.rss_start = self.rss.then(rss_begin);
        mark(c"/runstate-bench-mark/start");
        perf("enable");
        self.began = Some(Instant::now());
    }

    pub fn stop(&mut self) {
        let began = self
            .began
            .expect("the timed section started before it stopped");
        self.elapsed = Some(began.elapsed());
        perf("disable");
        mark(c"/runstate-bench-mark/end");
    }

    /// The run's sample; reads the peak RSS now, so call it right after the run.
    pub fn sample(self) -> Sample {
        Sample {
            elapsed: self.elapsed.expect("the implementation timed its section"),
            rss: self.rss_start.map(|s| rss_peak().saturating_sub(s)),
        }
    }
}

/// Runs `f` for every implementation in `imps` that the knobs let run, `reps` times, in
/// rotating order, each time in a fresh directory; returns each implementation's name with
/// its ns per op (and RSS growth where measured).
pub fn bench(
    ctx: &Ctx,
    label: &str,
    imps: &[&dyn Imp],
    reps: usize,
    ops: usize,
    mut f: impl FnMut(&dyn Imp, &Path) -> Sample,
) -> Vec<(&'static str, Series)> {
    let mut out: Vec<_> = imps.iter().map(|i| (i.name(), Series::default())).collect();
    let started = Instant::now();
    for rep in 0..reps {
        for k in 0..imps.len() {
            let i = (k + rep) % imps.len();
            if !ctx.runs(imps[i].name()) {
                continue;
            }
            let dir = ctx.scratch.fresh(label);
            let s = f(imps[i], &dir);
            std::fs::remove_dir_all(&dir).expect("clean up");
            out[i].1.ns.push(s.elapsed.as_nanos() as f64 / ops as f64);
            if ctx.counting {
                eprintln!("  timed: {label} {} {ops} ops", imps[i].name());
            }
            out[i].1.rss.extend(s.rss);
        }
    }
    eprintln!(
        "  {label}: {reps} reps in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    out
}

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

/// A `key:` line of /proc/self/status, as a number (the unit, if any, dropped).
pub fn status_value(key: &str) -> u64 {
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
    status_value("VmRSS:") * 1024
}

fn rss_peak() -> u64 {
    status_value("VmHWM:") * 1024
}

/// One poll: how long it held the thread (wall clock) and how much CPU time that thread
/// spent in it (`CLOCK_THREAD_CPUTIME_ID`), in ns. A poll much longer in wall time than in
/// CPU time was off the CPU for the difference (preempted by another process, or its vCPU
/// by the host): the thread was kept from other tasks, but not by the store's work.
#[derive(Clone, Copy, Debug)]
pub struct PollTime {
    pub wall: u64,
    pub cpu: u64,
}

/// The single polls from every [`Timed`] future that shares it.
#[derive(Default)]
pub struct PollLog(std::sync::Mutex<Vec<PollTime>>);

impl PollLog {
    fn push(&self, t: PollTime) {
        self.0.lock().expect("poll log").push(t);
    }

    pub fn take(&self) -> Vec<PollTime> {
        std::mem::take(&mut *self.0.lock().expect("poll log"))
    }
}

/// The CPU time this thread has used, in ns. A poll runs on one thread from start to end, so
/// the difference of two reads around it is that poll's CPU time.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `n` runs of a fixed piece of arithmetic that takes about `ns` on this thread, timed as
/// [`Timed`] times a poll: a control for the stall probe. It makes no system call and touches
/// no new memory, so its long runs are the machine's (another process, or the host taking the
/// vCPU), and so are as many of the store's.
pub fn control(n: usize, ns: u64) -> Vec<PollTime> {
    let spin = |k: u64| {
        let mut x = 1u64;
        for i in 0..k {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        x
    };
    // Calibrate on the fastest of a few runs, so a preempted one does not skew it.
    let mut k = 10_000u64;
    let fastest = (0..20)
        .map(|_| {
            let t = Instant::now();
            spin(k);
            t.elapsed().as_nanos().max(1) as u64
        })
        .min()
        .unwrap_or(1);
    k = (k * ns / fastest).max(1);
    (0..n)
        .map(|_| {
            let cpu = thread_cpu_ns();
            let began = Instant::now();
            spin(k);
            let wall = began.elapsed().as_nanos() as u64;
            PollTime {
                wall,
                cpu: thread_cpu_ns().saturating_sub(cpu),
            }
        })
        .collect()
}

/// A future that logs how long each of its `poll`s holds the thread, and the thread's CPU
/// time in it: wrapped around a store's future, the time the store (and the closure that
/// only calls the store) keeps a runtime's thread from every other task between two awaits.
pub struct Timed<F> {
    inner: std::pin::Pin<Box<F>>,
    log: std::sync::Arc<PollLog>,
}

impl<F: Future> Timed<F> {
    pub fn new(inner: F, log: std::sync::Arc<PollLog>) -> Timed<F> {
        Timed {
            inner: Box::pin(inner),
            log,
        }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        let cpu = thread_cpu_ns();
        let began = Instant::now();
        let out = this.inner.as_mut().poll(cx);
        let wall = began.elapsed().as_nanos() as u64;
        let cpu = thread_cpu_ns().saturating_sub(cpu);
        this.log.push(PollTime { wall, cpu });
        out
    }
}

/// Percentiles of single polls, in ns.
pub struct PollStats {
    pub polls: usize,
    pub p99: u64,
    pub p999: u64,
    pub worst: u64,
}

impl PollStats {
    pub fn of(polls: impl IntoIterator<Item = u64>) -> Option<PollStats> {
        let mut v: Vec<u64> = polls.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        // The smallest value that at least `q` of the polls do not exceed.
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(PollStats {
            polls: v.len(),
            p99: at(0.99),
            p999: at(0.999),
            worst: v[v.len() - 1],
        })
    }
}
