//! The lock suites' harness (`tests/lock_*.rs`): store handles on one run directory, tasks
//! that hold an aid until told to leave, an event log shared by tasks and processes, the
//! six ways of asking for a hold, and a child process that plays one locking role.
//!
//! Orders of events are checked through the log file that every party appends to, never
//! through clocks. A child is this test binary re-run on its `child_main` test in a
//! [`role`](super::child::role); it talks to the parent through `@@` lines
//! ([`say`](super::child::say)) and reads a line on stdin when told to leave.

use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::task::Poll;
use std::time::{Duration, Instant};

use runstate::{Aid, AsyncStore, Cursor, Error, ReadCursor};
use tokio::sync::oneshot;

use super::child::{Kid, child_var, role, role_command, say, spawn_kid};
use super::{no_deadlock, run_current_thread, run_dir};

pub type Store = AsyncStore<u32>;

/// The wait limit of the timeout tests.
pub const LIMIT: Duration = Duration::from_millis(50);

/// How long a waiter is given to (wrongly) get in before the test moves on. Only ever used
/// to give a bug its chance to show: a slow machine makes the tests weaker, never flaky.
pub const GRACE: Duration = Duration::from_millis(50);

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub run_dir: PathBuf,
    pub log: Log,
    pub aid: Aid,
}

impl Fixture {
    pub fn new(aid: u16) -> Fixture {
        let dir = run_dir();
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
    pub fn handle(&self) -> Store {
        Store::new(&self.run_dir)
    }
}

/// An append-only log of events shared by tasks and processes (`O_APPEND` writes, so the
/// order of the lines is the order of the writes).
#[derive(Clone, Debug)]
pub struct Log(pub Arc<PathBuf>);

impl Log {
    pub fn push(&self, line: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*self.0)
            .unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    pub fn lines(&self) -> Vec<String> {
        match std::fs::read_to_string(&*self.0) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading the log: {e}"),
        }
    }

    pub fn has(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }

    #[track_caller]
    pub fn assert_is(&self, want: &[&str]) {
        assert_eq!(self.lines(), want, "order of events");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exclusive,
    Shared,
}

/// A task that holds an aid until told to leave, logging `<name> in` and `<name> out`.
pub struct Holder {
    pub name: String,
    pub inside: Arc<AtomicBool>,
    pub entered: Option<oneshot::Receiver<()>>,
    pub leave: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Holder {
    /// Starts the holder; it may have to wait for the aid.
    pub fn spawn(store: &Store, aid: Aid, kind: Kind, name: &str, log: &Log) -> Holder {
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
    pub async fn hold(store: &Store, aid: Aid, kind: Kind, name: &str, log: &Log) -> Holder {
        let mut holder = Holder::spawn(store, aid, kind, name, log);
        holder.entered().await;
        holder
    }

    pub async fn entered(&mut self) {
        let rx = self.entered.take().expect("entered() called twice");
        let what = format!("holder {} getting in", self.name);
        no_deadlock(&what, rx)
            .await
            .unwrap_or_else(|_| panic!("holder {} ended without getting in", self.name));
    }

    pub fn is_inside(&self) -> bool {
        self.inside.load(SeqCst)
    }

    /// Tells the holder to leave and waits until its call has returned.
    pub async fn leave(mut self) {
        let _ = self.leave.take().unwrap().send(());
        let what = format!("holder {} leaving", self.name);
        no_deadlock(&what, self.task).await.unwrap().unwrap();
    }
}

/// How a holder asks for the aid: waiting as long as it takes, not at all, or up to a limit.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    Forever,
    Try,
    Limit(Duration),
}

/// Holds `aid` in `kind` mode through the store call that `wait` names (`with_aid`,
/// `try_with_aid`, `with_aid_timeout` or their `_shared` forms) and runs `body` inside, after
/// checking that the cursor is for `aid`.
pub async fn hold_by(
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
pub async fn reader_keeps_writers_out(reader: &Store, writer: &Store, aid: Aid) {
    reader
        .with_aid_shared(aid, async |_| {
            assert_would_block(try_hold(writer, aid, Kind::Exclusive).await, aid);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
}

#[track_caller]
pub fn assert_would_block(r: Result<(), Error>, aid: Aid) {
    match r {
        Err(Error::WouldBlock { aid: got }) => assert_eq!(got, aid),
        other => panic!("expected WouldBlock for aid {aid}, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_timeout(r: Result<(), Error>, aid: Aid, limit: Duration) {
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
pub async fn hold_once(store: &Store, aid: Aid, kind: Kind, wait: Wait) -> Result<(), Error> {
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
pub async fn try_hold(store: &Store, aid: Aid, kind: Kind) -> Result<(), Error> {
    hold_once(store, aid, kind, Wait::Try).await
}

/// `with_aid_timeout` or `with_aid_shared_timeout`: its result, and how long it took.
/// Checks that the closure ran exactly when the call succeeded.
pub async fn timed_hold(
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
pub async fn expect_timeout(store: &Store, aid: Aid, kind: Kind) {
    let (r, elapsed) = timed_hold(store, aid, kind, LIMIT).await;
    assert_timeout(r, aid, LIMIT);
    assert!(
        elapsed >= LIMIT,
        "{kind:?} wait gave up after {elapsed:?}, before its limit of {LIMIT:?}"
    );
}

/// Checks that nobody holds the aid: both kinds of try succeed on each handle given.
pub async fn assert_free(aid: Aid, stores: &[&Store]) {
    for store in stores {
        for kind in [Kind::Exclusive, Kind::Shared] {
            try_hold_settled(store, aid, kind).await.unwrap();
        }
    }
}

/// A try, repeated a few times while it finds the aid held by another handle: right after a
/// holder lets go, a thread that waited in the kernel for a waiter that gave up holds the
/// lock for an instant before it releases it.
pub async fn try_hold_settled(store: &Store, aid: Aid, kind: Kind) -> Result<(), Error> {
    for _ in 0..100 {
        match try_hold(store, aid, kind).await {
            Err(Error::WouldBlock { .. }) => tokio::time::sleep(Duration::from_millis(2)).await,
            done => return done,
        }
    }
    try_hold(store, aid, kind).await
}

/// Polls `fut` once.
pub async fn poll_once<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut fut).poll(cx))).await
}

/// A future that must still be waiting after [`GRACE`] (it is polled meanwhile).
pub async fn assert_waits<F: Future + Unpin>(what: &str, fut: F) {
    assert!(
        tokio::time::timeout(GRACE, fut).await.is_err(),
        "{what} got in while it should have waited"
    );
}

pub enum Cut {
    After(Duration),
    Polls(u64),
}

/// Runs `fut` until it is done, or drops it when it is pending after its `n`-th poll.
pub async fn cut_after_polls<F: Future>(n: u64, fut: F) -> Option<F::Output> {
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

// ---------------------------------------------------------------------------------------
// Real processes.

/// The test that each lock suite with process tests declares as its children's entry point.
pub const CHILD_TEST: &str = "child_main";

/// The child side, called by each suite's `child_main` test: does nothing in a normal test
/// run. Roles: `hold_exclusive`/`hold_shared` (get in, log `child in`, say `@@HELD`, wait
/// for a line on stdin, log `child out`, leave), `try_*`, `wait_*` (say `@@WAITING`, then
/// wait without limit and log `child in` once inside) and `timeout_*` (a [`LIMIT`] wait).
/// Every role ends by saying `@@RESULT <outcome> ran=<bool> elapsed_us=<n>`.
pub fn child_main() {
    let Some(role) = role() else {
        return;
    };
    let run_dir = PathBuf::from(child_var("RUNSTATE_CHILD_DIR"));
    let aid: Aid = child_var("RUNSTATE_CHILD_AID").parse().unwrap();
    let log = Log(Arc::new(PathBuf::from(child_var("RUNSTATE_CHILD_LOG"))));
    run_current_thread(async move {
        let store = Store::new(&run_dir);
        let ran = AtomicBool::new(false);
        let hold_until_told = || {
            ran.store(true, SeqCst);
            log.push("child in");
            say("HELD");
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
                say("WAITING");
                store.with_aid(aid, async |_| get_in()).await
            }
            "wait_shared" => {
                say("WAITING");
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
        say(format_args!(
            "RESULT {outcome} ran={} elapsed_us={}",
            ran.load(SeqCst),
            elapsed.as_micros()
        ));
    });
}

/// What a child's call came to.
#[derive(Debug)]
pub struct Outcome {
    pub outcome: String,
    pub ran: bool,
    pub elapsed: Duration,
}

impl Outcome {
    #[track_caller]
    pub fn assert_ok(&self) {
        assert_eq!((self.outcome.as_str(), self.ran), ("ok", true), "{self:?}");
    }

    #[track_caller]
    pub fn assert_would_block(&self) {
        assert_eq!(
            (self.outcome.as_str(), self.ran),
            ("wouldblock", false),
            "{self:?}"
        );
    }

    #[track_caller]
    pub fn assert_timeout(&self) {
        assert_eq!(
            (self.outcome.as_str(), self.ran),
            ("timeout", false),
            "{self:?}"
        );
        assert!(self.elapsed >= LIMIT, "gave up before its limit: {self:?}");
    }
}

/// A child process playing one role of [`child_main`]; killed if dropped unreaped.
pub struct Child(Kid);

impl Child {
    pub fn spawn(fx: &Fixture, role: &str) -> Child {
        let mut cmd = role_command(CHILD_TEST, role);
        cmd.env("RUNSTATE_CHILD_DIR", &fx.run_dir)
            .env("RUNSTATE_CHILD_AID", fx.aid.to_string())
            .env("RUNSTATE_CHILD_LOG", &*fx.log.0)
            .stdin(Stdio::piped());
        Child(spawn_kid(format!("child {role}"), cmd))
    }

    /// Waits until the child says `@@<word>`; returns the rest of that line.
    pub async fn expect(&mut self, word: &str) -> String {
        self.0.expect(word).await
    }

    pub async fn outcome(&mut self) -> Outcome {
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
    pub async fn release(&mut self) {
        let stdin = self.0.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the child to exit, successfully. Its locks die with it at the latest.
    pub async fn finish(self) {
        self.0.finish().await;
    }

    /// Runs a one-shot role to its end.
    pub async fn run(fx: &Fixture, role: &str) -> Outcome {
        let mut child = Child::spawn(fx, role);
        let outcome = child.outcome().await;
        child.finish().await;
        outcome
    }
}
