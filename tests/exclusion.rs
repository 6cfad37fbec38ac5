//! Mutual exclusion of `with_aid`: read-modify-write cycles never interleave, different aids
//! never wait for each other, and waiters of one aid are served first come, first served.
//! Every test runs on both tokio runtimes.

#[macro_use]
mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{Inside, no_deadlock, run_dir};
use runstate::{Aid, AsyncStore, Cursor, Error, InstanceId, State};
use tokio::sync::oneshot;
use tokio::task::yield_now;

type Store = AsyncStore<u64>;

both_runtimes!(
    read_modify_write_increments_are_never_lost,
    two_store_handles_exclude_each_other,
    different_aids_never_wait_for_each_other,
    waiters_acquire_in_fifo_order,
);

/// One increment of the counter entry `id`: load, destroy, save + 1, with yields between the
/// steps to invite other tasks in.
async fn increment(c: &mut Cursor<u64>, id: InstanceId, inside: &AtomicBool) -> Result<(), Error> {
    let _inside = Inside::enter(inside);
    yield_now().await;
    let old = c.load(id).await?.expect("the counter entry is missing");
    yield_now().await;
    assert!(c.destroy(id).await?, "the counter entry vanished");
    yield_now().await;
    assert_eq!(c.load(id).await?, None);
    c.save(&State::new(id, old.pid + 1, old.config + 1)).await?;
    yield_now().await;
    Ok(())
}

async fn counter_after(stores: &[Store], tasks: usize, rounds: u64) -> u64 {
    let aid = Aid::new(11).unwrap();
    let id = InstanceId::random();
    stores[0]
        .with_aid(aid, async |c| c.save(&State::new(id, 0, 0)).await)
        .await
        .unwrap();
    let inside = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = stores[t % stores.len()].clone();
        let inside = inside.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..rounds {
                store
                    .with_aid(aid, async |c| increment(c, id, &inside).await)
                    .await
                    .unwrap();
            }
        }));
    }
    no_deadlock("the incrementing tasks", async {
        for h in handles {
            h.await.unwrap();
        }
    })
    .await;
    let last = stores[0]
        .with_aid(aid, async |c| c.load_all().await)
        .await
        .unwrap();
    assert_eq!(last.len(), 1, "{last:?}");
    let state = &last[&id];
    assert_eq!(u64::from(state.pid), state.config);
    state.config
}

async fn read_modify_write_increments_are_never_lost() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    const TASKS: usize = 16;
    const ROUNDS: u64 = 25;
    let total = counter_after(&[store], TASKS, ROUNDS).await;
    assert_eq!(total, TASKS as u64 * ROUNDS);
}

/// Two handles on one directory have their own lock descriptors, as two processes would:
/// they exclude each other through flock alone.
async fn two_store_handles_exclude_each_other() {
    let dir = run_dir();
    let stores = [Store::new(dir.path()), Store::new(dir.path())];
    const TASKS: usize = 8;
    const ROUNDS: u64 = 10;
    let total = counter_after(&stores, TASKS, ROUNDS).await;
    assert_eq!(total, TASKS as u64 * ROUNDS);
}

/// Holds `aid` in a spawned task until `release` fires; returns once the hold is taken.
async fn hold_until(
    store: &Store,
    aid: Aid,
    release: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let (entered_tx, entered_rx) = oneshot::channel();
    let store = store.clone();
    let holder = tokio::spawn(async move {
        store
            .with_aid(aid, async |c| {
                c.save(&State::new(InstanceId::random(), 1, 1)).await?;
                entered_tx.send(()).unwrap();
                release.await.unwrap();
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
    });
    no_deadlock("the holder's with_aid", entered_rx)
        .await
        .unwrap();
    holder
}

/// Aid 1 is held until a `with_aid` on aid 2 has completed: if aids shared a lock, this
/// would never finish.
async fn different_aids_never_wait_for_each_other() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let other_handle = Store::new(dir.path());
    let (a1, a2, a3) = (
        Aid::new(1).unwrap(),
        Aid::new(2).unwrap(),
        Aid::new(3).unwrap(),
    );

    let (release, released) = oneshot::channel();
    let holder = hold_until(&store, a1, released).await;

    no_deadlock("with_aid on aid 2 while aid 1 is held", async {
        // In the same store, the same handle's other aid...
        store
            .with_aid(a2, async |c| {
                c.save(&State::new(InstanceId::random(), 2, 2)).await
            })
            .await
            .unwrap();
        // ...and in another handle (another process), aid 2 and aid 3.
        for aid in [a2, a3] {
            other_handle
                .with_aid(aid, async |c| c.len().await)
                .await
                .unwrap();
        }
    })
    .await;
    // Aid 1 is still held, by the holder: nobody else got it meanwhile.
    let r = store.try_with_aid(a1, async |_| Ok::<_, Error>(())).await;
    assert!(matches!(r, Err(Error::WouldBlock { .. })), "{r:?}");
    release.send(()).unwrap();
    no_deadlock("the holder of aid 1", holder).await.unwrap();

    let counts = no_deadlock("aid 1 after release", async {
        let mut counts = Vec::new();
        for aid in [a1, a2] {
            counts.push(store.with_aid(aid, async |c| c.len().await).await.unwrap());
        }
        counts
    })
    .await;
    assert_eq!(counts, [1, 1]);
}

/// Polls `fut` to completion and reports, right after its first poll, whether that poll
/// left it pending (queued for the lock, here).
async fn report_first_poll<F: Future>(fut: F, report: oneshot::Sender<bool>) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut report = Some(report);
    std::future::poll_fn(move |cx| {
        let out = fut.as_mut().poll(cx);
        if let Some(report) = report.take() {
            let _ = report.send(out.is_pending());
        }
        out
    })
    .await
}

async fn waiters_acquire_in_fifo_order() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let aid = Aid::new(4).unwrap();
    const WAITERS: usize = 12;

    let (release, released) = oneshot::channel();
    let holder = hold_until(&store, aid, released).await;

    let order = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for i in 0..WAITERS {
        let (queued_tx, queued_rx) = oneshot::channel();
        let (store, order, running) = (store.clone(), order.clone(), running.clone());
        waiters.push(tokio::spawn(async move {
            report_first_poll(
                store.with_aid(aid, async |c| {
                    assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0);
                    order.lock().unwrap().push(i);
                    yield_now().await;
                    let n = c.len().await?;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Error>(n)
                }),
                queued_tx,
            )
            .await
        }));
        // Waiter i is queued before waiter i + 1 is even spawned.
        let pending = no_deadlock("the waiter's first poll", queued_rx)
            .await
            .unwrap();
        assert!(pending, "waiter {i} got the aid while it was held");
    }
    assert!(order.lock().unwrap().is_empty());

    release.send(()).unwrap();
    no_deadlock("the holder", holder).await.unwrap();
    for w in waiters {
        assert_eq!(no_deadlock("a waiter", w).await.unwrap().unwrap(), 1);
    }
    assert_eq!(*order.lock().unwrap(), (0..WAITERS).collect::<Vec<_>>());
}
