//! `cargo bench --bench exit`: how soon `AsyncStore::wait_exit` completes after the process
//! it awaits exits, with a pidfd and with the `/proc` fallback (`Options::use_pidfds(false)`).
//!
//! Each run starts `sleep 60`, records it in a store on tmpfs and loads the entry back, polls
//! a `wait_exit` future once (so its pidfd is registered, or its first look at `/proc` done),
//! lets a random 0-40 ms pass (where the kill falls in the fallback's 40 ms interval matters),
//! then times from just before `kill(SIGKILL)` to the future's completion. The kernel's
//! teardown of the process is inside the figure: it is part of the wait a supervisor sees.
//! Prints median, p99 and maximum per way of waiting and runtime; takes about 30 seconds.
//! `RUNSTATE_BENCH_QUICK=1` does a tenth of the runs.

use std::pin::pin;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use runstate::{Aid, AsyncStore, InstanceId, Options, State};
use rustix::process::{Pid, Signal};

/// Runs per row.
const RUNS: usize = 200;

#[derive(Clone, Copy)]
enum Flavor {
    CurrentThread,
    MultiThread,
}

fn runtime(flavor: Flavor) -> tokio::runtime::Runtime {
    match flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Flavor::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    }
    .enable_all()
    .build()
    .expect("a tokio runtime")
}

/// A small xorshift generator for the delays: reproducibility is not needed, spread is.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn kill(child: &Child) {
    let pid = Pid::from_raw(child.id() as i32).expect("a child's pid");
    rustix::process::kill_process(pid, Signal::KILL).expect("kill the child");
}

/// The latencies of `runs` waits, sorted.
async fn measure(store: &AsyncStore<String>, runs: usize, rng: &mut Rng) -> Vec<Duration> {
    let aid = Aid::new(1).expect("aid 1");
    let mut latencies = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut child = Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let id = InstanceId::random();
        let state = store
            .with_aid(aid, async |c| {
                c.save(&State::new(id, child.id(), "sleep 60".to_string()))
                    .await?;
                c.load(id).await
            })
            .await
            .expect("save and load")
            .expect("just saved");

        let mut wait = pin!(store.wait_exit(&state));
        assert!(wait.as_mut().now_or_never().is_none(), "the child runs");
        tokio::time::sleep(Duration::from_micros(rng.below(40_000))).await;
        let start = Instant::now();
        kill(&child);
        wait.await.expect("wait_exit");
        latencies.push(start.elapsed());

        child.wait().expect("reap the child");
        store
            .with_aid(aid, async |c| c.destroy(id).await)
            .await
            .expect("destroy");
    }
    latencies.sort();
    latencies
}

fn show(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn main() {
    let runs = if std::env::var_os("RUNSTATE_BENCH_QUICK").is_some() {
        RUNS / 10
    } else {
        RUNS
    };
    let base = std::env::var_os("RUNSTATE_BENCH_DIR").unwrap_or_else(|| "/dev/shm".into());
    let dir = tempfile::tempdir_in(&base)
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary run directory");
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    let mut rng = Rng(seed);

    println!(
        "wait_exit: from kill(SIGKILL) of a recorded child to the wait's completion, {runs} runs \
         per row (fallback interval {:?})",
        Options::EXIT_POLL_INTERVAL
    );
    println!(
        "{:<8} {:<15} {:>10} {:>10} {:>10}",
        "way", "runtime", "median", "p99", "max"
    );
    let rows = [
        ("pidfd", true, Flavor::CurrentThread, "current-thread"),
        ("pidfd", true, Flavor::MultiThread, "multi-thread(2)"),
        ("polling", false, Flavor::CurrentThread, "current-thread"),
        ("polling", false, Flavor::MultiThread, "multi-thread(2)"),
    ];
    for (way, pidfds, flavor, flavor_name) in rows {
        let store =
            AsyncStore::<String>::with_options(dir.path(), Options::new().use_pidfds(pidfds));
        let lat = runtime(flavor).block_on(measure(&store, runs, &mut rng));
        let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
        println!(
            "{way:<8} {flavor_name:<15} {:>10} {:>10} {:>10}",
            show(lat[lat.len() / 2]),
            show(p99),
            show(lat[lat.len() - 1]),
        );
    }
}
