//! Where the store meets `fork(2)` from the other side: a store made in a forked child, the
//! cursors, streams, watches and waits of a store carried into one, its `close` there, and a
//! process whose other threads fork all the time. Every case runs in real forked children
//! (`libc::fork`, as `std::process::Command` forks when it has a `pre_exec`), inside a
//! process of its own (this binary again, in a role), so that its forks touch no other test.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::aid;
use common::child::{DEADLOCK, Kid, role, role_command, say, spawn_kid};
use futures::{FutureExt as _, StreamExt as _};
use runstate::{Aid, AsyncStore, Error, InstanceId, Options, State};

/// The test that the role processes run.
const ENTRY: &str = "child_process";
const DIR: &str = "RUNSTATE_SEAM_DIR";

fn run_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let run = tmp.path().join("run");
    (tmp, run)
}

fn spawn_role(role: &str, run: &Path) -> Kid {
    let mut cmd = role_command(ENTRY, role);
    cmd.env(DIR, run).stdin(Stdio::null());
    spawn_kid(format!("{role} process"), cmd)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f` in a forked child and returns its exit code: `f`'s, or 100 if it panicked.
fn in_fork(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `f` and leaves with _exit, without the parent's exit handlers.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(100);
        // SAFETY: see above.
        unsafe { libc::_exit(code) };
    }
    exit_code(pid)
}

/// Reaps our child `pid`; its exit code, or 200 plus the signal that killed it.
fn exit_code(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    match libc::WIFEXITED(status) {
        true => libc::WEXITSTATUS(status),
        false => 200 + libc::WTERMSIG(status),
    }
}

/// Item 1: a process waits for an aid another process holds, gives up (leaving its waiting
/// thread behind), and forks; a store made in the child waits for that aid and gets it
/// once it is let go. (It used to take over the parent's thread, which the child does not
/// have, and wait forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_made_in_a_forked_child_waits_as_usual() {
    let (_tmp, run) = run_dir();
    let store = AsyncStore::<u8>::new(&run);
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .with_aid(aid(1), async move |_| {
                    held_tx.send(()).unwrap();
                    release_rx.await.unwrap();
                    Ok::<_, Error>(())
                })
                .await
        }
    });
    held_rx.await.unwrap();
    let mut kid = spawn_role("new_store", &run);
    kid.expect("WAITING").await;
    // Let the child's wait begin before the aid comes free (if it came later, the test
    // would only prove less).
    tokio::time::sleep(Duration::from_millis(500)).await;
    release_tx.send(()).unwrap();
    holder.await.unwrap().unwrap();
    kid.finish().await;
}

fn new_store_in_child(run: &Path) {
    let store = AsyncStore::<u8>::new(run);
    let gave_up = current_thread().block_on(store.with_aid_timeout(
        aid(1),
        Duration::from_millis(100),
        async |_| Ok::<_, Error>(()),
    ));
    assert!(matches!(gave_up, Err(Error::Timeout { .. })), "{gave_up:?}");
    let code = in_fork(|| {
        let fresh = AsyncStore::<u8>::new(run);
        say("WAITING");
        let got = current_thread()
            .block_on(fresh.with_aid_timeout(aid(1), DEADLOCK, async |c| c.len().await));
        match got {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("the child's store did not get the aid: {e}");
                1
            }
        }
    });
    assert_eq!(code, 0, "the store made in the forked child failed");
}

/// Items 2 and 3: inside a hold, the process forks; in the child, every operation of the
/// cursor, the store, a watch made before and the waits is refused with `Forked`, at once
/// (`close` too, which used to wait for the hold in flight); nothing the child tried
/// reached the aid or took the parent's watch events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_carried_into_a_forked_child_refuses() {
    let (_tmp, run) = run_dir();
    spawn_role("carried", &run).finish().await;
}

fn carried_into_child(run: &Path) {
    let store = AsyncStore::<u8>::new(run);
    let (first, second) = (InstanceId::random(), InstanceId::random());
    let me = State::new(InstanceId::random(), std::process::id(), 0);
    current_thread().block_on(async {
        let mut watch = store.watch().await.unwrap();
        let code = store
            .with_aid(aid(2), async |c| {
                c.save(&State::new(first, 1, 1)).await?;
                Ok::<_, Error>(in_fork(|| {
                    fn refused<T: std::fmt::Debug>(got: Option<Result<T, Error>>) -> bool {
                        let ok = matches!(got, Some(Err(Error::Forked)));
                        if !ok {
                            eprintln!("not refused: {got:?}");
                        }
                        ok
                    }
                    let ids = c.ids().next().now_or_never().flatten();
                    let entries = c.entries().next().now_or_never().flatten();
                    let checks = [
                        refused(c.save(&State::new(second, 1, 2)).now_or_never()),
                        refused(c.replace(&State::new(first, 1, 3)).now_or_never()),
                        refused(c.destroy(first).now_or_never()),
                        refused(c.load(first).now_or_never()),
                        refused(c.len().now_or_never()),
                        refused(ids),
                        refused(entries),
                        refused(c.prune_dead().now_or_never()),
                        refused(watch.next().now_or_never().flatten()),
                        refused(store.watch().now_or_never()),
                        refused(store.wait_empty(aid(2)).now_or_never()),
                        refused(store.wait_exit(&me).now_or_never()),
                        refused(store.aids().now_or_never()),
                        refused(store.close().now_or_never()),
                    ];
                    match checks.iter().position(|&ok| !ok) {
                        Some(i) => i as i32 + 1,
                        None => 0,
                    }
                }))
            })
            .await
            .unwrap();
        assert_eq!(code, 0, "check {code} failed in the forked child");
        let ids: Result<Vec<InstanceId>, Error> = store
            .with_aid_shared(aid(2), async |c| {
                c.ids().collect::<Vec<_>>().await.into_iter().collect()
            })
            .await;
        assert_eq!(ids.unwrap(), vec![first], "the child's save landed");
        let seen = tokio::time::timeout(DEADLOCK, watch.next()).await;
        let seen = seen.expect("the parent's watch lost its event").unwrap();
        // The aid is new to the watch: it may say so (the caller lists it again) rather than
        // report the save that made it.
        let seen = seen.unwrap();
        assert!(
            seen == runstate::Change::Saved {
                aid: aid(2),
                id: first
            } || seen == runstate::Change::ResyncAid { aid: aid(2) },
            "the parent's watch saw {seen:?}"
        );
        store.close().await.unwrap();
    });
    say("OK");
}

/// Item 3: a task of a multi-thread runtime holds an aid; another thread forks; in the
/// child, `close` of the store returns `Forked` at once, on a runtime of the child's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_in_a_forked_child_returns_at_once() {
    let (_tmp, run) = run_dir();
    spawn_role("close", &run).finish().await;
}

fn close_in_child(run: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = AsyncStore::<u8>::new(run);
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let holding = runtime.spawn({
        let store = store.clone();
        async move {
            store
                .with_aid(aid(3), async move |_| {
                    held_tx.send(()).unwrap();
                    std::future::pending::<()>().await;
                    Ok::<_, Error>(())
                })
                .await
        }
    });
    held_rx.recv().unwrap();
    let code = in_fork(|| {
        let closed = current_thread()
            .block_on(async { tokio::time::timeout(DEADLOCK, store.close()).await });
        match closed {
            Ok(Err(Error::Forked)) => 0,
            Ok(other) => {
                eprintln!("close in the child: {other:?}");
                1
            }
            Err(_) => {
                eprintln!("close in the child still waits after {DEADLOCK:?}");
                2
            }
        }
    });
    assert_eq!(code, 0, "close in the forked child");
    holding.abort();
    say("OK");
}

/// Item 4: threads fork all the time (each fork made slow by a prepare handler of the
/// test's, which runs inside the store's), while a current-thread runtime holds aids whose
/// files are never kept open: no hold fails, and the runtime's ticker is never held up for
/// long (the openings that meet a fork wait on the pool, not on the runtime's thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_never_fail_while_other_threads_fork() {
    let (_tmp, run) = run_dir();
    let mut kid = spawn_role("forkers", &run);
    println!("{}", kid.expect("RESULT").await);
    kid.finish().await;
}

/// How long each fork of the busy process takes, at least.
const SLOW_FORK: Duration = Duration::from_millis(10);

extern "C" fn slow_prepare() {
    std::thread::sleep(SLOW_FORK);
}

fn forkers_in_child(run: &Path) {
    // Registered before the store's handlers, so it runs after the store's prepare handler,
    // inside the window in which the store sees a fork under way.
    unsafe extern "C" {
        fn pthread_atfork(
            prepare: Option<extern "C" fn()>,
            parent: Option<extern "C" fn()>,
            child: Option<extern "C" fn()>,
        ) -> i32;
    }
    // SAFETY: a plain function that lives as long as the process.
    assert_eq!(unsafe { pthread_atfork(Some(slow_prepare), None, None) }, 0);
    let store = AsyncStore::<u8>::with_options(run, Options::new().open_aids(0));
    let stop = Arc::new(AtomicBool::new(false));
    let forks = Arc::new(AtomicU64::new(0));
    let forkers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, forks) = (stop.clone(), forks.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(in_fork(|| 0), 0);
                    forks.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let (holds, failed, late) = current_thread().block_on(async {
        let late = Arc::new(AtomicU64::new(0));
        let ticker = tokio::spawn({
            let late = late.clone();
            async move {
                let mut next = Instant::now();
                loop {
                    next += Duration::from_millis(1);
                    tokio::time::sleep_until(next.into()).await;
                    let behind = Instant::now().saturating_duration_since(next);
                    late.fetch_max(behind.as_micros() as u64, Ordering::Relaxed);
                    next = next.max(Instant::now());
                }
            }
        });
        let (mut holds, mut failed) = (0, 0);
        let start = Instant::now();
        while holds < 300 && start.elapsed() < Duration::from_secs(10) {
            let aid = Aid::new(1 + holds % 5).unwrap();
            if let Err(e) = store.with_aid(aid, async |c| c.len().await).await {
                eprintln!("hold failed: {e}");
                failed += 1;
            }
            holds += 1;
        }
        ticker.abort();
        (
            holds,
            failed,
            Duration::from_micros(late.load(Ordering::Relaxed)),
        )
    });
    stop.store(true, Ordering::Relaxed);
    forkers.into_iter().for_each(|f| f.join().unwrap());
    let forks = forks.load(Ordering::Relaxed);
    say(format!(
        "RESULT {holds} holds, {failed} failed, {forks} forks; the ticker was late by {late:?} at most"
    ));
    assert!(forks > 0, "no fork happened during the holds");
    assert_eq!(failed, 0, "holds failed because other threads forked");
    // Generous: on the runtime's thread nothing waits for a fork, so only a machine that
    // does not run the thread for half a second could reach it.
    assert!(
        late < Duration::from_millis(500),
        "the runtime's thread was held for {late:?}"
    );
    say("OK");
}

/// Not a test of its own: the entry point of the processes the tests above spawn. Without a
/// role it does nothing.
#[test]
fn child_process() {
    let Some(role) = role() else {
        return;
    };
    let run = PathBuf::from(std::env::var(DIR).unwrap());
    match role.as_str() {
        "new_store" => new_store_in_child(&run),
        "carried" => carried_into_child(&run),
        "close" => close_in_child(&run),
        "forkers" => forkers_in_child(&run),
        other => panic!("unknown role {other}"),
    }
}
