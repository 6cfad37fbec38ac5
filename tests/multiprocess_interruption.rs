//! Interrupted holders across real processes: a writer SIGKILLed at random moments, and
//! `with_aid` futures dropped at random points while another process contends. After each,
//! the aid is free for every process, its entries are whole and decode, completed work is
//! kept and no temporary file is left.
//!
//! Other processes are this very test binary, run again with only the `child_process` test
//! selected, in a role (the harness is in `tests/common/child.rs` and
//! `tests/common/multiprocess.rs`). Outside a role `child_process` passes at once, so a
//! plain `cargo test` is unaffected.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use common::child::{DEADLOCK, Flavor};
use common::multiprocess::{BoxErr, Cfg, base_seed, open_store, run_dir, spawn_kid, verify_aid};
use common::{XorShift, aid, check_states, foreign_names};
use futures::TryStreamExt;
use runstate::{Aid, AsyncStore, InstanceId, State};
use tokio::time::timeout;

// ---------------------------------------------------------------------------------------
// 1. A writer SIGKILLed at random moments.

async fn crash(flavor: Flavor, kills: usize, seed: u64) {
    let (_tmp, run) = run_dir();
    let aid = aid(42);
    let main = open_store(&run);
    let mut rng = XorShift::new(seed);
    let started = Instant::now();
    let (mut temps_left, mut most) = (0, 0);
    for round in 0..kills {
        // This process reads under the lock all along, so the child is also killed while
        // waiting for the lock, and this process waits on a lock its holder dies with.
        let stop = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn({
            let (store, stop) = (main.clone(), stop.clone());
            async move {
                let mut reads = 0u32;
                while !stop.load(Ordering::Acquire) {
                    let all = timeout(DEADLOCK, store.with_aid(aid, async |c| c.load_all().await))
                        .await
                        .map_err(|_| "reader: with_aid not granted in time".to_string())?
                        .map_err(|e| format!("reader: {e}"))?;
                    check_states(&all)?;
                    reads += 1;
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                Ok::<_, String>(reads)
            }
        });

        let mut kid = spawn_kid(
            format!("crash child {round} (seed {seed})"),
            "crash",
            &run,
            aid,
            flavor.alternate(round),
            &[("RUNSTATE_CHILD_SEED", rng.next_u64().to_string())],
        );
        kid.expect("READY").await;
        tokio::time::sleep(Duration::from_millis(1 + rng.below(30))).await;
        kid.kill().await;

        stop.store(true, Ordering::Release);
        timeout(DEADLOCK, reader)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the reader deadlocked"))
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));

        // The lock is free, for this process's long-lived store...
        let seen = verify_aid(&main, aid)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        if foreign_names(&run, aid)
            .iter()
            .any(|n| n.starts_with(".tmp-"))
        {
            temps_left += 1;
        }
        // ...and for a new one, whose first hold sweeps what the killed child left.
        let fresh = open_store(&run);
        let fresh_seen = verify_aid(&fresh, aid)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            fresh_seen.keys().collect::<Vec<_>>(),
            seen.keys().collect::<Vec<_>>(),
            "round {round}"
        );
        let foreign = foreign_names(&run, aid);
        assert!(
            foreign.is_empty(),
            "round {round}: files left after with_aid: {foreign:?}"
        );
        let every: Vec<(Aid, State<Cfg>)> = timeout(DEADLOCK, fresh.entries().try_collect())
            .await
            .expect("store.entries() deadlocked")
            .unwrap_or_else(|e| panic!("round {round}: store.entries(): {e}"));
        assert_eq!(every.len(), seen.len(), "round {round}");
        assert!(
            every
                .iter()
                .all(|(a, s)| *a == aid && seen.get(&s.id) == Some(s))
        );
        most = most.max(seen.len());

        // ...and for another process.
        let mut check = spawn_kid(
            format!("verifier after kill {round}"),
            "verify",
            &run,
            aid,
            flavor.alternate(round + 1),
            &[("RUNSTATE_CHILD_NO_FOREIGN", "1".into())],
        );
        let n = check.expect("OK").await;
        check.finish().await;
        assert_eq!(n, seen.len().to_string(), "round {round}");
    }
    eprintln!(
        "crash({flavor:?}, seed {seed}): {kills} kills, {temps_left} left a temporary file, \
         up to {most} entries, in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn crash_current_thread() {
    crash(Flavor::Current, 20, base_seed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_multi_thread() {
    crash(Flavor::Multi, 20, base_seed() + 1).await;
}

// ---------------------------------------------------------------------------------------
// 2. with_aid futures dropped at random points, while another process contends.

/// What the cancelled and completed calls of one task imply about the final contents.
#[derive(Default)]
struct Ledger {
    /// Saved by a call that completed, and never a destroy target since.
    present: BTreeSet<InstanceId>,
    /// Destroyed by a call that completed.
    absent: BTreeSet<InstanceId>,
    /// Every id this task tried to save and has not yet tried to destroy.
    live: Vec<InstanceId>,
    completed: u32,
    cancelled: u32,
}

async fn cancel_loop(
    store: AsyncStore<Cfg>,
    aid: Aid,
    mut rng: XorShift,
    rounds: u32,
) -> Result<Ledger, BoxErr> {
    let mut ledger = Ledger::default();
    let pid = std::process::id();
    for _ in 0..rounds {
        let x = State::new(InstanceId::random(), pid, Cfg::small(rng.next_u64()));
        let y = State::new(InstanceId::random(), pid, Cfg::small(rng.next_u64()));
        let mut victims = Vec::new();
        while ledger.live.len() > 12 && victims.len() < 3 {
            let i = rng.below(ledger.live.len() as u64) as usize;
            victims.push(ledger.live.swap_remove(i));
        }
        for v in &victims {
            ledger.present.remove(v);
        }
        let op = store.with_aid(aid, async |c| {
            c.save(&x).await?;
            tokio::task::yield_now().await;
            for v in &victims {
                c.destroy(*v).await?;
            }
            c.save(&y).await?;
            check_states(&c.load_all().await?)?;
            Ok::<_, BoxErr>(())
        });
        // A third of the calls run to the end, so that the ledger has much to check.
        let outcome = match rng.below(3) {
            0 => timeout(Duration::from_micros(rng.below(8000)), op)
                .await
                .ok(),
            1 => poll_then_drop(op, rng.below(150)).await,
            _ => Some(
                timeout(DEADLOCK, op)
                    .await
                    .map_err(|_| "with_aid not granted in time")?,
            ),
        };
        match outcome {
            Some(result) => {
                result?;
                ledger.completed += 1;
                ledger.present.extend([x.id, y.id]);
                ledger.absent.extend(victims);
            }
            None => {
                // Their destroy may not have happened: keep them as targets.
                ledger.cancelled += 1;
                ledger.live.extend(victims);
            }
        }
        ledger.live.extend([x.id, y.id]);
    }
    Ok(ledger)
}

async fn cancellation(flavor: Flavor, seed: u64) {
    let (_tmp, run) = run_dir();
    let aid = aid(9);
    let store = open_store(&run);
    let started = Instant::now();

    let mut churn = spawn_kid(
        "churning child",
        "churn",
        &run,
        aid,
        flavor.other(),
        &[("RUNSTATE_CHILD_SEED", seed.to_string())],
    );
    churn.expect("READY").await;
    let workers = match flavor {
        Flavor::Current => 2,
        Flavor::Multi => 3,
    };
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            tokio::spawn(cancel_loop(
                store.clone(),
                aid,
                XorShift::new(seed + 100 + i),
                200,
            ))
        })
        .collect();
    let mut ledgers = Vec::new();
    for task in tasks {
        let ledger = timeout(DEADLOCK, task)
            .await
            .expect("a cancelling task deadlocked")
            .unwrap()
            .unwrap();
        ledgers.push(ledger);
    }
    // The churning child kept getting the aid through all the cancellations.
    drop(churn.stdin.take());
    let churned = churn.expect("DONE").await;
    churn.finish().await;

    // Another process gets the aid promptly and reads every entry...
    let mut check = spawn_kid(
        "verifier",
        "verify",
        &run,
        aid,
        flavor,
        &[("RUNSTATE_CHILD_NO_FOREIGN", "1".into())],
    );
    let n: usize = check.expect("OK").await.parse().unwrap();
    check.finish().await;
    // ...and so does this one, finding what the completed calls did.
    let all = verify_aid(&store, aid).await.unwrap();
    assert_eq!(all.len(), n);
    let (mut completed, mut cancelled) = (0, 0);
    for ledger in &ledgers {
        for id in &ledger.present {
            assert!(all.contains_key(id), "completed save of {id} is lost");
        }
        for id in &ledger.absent {
            assert!(!all.contains_key(id), "completed destroy of {id} is undone");
        }
        completed += ledger.completed;
        cancelled += ledger.cancelled;
    }
    // Polled zero times or with a zero timeout, a call never completes: cancellation happened.
    assert!(cancelled > 0);
    eprintln!(
        "cancellation({flavor:?}, seed {seed}): {completed} completed, {cancelled} cancelled, \
         {} entries, churn turns {churned}, in {:?}",
        all.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn cancellation_current_thread() {
    cancellation(Flavor::Current, base_seed() + 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_multi_thread() {
    cancellation(Flavor::Multi, base_seed() + 3).await;
}

/// Polls `fut` `polls` times, yielding in between, then drops it if it is not done.
async fn poll_then_drop<F: Future>(fut: F, polls: u64) -> Option<F::Output> {
    let mut fut = pin!(fut);
    for _ in 0..polls {
        let step = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = step {
            return Some(out);
        }
        tokio::task::yield_now().await;
    }
    None
}

// ---------------------------------------------------------------------------------------

/// Not a test of its own: the entry point of the child processes the other tests spawn.
/// Outside a role it does nothing.
#[test]
fn child_process() {
    common::multiprocess::child_main();
}
