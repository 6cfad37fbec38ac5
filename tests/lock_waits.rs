//! Lock control that gives up: `try_with_aid(_shared)` runs nothing and leaves nothing when
//! it fails, `with_aid(_shared)_timeout` gives up after its limit and takes nothing late,
//! and shared holds dropped at any point leak neither the reader count nor the `LOCK_SH`.
//!
//! Every test body runs on a current-thread and on a multi-thread tokio runtime.
//! `RUNSTATE_SEED=<seed>` replays a run of the random test.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::locking::*;
use common::{DEADLOCK, no_deadlock};
use futures::future::join_all;
use runstate::{Aid, Error, InstanceId, State};
use std::pin::pin;

// ---------------------------------------------------------------------------------------
// 5. `try` runs nothing and leaves nothing when it fails.

async fn failed_try_runs_nothing_and_leaves_nothing() {
    let fx = Fixture::new(46);
    let (store, store2) = (fx.handle(), fx.handle());
    let aid = fx.aid;
    let other = Aid::new(47).unwrap();

    for (holder_store, holder_kind) in [
        (&store, Kind::Exclusive),
        (&store, Kind::Shared),
        (&store2, Kind::Exclusive),
        (&store2, Kind::Shared),
    ] {
        let h = Holder::hold(holder_store, aid, holder_kind, "h", &fx.log).await;
        for s in [&store, &store2] {
            for kind in [Kind::Exclusive, Kind::Shared] {
                let r = try_hold(s, aid, kind).await;
                if holder_kind == Kind::Shared && kind == Kind::Shared {
                    r.unwrap();
                } else {
                    // `try_hold` has checked that the closure did not run.
                    assert_would_block(r, aid);
                }
            }
        }
        // Another aid is not affected.
        assert_free(other, &[&store, &store2]).await;
        h.leave().await;
        // Right after, the aid is free for everyone, and with_aid works at once.
        for s in [&store, &store2] {
            let ran = no_deadlock(
                "with_aid after a failed try",
                s.with_aid(aid, async |_| Ok::<_, Error>(true)),
            )
            .await
            .unwrap();
            assert!(ran);
        }
        assert_free(aid, &[&store, &store2, &fx.handle()]).await;
    }

    // Many failed tries in a row leave no reader count behind: a shared holder afterwards
    // still takes the flock (another handle cannot write), and gives it back.
    let h = Holder::hold(&store2, aid, Kind::Exclusive, "h2", &fx.log).await;
    for _ in 0..50 {
        assert_would_block(try_hold(&store, aid, Kind::Shared).await, aid);
        assert_would_block(try_hold(&store, aid, Kind::Exclusive).await, aid);
    }
    h.leave().await;
    reader_keeps_writers_out(&store, &store2, aid).await;
    assert_free(aid, &[&store, &store2]).await;
}

// ---------------------------------------------------------------------------------------
// 6. Wait limits.

/// Timed waits behind a holder of this process (the in-process path), then of another
/// handle (the flock path, waited on by a thread of the store): they fail with Timeout after
/// at least the limit, run nothing, and once the holder leaves the aid is free for a third
/// party (after the instant a waiting thread whose waiter gave up takes and drops the lock).
async fn timeouts_leave_nothing_behind() {
    let fx = Fixture::new(48);
    let (store, store2, store3) = (fx.handle(), fx.handle(), fx.handle());
    let aid = fx.aid;

    for holder_store in [&store, &store2] {
        // Behind a writer, both kinds time out.
        let h = Holder::hold(holder_store, aid, Kind::Exclusive, "h", &fx.log).await;
        expect_timeout(&store, aid, Kind::Exclusive).await;
        expect_timeout(&store, aid, Kind::Shared).await;
        // Several at once, of both kinds: queued behind each other as well.
        let waits = [Kind::Shared, Kind::Shared, Kind::Exclusive, Kind::Shared]
            .map(|kind| expect_timeout(&store, aid, kind));
        join_all(waits).await;
        h.leave().await;
        // Nobody took the aid late: a third handle gets it at once, and so does `store`.
        assert_free(aid, &[&store3, &store]).await;

        // Behind readers, only writers time out.
        let h = Holder::hold(holder_store, aid, Kind::Shared, "h", &fx.log).await;
        expect_timeout(&store, aid, Kind::Exclusive).await;
        let (r, _) = timed_hold(&store, aid, Kind::Shared, LIMIT).await;
        r.unwrap();
        h.leave().await;
        assert_free(aid, &[&store3, &store]).await;
    }
}

/// Timed waits succeed when the aid frees up within the limit.
async fn timed_waits_succeed_when_the_aid_frees_up() {
    let fx = Fixture::new(49);
    let (store, store2) = (fx.handle(), fx.handle());
    let aid = fx.aid;
    let limit = DEADLOCK / 2;

    for holder_store in [&store, &store2] {
        for kind in [Kind::Exclusive, Kind::Shared] {
            let h = Holder::hold(holder_store, aid, Kind::Exclusive, "h", &fx.log).await;
            let mut wait = pin!(timed_hold(&store, aid, kind, limit));
            assert_waits("timed wait behind a writer", wait.as_mut()).await;
            h.leave().await;
            let (r, _) = no_deadlock("timed wait", wait).await;
            r.unwrap();
            assert_free(aid, &[&store, &store2]).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// 7. Dropped shared waits leak nothing.

/// Thousands of shared holds (plain, and now and then timed) dropped at random points:
/// while queued in this process, while the first reader waits for `flock` behind another
/// handle's writer, and inside the closure. Afterwards the reader count and the `LOCK_SH`
/// must be back to nothing: another handle can write, and a new reader locks again.
async fn dropped_shared_holds_leak_nothing() {
    const ROUNDS: usize = 1500;
    let (seed, mut rng) = common::seeded_rng(0x5eed_10c5);
    let fx = Fixture::new(50);
    let (store, store2) = (fx.handle(), fx.handle());
    let aid = fx.aid;
    let id = InstanceId::random();
    store
        .with_aid(aid, async |c| c.save(&State::new(id, 1, 1)).await)
        .await
        .unwrap();
    let (completed, dropped, timed_out) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );

    for _ in 0..ROUNDS {
        // Now and then another handle writes meanwhile, so first readers wait on `flock`.
        let writer = if rng.below(4) == 0 {
            Some(Holder::hold(&store2, aid, Kind::Exclusive, "w", &fx.log).await)
        } else {
            None
        };
        let linger = Duration::from_micros(rng.below(2000));
        let holds = (0..1 + rng.below(3)).map(|_| {
            let cut = if rng.below(2) == 0 {
                Cut::After(Duration::from_micros(rng.below(1500)))
            } else {
                Cut::Polls(rng.below(8))
            };
            let timed = rng.below(4) == 0;
            let limit = Duration::from_micros(rng.below(600));
            let (store, completed, dropped, timed_out) = (&store, &completed, &dropped, &timed_out);
            async move {
                let body = async |c: &mut runstate::ReadCursor<u32>| {
                    c.len().await?;
                    tokio::task::yield_now().await;
                    c.load(id).await?;
                    Ok::<_, Error>(())
                };
                let hold = async {
                    if timed {
                        store.with_aid_shared_timeout(aid, limit, body).await
                    } else {
                        store.with_aid_shared(aid, body).await
                    }
                };
                // Cut by the clock (tokio's timer ticks in milliseconds), or after a number
                // of wake-ups, which lands anywhere between two steps of the hold.
                let out = match cut {
                    Cut::After(d) => tokio::time::timeout(d, hold).await.ok(),
                    Cut::Polls(n) => cut_after_polls(n, hold).await,
                };
                match out {
                    Some(Ok(())) => completed.fetch_add(1, SeqCst),
                    Some(Err(Error::Timeout { .. })) => timed_out.fetch_add(1, SeqCst),
                    Some(Err(e)) => panic!("shared hold failed: {e}"),
                    None => dropped.fetch_add(1, SeqCst),
                };
            }
        });
        // The writer leaves at a random moment of the round, so cuts also land around the
        // grant of the flock.
        let writer_leaves = async {
            if let Some(w) = writer {
                tokio::time::sleep(linger).await;
                w.leave().await;
            }
        };
        no_deadlock("a round of dropped shared holds", async {
            tokio::join!(join_all(holds), writer_leaves)
        })
        .await;
    }
    println!(
        "seed {seed:#x}: {} shared holds completed, {} dropped, {} timed out",
        completed.load(SeqCst),
        dropped.load(SeqCst),
        timed_out.load(SeqCst),
    );
    assert!(dropped.load(SeqCst) > 0 && completed.load(SeqCst) > 0);

    // A writer of this process gets in once every abandoned claim is gone, including those
    // still finishing on the blocking pool...
    no_deadlock(
        "in-process writer after the drops",
        store.with_aid(aid, async |_| Ok::<_, Error>(())),
    )
    .await
    .unwrap();
    // ...and then nothing at all is held: no LOCK_SH was leaked.
    try_hold(&store2, aid, Kind::Exclusive).await.unwrap();
    // The reader count did not leak either: a new reader takes LOCK_SH again, and its
    // leaving drops it.
    reader_keeps_writers_out(&store, &store2, aid).await;
    assert_free(aid, &[&store2, &store]).await;
}

both_runtimes!(
    failed_try_runs_nothing_and_leaves_nothing,
    timeouts_leave_nothing_behind,
    timed_waits_succeed_when_the_aid_frees_up,
    dropped_shared_holds_leak_nothing,
);
