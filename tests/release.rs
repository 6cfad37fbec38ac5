//! What the store lets go of, and when: a waiter dropped while another process holds the
//! aid, an operation dropped mid-flight, a stream that has read its last entry, and a
//! contended lock with no runtime around.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::{flock_waiters, run_dir};
use runstate::{Aid, AsyncStore, Error, InstanceId, Options, State};

type Store = AsyncStore<String>;

/// Holds `aid` through its own store (its own lock-file descriptor, so just like another
/// process) on a thread of its own, for `for_how_long`. Returns once it is held.
fn hold_elsewhere(
    dir: &std::path::Path,
    aid: Aid,
    for_how_long: Duration,
) -> std::thread::JoinHandle<()> {
    let dir = dir.to_owned();
    let (held_tx, held_rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let rt = common::current_thread_runtime();
        rt.block_on(async {
            let theirs = Store::new(&dir);
            theirs
                .with_aid(aid, async |_| {
                    held_tx.send(()).unwrap();
                    tokio::time::sleep(for_how_long).await;
                    Ok::<_, Error>(())
                })
                .await
                .unwrap();
        });
    });
    held_rx.recv().unwrap();
    t
}

/// Waits for `aid`, which another handle holds, and gives up: the `with_aid` is dropped.
async fn give_up_waiting(store: &Store, aid: Aid) {
    let waited = tokio::time::timeout(
        Duration::from_millis(50),
        store.with_aid(aid, async |_| Ok::<_, Error>(())),
    )
    .await;
    assert!(waited.is_err(), "the other handle holds the aid");
}

/// A wait for `aid` that another handle holds, exclusive or shared, which runs out of time.
async fn time_out(store: &Store, aid: Aid, shared: bool) {
    let limit = Duration::from_millis(5);
    let r = match shared {
        false => {
            store
                .with_aid_timeout(aid, limit, async |_| Ok::<_, Error>(()))
                .await
        }
        true => {
            store
                .with_aid_shared_timeout(aid, limit, async |_| Ok::<_, Error>(()))
                .await
        }
    };
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
}

/// A `with_aid` dropped while another handle holds the aid lets go of everything: `close()`
/// on our store does not wait for the *other* holder, since no call of ours is in flight.
/// (A thread left parked in an untimed `flock` would keep the store's gate open.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_does_not_wait_for_a_dropped_waiter() {
    let dir = run_dir();
    let aid = Aid::new(11).unwrap();
    let other = hold_elsewhere(dir.path(), aid, Duration::from_secs(3));

    let ours = Store::new(dir.path());
    give_up_waiting(&ours, aid).await;

    // Nothing of ours is in flight any more.
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(1), ours.close()).await;
    let took = started.elapsed();
    other.join().unwrap();
    assert!(
        closed.is_ok(),
        "close() waited {took:?} for a with_aid future that had been dropped"
    );
}

/// Nor does a dropped waiter hold up the runtime's shutdown (as returning from
/// `#[tokio::main]` does), which waits for every blocking-pool thread.
#[test]
fn runtime_shutdown_is_not_held_up_by_a_dropped_waiter() {
    let dir = run_dir();
    let aid = Aid::new(12).unwrap();
    let other = hold_elsewhere(dir.path(), aid, Duration::from_secs(3));

    let rt = common::multi_thread_runtime(2);
    rt.block_on(async {
        give_up_waiting(&Store::new(dir.path()), aid).await;
    });
    let started = Instant::now();
    drop(rt);
    let took = started.elapsed();
    other.join().unwrap();
    assert!(
        took < Duration::from_secs(1),
        "dropping the runtime took {took:?}: a blocking-pool thread was still parked in flock"
    );
}

/// On a current-thread runtime a dropped cursor operation keeps running on the blocking pool;
/// later operations of the same holder wait for it, so inside one exclusive hold, with the
/// holder writing nothing, the aid does not change under it. (On a multi-thread runtime
/// `block_in_place` finishes the operation inside the poll, so this cannot happen there.)
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_save_does_not_land_behind_later_operations_of_the_same_hold() {
    let dir = run_dir();
    let store = Store::with_options(dir.path(), Options::new().max_entry_size(1 << 28));
    let aid = Aid::new(13).unwrap();
    let big = "x".repeat(96 << 20);
    let state = State::new(InstanceId::random(), 1, big);

    let (before, after) = store
        .with_aid(aid, async |c| {
            {
                let mut save = pin!(c.save(&state));
                // One poll: the save is handed to the blocking pool; then it is dropped.
                let first = std::future::poll_fn(|cx| Poll::Ready(save.as_mut().poll(cx))).await;
                assert!(first.is_pending());
            }
            let before = c.len().await?;
            // The holder does nothing but wait, still holding the aid exclusively.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = c.len().await?;
            Ok::<_, Error>((before, after))
        })
        .await
        .unwrap();
    assert_eq!(
        before, after,
        "the aid changed inside one exclusive hold with no write by its holder"
    );
}

/// Polls `fut` to completion on this thread, with no tokio runtime around.
fn block_on_without_tokio<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// With no runtime around, file work runs in place; so does waiting for a contended lock,
/// rather than panicking in `spawn_blocking` for want of a runtime.
#[test]
fn a_contended_lock_outside_a_runtime_waits_instead_of_panicking() {
    let dir = run_dir();
    let aid = Aid::new(14).unwrap();
    let ours = Store::new(dir.path());
    // Uncontended: works without a runtime.
    let n = block_on_without_tokio(ours.with_aid(aid, async |c| c.len().await)).unwrap();
    assert_eq!(n, 0);

    let other = hold_elsewhere(dir.path(), aid, Duration::from_millis(300));
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        block_on_without_tokio(ours.with_aid(aid, async |c| c.len().await))
    }));
    other.join().unwrap();
    match got {
        Ok(r) => {
            r.unwrap();
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("with_aid panicked inside the library: {msg}");
        }
    }
}

/// A stream left unfinished holds an aid "only while entries of that aid are still to be
/// read": with exactly 128 entries (one full batch, ending on the count right at the end of
/// the directory), the aid is free once they have all been yielded, before the stream is
/// polled again.
#[tokio::test(flavor = "current_thread")]
async fn a_stream_that_yielded_every_entry_of_an_aid_holds_nothing() {
    use futures::StreamExt;
    let dir = run_dir();
    let store = Store::new(dir.path());
    let aid = Aid::new(15).unwrap();
    store
        .with_aid(aid, async |c| {
            for _ in 0..128 {
                c.save(&State::new(InstanceId::random(), 1, String::new()))
                    .await?;
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    let mut entries = store.entries();
    for _ in 0..128 {
        entries.next().await.unwrap().unwrap();
    }
    // Every entry of the only aid has been read; the stream is kept, not polled.
    let r = store.try_with_aid(aid, async |_| Ok::<_, Error>(())).await;
    drop(entries);
    assert!(
        r.is_ok(),
        "aid still held by a stream with nothing left to read: {r:?}"
    );
}

/// A waiter for an aid that another process keeps busy is queued in the kernel and woken
/// when the lock is let go, so it gets in after a few of the other process's holds. (A
/// waiter that polled `flock` got in only when a poll hit one of the microsecond gaps between
/// two holds: in one run, after 1,449 of them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_not_starved_by_a_busy_other_process() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const THEIR_HOLDS: usize = 400;
    let dir = run_dir();
    let aid = Aid::new(16).unwrap();
    let rounds = Arc::new(AtomicUsize::new(0));
    let other = {
        let (dir, rounds) = (dir.path().to_owned(), rounds.clone());
        std::thread::spawn(move || {
            let rt = common::current_thread_runtime();
            rt.block_on(async {
                // Its own store: its own lock-file descriptor, as another process has.
                let theirs = Store::new(&dir);
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let (theirs, rounds) = (theirs.clone(), rounds.clone());
                        tokio::spawn(async move {
                            while rounds.load(Ordering::Relaxed) < THEIR_HOLDS {
                                theirs
                                    .with_aid(aid, async |_| {
                                        std::thread::sleep(Duration::from_millis(2));
                                        Ok::<_, Error>(())
                                    })
                                    .await
                                    .unwrap();
                                rounds.fetch_add(1, Ordering::Relaxed);
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
            });
        })
    };
    while rounds.load(Ordering::Relaxed) < 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = rounds.load(Ordering::Relaxed);
    let ours = Store::new(dir.path());
    let meanwhile = ours
        .with_aid(aid, async |_| {
            Ok::<_, Error>(rounds.load(Ordering::Relaxed) - before)
        })
        .await
        .unwrap();
    other.join().unwrap();
    assert!(
        meanwhile < THEIR_HOLDS / 2,
        "got in only after {meanwhile} holds of the other process"
    );
}

/// Waits that give up, again and again, behind a long holder in another process leave one
/// waiting thread behind, which the next waiter takes over, not one thread each; and once the
/// holder lets go, that thread hands the lock to the waiter of the moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_give_up_do_not_pile_up_threads() {
    let dir = run_dir();
    let aid = Aid::new(17).unwrap();
    let other = hold_elsewhere(dir.path(), aid, Duration::from_millis(1500));
    let ours = Store::new(dir.path());
    for _ in 0..40 {
        time_out(&ours, aid, false).await;
        time_out(&ours, aid, true).await;
    }
    // One waiting thread for exclusive waits and one for shared ones, at most.
    let waiters = flock_waiters(&dir.path().join("state").join("17.lock"));
    assert!(
        (1..=2).contains(&waiters),
        "{waiters} waiters in the kernel"
    );
    // The last waiter stays: it gets the lock from the thread that is already waiting.
    ours.with_aid(aid, async |c| c.len().await).await.unwrap();
    other.join().unwrap();
}

/// Forks a child that lingers `how_long` between fork and exec (as a sandbox supervisor does
/// while it sets a child up): until it execs, it shares every open file description of ours,
/// close-on-exec or not. `spawn` returns only at the exec, so it runs on a thread of its own;
/// this returns once the fork has happened.
fn fork_child_that_lingers(how_long: Duration) -> std::thread::JoinHandle<()> {
    use std::os::unix::process::CommandExt;
    let (forked_tx, forked_rx) = mpsc::channel::<()>();
    let child = std::thread::spawn(move || {
        let mut cmd = std::process::Command::new("true");
        // SAFETY: the child only sleeps, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                std::thread::sleep(how_long);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        child.wait().unwrap();
        drop(forked_tx);
    });
    // The fork happens at once; the exec only after `how_long`.
    let _ = forked_rx.recv_timeout(Duration::from_millis(100));
    child
}

/// A lock granted to a waiting thread after its waiter gave up is released with `LOCK_UN`,
/// not only by closing the descriptor: a child forked meanwhile shares the open file
/// description until it execs, and would keep the lock (here 1.5 s) if it were only closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_nobody_waits_for_is_released_despite_a_forked_child() {
    let dir = run_dir();
    let aid = Aid::new(18).unwrap();
    let lock = dir.path().join("state").join("18.lock");
    let other = hold_elsewhere(dir.path(), aid, Duration::from_millis(300));
    let ours = Store::new(dir.path());
    time_out(&ours, aid, false).await;

    // Forked while our waiting thread has its descriptor open.
    let child = fork_child_that_lingers(Duration::from_millis(1500));
    tokio::task::spawn_blocking(move || other.join().unwrap())
        .await
        .unwrap();
    // The other holder has let go, so the kernel grants our thread, which nobody waits for.
    while flock_waiters(&lock) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // It releases the lock at once: well before the child execs, a fresh store gets it
    // without waiting (a few tries, for the instant the thread holds it).
    let fresh = Store::new(dir.path());
    let mut got = Err(Error::Closed);
    for _ in 0..50 {
        got = fresh.try_with_aid(aid, async |_| Ok::<_, Error>(())).await;
        if got.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.join().unwrap();
    assert!(
        got.is_ok(),
        "the aid stayed locked by the forked child: {got:?}"
    );
}

/// Stores made and closed one after another (one per request, say), each giving up a wait
/// behind a long holder, share the one waiting thread of the process: no pile-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_given_up_by_many_stores_share_one_thread() {
    let dir = run_dir();
    let aid = Aid::new(19).unwrap();
    let other = hold_elsewhere(dir.path(), aid, Duration::from_millis(1500));
    for _ in 0..40 {
        let store = Store::new(dir.path());
        time_out(&store, aid, false).await;
        store.close().await.unwrap();
    }
    let waiters = flock_waiters(&dir.path().join("state").join("19.lock"));
    tokio::task::spawn_blocking(move || other.join().unwrap())
        .await
        .unwrap();
    assert_eq!(waiters, 1, "kernel waiters left by 40 closed stores");
}
