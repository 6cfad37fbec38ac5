//! Exclusion across real processes: each aid's lock admits one holder at a time among
//! processes and tasks (no lost update), only on its own aid, and is not inherited by the
//! children a holder spawns, so it goes with the process that took it.
//!
//! Other processes are this very test binary, run again with only the `child_process` test
//! selected, in a role (the harness is in `tests/common/child.rs` and
//! `tests/common/multiprocess.rs`). Outside a role `child_process` passes at once, so a
//! plain `cargo test` is unaffected.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::child::{DEADLOCK, Flavor, Kid};
use common::multiprocess::{
    BoxErr, COUNTER, Cfg, SLEEP_SECS, Sleeper, append_line, has_open, increment_loop, is_running,
    lock_path, open_store, read_lines, run_dir, spawn_kid, spawn_sleep, verify_aid, wait_until,
};
use common::{aid, flock_waiters};
use runstate::{Error, InstanceId, State};
use tokio::time::timeout;

// ---------------------------------------------------------------------------------------
// 1. Mutual exclusion across processes and tasks.

async fn mutual_exclusion(flavor: Flavor) {
    const KIDS: usize = 4;
    const TASKS: u64 = 4;
    const PER_TASK: u64 = 60;
    let (tmp, run) = run_dir();
    let go = tmp.path().join("go");
    let store = open_store(&run);
    let aid = aid(1);
    store
        .with_aid(aid, async |c| {
            c.save(&State::new(COUNTER, 0, Cfg::counter(0))).await
        })
        .await
        .unwrap();

    let started = Instant::now();
    let mut kids: Vec<Kid> = (0..KIDS)
        .map(|i| {
            spawn_kid(
                format!("counter child {i}"),
                "counter",
                &run,
                aid,
                flavor.alternate(i),
                &[
                    ("RUNSTATE_CHILD_TASKS", TASKS.to_string()),
                    ("RUNSTATE_CHILD_COUNT", PER_TASK.to_string()),
                    ("RUNSTATE_CHILD_GO", go.display().to_string()),
                ],
            )
        })
        .collect();
    for kid in &mut kids {
        kid.expect("READY").await;
    }
    // Everyone starts at once, so the processes really contend.
    std::fs::write(&go, b"").unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(increment_loop(store.clone(), aid, PER_TASK)))
        .collect();
    for task in tasks {
        timeout(DEADLOCK, task)
            .await
            .expect("a parent task deadlocked")
            .unwrap()
            .unwrap();
    }
    for kid in kids {
        kid.finish().await;
    }

    let (value, len) = store
        .with_aid(aid, async |c| {
            let counter = c.load(COUNTER).await?.expect("counter missing");
            Ok::<_, Error>((counter.config.seq, c.len().await?))
        })
        .await
        .unwrap();
    let total = (KIDS as u64 + 1) * TASKS * PER_TASK;
    assert_eq!(value, total, "lost updates: {} of {total}", total - value);
    assert_eq!(len, 1);
    eprintln!(
        "mutual_exclusion({flavor:?}): {total} increments by {} processes in {:?}",
        KIDS + 1,
        started.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn mutual_exclusion_current_thread() {
    mutual_exclusion(Flavor::Current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_multi_thread() {
    mutual_exclusion(Flavor::Multi).await;
}

// ---------------------------------------------------------------------------------------
// 2. Children spawned while holding the lock do not inherit it.

async fn lock_not_inherited(flavor: Flavor) {
    let (_tmp, run) = run_dir();
    let aid = aid(7);
    let store = open_store(&run);

    // A child started inside the closure, which then returns.
    let sleeper = store
        .with_aid(aid, async |c| {
            c.save(&State::new(InstanceId::random(), 1, Cfg::small(3)))
                .await?;
            let sleeper = match flavor {
                Flavor::Current => {
                    let child = spawn_sleep();
                    Sleeper {
                        pid: child.id(),
                        child: Some(child),
                    }
                }
                Flavor::Multi => {
                    let child = tokio::process::Command::new("sleep")
                        .arg(SLEEP_SECS)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()?;
                    Sleeper {
                        pid: child.id().unwrap(),
                        child: None,
                    }
                }
            };
            Ok::<_, BoxErr>(sleeper)
        })
        .await
        .unwrap();
    let lock = lock_path(&run, aid);
    assert!(
        !has_open(sleeper.pid, &lock),
        "a child spawned inside with_aid inherited the lock file"
    );
    let mut other = spawn_kid("verifier", "verify", &run, aid, flavor, &[]);
    assert_eq!(other.expect("OK").await, "1");
    other.finish().await;
    assert!(is_running(sleeper.pid), "sleep ended early");

    // A process that dies holding the lock, leaving behind a child it spawned meanwhile:
    // the lock goes with the process only if the child does not share its descriptor.
    let mut holder = spawn_kid("holder", "hold_spawn", &run, aid, flavor.other(), &[]);
    let orphan = Sleeper {
        pid: holder.expect("HOLDING").await.parse().unwrap(),
        child: None,
    };
    assert!(
        !has_open(orphan.pid, &lock),
        "a child spawned inside with_aid inherited the lock file"
    );
    let early = timeout(
        Duration::from_millis(100),
        store.with_aid(aid, async |_c| Ok::<_, Error>(())),
    )
    .await;
    assert!(early.is_err(), "got the aid while another process held it");
    holder.kill().await;
    let mut other = spawn_kid(
        "verifier after the holder died",
        "verify",
        &run,
        aid,
        flavor,
        &[],
    );
    assert_eq!(other.expect("OK").await, "1");
    other.finish().await;
    verify_aid(&store, aid).await.unwrap();
    assert!(is_running(orphan.pid), "the orphaned sleep ended early");
    drop((sleeper, orphan));
}

#[tokio::test(flavor = "current_thread")]
async fn lock_not_inherited_current_thread() {
    lock_not_inherited(Flavor::Current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_not_inherited_multi_thread() {
    lock_not_inherited(Flavor::Multi).await;
}

// ---------------------------------------------------------------------------------------
// 3. The lock excludes other processes, and only on the same aid.

async fn lock_excludes_processes(flavor: Flavor) {
    let (_tmp, run) = run_dir();
    let (one, two) = (aid(1), aid(2));
    let store = open_store(&run);
    let lock = lock_path(&run, one);

    // The parent holds aid 1 while a child asks for it.
    let order = run.join("order-a.log");
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn({
        let (store, order) = (store.clone(), order.clone());
        async move {
            store
                .with_aid(one, async move |_c| {
                    held_tx.send(()).unwrap();
                    release_rx.await.unwrap();
                    append_line(&order, "parent-release");
                    Ok::<_, Error>(())
                })
                .await
        }
    });
    held_rx.await.unwrap();
    let mut kid = spawn_kid(
        "order child",
        "order",
        &run,
        one,
        flavor,
        &[("RUNSTATE_CHILD_FILE", order.display().to_string())],
    );
    kid.expect("TRYING").await;
    // Release only once the kernel shows the child blocked on the lock, or once the child
    // got in anyway, which the order check below catches.
    wait_until("the child waits for the lock", || {
        flock_waiters(&lock) > 0 || !read_lines(&order).is_empty()
    })
    .await;
    release_tx.send(()).unwrap();
    timeout(DEADLOCK, holder).await.unwrap().unwrap().unwrap();
    kid.expect("GOT").await;
    kid.finish().await;
    assert_eq!(read_lines(&order), ["parent-release", "child"]);

    // A child holds aid 1 while the parent asks for it.
    let order = run.join("order-b.log");
    let mut kid = spawn_kid(
        "holding child",
        "hold",
        &run,
        one,
        flavor.other(),
        &[("RUNSTATE_CHILD_FILE", order.display().to_string())],
    );
    kid.expect("HOLDING").await;
    let early = timeout(
        Duration::from_millis(100),
        store.with_aid(one, async |_c| {
            append_line(&order, "parent-early");
            Ok::<_, Error>(())
        }),
    )
    .await;
    assert!(early.is_err(), "got the aid while another process held it");
    let waiter = tokio::spawn({
        let (store, order) = (store.clone(), order.clone());
        async move {
            store
                .with_aid(one, async |_c| {
                    append_line(&order, "parent");
                    Ok::<_, Error>(())
                })
                .await
        }
    });
    wait_until("the parent waits for the lock", || flock_waiters(&lock) > 0).await;
    assert!(read_lines(&order).is_empty());
    kid.stdin.as_mut().unwrap().write_all(b"release\n").unwrap();
    timeout(DEADLOCK, waiter)
        .await
        .expect("the parent never got the aid back: was the abandoned wait's lock kept?")
        .unwrap()
        .unwrap();
    kid.finish().await;
    assert_eq!(read_lines(&order), ["child-release", "parent"]);

    // Different aids: a child takes aid 2, saves and exits while the parent holds aid 1.
    store
        .with_aid(one, async |_c| {
            let mut kid = spawn_kid(
                "child on aid 2",
                "verify",
                &run,
                two,
                flavor,
                &[("RUNSTATE_CHILD_SAVE", "1".into())],
            );
            assert_eq!(kid.expect("OK").await, "1");
            kid.finish().await;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(verify_aid(&store, two).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn lock_excludes_processes_current_thread() {
    lock_excludes_processes(Flavor::Current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_excludes_processes_multi_thread() {
    lock_excludes_processes(Flavor::Multi).await;
}

// ---------------------------------------------------------------------------------------

/// Not a test of its own: the entry point of the child processes the other tests spawn.
/// Outside a role it does nothing.
#[test]
fn child_process() {
    common::multiprocess::child_main();
}
