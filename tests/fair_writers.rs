//! Fairness across processes: another process's overlapping readers cannot starve a writer,
//! and a shared try fails only because of a writer.
//!
//! Other processes are this very test binary, run again with only the `child_process` test
//! selected, in a role, with `RUNSTATE_FAIR_*` variables saying the rest (the harness is in
//! `tests/common/child.rs`). Outside a role `child_process` passes at once. Orders of events
//! are read from a log file that every party appends to (`O_APPEND`, one `write` per line),
//! never from clocks.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::child::{DEADLOCK, Flavor, Kid, child_var, role, role_command, say};
use runstate::{Aid, AsyncStore, Error};

type Store = AsyncStore<u32>;

const CHILD_TEST: &str = "child_process";

/// How many shared holds of the other process a waiting writer may see start before it gets
/// in. With writers fair, it is about one per reading task (those already past the gate when
/// the writer queued); starved, it is thousands, until the writer gives up. One round of
/// the six may exceed it: a loaded machine can delay the writer's way to the gate (a thread
/// to start) while the readers go on.
const MAX_OVERTAKERS: usize = 50;

/// The wait limit of the writer, far above what a fair wait behind 2 ms holds takes.
const LIMIT: Duration = Duration::from_secs(4);

fn aid() -> Aid {
    Aid::new(14).unwrap()
}

/// A child running this binary's `child_process` test in `role`; its stdin is a pipe whose
/// end tells it to stop.
fn spawn(role: &str, run_dir: &Path, log: &Path, flavor: Flavor, extra: &[(&str, String)]) -> Kid {
    let mut cmd = role_command(CHILD_TEST, role);
    cmd.env("RUNSTATE_FAIR_DIR", run_dir)
        .env("RUNSTATE_FAIR_LOG", log)
        .env("RUNSTATE_FAIR_FLAVOR", flavor.name())
        .stdin(Stdio::piped());
    for (key, value) in extra {
        cmd.env(key, value);
    }
    common::child::spawn_kid(format!("{role} child"), cmd)
}

/// The shared log, opened for appending: each `push` is one `write`, so lines never mix.
fn open_log(path: &Path) -> Arc<File> {
    Arc::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap(),
    )
}

fn push(log: &File, line: &str) {
    (&*log).write_all(format!("{line}\n").as_bytes()).unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn runtime(flavor: Flavor) -> tokio::runtime::Runtime {
    flavor.runtime()
}

// ---------------------------------------------------------------------------------------
// 1. Another process's overlapping readers do not starve a writer.

/// A writer in this process (on `writer`'s runtime) takes the aid again and again while a
/// child (on `readers`' runtime) keeps it shared with 4 tasks whose 2 ms holds overlap, so
/// that the child's `LOCK_SH` never lapses. Each time, the writer must get in before the
/// child has started [`MAX_OVERTAKERS`] holds, and within [`LIMIT`].
fn writer_among_readers(writer: Flavor, readers: Flavor) {
    let dir = common::run_dir();
    let run_dir = dir.path().join("run");
    let log_path = dir.path().join("log");
    let log = open_log(&log_path);
    runtime(writer).block_on(async {
        let store = Store::new(&run_dir);
        // The aid's files exist before the child starts reading.
        store
            .with_aid(aid(), async |_| Ok::<_, Error>(()))
            .await
            .unwrap();
        let mut kid = spawn("readers", &run_dir, &log_path, readers, &[]);
        kid.expect("READING").await;
        let mut overtakers = Vec::new();
        for round in 0..6 {
            // Let the readers overlap again.
            let start = std::time::Instant::now();
            while lines(&log_path).iter().filter(|l| *l == "r").count() < 20 * (round + 1) {
                if start.elapsed() > DEADLOCK {
                    panic!("{}", kid.report("the readers stopped reading").await);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            push(&log, &format!("w{round} waits"));
            let got = store
                .with_aid_timeout(aid(), LIMIT, async |_| {
                    push(&log, &format!("w{round} in"));
                    Ok::<_, Error>(())
                })
                .await;
            let all = lines(&log_path);
            let from = all.iter().position(|l| *l == format!("w{round} waits"));
            let to = all.iter().position(|l| *l == format!("w{round} in"));
            let after = all[from.unwrap()..to.unwrap_or(all.len())]
                .iter()
                .filter(|l| *l == "r")
                .count();
            if let Err(e) = got {
                let report = kid.report("the writer never got in").await;
                panic!(
                    "round {round}: the writer gave up ({e}) after {after} shared holds of the \
                     other process started while it waited\n{report}"
                );
            }
            overtakers.push(after);
        }
        kid.finish().await;
        println!("shared holds of the other process started while a writer waited: {overtakers:?}");
        let slow = overtakers.iter().filter(|&&n| n >= MAX_OVERTAKERS).count();
        assert!(
            slow <= 1,
            "a waiting writer was overtaken by {overtakers:?} shared holds of another process"
        );
    });
}

#[test]
fn writer_not_starved_by_readers_of_another_process_current_thread() {
    writer_among_readers(Flavor::Current, Flavor::Multi);
}

#[test]
fn writer_not_starved_by_readers_of_another_process_multi_thread() {
    writer_among_readers(Flavor::Multi, Flavor::Current);
}

/// Writers of three stores (three open file descriptions, so three processes as far as the
/// kernel's locks can tell) wait at once behind the child's overlapping readers: two get in
/// within [`LIMIT`], queued at the gate one behind the other, before the readers have made
/// [`MAX_OVERTAKERS`] holds; the third gives up after 20 ms, and leaves nothing that keeps
/// the readers out once the other two are done.
#[test]
fn writers_queue_behind_each_other_and_one_giving_up_leaves_nothing() {
    let dir = common::run_dir();
    let run_dir = dir.path().join("run");
    let log_path = dir.path().join("log");
    let log = open_log(&log_path);
    runtime(Flavor::Multi).block_on(async {
        let stores = [(); 3].map(|()| Store::new(&run_dir));
        stores[0]
            .with_aid(aid(), async |_| Ok::<_, Error>(()))
            .await
            .unwrap();
        let mut kid = spawn("readers", &run_dir, &log_path, Flavor::Multi, &[]);
        kid.expect("READING").await;
        let count = || lines(&log_path).iter().filter(|l| *l == "r").count();
        while count() < 20 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        push(&log, "w waits");
        let writer = |i: usize, limit: Duration| {
            let (store, log) = (stores[i].clone(), log.clone());
            async move {
                store
                    .with_aid_timeout(aid(), limit, async |_| {
                        push(&log, &format!("w{i} in"));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok::<_, Error>(())
                    })
                    .await
            }
        };
        let (a, b, c) = tokio::join!(
            writer(0, LIMIT),
            writer(1, LIMIT),
            writer(2, Duration::from_millis(20))
        );
        let all = lines(&log_path);
        let from = all.iter().position(|l| l == "w waits").unwrap();
        let last_in = all
            .iter()
            .rposition(|l| l.starts_with('w') && l.ends_with(" in"));
        let after = all[from..last_in.unwrap_or(all.len())]
            .iter()
            .filter(|l| *l == "r")
            .count();
        if a.is_err() || b.is_err() {
            let report = kid.report("a writer never got in").await;
            panic!("writers: {a:?} {b:?}, after {after} shared holds\n{report}");
        }
        assert!(
            matches!(c, Ok(()) | Err(Error::Timeout { .. })),
            "the third writer: {c:?}"
        );
        // Both writers and the one that gave up are gone: the readers go on.
        let before = count();
        let start = std::time::Instant::now();
        while count() < before + 20 {
            if start.elapsed() > DEADLOCK {
                panic!("{}", kid.report("the readers were kept out").await);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        kid.finish().await;
        println!("shared holds started while two writers waited: {after}");
        assert!(
            after < 2 * MAX_OVERTAKERS,
            "two waiting writers were overtaken by {after} shared holds of another process"
        );
    });
}

/// The child side: 4 tasks take the aid shared, each for 2 ms, in a loop, logging `r` as
/// each hold starts, until stdin closes.
async fn child_readers(run_dir: &Path, log: Arc<File>) {
    let store = Store::new(run_dir);
    let stop = stop_on_eof();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (store, log, stop) = (store.clone(), log.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    store
                        .with_aid_shared(aid(), async |_| {
                            push(&log, "r");
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            Ok::<_, Error>(())
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    say("READING");
    for task in tasks {
        task.await.unwrap();
    }
}

/// A flag raised when this process's stdin reaches its end (the parent closed it).
fn stop_on_eof() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        flag.store(true, Ordering::Release);
    });
    stop
}

// ---------------------------------------------------------------------------------------
// 5. With readers only, a shared try never says WouldBlock.

/// How many shared tries each of the two processes makes: 500,000 each in a release build
/// (a million in all, as issue 14 asks; `cargo test --release --test fair_writers`), 150,000
/// each in a debug build to keep the test to a few seconds. `RUNSTATE_FAIR_TRIES` overrides.
fn tries_per_process() -> u64 {
    match std::env::var("RUNSTATE_FAIR_TRIES") {
        Ok(n) => n.parse().expect("RUNSTATE_FAIR_TRIES"),
        Err(_) if cfg!(debug_assertions) => 150_000,
        Err(_) => 500_000,
    }
}

/// Tasks per process trying at once, on a 2-worker runtime.
const TRY_TASKS: u64 = 4;

/// Shared tries by several tasks of this process and of a child, with no writer anywhere:
/// not one may fail with `WouldBlock`.
#[test]
fn shared_tries_among_readers_never_would_block() {
    let dir = common::run_dir();
    let run_dir = dir.path().join("run");
    let log_path = dir.path().join("log");
    runtime(Flavor::Multi).block_on(async {
        let store = Store::new(&run_dir);
        store
            .with_aid(aid(), async |_| Ok::<_, Error>(()))
            .await
            .unwrap();
        let tries = tries_per_process();
        let mut kid = spawn(
            "tries",
            &run_dir,
            &log_path,
            Flavor::Multi,
            &[("RUNSTATE_FAIR_TRIES", tries.to_string())],
        );
        kid.expect("TRYING").await;
        let blocked = shared_tries(&store, tries).await;
        let theirs: u64 = kid.expect("BLOCKED").await.parse().unwrap();
        kid.finish().await;
        println!(
            "{} shared tries in two processes: {blocked} + {theirs} WouldBlock",
            2 * tries
        );
        assert_eq!(
            (blocked, theirs),
            (0, 0),
            "shared tries failed with WouldBlock with no writer anywhere"
        );
    });
}

/// `tries` shared tries of the aid by [`TRY_TASKS`] tasks; returns how many said WouldBlock.
async fn shared_tries(store: &Store, tries: u64) -> u64 {
    let blocked = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TRY_TASKS)
        .map(|_| {
            let (store, blocked) = (store.clone(), blocked.clone());
            tokio::spawn(async move {
                for _ in 0..tries / TRY_TASKS {
                    match store
                        .try_with_aid_shared(aid(), async |_| Ok::<_, Error>(()))
                        .await
                    {
                        Ok(()) => {}
                        Err(Error::WouldBlock { .. }) => {
                            blocked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("shared try: {e}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    blocked.load(Ordering::Relaxed)
}

async fn child_tries(run_dir: &Path) {
    let store = Store::new(run_dir);
    let tries = child_var("RUNSTATE_FAIR_TRIES").parse().unwrap();
    say("TRYING");
    let blocked = shared_tries(&store, tries).await;
    say(format!("BLOCKED {blocked}"));
}

// ---------------------------------------------------------------------------------------

/// Not a test of its own: the entry point of the child processes the other tests spawn.
/// Outside a [`role`] it does nothing.
#[test]
fn child_process() {
    let Some(role) = role() else {
        return;
    };
    let run_dir = PathBuf::from(child_var("RUNSTATE_FAIR_DIR"));
    let log = open_log(Path::new(&child_var("RUNSTATE_FAIR_LOG")));
    let flavor = Flavor::from_name(&child_var("RUNSTATE_FAIR_FLAVOR"));
    runtime(flavor).block_on(async {
        match role.as_str() {
            "readers" => child_readers(&run_dir, log).await,
            "tries" => child_tries(&run_dir).await,
            other => panic!("unknown role {other}"),
        }
    });
}
