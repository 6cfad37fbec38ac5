//! Shared holds and lock control: `with_aid_shared`, `try_with_aid(_shared)` and
//! `with_aid(_shared)_timeout`, in one task, across tasks, across two store handles (each has
//! its own lock descriptors, so for `flock` it is another process) and across real processes.
//!
//! The process tests re-run this test binary with `--exact child_main`: `child_main` does
//! nothing unless `RUNSTATE_LOCK_MODES_ROLE` is set, and otherwise plays the role it names,
//! talking to the parent through its stderr (lines starting with `@@`) and stdin. Orders of
//! events are checked through a log file that every party appends to, never through clocks.
//!
//! Every in-process test body runs on a current-thread and on a multi-thread tokio runtime.

use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use futures::future::join_all;
use runstate::{Aid, AsyncStore, Cursor, Error, InstanceId, ReadCursor, State};
use std::io::{BufRead, BufReader};
use std::process::{ChildStdin, Stdio};
use std::task::Poll;
use tokio::sync::{Barrier, mpsc, oneshot};

type Store = AsyncStore<u32>;

/// Generous bound for "this must not hang": a deadlock detector, never a speed check.
const DEADLOCK: Duration = Duration::from_secs(20);

/// The wait limit of the timeout tests.
const LIMIT: Duration = Duration::from_millis(50);

/// How long a waiter is given to (wrongly) get in before the test moves on. Only ever used
/// to give a bug its chance to show: a slow machine makes the tests weaker, never flaky.
const GRACE: Duration = Duration::from_millis(50);

macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn current_thread() {
                    super::run_current_thread(super::$name());
                }

                #[test]
                fn multi_thread() {
                    super::run_multi_thread(super::$name());
                }
            }
        )*
    };
}

fn run_current_thread<F: Future<Output = ()>>(body: F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    run_on(rt, body);
}

fn run_multi_thread<F: Future<Output = ()>>(body: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    run_on(rt, body);
}

/// Runs `body`, then shuts the runtime down without waiting forever for its blocking pool:
/// a bug that leaves a thread parked in `flock` must fail the test, not hang it (dropping a
/// runtime waits for every blocking task).
fn run_on<F: Future<Output = ()>>(rt: tokio::runtime::Runtime, body: F) {
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(body)));
    match out {
        Ok(()) => rt.shutdown_timeout(DEADLOCK),
        Err(panic) => {
            rt.shutdown_background();
            std::panic::resume_unwind(panic);
        }
    }
}

/// `fut`, or a panic naming `what` if it does not finish within [`DEADLOCK`].
async fn no_deadlock<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLOCK, fut).await {
        Ok(out) => out,
        Err(_) => panic!("deadlock: {what} did not finish within {DEADLOCK:?}"),
    }
}

/// A temporary directory on tmpfs; the store's run directory is its `run` subdirectory.
fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    run_dir: PathBuf,
    log: Log,
    aid: Aid,
}

impl Fixture {
    fn new(aid: u16) -> Fixture {
        let dir = temp_dir();
        let run_dir = dir.path().join("run");
        let log = Log(Arc::new(dir.path().join("log")));
        Fixture {
            _dir: dir,
            run_dir,
            log,
            aid: Aid::new(aid).unwrap(),
        }
    }

    /// A new store handle: its own lock descriptors, so another process as far as `flock`
    /// can tell.
    fn handle(&self) -> Store {
        Store::new(&self.run_dir)
    }
}

/// An append-only log of events shared by tasks and processes (`O_APPEND` writes, so the
/// order of the lines is the order of the writes).
#[derive(Clone, Debug)]
struct Log(Arc<PathBuf>);

impl Log {
    fn push(&self, line: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*self.0)
            .unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn lines(&self) -> Vec<String> {
        match std::fs::read_to_string(&*self.0) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading the log: {e}"),
        }
    }

    fn has(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }

    #[track_caller]
    fn assert_is(&self, want: &[&str]) {
        assert_eq!(self.lines(), want, "order of events");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Exclusive,
    Shared,
}

/// A task that holds an aid until told to leave, logging `<name> in` and `<name> out`.
struct Holder {
    name: String,
    inside: Arc<AtomicBool>,
    entered: Option<oneshot::Receiver<()>>,
    leave: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Holder {
    /// Starts the holder; it may have to wait for the aid.
    fn spawn(store: &Store, aid: Aid, kind: Kind, name: &str, log: &Log) -> Holder {
        let (in_tx, in_rx) = oneshot::channel();
        let (out_tx, out_rx) = oneshot::channel::<()>();
        let inside = Arc::new(AtomicBool::new(false));
        let body = {
            let (log, name, inside) = (log.clone(), name.to_string(), inside.clone());
            async move {
                log.push(&format!("{name} in"));
                inside.store(true, SeqCst);
                let _ = in_tx.send(());
                let _ = out_rx.await;
                inside.store(false, SeqCst);
                log.push(&format!("{name} out"));
                Ok::<(), Error>(())
            }
        };
        let store = store.clone();
        let task =
            tokio::spawn(async move { hold_by(&store, aid, kind, Wait::Forever, body).await });
        Holder {
            name: name.to_string(),
            inside,
            entered: Some(in_rx),
            leave: Some(out_tx),
            task,
        }
    }

    /// Starts the holder and waits until it is inside.
    async fn hold(store: &Store, aid: Aid, kind: Kind, name: &str, log: &Log) -> Holder {
        let mut holder = Holder::spawn(store, aid, kind, name, log);
        holder.entered().await;
        holder
    }

    async fn entered(&mut self) {
        let rx = self.entered.take().expect("entered() called twice");
        let what = format!("holder {} getting in", self.name);
        no_deadlock(&what, rx)
            .await
            .unwrap_or_else(|_| panic!("holder {} ended without getting in", self.name));
    }

    fn is_inside(&self) -> bool {
        self.inside.load(SeqCst)
    }

    /// Tells the holder to leave and waits until its call has returned.
    async fn leave(mut self) {
        let _ = self.leave.take().unwrap().send(());
        let what = format!("holder {} leaving", self.name);
        no_deadlock(&what, self.task).await.unwrap().unwrap();
    }
}

/// How a holder asks for the aid: waiting as long as it takes, not at all, or up to a limit.
#[derive(Clone, Copy, Debug)]
enum Wait {
    Forever,
    Try,
    Limit(Duration),
}

/// Holds `aid` in `kind` mode through the store call that `wait` names (`with_aid`,
/// `try_with_aid`, `with_aid_timeout` or their `_shared` forms) and runs `body` inside, after
/// checking that the cursor is for `aid`.
async fn hold_by(
    store: &Store,
    aid: Aid,
    kind: Kind,
    wait: Wait,
    body: impl Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    let checked = async move |got: Aid| {
        assert_eq!(got, aid);
        body.await
    };
    match (kind, wait) {
        (Kind::Exclusive, Wait::Forever) => {
            let f = async move |c: &mut Cursor<u32>| checked(c.aid()).await;
            store.with_aid(aid, f).await
        }
        (Kind::Shared, Wait::Forever) => {
            let f = async move |c: &mut ReadCursor<u32>| checked(c.aid()).await;
            store.with_aid_shared(aid, f).await
        }
        (Kind::Exclusive, Wait::Try) => {
            let f = async move |c: &mut Cursor<u32>| checked(c.aid()).await;
            store.try_with_aid(aid, f).await
        }
        (Kind::Shared, Wait::Try) => {
            let f = async move |c: &mut ReadCursor<u32>| checked(c.aid()).await;
            store.try_with_aid_shared(aid, f).await
        }
        (Kind::Exclusive, Wait::Limit(limit)) => {
            let f = async move |c: &mut Cursor<u32>| checked(c.aid()).await;
            store.with_aid_timeout(aid, limit, f).await
        }
        (Kind::Shared, Wait::Limit(limit)) => {
            let f = async move |c: &mut ReadCursor<u32>| checked(c.aid()).await;
            store.with_aid_shared_timeout(aid, limit, f).await
        }
    }
}

/// A reader on `reader` takes the aid shared; while it is inside, `writer` cannot write.
async fn reader_keeps_writers_out(reader: &Store, writer: &Store, aid: Aid) {
    reader
        .with_aid_shared(aid, async |_| {
            assert_would_block(try_hold(writer, aid, Kind::Exclusive).await, aid);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
}

#[track_caller]
fn assert_would_block(r: Result<(), Error>, aid: Aid) {
    match r {
        Err(Error::WouldBlock { aid: got }) => assert_eq!(got, aid),
        other => panic!("expected WouldBlock for aid {aid}, got {other:?}"),
    }
}

#[track_caller]
fn assert_timeout(r: Result<(), Error>, aid: Aid, limit: Duration) {
    match r {
        Err(Error::Timeout { aid: got, waited }) => {
            assert_eq!(got, aid);
            assert_eq!(waited, limit);
        }
        other => panic!("expected Timeout for aid {aid}, got {other:?}"),
    }
}

/// One hold of `aid` asked for as `wait` says, doing nothing inside; checks that the closure
/// ran exactly when the call succeeded.
async fn hold_once(store: &Store, aid: Aid, kind: Kind, wait: Wait) -> Result<(), Error> {
    let ran = AtomicBool::new(false);
    let body = async {
        ran.store(true, SeqCst);
        Ok(())
    };
    let what = format!("a {kind:?} hold ({wait:?})");
    let r = no_deadlock(&what, hold_by(store, aid, kind, wait, body)).await;
    assert_eq!(
        ran.load(SeqCst),
        r.is_ok(),
        "the closure must run exactly when the {wait:?} call succeeds: {r:?}"
    );
    r
}

/// `try_with_aid` or `try_with_aid_shared`, checking that the closure ran exactly when the
/// call succeeded.
async fn try_hold(store: &Store, aid: Aid, kind: Kind) -> Result<(), Error> {
    hold_once(store, aid, kind, Wait::Try).await
}

/// `with_aid_timeout` or `with_aid_shared_timeout`: its result, and how long it took.
/// Checks that the closure ran exactly when the call succeeded.
async fn timed_hold(
    store: &Store,
    aid: Aid,
    kind: Kind,
    limit: Duration,
) -> (Result<(), Error>, Duration) {
    let start = Instant::now();
    let r = hold_once(store, aid, kind, Wait::Limit(limit)).await;
    (r, start.elapsed())
}

/// A timed wait that must time out, after at least its limit, without running its closure.
async fn expect_timeout(store: &Store, aid: Aid, kind: Kind) {
    let (r, elapsed) = timed_hold(store, aid, kind, LIMIT).await;
    assert_timeout(r, aid, LIMIT);
    assert!(
        elapsed >= LIMIT,
        "{kind:?} wait gave up after {elapsed:?}, before its limit of {LIMIT:?}"
    );
}

/// Checks that nobody holds the aid: both kinds of try succeed on each handle given.
async fn assert_free(aid: Aid, stores: &[&Store]) {
    for store in stores {
        for kind in [Kind::Exclusive, Kind::Shared] {
            try_hold_settled(store, aid, kind).await.unwrap();
        }
    }
}

/// A try, repeated a few times while it finds the aid held by another handle: right after a
/// holder lets go, a thread that waited in the kernel for a waiter that gave up holds the
/// lock for an instant before it releases it.
async fn try_hold_settled(store: &Store, aid: Aid, kind: Kind) -> Result<(), Error> {
    for _ in 0..100 {
        match try_hold(store, aid, kind).await {
            Err(Error::WouldBlock { .. }) => tokio::time::sleep(Duration::from_millis(2)).await,
            done => return done,
        }
    }
    try_hold(store, aid, kind).await
}

/// Polls `fut` once.
async fn poll_once<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut fut).poll(cx))).await
}

/// A future that must still be waiting after [`GRACE`] (it is polled meanwhile).
async fn assert_waits<F: Future + Unpin>(what: &str, fut: F) {
    assert!(
        tokio::time::timeout(GRACE, fut).await.is_err(),
        "{what} got in while it should have waited"
    );
}

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

/// A tiny seeded PRNG (xorshift64*), so failures replay.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

enum Cut {
    After(Duration),
    Polls(u64),
}

/// Runs `fut` until it is done, or drops it when it is pending after its `n`-th poll.
async fn cut_after_polls<F: Future>(n: u64, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut left = n;
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending if left == 0 => Poll::Ready(None),
        Poll::Pending => {
            left -= 1;
            // The inner future has arranged its own wake-up.
            Poll::Pending
        }
    })
    .await
}

/// Thousands of shared holds (plain, and now and then timed) dropped at random points:
/// while queued in this process, while the first reader waits for `flock` behind another
/// handle's writer, and inside the closure. Afterwards the reader count and the `LOCK_SH`
/// must be back to nothing: another handle can write, and a new reader locks again.
async fn dropped_shared_holds_leak_nothing() {
    const ROUNDS: usize = 1500;
    let seed = std::env::var("RUNSTATE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_10c5);
    let mut rng = XorShift::new(seed);
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
    shared_holders_run_together,
    store_entries_take_shared_locks,
    writer_excludes_readers,
    readers_exclude_writers,
    queued_writer_is_not_overtaken_by_later_readers,
    failed_try_runs_nothing_and_leaves_nothing,
    timeouts_leave_nothing_behind,
    timed_waits_succeed_when_the_aid_frees_up,
    dropped_shared_holds_leak_nothing,
);

// ---------------------------------------------------------------------------------------
// Real processes.

const ROLE: &str = "RUNSTATE_LOCK_MODES_ROLE";
const RUN_DIR: &str = "RUNSTATE_LOCK_MODES_RUN_DIR";
const AID: &str = "RUNSTATE_LOCK_MODES_AID";
const LOG: &str = "RUNSTATE_LOCK_MODES_LOG";

/// The child side: does nothing in a normal test run. Roles:
/// `hold_exclusive`/`hold_shared` (get in, log `child in`, say `@@HELD`, wait for a line on
/// stdin, log `child out`, leave), `try_*`, `wait_*` (say `@@WAITING`, then wait without
/// limit and log `child in` once inside) and `timeout_*` (a [`LIMIT`] wait). Every role ends
/// by saying `@@RESULT <outcome> ran=<bool> elapsed_us=<n>`.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let run_dir = PathBuf::from(std::env::var(RUN_DIR).unwrap());
    let aid: Aid = std::env::var(AID).unwrap().parse().unwrap();
    let log = Log(Arc::new(PathBuf::from(std::env::var(LOG).unwrap())));
    run_current_thread(async move {
        let store = Store::new(&run_dir);
        let ran = AtomicBool::new(false);
        let hold_until_told = || {
            ran.store(true, SeqCst);
            log.push("child in");
            eprintln!("@@HELD");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            log.push("child out");
            Ok::<(), Error>(())
        };
        let get_in = || {
            ran.store(true, SeqCst);
            log.push("child in");
            Ok::<(), Error>(())
        };
        let start = Instant::now();
        let r = match role.as_str() {
            "hold_exclusive" => store.with_aid(aid, async |_| hold_until_told()).await,
            "hold_shared" => {
                store
                    .with_aid_shared(aid, async |_| hold_until_told())
                    .await
            }
            "try_exclusive" => store.try_with_aid(aid, async |_| get_in()).await,
            "try_shared" => store.try_with_aid_shared(aid, async |_| get_in()).await,
            "wait_exclusive" => {
                eprintln!("@@WAITING");
                store.with_aid(aid, async |_| get_in()).await
            }
            "wait_shared" => {
                eprintln!("@@WAITING");
                store.with_aid_shared(aid, async |_| get_in()).await
            }
            "timeout_exclusive" => store.with_aid_timeout(aid, LIMIT, async |_| get_in()).await,
            "timeout_shared" => {
                store
                    .with_aid_shared_timeout(aid, LIMIT, async |_| get_in())
                    .await
            }
            other => panic!("unknown role {other}"),
        };
        let elapsed = start.elapsed();
        if let Err(Error::Timeout { waited, .. }) = &r {
            assert_eq!(*waited, LIMIT);
        }
        let outcome = match &r {
            Ok(()) => "ok".to_string(),
            Err(Error::WouldBlock { aid: got }) if *got == aid => "wouldblock".to_string(),
            Err(Error::Timeout { aid: got, .. }) if *got == aid => "timeout".to_string(),
            Err(e) => format!("error:{}", e.to_string().replace(' ', "_")),
        };
        eprintln!(
            "@@RESULT {outcome} ran={} elapsed_us={}",
            ran.load(SeqCst),
            elapsed.as_micros()
        );
    });
}

/// What a child's call came to.
#[derive(Debug)]
struct Outcome {
    outcome: String,
    ran: bool,
    elapsed: Duration,
}

impl Outcome {
    #[track_caller]
    fn assert_ok(&self) {
        assert_eq!((self.outcome.as_str(), self.ran), ("ok", true), "{self:?}");
    }

    #[track_caller]
    fn assert_would_block(&self) {
        assert_eq!(
            (self.outcome.as_str(), self.ran),
            ("wouldblock", false),
            "{self:?}"
        );
    }

    #[track_caller]
    fn assert_timeout(&self) {
        assert_eq!(
            (self.outcome.as_str(), self.ran),
            ("timeout", false),
            "{self:?}"
        );
        assert!(self.elapsed >= LIMIT, "gave up before its limit: {self:?}");
    }
}

/// A child process playing one role. Its stderr is read by a thread into a channel.
struct Child {
    role: String,
    proc: Option<std::process::Child>,
    stdin: Option<ChildStdin>,
    stderr: mpsc::UnboundedReceiver<String>,
    said: Vec<String>,
}

impl Child {
    fn spawn(fx: &Fixture, role: &str) -> Child {
        let mut proc = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(RUN_DIR, &fx.run_dir)
            .env(AID, fx.aid.to_string())
            .env(LOG, &*fx.log.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = proc.stdin.take();
        let stderr = proc.stderr.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Child {
            role: role.to_string(),
            proc: Some(proc),
            stdin,
            stderr: rx,
            said: Vec::new(),
        }
    }

    /// Waits until the child says `@@<word>`; returns the rest of that line.
    async fn expect(&mut self, word: &str) -> String {
        let marker = format!("@@{word}");
        let what = format!("child {} saying {marker}", self.role);
        no_deadlock(&what, async {
            loop {
                match self.stderr.recv().await {
                    Some(line) => {
                        self.said.push(line.clone());
                        if let Some(at) = line.find(&marker) {
                            return line[at + marker.len()..].trim().to_string();
                        }
                    }
                    None => panic!(
                        "child {} ended before saying {marker}; it said: {:#?}",
                        self.role, self.said
                    ),
                }
            }
        })
        .await
    }

    async fn outcome(&mut self) -> Outcome {
        let rest = self.expect("RESULT").await;
        let mut words = rest.split(' ');
        let outcome = words.next().unwrap().to_string();
        let ran = words.next().unwrap().strip_prefix("ran=").unwrap() == "true";
        let us: u64 = words
            .next()
            .unwrap()
            .strip_prefix("elapsed_us=")
            .unwrap()
            .parse()
            .unwrap();
        Outcome {
            outcome,
            ran,
            elapsed: Duration::from_micros(us),
        }
    }

    /// Tells a holding child to leave (a pipe write of a few bytes does not block).
    async fn release(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the child to exit, successfully. Its locks die with it at the latest.
    async fn finish(mut self) {
        drop(self.stdin.take());
        let mut proc = self.proc.take().unwrap();
        let what = format!("child {} exiting", self.role);
        let status = no_deadlock(&what, async {
            loop {
                if let Some(status) = proc.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        // Whatever it said last, for the message below.
        while let Ok(line) = self.stderr.try_recv() {
            self.said.push(line);
        }
        assert!(
            status.success(),
            "child {} failed ({status}); it said: {:#?}",
            self.role,
            self.said
        );
    }

    /// Runs a one-shot role to its end.
    async fn run(fx: &Fixture, role: &str) -> Outcome {
        let mut child = Child::spawn(fx, role);
        let outcome = child.outcome().await;
        child.finish().await;
        outcome
    }
}

impl Drop for Child {
    /// A test that failed midway leaves no child behind.
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let _ = proc.kill();
            let _ = proc.wait();
        }
    }
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
