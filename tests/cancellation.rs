//! Dropping `with_aid` futures at any point: the lock is always released, exclusion holds,
//! every entry stays whole and no temporary file is left. Every test runs on both tokio
//! runtimes, with the store on tmpfs (file work in place) and off it (file work on the
//! blocking pool, where a dropped future's work may still be running).

#[macro_use]
mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use common::{AppConfig, Inside, XorShift, aid_dir, config, names_in, no_deadlock, pid, run_dir};
use futures::future::{Either, select};
use futures::{StreamExt, TryStreamExt};
use runstate::{Aid, AsyncStore, Cursor, Error, InstanceId, State};
use tokio::sync::oneshot;
use tokio::task::yield_now;

type Store = AsyncStore<AppConfig>;

all_places!(
    thousands_of_dropped_with_aid_futures_leave_the_store_consistent,
    dropped_streams_mid_iteration_leave_things_consistent,
    a_waiter_dropped_while_queued_never_takes_the_aid,
    a_waiter_dropped_while_waiting_on_another_handle_releases_the_aid,
);

/// Completes after `n` yields.
async fn yields(n: u64) {
    for _ in 0..n {
        yield_now().await;
    }
}

/// Runs `fut` to completion, or drops it at a random point. `Some` if it completed.
async fn maybe_dropped<T>(rng: &mut XorShift, fut: impl Future<Output = T>) -> Option<T> {
    match rng.below(4) {
        // Dropped right after its first poll.
        0 => tokio::time::timeout(Duration::ZERO, fut).await.ok(),
        // Dropped after a tiny while, measured by the timer.
        1 => {
            let limit = Duration::from_micros(rng.below(400));
            tokio::time::timeout(limit, fut).await.ok()
        }
        // Dropped after a random number of scheduler turns.
        2 => {
            let turns = rng.below(40);
            match select(std::pin::pin!(fut), std::pin::pin!(yields(turns))).await {
                Either::Left((out, _)) => Some(out),
                Either::Right(((), _)) => None,
            }
        }
        _ => Some(fut.await),
    }
}

/// Polls `fut` exactly once.
async fn poll_once<F: Future>(mut fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// One random piece of work on a held aid.
async fn random_work(
    c: &mut Cursor<AppConfig>,
    op: u64,
    pick: u64,
    known: &Mutex<Vec<InstanceId>>,
    inside: &AtomicBool,
    entered: &AtomicUsize,
) -> Result<(), Error> {
    let _inside = Inside::enter(inside);
    entered.fetch_add(1, Ordering::Relaxed);
    // On a multi-thread runtime the store's operations finish within one poll (they run in
    // place), so a closure needs an await point of its own to be dropped while holding the
    // aid, as a real one awaiting a child process would.
    tokio::task::yield_now().await;
    let some_known = || {
        let known = known.lock().unwrap();
        (!known.is_empty()).then(|| known[pick as usize % known.len()])
    };
    match op {
        0 | 1 => {
            let state = State::new(InstanceId::random(), pid(pick as u32 % 1000), config(pick));
            known.lock().unwrap().push(state.id);
            c.save(&state).await?;
            assert_eq!(c.load(state.id).await?.as_ref(), Some(&state));
        }
        2 => {
            if let Some(id) = some_known() {
                c.destroy(id).await?;
                assert_eq!(c.load(id).await?, None);
            }
        }
        3 => {
            if let Some(id) = some_known() {
                if let Some(state) = c.load(id).await? {
                    assert_eq!(state.id, id);
                }
            }
        }
        4 => {
            let mut entries = std::pin::pin!(c.entries());
            for _ in 0..pick % 8 {
                match entries.next().await {
                    Some(state) => drop(state?),
                    None => break,
                }
            }
        }
        5 => {
            let n = c.len().await?;
            let ids: Vec<InstanceId> = c.ids().try_collect().await?;
            assert_eq!(ids.len(), n, "len and ids disagree");
        }
        _ => {
            let all = c.load_all().await?;
            assert!(all.iter().all(|(id, s)| *id == s.id));
        }
    }
    tokio::task::yield_now().await;
    Ok(())
}

/// Asserts that `aid` is consistent on disk and that both a handle and a fresh one take it.
async fn assert_consistent(store: &Store, aid: Aid) -> usize {
    let dir = store.run_dir().to_owned();
    let all = no_deadlock("with_aid after the cancellations", async {
        store.with_aid(aid, async |c| c.load_all().await).await
    })
    .await
    .unwrap();
    let fresh = Store::new(&dir);
    let again = no_deadlock("a fresh handle's with_aid", async {
        fresh.with_aid(aid, async |c| c.load_all().await).await
    })
    .await
    .unwrap();
    assert_eq!(all, again);
    let mut ids: Vec<String> = all.keys().map(InstanceId::to_string).collect();
    ids.sort();
    assert_eq!(
        names_in(&aid_dir(&dir, aid)),
        ids,
        "only whole entries in the aid directory, no temporary file"
    );
    all.len()
}

async fn thousands_of_dropped_with_aid_futures_leave_the_store_consistent() {
    let dir = run_dir();
    // Half the tasks use a second handle, with its own lock descriptor, as another process
    // would: their futures are also dropped while waiting in flock (on a waiting thread).
    let stores = [Store::new(dir.path()), Store::new(dir.path())];
    let aids = [Aid::new(21).unwrap(), Aid::new(22).unwrap()];
    let insides = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let known = Arc::new(Mutex::new(Vec::new()));
    let (completed, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let entered = Arc::new(AtomicUsize::new(0));
    const TASKS: u64 = 6;
    const PER_TASK: u64 = 500;

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = stores[t as usize % 2].clone();
        let (aids, insides, known) = (aids, insides.clone(), known.clone());
        let (completed, dropped) = (completed.clone(), dropped.clone());
        let entered = entered.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift::new(0x5eed + t);
            for _ in 0..PER_TASK {
                let which = rng.below(2) as usize;
                let (op, pick) = (rng.below(7), rng.next_u64());
                let inside = &insides[which];
                let work = store.with_aid(aids[which], async |c| {
                    random_work(c, op, pick, &known, inside, &entered).await
                });
                match maybe_dropped(&mut rng, work).await {
                    Some(result) => {
                        result.unwrap();
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    no_deadlock("the cancelling tasks", async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    let (completed, dropped) = (
        completed.load(Ordering::Relaxed),
        dropped.load(Ordering::Relaxed),
    );
    let entered = entered.load(Ordering::Relaxed);
    eprintln!(
        "{completed} with_aid futures completed, {dropped} dropped, {} of them inside the closure",
        entered - completed
    );
    assert_eq!(completed + dropped, (TASKS * PER_TASK) as usize);
    // The test means something only if both outcomes were common.
    assert!(dropped >= 300, "only {dropped} futures were dropped");
    assert!(completed >= 300, "only {completed} futures completed");
    assert!(
        entered - completed >= 100,
        "only {} futures were dropped while holding the aid",
        entered - completed
    );

    for store in &stores {
        for aid in aids {
            assert_consistent(store, aid).await;
        }
    }
    let everything: Vec<(Aid, State<AppConfig>)> = no_deadlock("store.entries()", async {
        stores[1].entries().try_collect().await
    })
    .await
    .unwrap();
    assert!(everything.iter().all(|(a, _)| aids.contains(a)));
}

async fn dropped_streams_mid_iteration_leave_things_consistent() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let (a, b) = (Aid::new(1).unwrap(), Aid::new(2).unwrap());
    // More entries than one batch of the streams.
    const N: usize = 300;
    for aid in [a, b] {
        store
            .with_aid(aid, async |c| {
                for i in 0..N as u64 {
                    c.save(&State::new(InstanceId::random(), pid(i as u32), config(i)))
                        .await?;
                }
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
    }

    let lens = no_deadlock("streams dropped inside the closure", async {
        store
            .with_aid(a, async |c| {
                let mut lens = Vec::new();
                {
                    let mut ids = std::pin::pin!(c.ids());
                    for _ in 0..5 {
                        ids.next().await.unwrap()?;
                    }
                }
                {
                    let mut entries = std::pin::pin!(c.entries());
                    for _ in 0..130 {
                        entries.next().await.unwrap()?;
                    }
                }
                {
                    // Dropped while a batch is being read, before yielding anything.
                    let mut entries = std::pin::pin!(c.entries());
                    let first = tokio::time::timeout(Duration::ZERO, entries.next()).await;
                    drop(first);
                }
                lens.push(c.len().await?);
                lens.push(c.load_all().await?.len());
                lens.push(c.entries().try_collect::<Vec<_>>().await?.len());
                Ok::<_, Error>(lens)
            })
            .await
    })
    .await
    .unwrap();
    assert_eq!(lens, [N, N, N]);

    // The store-wide stream, dropped in the middle of aid 1 and then of aid 2: its shared
    // holds are released, so exclusive holders get both aids at once.
    for skip in [3, N + 3] {
        {
            let mut all = std::pin::pin!(store.entries());
            for _ in 0..skip {
                all.next().await.unwrap().unwrap();
            }
        }
        for aid in [a, b] {
            assert_eq!(assert_consistent(&store, aid).await, N);
        }
    }
}

/// Spawns a task that takes `aid` through `store` and holds it until the returned sender
/// fires; returns once the task is inside. `what` names it in a deadlock panic.
async fn hold(
    store: &Store,
    aid: Aid,
    what: &str,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (release, released) = oneshot::channel::<()>();
    let (entered_tx, entered_rx) = oneshot::channel();
    let holder = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .with_aid(aid, async |_| {
                    entered_tx.send(()).unwrap();
                    released.await.unwrap();
                    Ok::<_, Error>(())
                })
                .await
                .unwrap()
        })
    };
    no_deadlock(what, entered_rx).await.unwrap();
    (release, holder)
}

async fn a_waiter_dropped_while_queued_never_takes_the_aid() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let aid = Aid::new(5).unwrap();
    const WAITERS: usize = 40;

    let (release, holder) = hold(&store, aid, "the holder").await;

    // Queue waiters; drop a random half of them while they wait, keep the others.
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut rng = XorShift::new(77);
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for i in 0..WAITERS {
        let (store, ran) = (store.clone(), ran.clone());
        let (go_tx, go_rx) = oneshot::channel::<bool>();
        let (queued_tx, queued_rx) = oneshot::channel();
        let waiter = tokio::spawn(async move {
            let work = store.with_aid(aid, async |c| {
                ran.lock().unwrap().push(i);
                c.len().await
            });
            let mut work = std::pin::pin!(work);
            // Queue up: one poll leaves it pending in the aid's wait list.
            let first = poll_once(work.as_mut()).await;
            queued_tx.send(first.is_pending()).unwrap();
            if go_rx.await.unwrap() {
                Some(work.await.unwrap())
            } else {
                None
            }
        });
        assert!(no_deadlock("queueing", queued_rx).await.unwrap());
        if rng.below(2) == 0 {
            dropped.push(i);
            go_tx.send(false).unwrap();
            assert_eq!(no_deadlock("a dropped waiter", waiter).await.unwrap(), None);
        } else {
            kept.push((i, go_tx, waiter));
        }
    }
    assert!(!dropped.is_empty() && !kept.is_empty());

    release.send(()).unwrap();
    no_deadlock("the holder", holder).await.unwrap();
    let mut kept_ids = Vec::new();
    for (i, go, waiter) in kept {
        go.send(true).unwrap();
        assert_eq!(no_deadlock("a kept waiter", waiter).await.unwrap(), Some(0));
        kept_ids.push(i);
    }
    // Nobody holds the aid now: another with_aid takes it at once.
    no_deadlock("with_aid after the drops", async {
        store.try_with_aid(aid, async |c| c.len().await).await
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        *ran.lock().unwrap(),
        kept_ids,
        "the dropped waiters never ran, the kept ones ran in order"
    );
}

/// Another handle (another process) holds the aid; our waiter, whose flock wait runs on a
/// thread of its own, is dropped. When the lock comes it must be let go at once.
async fn a_waiter_dropped_while_waiting_on_another_handle_releases_the_aid() {
    let dir = run_dir();
    let ours = Store::new(dir.path());
    let theirs = Store::new(dir.path());
    let aid = Aid::new(6).unwrap();
    let ran = AtomicBool::new(false);

    let (release, holder) = hold(&theirs, aid, "their holder").await;

    let waited = tokio::time::timeout(
        Duration::from_millis(50),
        ours.with_aid(aid, async |_| {
            ran.store(true, Ordering::SeqCst);
            Ok::<_, Error>(())
        }),
    )
    .await;
    assert!(waited.is_err(), "got an aid another handle holds");

    release.send(()).unwrap();
    no_deadlock("their holder", holder).await.unwrap();
    // Both handles get the aid, in turn, again and again: the orphaned flock was released.
    no_deadlock("both handles after the drop", async {
        for _ in 0..3 {
            theirs.with_aid(aid, async |c| c.len().await).await.unwrap();
            ours.with_aid(aid, async |c| c.len().await).await.unwrap();
        }
    })
    .await;
    assert!(
        !ran.load(Ordering::SeqCst),
        "the dropped waiter's closure ran"
    );
}
