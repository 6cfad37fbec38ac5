//! A panic inside a `with_aid` closure reaches the caller and releases the aid, for this
//! handle and for other handles (other processes); a panic on the blocking pool becomes an
//! error. Every test runs on both tokio runtimes.

#[macro_use]
mod common;

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use common::{AppConfig, config, no_deadlock, pid, run_dir};
use futures::{FutureExt, TryStreamExt};
use runstate::{Aid, AsyncStore, CorruptKind, Error, InstanceId, State};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::oneshot;

type Store = AsyncStore<AppConfig>;

both_runtimes!(
    a_panic_reaches_a_spawned_caller_and_releases_the_aid,
    a_panic_caught_with_catch_unwind_releases_the_aid,
    a_panic_after_saving_keeps_the_entry_and_releases_the_aid,
    a_panic_with_a_save_in_flight_leaves_a_whole_entry_or_none,
    queued_waiters_go_on_after_the_holder_panics,
    panics_in_the_config_serde_impls_release_the_aid,
);

fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<not a string>".into())
}

/// Both this handle and a fresh one (another process, as far as locks go) take `aid` again,
/// and it holds `want` entries.
async fn assert_released(store: &Store, aid: Aid, want: usize) {
    let fresh = Store::new(store.run_dir());
    no_deadlock("with_aid after the panic", async {
        for s in [store, &fresh, store] {
            let all = s.with_aid(aid, async |c| c.load_all().await).await.unwrap();
            assert_eq!(all.len(), want);
        }
        // Not merely eventually: nobody holds it now.
        store
            .try_with_aid(aid, async |c| c.len().await)
            .await
            .unwrap();
    })
    .await;
}

async fn a_panic_reaches_a_spawned_caller_and_releases_the_aid() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let aid = Aid::new(1).unwrap();
    let task = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .with_aid(aid, async |c| -> Result<(), Error> {
                    c.len().await?;
                    panic!("boom in the closure");
                })
                .await
        })
    };
    let err = no_deadlock("the panicking task", task).await.unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(message(&*err.into_panic()), "boom in the closure");
    assert_released(&store, aid, 0).await;
}

async fn a_panic_caught_with_catch_unwind_releases_the_aid() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let aid = Aid::new(2).unwrap();
    for round in 0..3 {
        let caught = AssertUnwindSafe(store.with_aid(aid, async |c| -> Result<(), Error> {
            c.len().await?;
            panic!("boom {round}");
        }))
        .catch_unwind()
        .await;
        let payload = caught.expect_err("the panic was swallowed");
        assert_eq!(message(&*payload), format!("boom {round}"));
        assert_released(&store, aid, 0).await;
    }
    // A panic before the closure's first await, too.
    let caught = AssertUnwindSafe(store.with_aid(aid, async |_| -> Result<(), Error> {
        panic!("at once");
    }))
    .catch_unwind()
    .await;
    assert_eq!(message(&*caught.unwrap_err()), "at once");
    assert_released(&store, aid, 0).await;
}

async fn a_panic_after_saving_keeps_the_entry_and_releases_the_aid() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let aid = Aid::new(3).unwrap();
    let saved = State::new(InstanceId::random(), pid(3), config(3));
    let caught = AssertUnwindSafe(store.with_aid(aid, async |c| -> Result<(), Error> {
        c.save(&saved).await?;
        // Mid-stream, with a batch read and the listing open.
        let mut entries = std::pin::pin!(c.entries());
        entries.try_next().await?;
        panic!("after saving");
    }))
    .catch_unwind()
    .await;
    assert!(caught.is_err());
    assert_released(&store, aid, 1).await;
    let loaded = store
        .with_aid(aid, async |c| c.load(saved.id).await)
        .await
        .unwrap();
    assert_eq!(loaded, Some(saved));
}

async fn a_panic_with_a_save_in_flight_leaves_a_whole_entry_or_none() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let aid = Aid::new(4).unwrap();
    let mut saved = Vec::new();
    for i in 0..20 {
        let state = State::new(InstanceId::random(), pid(i), config(u64::from(i)));
        saved.push(state.clone());
        let caught = AssertUnwindSafe(store.with_aid(aid, async |c| -> Result<(), Error> {
            // Start the save on the blocking pool, then panic while it runs.
            let mut save = std::pin::pin!(c.save(&state));
            let first = std::future::poll_fn(|cx| Poll::Ready(save.as_mut().poll(cx))).await;
            if let Poll::Ready(r) = first {
                r?;
            }
            panic!("with a save in flight");
        }))
        .catch_unwind()
        .await;
        assert!(caught.is_err());
    }
    let all = no_deadlock("with_aid after the panics", async {
        store.with_aid(aid, async |c| c.load_all().await).await
    })
    .await
    .unwrap();
    for (id, state) in &all {
        let want = saved
            .iter()
            .find(|s| s.id == *id)
            .expect("an unknown entry");
        assert_eq!(state, want);
    }
    assert_released(&store, aid, all.len()).await;
}

async fn queued_waiters_go_on_after_the_holder_panics() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let aid = Aid::new(5).unwrap();
    let (entered_tx, entered_rx) = oneshot::channel();
    let (explode_tx, explode_rx) = oneshot::channel::<()>();
    let holder = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .with_aid(aid, async |_| -> Result<(), Error> {
                    entered_tx.send(()).unwrap();
                    explode_rx.await.unwrap();
                    panic!("holder panics");
                })
                .await
        })
    };
    no_deadlock("the holder", entered_rx).await.unwrap();

    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5 {
        let (store, order) = (store.clone(), order.clone());
        let (queued_tx, queued_rx) = oneshot::channel();
        waiters.push(tokio::spawn(async move {
            let mut work = std::pin::pin!(store.with_aid(aid, async |c| {
                order.lock().unwrap().push(i);
                c.save(&State::new(
                    InstanceId::random(),
                    pid(i),
                    config(u64::from(i)),
                ))
                .await
            }));
            let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
            queued_tx.send(first.is_pending()).unwrap();
            work.await
        }));
        assert!(no_deadlock("queueing", queued_rx).await.unwrap());
    }
    explode_tx.send(()).unwrap();
    let err = no_deadlock("the holder", holder).await.unwrap_err();
    assert!(err.is_panic());
    for w in waiters {
        no_deadlock("a waiter", w).await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    assert_released(&store, aid, 5).await;
}

/// A config whose serde impls panic on one value: Serialize runs in `save`'s caller,
/// Deserialize wherever the store decodes (in place for a small entry, on the blocking pool
/// for one over 64 KiB, which the padding makes).
#[derive(Clone, Debug, PartialEq)]
struct Touchy(u32, String);

const SERIALIZE_PANICS: u32 = 666;
const DESERIALIZE_PANICS: u32 = 13;

impl Touchy {
    fn small(n: u32) -> Touchy {
        Touchy(n, String::new())
    }

    /// Larger than the store decodes in place.
    fn big(n: u32) -> Touchy {
        Touchy(n, "x".repeat(100 << 10))
    }
}

impl Serialize for Touchy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert_ne!(self.0, SERIALIZE_PANICS, "serialize panics");
        (self.0, &self.1).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Touchy, D::Error> {
        let (n, pad) = <(u32, String)>::deserialize(d)?;
        assert_ne!(n, DESERIALIZE_PANICS, "deserialize panics");
        Ok(Touchy(n, pad))
    }
}

async fn panics_in_the_config_serde_impls_release_the_aid() {
    let dir = run_dir();
    let store = AsyncStore::<Touchy>::new(dir.path());
    let aid = Aid::new(6).unwrap();

    // Serialize panics in the caller's task: the panic propagates like any other.
    let bad = State::new(
        InstanceId::random(),
        pid(1),
        Touchy::small(SERIALIZE_PANICS),
    );
    let caught = AssertUnwindSafe(store.with_aid(aid, async |c| c.save(&bad).await))
        .catch_unwind()
        .await;
    assert!(message(&*caught.unwrap_err()).contains("serialize panics"));

    // Deserialize panics, in place or on the pool: the entry reads as corrupt, with an
    // error naming its file, and the lock is released.
    let touchy = State::new(
        InstanceId::random(),
        pid(2),
        Touchy::small(DESERIALIZE_PANICS),
    );
    let big = State::new(
        InstanceId::random(),
        pid(4),
        Touchy::big(DESERIALIZE_PANICS),
    );
    let fine = State::new(InstanceId::random(), pid(3), Touchy::small(3));
    store
        .with_aid(aid, async |c| {
            c.save(&touchy).await?;
            c.save(&big).await?;
            c.save(&fine).await
        })
        .await
        .unwrap();
    for panics in [&touchy, &big] {
        let r = no_deadlock("a load that panics", async {
            store.with_aid(aid, async |c| c.load(panics.id).await).await
        })
        .await;
        assert!(
            matches!(&r, Err(Error::Corrupt { path, kind: CorruptKind::DecodePanicked(_) })
                if path.ends_with(panics.id.to_string())),
            "{r:?}"
        );
    }
    let fresh = AsyncStore::<Touchy>::new(dir.path());
    for s in [&store, &fresh] {
        let (len, loaded) = no_deadlock("with_aid after the panic", async {
            s.with_aid(aid, async |c| {
                Ok::<_, Error>((c.len().await?, c.load(fine.id).await?))
            })
            .await
        })
        .await
        .unwrap();
        assert_eq!(len, 3);
        assert_eq!(loaded.as_ref(), Some(&fine));
    }
    assert_eq!(bad.config, Touchy::small(SERIALIZE_PANICS));
}
