//! `AsyncStore::replace`: the one-call overwrite, like `save`, `load` and `destroy`, on both
//! runtimes.

mod common;

use std::time::Duration;

use common::{aid, pid, run_dir};
use runstate::{AsyncStore, Error, InstanceId, State};

/// Long enough that only a hang reaches it.
const DEADLOCK: Duration = Duration::from_secs(60);

async fn replaces_in_one_call() {
    let dir = run_dir();
    let store = AsyncStore::<String>::new(dir.path());
    let (aid, id) = (aid(11), InstanceId::random());

    // No entry: nothing written.
    let absent = State::unidentified(id, pid(1), "absent".to_string());
    assert!(!store.replace(aid, &absent).await.unwrap());
    assert_eq!(store.load(aid, id).await.unwrap(), None);

    let first = State::unidentified(id, pid(1), "starting".to_string());
    store.save(aid, &first).await.unwrap();
    let second = State::unidentified(id, pid(2), "running".to_string());
    assert!(store.replace(aid, &second).await.unwrap());
    assert_eq!(store.load(aid, id).await.unwrap(), Some(second));

    // It takes the aid's lock: it waits for a holder, and runs once that one lets go.
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .with_aid(aid, async |_| {
                    held_tx.send(()).unwrap();
                    go_rx.await.unwrap();
                    Ok::<_, Error>(())
                })
                .await
        })
    };
    held_rx.await.unwrap();
    let third = State::unidentified(id, pid(3), "stopped".to_string());
    let replacing = {
        let (store, third) = (store.clone(), third.clone());
        tokio::spawn(async move { store.replace(aid, &third).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !replacing.is_finished(),
        "replace did not wait for the holder"
    );
    go_tx.send(()).unwrap();
    holder.await.unwrap().unwrap();
    let replaced = tokio::time::timeout(DEADLOCK, replacing).await.unwrap();
    assert!(replaced.unwrap().unwrap());
    assert_eq!(store.load(aid, id).await.unwrap(), Some(third));
    store.close().await.unwrap();
    assert!(matches!(
        store.replace(aid, &absent).await,
        Err(Error::Closed)
    ));
}

#[test]
fn replace_one_call_current_thread() {
    common::run_current_thread(replaces_in_one_call());
}

#[test]
fn replace_one_call_multi_thread() {
    common::run_multi_thread(replaces_in_one_call());
}
