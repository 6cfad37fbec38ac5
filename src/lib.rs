//! A crash-safe, async store of what is running on a host.
//!
//! Supervisors that launch sandboxed programs keep one small entry per running instance,
//! grouped by application id ([`Aid`]): the instance's [`InstanceId`], its child's pid, its
//! start time and the application's configuration. Many tasks and many processes share one
//! store, and any of them may crash at any moment without corrupting it or leaving it locked.
//!
//! A complete, if tiny, supervisor: it starts a child, records it, lists what runs, and
//! forgets the child when it exits.
//!
//! ```
//! use futures::StreamExt;
//! use runstate::{Aid, AsyncStore, Error, InstanceId, Liveness, State};
//! use serde::{Deserialize, Serialize};
//!
//! /// What the launcher keeps about each instance; any serde type will do.
//! #[derive(Serialize, Deserialize, Debug)]
//! struct Launch {
//!     command: Vec<String>,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let run_dir = dir.path();
//! // One store per run directory, normally on tmpfs (such as /run/launcher); clones share it.
//! let store = AsyncStore::<Launch>::new(run_dir);
//! let aid = Aid::new(12)?;
//!
//! // Start a child and record it under the aid's lock. `State::new` also records who the
//! // child process is (from /proc), so a later reuse of its pid is not taken for it.
//! let command = vec!["sleep".to_string(), "0.2".to_string()];
//! let mut child = tokio::process::Command::new(&command[0]).args(&command[1..]).spawn()?;
//! let id = InstanceId::random();
//! let pid = child.id().ok_or("the child has no pid")?;
//! store.with_aid(aid, async |c| c.save(&State::new(id, pid, Launch { command })).await).await?;
//!
//! // A ps-like listing: every entry of every aid, streamed lazily, each aid read under its
//! // shared lock. A corrupt file is one error item; the listing goes on.
//! let mut entries = store.entries();
//! while let Some(entry) = entries.next().await {
//!     let (aid, state) = entry?;
//!     let status = store.liveness(&state).await;
//!     assert_eq!(status, Liveness::Alive);
//!     println!("{} {aid} {status} {} {:?}", state.pid, state.id, state.config.command);
//! }
//!
//! // The child exits: forget it, and learn in the same locked step whether it was the
//! // aid's last instance, for instance to release resources the aid's instances share.
//! child.wait().await?;
//! let last = store
//!     .with_aid(aid, async |c| {
//!         c.destroy(id).await?;
//!         Ok::<_, Error>(c.is_empty().await?)
//!     })
//!     .await?;
//! assert!(last);
//!
//! // A supervisor that was killed never destroyed its entries; `prune_dead` removes the
//! // entries whose process is gone.
//! assert!(store.prune_dead().await?.is_empty());
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Runtime
//!
//! The store works the same on current-thread and multi-thread tokio runtimes and inside a
//! `LocalSet`, and its futures are `Send`. File work on tmpfs or ramfs (the store's normal
//! home, such as `/run`) never waits on a device, so short operations run in place on the
//! task's thread, and long ones (streams, `load_all`, `len`, `prune_dead`) in steps of a
//! few files; every 30 µs of such work the store yields to the runtime, so no poll holds a
//! thread for long (a loop of a thousand saves included), and a dropped future stops soon. Everything that can wait goes to the blocking pool
//! (`spawn_blocking`): other file systems, a durable store's fsyncs, entries over 64 KiB,
//! and every file operation under [`Options::work_on_pool`]. Waiting for a lock another
//! process holds happens in the kernel, on a thread of its own (the process's, shared by
//! its stores) that a waiter that gives up can leave behind (a thread of tokio's blocking
//! pool could not be left: the runtime's shutdown waits for every one). Nothing panics on
//! purpose, so the store also works where panics abort. The `*_timeout` methods need
//! tokio's timer, as `tokio::time` does.
//!
//! # Tests with a paused clock
//!
//! Under tokio's paused clock (`#[tokio::test(start_paused = true)]`), tokio moves the
//! clock to the next timer whenever the runtime is idle. The store's waits on another
//! process (for its lock, or its exit in [`AsyncStore::wait_exit`]) are out of tokio's
//! sight, so while one lasts the store keeps a paused clock moving at real speed, with a
//! `spawn_blocking` task as tokio does for its own: the wait ends when the other process
//! acts, and a limit fires after its duration of real time, never at once. It learns whether
//! the clock is paused at the start of each such wait, and costs nothing when it is not.
//! [`AsyncStore::watch`] and [`AsyncStore::wait_empty`] do not hold the clock: the changes
//! they report normally come from the test's own tasks.
//!
//! The `test-util` feature adds `runstate::testing`: a temporary store removed when
//! dropped, fake processes for liveness, an aid held as by another process, and
//! `real_time` for any other wait on the outside world under a paused clock.
//!
//! # Closures and streams
//!
//! [`AsyncStore::with_aid`] and its kin take an *async closure* (Rust 1.85): write
//! `async |c| c.save(&state).await`. The closure `|c| async move { c.save(&state).await }`
//! fails with `error[E0282]: type annotations needed`, and annotating its argument as
//! `|c: &mut Cursor<C>|` then fails with `lifetime may not live long enough`: the future
//! borrows the cursor, which only an async closure can express.
//!
//! The streams ([`AsyncStore::entries`], [`Cursor::ids`], [`AsyncStore::watch`], ...) are
//! [`Stream`]s. Taking items with `.next().await` needs a `StreamExt` trait in scope, from
//! a crate of your own choosing: `futures` (`use futures::StreamExt;`) or `tokio-stream`
//! (`use tokio_stream::StreamExt;`). Without one, `next` is ``error[E0599]: no method named
//! `next` found``.
//!
//! # Further documentation
//!
//! In the crate's source (and its repository): `README.md` (installing, an API tour),
//! `docs/guarantees.md` (what the store promises, and the tests behind each promise),
//! `docs/format.md` (the on-disk layout and entry format), `docs/performance.md` (benchmarks
//! and how to run them) and `docs/dependencies.md`.

#![deny(missing_docs)]

// flock semantics, O_TMPFILE, linkat and /proc are Linux's; say so rather than fail on them.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "runstate supports Linux only: it relies on flock(2), O_TMPFILE, linkat(2) and /proc"
);

// The public API and its value types.
mod aid;
mod change;
mod cursor;
mod error;
mod instance_id;
mod options;
mod state;
mod store;
mod watch;

// The layers under it, bottom up (ARCHITECTURE.md): the synchronous core, where work
// runs, the locking layer, the async shell.
mod disk;
mod exec;
mod lock;
mod process;
mod shell;

// Only for tests of code that uses the store.
#[cfg(feature = "test-util")]
pub mod testing;

pub use aid::Aid;
pub use change::Change;
pub use cursor::{Cursor, ReadCursor};
pub use error::{CorruptKind, Error, Result};
pub use instance_id::InstanceId;
pub use options::Options;
pub use process::{Liveness, ProcessIdentity};
pub use state::State;
pub use store::AsyncStore;
pub use watch::Watch;

/// The trait of the streams this crate returns, re-exported so a signature can name it
/// without a dependency on `futures`. Taking items (`.next().await`) still needs a
/// `StreamExt` in scope: add `futures` (`use futures::StreamExt;`) or `tokio-stream`
/// (`use tokio_stream::StreamExt;`) to your dependencies.
pub use futures::Stream;

/// The README's code, compiled with the doctests so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
