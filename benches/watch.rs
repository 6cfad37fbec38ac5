//! `cargo bench --bench watch`: how soon a watcher hears of another process's save, and what
//! `Cursor::replace` costs against `save` (and against the destroy-then-save it replaces).
//!
//! - Latency: a child process (this binary again, on a 2-worker multi-thread runtime) saves
//!   one entry each time the parent asks, and prints the wall-clock time just before and just
//!   after its `save`; the parent notes the time its `watch` stream yields the `Saved`. From the save's start is the latency
//!   a caller sees; from its end can be negative, as the watcher may hear of the new name
//!   before the saving process has returned from `save`. One save at a time, so it is the
//!   latency of one change, not of a queue. Both runtime flavors for the watcher.
//! - Cost: one aid held, N entries saved, then each replaced, then each destroyed and saved
//!   again; ns per operation, median of the repetitions.
//!
//! Runs on tmpfs (`/dev/shm`, or `RUNSTATE_BENCH_DIR`) in a few seconds.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use runstate::{Aid, AsyncStore, Change, Error, InstanceId, State};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

const CHILD_VAR: &str = "RUNSTATE_WATCH_BENCH_CHILD";
const LATENCY_ROUNDS: usize = 2000;
const N: usize = 1000;
const REPS: usize = 11;

/// An entry of a realistic size, as a launcher would record: about 1.9 KB encoded.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct LaunchConfig {
    command: Vec<String>,
    env: Vec<(String, String)>,
    seq: u64,
}

fn config(seq: u64) -> LaunchConfig {
    LaunchConfig {
        command: vec!["/usr/bin/sandbox".into(), "--profile=strict".into()],
        env: (0..24)
            .map(|i| {
                (
                    format!("VARIABLE_{i}"),
                    format!("/some/fairly/long/value/{i}/{seq}"),
                )
            })
            .collect(),
        seq,
    }
}

type Store = AsyncStore<LaunchConfig>;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn runtime(multi: bool) -> Runtime {
    let mut builder = if multi {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().expect("a runtime")
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD_VAR) {
        return child(Path::new(&dir));
    }
    let base = std::env::var("RUNSTATE_BENCH_DIR").unwrap_or_else(|_| "/dev/shm".into());
    println!("load:    {} (at start)", load());
    println!("watch latency: another process saves one entry at a time; {LATENCY_ROUNDS} saves");
    for multi in [false, true] {
        let dir = tempfile::tempdir_in(&base).expect("a bench directory");
        let (from_end, from_start) = runtime(multi).block_on(latency(dir.path()));
        let (e50, e99) = (percentile(&from_end, 50), percentile(&from_end, 99));
        let (s50, s99) = (percentile(&from_start, 50), percentile(&from_start, 99));
        println!(
            "{:<16} from the save's start: median {:>6.1} us, p99 {:>7.1} us; \
             from its end: median {:>6.1} us, p99 {:>7.1} us",
            if multi {
                "multi-thread"
            } else {
                "current-thread"
            },
            s50,
            s99,
            e50,
            e99
        );
    }

    println!();
    println!(
        "replace against save: {N} entries in one aid, one hold; median of {REPS} runs (min-max)"
    );
    for multi in [true, false] {
        let mut save = Vec::new();
        let mut replace = Vec::new();
        let mut destroy_save = Vec::new();
        for _ in 0..REPS {
            let dir = tempfile::tempdir_in(&base).expect("a bench directory");
            let (s, r, d) = runtime(multi)
                .block_on(costs(dir.path()))
                .expect("the store works");
            save.push(s);
            replace.push(r);
            destroy_save.push(d);
        }
        let flavor = if multi {
            "multi-thread"
        } else {
            "current-thread"
        };
        for (what, v) in [
            ("save", &save),
            ("replace", &replace),
            ("destroy+save", &destroy_save),
        ] {
            let (med, min, max) = spread(v);
            println!("{flavor:<16} {what:<14} {med:>8.0} ns/op ({min:.0}-{max:.0})");
        }
        // Per run, so that both sides of a ratio saw the same load.
        let ratios: Vec<f64> = replace.iter().zip(&save).map(|(r, s)| r / s).collect();
        let (med, min, max) = spread(&ratios);
        println!("{flavor:<16} replace/save   {med:>8.2}x    ({min:.2}-{max:.2}, per run)");
    }
    println!("load:    {} (at end)", load());
}

/// Latencies in microseconds from the end and from the start of each of the child's saves
/// to the watcher's `Saved`.
async fn latency(run_dir: &Path) -> (Vec<f64>, Vec<f64>) {
    let store = Store::new(run_dir);
    let aid = Aid::new(1).expect("an aid");
    // The aid exists before the watch, as it does in a running system.
    store
        .with_aid(aid, async |c| c.len().await)
        .await
        .expect("the store works");
    let mut changes = store.watch().await.expect("a watch");
    let mut kid = Command::new(std::env::current_exe().expect("this binary"))
        .env(CHILD_VAR, run_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the child starts");
    let mut to_kid = kid.stdin.take().expect("piped");
    let mut from_kid = BufReader::new(kid.stdout.take().expect("piped"));
    let (mut from_end, mut from_start) = (Vec::new(), Vec::new());
    let mut line = String::new();
    for round in 0..LATENCY_ROUNDS + 50 {
        writeln!(to_kid, "go").expect("the child reads");
        to_kid.flush().expect("the child reads");
        let heard = loop {
            match changes.next().await {
                Some(Ok(Change::Saved { .. })) => break now_ns(),
                Some(Ok(_)) => {}
                other => panic!("the watch ended or failed: {other:?}"),
            }
        };
        line.clear();
        from_kid.read_line(&mut line).expect("the child answers");
        let mut times = line
            .split_whitespace()
            .map(|t| t.parse::<u128>().expect("a time"));
        let (start, end) = (times.next().expect("start"), times.next().expect("end"));
        // The first rounds warm up both processes.
        if round >= 50 {
            // Negative when the change was heard before the save had returned: the link
            // is what the watcher sees, and the save still has to close its file and return.
            from_end.push((heard as i128 - end as i128) as f64 / 1000.0);
            from_start.push((heard as i128 - start as i128) as f64 / 1000.0);
        }
    }
    drop(to_kid);
    kid.wait().expect("the child ends");
    (from_end, from_start)
}

/// The child: one save per line read, each destroying the previous entry afterwards so the
/// directory stays small; prints the wall-clock times around each save.
fn child(run_dir: &Path) {
    // Multi-threaded, where a save runs in place: the cheapest save the store makes.
    let rt = runtime(true);
    let store = Store::new(run_dir);
    let aid = Aid::new(1).expect("an aid");
    let mut previous = None;
    let mut out = std::io::stdout().lock();
    for (seq, line) in std::io::stdin().lock().lines().enumerate() {
        if line.is_err() {
            break;
        }
        let state = State::new(InstanceId::random(), std::process::id(), config(seq as u64));
        let (start, end) = rt.block_on(async {
            let start = now_ns();
            store
                .with_aid(aid, async |c| c.save(&state).await)
                .await
                .expect("save");
            (start, now_ns())
        });
        writeln!(out, "{start} {end}").expect("the parent reads");
        out.flush().expect("the parent reads");
        if let Some(id) = previous.replace(state.id) {
            rt.block_on(store.with_aid(aid, async |c| c.destroy(id).await))
                .expect("destroy");
        }
    }
}

/// ns per save, per replace and per destroy-then-save, N of each in one hold.
async fn costs(run_dir: &Path) -> Result<(f64, f64, f64), Error> {
    let store = Store::new(run_dir);
    let aid = Aid::new(2)?;
    let states: Vec<State<LaunchConfig>> = (0..N)
        .map(|i| State::new(InstanceId::random(), std::process::id(), config(i as u64)))
        .collect();
    let newer: Vec<State<LaunchConfig>> = states
        .iter()
        .map(|s| State::new(s.id, s.pid, config(s.config.seq + 1)))
        .collect();
    let per_op = |d: Duration| d.as_nanos() as f64 / N as f64;
    store
        .with_aid(aid, async |c| {
            let start = Instant::now();
            for s in &states {
                c.save(s).await?;
            }
            let save = per_op(start.elapsed());
            let start = Instant::now();
            for s in &newer {
                assert!(c.replace(s).await?);
            }
            let replace = per_op(start.elapsed());
            let start = Instant::now();
            for s in &states {
                c.destroy(s.id).await?;
                c.save(s).await?;
            }
            let destroy_save = per_op(start.elapsed());
            Ok((save, replace, destroy_save))
        })
        .await
}

/// The load averages, as the machine is shared and the figures depend on it.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn percentile(v: &[f64], p: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) * p) / 100]
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}
