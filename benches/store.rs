//! `cargo bench --bench store`: every workload against three implementations, side by side.
//!
//! - `runstate`: the crate's public API on a tokio multi-thread runtime with 2 workers, and
//!   again on a current-thread runtime (the `CT` figures).
//! - `floor`: the same on-disk work (names, encoding, O_TMPFILE + linkat publish, one flock
//!   per hold) as plain synchronous rustix code on one thread: the cost of the system calls
//!   and the encoding by themselves.
//! - `tokio-fs`: the same layout written by hand on `tokio::fs`, one `.await` per file
//!   operation, flock through `spawn_blocking`, a `tokio::sync::Mutex` per aid.
//!
//! Workloads W1 to W9 as before; W10 to W12 hold 2,000 aids in turn (a cold hold of an
//! existing aid, a first hold that creates it, and a hold after one pass through them all).
//! Every workload runs on both runtimes (`"CT"` in the JSON). Beside the table: `threads`
//! (the peak thread count while 400 tasks hold their own aids), `stall` (how long single
//! polls of the store's futures hold a thread, in wall and in thread CPU time, beside a
//! control of plain arithmetic) and `R` (a 1 ms ticker's worst lateness on a
//! current-thread runtime while the store works on it, and with nothing else running).
//! The targets of issue 13 are reported, never fatal.
//!
//! Runs on tmpfs (`/dev/shm`, or `RUNSTATE_BENCH_DIR`); refuses a disk unless
//! `RUNSTATE_BENCH_ALLOW_DISK=1`. `RUNSTATE_BENCH_QUICK=1` runs a shorter version.
//! Prints a table and writes the medians to `target/runstate-bench.json`.
//!
//! For profiling: `RUNSTATE_BENCH_ONLY=W1,W4` runs only those workloads (`R` for the
//! responsiveness test, `threads` for the peak thread count, `stall` for the poll times), `RUNSTATE_BENCH_IMPL=runstate` only that implementation (no JSON is
//! written then), and `RUNSTATE_BENCH_MARK=1` makes every timed section start and end with a
//! failing `faccessat2("/runstate-bench-mark/{start,end}")`, so an `strace -f` log can be cut
//! to the timed sections to count system calls per operation.
//! `RUNSTATE_BENCH_FLAVOR=multi` (or `ct`) runs the workloads on that runtime only,
//! `RUNSTATE_BENCH_REPS=N` makes N repetitions of every figure, `RUNSTATE_BENCH_SPAWN=1`
//! makes runstate's W2 and W9 read from a spawned task (not `block_on`'s thread), and
//! `RUNSTATE_BENCH_PERF_CTL=FIFO` with `RUNSTATE_BENCH_PERF_ACK=FIFO` enables the counters of
//! a `perf stat -D -1 --control fifo:CTL,ACK` for exactly the timed sections. With either
//! counting knob, each timed section prints its operations (`timed: ...` on stderr).
//! `benches/syscalls.sh` drives all this: system calls per operation, runstate beside floor.
//! Figures are medians over repetitions; each repetition works in a fresh directory, made
//! and filled outside the timed section and removed afterwards.
//!
//! The modules: `config` (knobs, runtimes, directories), `workloads` (each workload's setup
//! and checks, and the `Imp` trait the implementations fill in), `runstate_imp`, `floor` and
//! `tokio_fs` (the implementations), `measure` (timing, repetitions, statistics), `probes`
//! (measurements beside the table) and `report` (table, targets, JSON).

#[path = "store/common.rs"]
mod common;
#[path = "store/config.rs"]
mod config;
#[path = "store/floor.rs"]
mod floor;
#[path = "store/measure.rs"]
mod measure;
#[path = "store/probes.rs"]
mod probes;
#[path = "store/report.rs"]
mod report;
#[path = "store/runstate_imp.rs"]
mod runstate_imp;
#[path = "store/tokio_fs.rs"]
mod tokio_fs;
#[path = "store/workloads.rs"]
mod workloads;

use config::{Ctx, Flavor};

fn main() {
    let ctx = Ctx::from_env();
    // First: the blocking pool of the bench's runtime must not have idle threads yet.
    let threads = probes::threads(&ctx);
    let setup = report::Setup {
        entry_size: probes::check_encoding(&ctx),
        identify: probes::identify_cost(ctx.template.pid),
        hop: probes::hop_cost(ctx.rt(Flavor::Multi)),
    };
    report::header(&ctx, &setup);
    eprintln!("running ...");
    // Before the workloads: the kernel frees the dentries and inodes of their removed
    // directories (100,000 files for W9) later, in softirq time charged to whichever thread
    // runs, and single polls then showed 1-2 ms of CPU that was not the store's (W9 then the
    // probe: 1.2-1.5 ms; the probe alone: 110 us at most).
    let stall = probes::stall(&ctx);
    let mut rows = Vec::new();
    for w in workloads::all(&ctx).iter().filter(|w| ctx.wants(w.key)) {
        for flavor in Flavor::ALL.into_iter().filter(|&f| ctx.on(f)) {
            rows.push(workloads::run(&ctx, w, flavor));
        }
    }
    let results = report::Results {
        rows,
        stall,
        r: probes::responsiveness(&ctx),
        threads,
    };
    report::print(&ctx, &results);
    report::json(&ctx, &results);
}
