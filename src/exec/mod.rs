//! The execution layer: where the store's work runs. It sits below the locking layer, which
//! hands it each operation of a hold, and knows nothing of locks or of the store.
//!
//! File work on tmpfs (`/run`, `/dev/shm`: the store's normal home) never waits on a
//! device: making, writing, linking, reading and unlinking a small file there is CPU work,
//! like copying that many bytes. So short, bounded work on tmpfs runs in place, on the
//! task's own thread, with no thread hop (a `spawn_blocking` round trip costs more than a
//! save there). Everything that can wait goes to the blocking pool with `spawn_blocking`:
//! any other file system, a durable store's `fsync`, an entry over [`IN_PLACE_MAX_BYTES`],
//! and a store whose [`Options::work_on_pool`](crate::Options::work_on_pool) says so.
//! A call site says how large its work is ([`Work`]); the store's files and that decide
//! where it runs ([`Where`]).
//!
//! Long operations (streams, `load_all`, `len`, `prune_dead`) run in steps ([`Step::IN_PLACE`]
//! in place). After every [`POLL_BUDGET`] of in-place work on a thread (a long operation's
//! steps, or a loop of short ones), the store gives the runtime back ([`pause`]), so that no
//! single poll holds a thread for long and a dropped future stops soon. On the pool a step is
//! larger ([`Step::ON_POOL`]): the hop is paid once per step, not per file.
//!
//! Waiting for a lock another process holds comes neither here nor to the pool but to a thread
//! of its own (`lock/kernel_wait.rs`): the wait can be long, and its waiter must stay free to
//! give up. Only its fallback, a polling wait, runs on the pool ([`on_pool`]).

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

pub(crate) mod clock_hold;

use crate::Error;
use crate::disk::scan::{DIRENT_BUF, DIRENT_BUF_SMALL};

/// The largest entry written or decoded in place; larger ones go to the pool.
pub(crate) const IN_PLACE_MAX_BYTES: usize = 64 << 10;

/// How large a piece of work is, as its call site knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Work {
    /// Bounded work that runs in place where the store's files allow it.
    Small,
    /// Work over an entry larger than [`IN_PLACE_MAX_BYTES`]: on the blocking pool, always.
    Large,
}

impl Work {
    /// The one rule of where an entry is encoded, written or decoded, for every writer and
    /// reader (`save`, `load`, streams, `prune_dead`): in place up to [`IN_PLACE_MAX_BYTES`],
    /// on the blocking pool above. A step in place reads no larger file
    /// ([`Step::IN_PLACE`]'s `max_file`), so a reader that decodes where it reads (prune)
    /// follows it too.
    pub(crate) fn entry(len: usize) -> Work {
        match len <= IN_PLACE_MAX_BYTES {
            true => Work::Small,
            false => Work::Large,
        }
    }

    /// Where this work runs, on files where short work may run in place or not.
    pub(crate) fn runs(self, files_in_place: bool) -> Where {
        match (self, files_in_place) {
            (Work::Small, true) => Where::InPlace,
            _ => Where::OnPool,
        }
    }
}

/// Where one piece of work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Where {
    /// On the task's own thread, counted against its [`POLL_BUDGET`].
    InPlace,
    /// On tokio's blocking pool.
    OnPool,
}

/// How much one step of a long operation may do. A step on the pool reads at least one file
/// whatever its size (up to the store's entry size cap); one in place leaves a file over
/// [`IN_PLACE_MAX_BYTES`] to a step on the pool, unread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    /// Files read at most.
    pub(crate) files: usize,
    /// Bytes read at most, so large entries make smaller steps.
    pub(crate) bytes: usize,
    /// The largest file the step reads: a larger one is left for a step on the pool.
    pub(crate) max_file: u64,
    /// Names listed at most, in a listing that reads no files (`len`, `ids`).
    pub(crate) names: usize,
    /// Bytes of names fetched per `getdents64` call.
    pub(crate) dirent_bytes: usize,
}

impl Step {
    /// A step done in place: tens of microseconds on tmpfs. Its names are fetched
    /// [`DIRENT_BUF_SMALL`] at a time (why: there), and it lists about one such call's worth.
    pub(crate) const IN_PLACE: Step = Step {
        files: 4,
        bytes: 16 << 10,
        max_file: IN_PLACE_MAX_BYTES as u64,
        names: 64,
        dirent_bytes: DIRENT_BUF_SMALL,
    };
    /// A step done on the blocking pool, where the hop costs about as much as a few files.
    pub(crate) const ON_POOL: Step = Step {
        files: 128,
        bytes: 512 << 10,
        max_file: u64::MAX,
        names: 128 * 64,
        dirent_bytes: DIRENT_BUF,
    };
}

/// Runs `f` on the blocking pool. A panic or cancellation there becomes [`Error::Blocking`].
/// Outside any runtime there is no pool (and no runtime thread to keep free): `f` runs in
/// place.
pub(crate) async fn on_pool<T, F>(op: &'static str, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if Handle::try_current().is_err() {
        return in_place(op, f);
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Blocking {
            op,
            panicked: e.is_panic(),
        })
}

/// Runs one step of work, `f`, where `runs` says (in place also outside any runtime); `f` is
/// told how large a step it may make.
pub(crate) async fn run_step<T, F>(op: &'static str, runs: Where, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(Step) -> Result<T, Error> + Send + 'static,
{
    match runs {
        Where::InPlace => {
            yield_if_spent().await;
            charged(|| in_place(op, || f(Step::IN_PLACE)))?
        }
        Where::OnPool => on_pool(op, move || f(Step::ON_POOL)).await?,
    }
}

/// How much in-place work a thread does before the store gives the runtime back: a bound on
/// how long one poll of a store future holds the thread (plus one step), and a yield's cost
/// (about a microsecond) spread over this much work.
pub(crate) const POLL_BUDGET: Duration = Duration::from_micros(30);

thread_local! {
    /// In-place work done on this thread since the store last yielded on it. Work of other
    /// tasks in between counts too, so the store may yield a little early, never late.
    static SPENT: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Runs `f`, in-place work such as decoding an entry, and counts its time against the
/// thread's poll budget.
pub(crate) fn charged<T>(f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let done = f();
    SPENT.set(SPENT.get() + started.elapsed());
    done
}

/// Yields once this thread has done a poll's worth of in-place work. A loop of short
/// operations (a thousand saves in one hold, say) never waits on anything, so without this
/// it would keep the thread, and the task's other futures, for as long as it runs.
async fn yield_if_spent() {
    if SPENT.get() >= POLL_BUDGET {
        SPENT.set(Duration::ZERO);
        tokio::task::yield_now().await;
    }
}

/// Runs `f` on this thread. A panic in the store's own work becomes [`Error::Blocking`], as
/// it would at the pool's edge; `f` only holds values it owns, dropped on the way out.
fn in_place<T>(op: &'static str, f: impl FnOnce() -> T) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| Error::Blocking { op, panicked: true })
}

/// Between two steps of work, or two entries decoded: gives the runtime back once the
/// thread has done a poll's worth of in-place work, so that the task's other futures (a
/// `select!` arm, a ticker) and other tasks run, and a dropped future stops here. Work done on
/// the pool does not count: its await has yielded already.
pub(crate) async fn pause() {
    yield_if_spent().await;
}
