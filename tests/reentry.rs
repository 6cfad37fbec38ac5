//! Re-entrant use of a held aid fails with `Error::Reentrant` instead of waiting for itself
//! forever: on both runtimes, run by `block_on` (outside any task) and in a spawned task,
//! and in a `LocalSet`. Each nested call is bounded by `no_deadlock`, so a regression fails
//! after a while rather than hanging.

mod common;

use common::{aid, no_deadlock, pid, run_dir};
use futures::StreamExt;
use runstate::{AsyncStore, Error, InstanceId, State};
use std::time::Duration;

type Store = AsyncStore<u32>;

fn state(n: u32) -> State<u32> {
    State::unidentified(InstanceId::random(), pid(n), n)
}

fn is_reentrant<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    let a = aid(1);
    match result {
        Err(Error::Reentrant { aid }) if aid == a => {}
        other => panic!("{what}: expected Reentrant for aid {a}, got {other:?}"),
    }
}

/// Every way of asking for aid 1 again inside its own closure.
async fn nested_calls_fail(store: &Store) {
    let (a, b) = (aid(1), aid(2));
    store.save(a, &state(1)).await.unwrap();
    store
        .with_aid(a, async |cursor| {
            let r = no_deadlock("save", store.save(a, &state(2))).await;
            is_reentrant(r, "save");
            is_reentrant(
                no_deadlock("load", store.load(a, InstanceId::random())).await,
                "load",
            );
            is_reentrant(
                no_deadlock("replace", store.replace(a, &state(3))).await,
                "replace",
            );
            let r = no_deadlock("clone", store.clone().destroy(a, InstanceId::random())).await;
            is_reentrant(r, "destroy on a clone");
            let r = store.with_aid_timeout(a, Duration::from_secs(3600), async |_| Ok(()));
            is_reentrant(no_deadlock("with_aid_timeout", r).await, "with_aid_timeout");
            let r = store.with_aid_shared(a, async |c| c.len().await);
            is_reentrant(no_deadlock("with_aid_shared", r).await, "with_aid_shared");
            is_reentrant(no_deadlock("prune", store.prune_dead()).await, "prune_dead");
            let mut entries = store.entries();
            let first = no_deadlock("entries", entries.next()).await.unwrap();
            is_reentrant(first, "entries");
            drop(entries);
            is_reentrant(no_deadlock("close", store.close()).await, "close");
            assert!(!store.is_closed());
            // A try never waits, and says so as it always did.
            let r = store.try_with_aid(a, async |_| Ok::<_, Error>(())).await;
            assert!(matches!(r, Err(Error::WouldBlock { .. })), "{r:?}");
            // Another aid is fine, and re-entry is seen through it.
            let inner = store.with_aid(b, async |_| {
                no_deadlock("nested", store.save(a, &state(4))).await
            });
            is_reentrant(no_deadlock("other aid", inner).await, "through another aid");
            store.save(b, &state(5)).await?;
            // The cursor is the way.
            cursor.len().await
        })
        .await
        .unwrap();

    // Shared inside shared: it would wait forever once a writer queues.
    let r = store.with_aid_shared(a, async |_| {
        no_deadlock("shared", store.load(a, InstanceId::random())).await
    });
    is_reentrant(r.await, "shared in shared");
    let r = store.with_aid_shared(a, async |_| {
        no_deadlock("exclusive", store.save(a, &state(6))).await
    });
    is_reentrant(r.await, "exclusive in shared");

    // Nothing is left marked: the aid works as before.
    store.save(a, &state(7)).await.unwrap();
    // Two holds of one aid joined in one task are not nested: they wait for each other.
    let (x, y) = no_deadlock(
        "join",
        futures::future::join(store.save(a, &state(8)), store.save(a, &state(9))),
    )
    .await;
    x.unwrap();
    y.unwrap();
    assert_eq!(store.with_aid(a, async |c| c.len().await).await.unwrap(), 4);
    store.close().await.unwrap();
}

async fn in_place_and_in_a_task() {
    // Run by block_on itself: outside any task.
    let dir = run_dir();
    nested_calls_fail(&Store::new(dir.path())).await;
    let dir = run_dir();
    let store = Store::new(dir.path());
    tokio::spawn(async move { nested_calls_fail(&store).await })
        .await
        .unwrap();
}

async fn in_a_local_set() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let dir = run_dir();
            nested_calls_fail(&Store::new(dir.path())).await;
            let dir = run_dir();
            let store = Store::new(dir.path());
            tokio::task::spawn_local(async move { nested_calls_fail(&store).await })
                .await
                .unwrap();
        })
        .await;
}

#[test]
fn reentry_fails_current_thread() {
    common::run_current_thread(in_place_and_in_a_task());
}

#[test]
fn reentry_fails_multi_thread() {
    common::run_multi_thread(in_place_and_in_a_task());
}

#[test]
fn reentry_fails_in_a_local_set_current_thread() {
    common::run_current_thread(in_a_local_set());
}

#[test]
fn reentry_fails_in_a_local_set_multi_thread() {
    common::run_multi_thread(in_a_local_set());
}
