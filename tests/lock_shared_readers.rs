//! Shared holds, in one task, across tasks and across two store handles (each has its own
//! lock descriptors, so for `flock` it is another process): readers run together, a writer
//! excludes readers and the reverse until the last reader leaves, and a queued writer is not
//! overtaken by later readers. The same across real processes: tests/lock_processes.rs.
//!
//! Every test body runs on a current-thread and on a multi-thread tokio runtime.

#[macro_use]
mod common;

use std::sync::Arc;

use common::locking::*;
use common::{DEADLOCK, no_deadlock};
use futures::TryStreamExt;
use futures::future::join_all;
use runstate::{Aid, Error, InstanceId, State};
use std::pin::pin;
use tokio::sync::Barrier;

// ---------------------------------------------------------------------------------------
// 1. Shared holders run together.

/// Four shared holders of one aid are inside at the same time: each waits at a barrier that
/// opens only when all four are there. Once with one handle, once with two handles (whose
/// `LOCK_SH`s must coexist), and alongside `ReadCursor` reads.
async fn shared_holders_run_together() {
    let fx = Fixture::new(41);
    let (store, store2) = (fx.handle(), fx.handle());
    let aid = fx.aid;
    let id = InstanceId::random();
    store
        .with_aid(aid, async |c| c.save(&State::new(id, 7, 70)).await)
        .await
        .unwrap();

    for handles in [
        vec![store.clone(); 4],
        vec![store.clone(), store2.clone(), store.clone(), store2.clone()],
    ] {
        let barrier = Arc::new(Barrier::new(handles.len()));
        let tasks: Vec<_> = handles
            .into_iter()
            .map(|s| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    s.with_aid_shared(aid, async |c| {
                        assert_eq!(c.aid(), aid);
                        assert_eq!(c.len().await?, 1);
                        barrier.wait().await;
                        // Everyone is inside: reads still work for all.
                        assert!(!c.is_empty().await?);
                        let ids: Vec<InstanceId> = c.ids().try_collect().await?;
                        assert_eq!(ids, [id]);
                        let all: Vec<State<u32>> = c.entries().try_collect().await?;
                        assert_eq!(all.len(), 1);
                        assert_eq!(c.load_all().await?.len(), 1);
                        Ok::<_, Error>(c.load(id).await?.map(|s| s.config))
                    })
                    .await
                })
            })
            .collect();
        for r in no_deadlock("four shared holders meeting inside", join_all(tasks)).await {
            assert_eq!(r.unwrap().unwrap(), Some(70));
        }
    }

    // The same within one task, on one handle.
    let barrier = Barrier::new(3);
    let holds = (0..3).map(|_| {
        store.with_aid_shared(aid, async |c| {
            barrier.wait().await;
            c.len().await
        })
    });
    for n in no_deadlock("three shared holders in one task", join_all(holds)).await {
        assert_eq!(n.unwrap(), 1);
    }
    assert_free(aid, &[&store, &store2]).await;
}

/// `AsyncStore::entries` holds each aid's lock shared while it reads it: it runs beside
/// shared holders, waits for an exclusive one, and while paused inside an aid it keeps
/// writers out but lets readers in.
async fn store_entries_take_shared_locks() {
    const ENTRIES: u32 = 600;
    let fx = Fixture::new(42);
    let (store, store2) = (fx.handle(), fx.handle());
    let aid = fx.aid;
    store
        .with_aid(aid, async |c| {
            // More than one batch, so a paused stream is still inside the aid.
            for pid in 1..=ENTRIES {
                c.save(&State::new(InstanceId::random(), pid, pid)).await?;
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    // Beside shared holders of both handles.
    let r1 = Holder::hold(&store, aid, Kind::Shared, "r1", &fx.log).await;
    let r2 = Holder::hold(&store2, aid, Kind::Shared, "r2", &fx.log).await;
    let all: Vec<(Aid, State<u32>)> =
        no_deadlock("entries beside readers", store.entries().try_collect())
            .await
            .unwrap();
    assert_eq!(all.len(), ENTRIES as usize);
    r1.leave().await;
    r2.leave().await;

    // Not beside an exclusive holder of another handle (nor of this one).
    for writer_store in [&store2, &store] {
        let w = Holder::hold(writer_store, aid, Kind::Exclusive, "w", &fx.log).await;
        let mut listing = pin!(store.entries().try_collect::<Vec<(Aid, State<u32>)>>());
        assert_waits("entries() beside a writer", listing.as_mut()).await;
        w.leave().await;
        let all = no_deadlock("entries after the writer left", listing)
            .await
            .unwrap();
        assert_eq!(all.len(), ENTRIES as usize);
    }

    // Paused inside the aid, the stream keeps its shared hold.
    {
        let mut stream = pin!(store.entries());
        let first = no_deadlock("first entry", stream.try_next()).await.unwrap();
        assert!(first.is_some());
        assert_would_block(try_hold(&store2, aid, Kind::Exclusive).await, aid);
        assert_would_block(try_hold(&store, aid, Kind::Exclusive).await, aid);
        try_hold(&store2, aid, Kind::Shared).await.unwrap();
        try_hold(&store, aid, Kind::Shared).await.unwrap();
    }
    // Dropped midway, it leaves nothing held.
    assert_free(aid, &[&store, &store2]).await;
}

// ---------------------------------------------------------------------------------------
// 2. Writers exclude readers.

async fn writer_excludes_readers() {
    let fx = Fixture::new(43);
    let (store, store2, store3) = (fx.handle(), fx.handle(), fx.handle());
    let aid = fx.aid;

    // The writer is on `store`; then on another handle.
    for (round, writer_store) in [&store, &store2].into_iter().enumerate() {
        let log = Log(Arc::new(fx.log.0.with_extension(round.to_string())));
        let w = Holder::hold(writer_store, aid, Kind::Exclusive, "w", &log).await;
        for s in [&store, &store2, &store3] {
            assert_would_block(try_hold(s, aid, Kind::Shared).await, aid);
            assert_would_block(try_hold(s, aid, Kind::Exclusive).await, aid);
        }
        // Readers of the writer's handle, of another handle and of a third one wait.
        let mut readers = Vec::new();
        for (name, s) in [("ra", &store), ("rb", &store2), ("rc", &store3)] {
            let mut r = Holder::spawn(s, aid, Kind::Shared, name, &log);
            assert_waits(&format!("reader {name}"), r.entered.as_mut().unwrap()).await;
            readers.push(r);
        }
        assert!(readers.iter().all(|r| !r.is_inside()));
        w.leave().await;
        for r in &mut readers {
            r.entered().await;
        }
        // All three readers are inside together once the writer has gone.
        assert!(readers.iter().all(Holder::is_inside));
        let lines = log.lines();
        assert_eq!(
            lines[..2],
            ["w in", "w out"],
            "the writer left before any reader came in: {lines:?}"
        );
        assert_eq!(lines.len(), 5, "{lines:?}");
        for r in readers {
            r.leave().await;
        }
        assert_free(aid, &[&store, &store2, &store3]).await;
    }
}

// ---------------------------------------------------------------------------------------
// 3. Readers exclude writers, until the last one leaves.

async fn readers_exclude_writers() {
    let fx = Fixture::new(44);
    let (store, store2, store3) = (fx.handle(), fx.handle(), fx.handle());
    let aid = fx.aid;

    // Both orders of leaving; the writer on another handle, then on the readers' own.
    for (round, (first_leaves, writer_store)) in
        [(0, &store2), (1, &store2), (0, &store), (1, &store)]
            .into_iter()
            .enumerate()
    {
        let log = Log(Arc::new(fx.log.0.with_extension(round.to_string())));
        let r1 = Holder::hold(&store, aid, Kind::Shared, "r1", &log).await;
        let r2 = Holder::hold(&store, aid, Kind::Shared, "r2", &log).await;
        for s in [&store, &store2, &store3] {
            assert_would_block(try_hold(s, aid, Kind::Exclusive).await, aid);
        }
        let mut w = Holder::spawn(writer_store, aid, Kind::Exclusive, "w", &log);
        assert_waits("writer beside two readers", w.entered.as_mut().unwrap()).await;

        let (leaver, stayer) = if first_leaves == 0 {
            (r1, r2)
        } else {
            (r2, r1)
        };
        let (leaver_name, stayer_name) = (leaver.name.clone(), stayer.name.clone());
        leaver.leave().await;
        // One reader is still inside: the process's LOCK_SH must still be held, so a third
        // handle still cannot write (the Go original dropped the lock for everyone here).
        assert_would_block(try_hold(&store3, aid, Kind::Exclusive).await, aid);
        assert_waits(
            "writer beside the remaining reader",
            w.entered.as_mut().unwrap(),
        )
        .await;
        assert!(!w.is_inside() && stayer.is_inside());

        stayer.leave().await;
        w.entered().await;
        log.assert_is(&[
            "r1 in",
            "r2 in",
            &format!("{leaver_name} out"),
            &format!("{stayer_name} out"),
            "w in",
        ]);
        for s in [&store, &store2, &store3] {
            assert_would_block(try_hold(s, aid, Kind::Shared).await, aid);
        }
        w.leave().await;
        assert_free(aid, &[&store, &store2, &store3]).await;
    }

    // Readers of two handles: when one handle's last reader leaves, the other's LOCK_SH
    // still keeps writers out.
    let log = Log(Arc::new(fx.log.0.with_extension("mixed")));
    let r1 = Holder::hold(&store, aid, Kind::Shared, "r1", &log).await;
    let r2 = Holder::hold(&store2, aid, Kind::Shared, "r2", &log).await;
    r1.leave().await;
    assert_would_block(try_hold(&store3, aid, Kind::Exclusive).await, aid);
    assert_would_block(try_hold(&store, aid, Kind::Exclusive).await, aid);
    r2.leave().await;
    assert_free(aid, &[&store, &store2, &store3]).await;
}

// ---------------------------------------------------------------------------------------
// 4. Fairness.

/// Reader A holds; writer W queues; reader B queues after W. When A leaves, W goes before B,
/// though B could have joined A at once.
async fn queued_writer_is_not_overtaken_by_later_readers() {
    let fx = Fixture::new(45);
    let store = fx.handle();
    let aid = fx.aid;
    let log = &fx.log;

    let a = Holder::hold(&store, aid, Kind::Shared, "A", log).await;
    let mut w = pin!(store.with_aid(aid, async |_| {
        log.push("W in");
        tokio::task::yield_now().await;
        log.push("W out");
        Ok::<_, Error>(())
    }));
    // Polled once, W is queued for the aid.
    assert!(poll_once(w.as_mut()).await.is_pending());
    // A queued writer turns `try` readers away.
    assert_would_block(try_hold(&store, aid, Kind::Shared).await, aid);

    let mut b = pin!(store.with_aid_shared(aid, async |_| {
        log.push("B in");
        Ok::<_, Error>(())
    }));
    let mut c = pin!(store.with_aid_shared_timeout(aid, DEADLOCK, async |_| {
        log.push("C in");
        Ok::<_, Error>(())
    }));
    assert_waits("reader B behind a queued writer", b.as_mut()).await;
    assert_waits("reader C behind a queued writer", c.as_mut()).await;
    assert!(!log.has("B in") && !log.has("C in"));

    a.leave().await;
    let (rw, rb, rc) = no_deadlock("writer and readers after A", async {
        tokio::join!(w, b, c)
    })
    .await;
    rw.unwrap();
    rb.unwrap();
    rc.unwrap();
    let lines = log.lines();
    assert_eq!(lines[..4], ["A in", "A out", "W in", "W out"], "{lines:?}");
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_free(aid, &[&store, &fx.handle()]).await;
}

both_runtimes!(
    shared_holders_run_together,
    store_entries_take_shared_locks,
    writer_excludes_readers,
    readers_exclude_writers,
    queued_writer_is_not_overtaken_by_later_readers,
);
