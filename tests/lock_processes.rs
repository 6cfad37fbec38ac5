//! Shared holds and lock control across real processes: readers of two processes run
//! together, a writer in either process keeps the other's readers and writers out, and
//! `try`/timed waits in a child see the parent's holds as they should.
//!
//! Other processes are this test binary re-run on `child_main` in a role (see
//! tests/common/locking.rs); orders of events are checked through a log file that every
//! party appends to, never through clocks. Every in-process body runs on a current-thread
//! and on a multi-thread tokio runtime.

#[macro_use]
mod common;

use common::locking::*;
use common::no_deadlock;
use futures::future::join_all;
use runstate::Error;
use tokio::sync::Barrier;

/// The children's entry point: does nothing in a normal test run.
#[test]
fn child_main() {
    common::locking::child_main();
}

/// Shared holders of two processes run together; an exclusive holder of either process is
/// kept out, until the last reader leaves.
async fn processes_share_reads() {
    let fx = Fixture::new(51);
    let (store, store2) = (fx.handle(), fx.handle());
    let aid = fx.aid;

    // The parent reads (two holders); the child reads beside it, but cannot write.
    let p1 = Holder::hold(&store, aid, Kind::Shared, "p1", &fx.log).await;
    let p2 = Holder::hold(&store, aid, Kind::Shared, "p2", &fx.log).await;
    Child::run(&fx, "try_shared").await.assert_ok();
    Child::run(&fx, "wait_shared").await.assert_ok();
    Child::run(&fx, "timeout_shared").await.assert_ok();
    Child::run(&fx, "try_exclusive").await.assert_would_block();
    Child::run(&fx, "timeout_exclusive").await.assert_timeout();
    p1.leave().await;
    // One parent reader is still inside: the child still cannot write.
    Child::run(&fx, "try_exclusive").await.assert_would_block();
    assert!(p2.is_inside());
    p2.leave().await;
    Child::run(&fx, "try_exclusive").await.assert_ok();

    // The child reads; the parent reads beside it, on both handles, but cannot write.
    let mut child = Child::spawn(&fx, "hold_shared");
    child.expect("HELD").await;
    try_hold(&store, aid, Kind::Shared).await.unwrap();
    try_hold(&store2, aid, Kind::Shared).await.unwrap();
    let barrier = Barrier::new(2);
    let readers = [&store, &store2].map(|s| {
        s.with_aid_shared(aid, async |_| {
            barrier.wait().await;
            Ok::<_, Error>(())
        })
    });
    for r in no_deadlock(
        "two parent readers beside a child reader",
        join_all(readers),
    )
    .await
    {
        r.unwrap();
    }
    for s in [&store, &store2] {
        assert_would_block(try_hold(s, aid, Kind::Exclusive).await, aid);
        expect_timeout(s, aid, Kind::Exclusive).await;
    }
    child.release().await;
    assert_eq!(child.outcome().await.outcome, "ok");
    child.finish().await;
    assert_free(aid, &[&store, &store2]).await;
}

/// A writer in a child keeps the parent's readers (and writers) out; a waiting reader gets
/// in only after the writer has left. Timed waits behind the child give up after their limit
/// and take nothing late.
async fn child_writer_excludes_parent() {
    let fx = Fixture::new(52);
    let (store, store2, store3) = (fx.handle(), fx.handle(), fx.handle());
    let aid = fx.aid;

    // Timeouts first: once the child has gone, the aid is free for everyone.
    let mut child = Child::spawn(&fx, "hold_exclusive");
    child.expect("HELD").await;
    for s in [&store, &store2] {
        assert_would_block(try_hold(s, aid, Kind::Shared).await, aid);
        assert_would_block(try_hold(s, aid, Kind::Exclusive).await, aid);
        expect_timeout(s, aid, Kind::Exclusive).await;
        expect_timeout(s, aid, Kind::Shared).await;
    }
    child.release().await;
    child.outcome().await.assert_ok();
    child.finish().await;
    assert_free(aid, &[&store3, &store, &store2]).await;

    // Waiting readers of two handles get in after the child writer has left.
    std::fs::remove_file(&*fx.log.0).unwrap();
    let mut child = Child::spawn(&fx, "hold_exclusive");
    child.expect("HELD").await;
    let mut ra = Holder::spawn(&store, aid, Kind::Shared, "ra", &fx.log);
    let mut rb = Holder::spawn(&store2, aid, Kind::Shared, "rb", &fx.log);
    assert_waits("reader behind a child writer", ra.entered.as_mut().unwrap()).await;
    assert_waits("reader behind a child writer", rb.entered.as_mut().unwrap()).await;
    assert!(!ra.is_inside() && !rb.is_inside());
    child.release().await;
    ra.entered().await;
    rb.entered().await;
    child.outcome().await.assert_ok();
    child.finish().await;
    let lines = fx.log.lines();
    assert_eq!(lines[..2], ["child in", "child out"], "{lines:?}");
    assert_eq!(lines.len(), 4, "{lines:?}");
    // And readers of the parent keep a child writer out.
    Child::run(&fx, "try_exclusive").await.assert_would_block();
    ra.leave().await;
    rb.leave().await;
    assert_free(aid, &[&store3, &store, &store2]).await;
}

/// A writer in the parent keeps a child's readers out: `try` fails, a timed wait times out,
/// and a plain wait gets in only after the writer has left.
async fn parent_writer_excludes_child_readers() {
    let fx = Fixture::new(54);
    let store = fx.handle();
    let aid = fx.aid;

    let w = Holder::hold(&store, aid, Kind::Exclusive, "w", &fx.log).await;
    Child::run(&fx, "try_shared").await.assert_would_block();
    Child::run(&fx, "try_exclusive").await.assert_would_block();
    Child::run(&fx, "timeout_shared").await.assert_timeout();
    let mut reader = Child::spawn(&fx, "wait_shared");
    reader.expect("WAITING").await;
    tokio::time::sleep(GRACE).await;
    assert!(!fx.log.has("child in"), "{:?}", fx.log.lines());
    w.leave().await;
    reader.outcome().await.assert_ok();
    reader.finish().await;
    fx.log.assert_is(&["w in", "w out", "child in"]);
    assert_free(aid, &[&store, &fx.handle()]).await;
}

/// Readers in the parent keep a child writer waiting until the last of them has left.
async fn parent_readers_exclude_child_writer() {
    let fx = Fixture::new(53);
    let store = fx.handle();
    let aid = fx.aid;

    let r1 = Holder::hold(&store, aid, Kind::Shared, "r1", &fx.log).await;
    let r2 = Holder::hold(&store, aid, Kind::Shared, "r2", &fx.log).await;
    let mut writer = Child::spawn(&fx, "wait_exclusive");
    writer.expect("WAITING").await;
    tokio::time::sleep(GRACE).await;
    assert!(!fx.log.has("child in"), "{:?}", fx.log.lines());
    r1.leave().await;
    // r2 still holds: the process's LOCK_SH must still be there.
    Child::run(&fx, "try_exclusive").await.assert_would_block();
    Child::run(&fx, "timeout_exclusive").await.assert_timeout();
    assert!(!fx.log.has("child in"), "{:?}", fx.log.lines());
    r2.leave().await;
    writer.outcome().await.assert_ok();
    writer.finish().await;
    fx.log
        .assert_is(&["r1 in", "r2 in", "r1 out", "r2 out", "child in"]);
    assert_free(aid, &[&store, &fx.handle()]).await;
}

both_runtimes!(
    processes_share_reads,
    child_writer_excludes_parent,
    parent_writer_excludes_child_readers,
    parent_readers_exclude_child_writer,
);
