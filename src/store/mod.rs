//! The async store: the public entry point. The type, its constructors and `close` are
//! here; its methods live a file per concern: `holds.rs` (the `with_aid*` family),
//! `one_call.rs` (`save`, `replace`, `load`, `destroy`), `listing.rs` (`aids`, `entries`),
//! `prune.rs` (`liveness`, `prune_dead*`), `exit.rs` (`wait_exit`), `watch.rs` (`watch`,
//! `wait_empty`).

mod exit;
mod holds;
mod listing;
mod one_call;
mod prune;
mod watch;

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::lock::reentry;
use crate::lock::store_state::StoreState;
use crate::{Error, Options};

/// A store of running instances under one run directory, shared by every task and process
/// that opens the same directory.
///
/// Cloning is cheap and clones share everything: shared, open files and the closed state.
/// `C` is the application's configuration type, stored inside each entry.
///
/// ```
/// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// // A scratch run directory; a supervisor would use one on tmpfs, such as /run/launcher.
/// let dir = tempfile::tempdir().unwrap();
/// let store = AsyncStore::<Vec<String>>::new(dir.path());
/// let aid = Aid::new(7)?;
/// let id = InstanceId::random();
///
/// store
///     .with_aid(aid, async |cursor| {
///         cursor.save(&State::new(id, 4242, vec!["sleep".into(), "60".into()])).await
///     })
///     .await?;
///
/// let count = store.with_aid(aid, async |cursor| cursor.len().await).await?;
/// assert_eq!(count, 1);
/// assert_eq!(store.aids().await?, [aid]);
/// store.close().await?;
/// # Ok(()) }
/// ```
pub struct AsyncStore<C> {
    shared: Arc<StoreState>,
    _config: PhantomData<fn(C) -> C>,
}

impl<C> Clone for AsyncStore<C> {
    fn clone(&self) -> Self {
        AsyncStore {
            shared: self.shared.clone(),
            _config: PhantomData,
        }
    }
}

impl<C> fmt::Debug for AsyncStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncStore")
            .field("run_dir", &self.shared.run_dir())
            .field("options", &self.shared.options())
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}

impl<C> AsyncStore<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A store under `run_dir`, with default [`Options`]. Does no I/O: directories are made
    /// on first use, so this cannot fail.
    pub fn new(run_dir: impl Into<PathBuf>) -> AsyncStore<C> {
        AsyncStore::with_options(run_dir, Options::new())
    }

    /// A store under `run_dir` with the given options. Does no I/O.
    pub fn with_options(run_dir: impl Into<PathBuf>, options: Options) -> AsyncStore<C> {
        AsyncStore {
            shared: Arc::new(StoreState::new(run_dir.into(), options)),
            _config: PhantomData,
        }
    }

    /// The run directory; entries live under `<run_dir>/state`.
    pub fn run_dir(&self) -> &Path {
        self.shared.run_dir()
    }

    /// The options the store was made with.
    pub fn options(&self) -> &Options {
        self.shared.options()
    }

    /// Waits for the holds in flight, then closes every file the store holds. From then on
    /// every call on this store and its clones that touches its files fails with
    /// [`Error::Closed`] (`liveness`, `run_dir`, `options` and `is_closed` still answer).
    /// Closing twice is fine.
    ///
    /// In a forked child of the process that made the store, it fails at once with
    /// [`Error::Forked`] and changes nothing: the holds in flight at the fork belong to
    /// threads the child does not have, so it waits for none of them. Drop the store there.
    ///
    /// The holds waited for include those still queued, such as a `with_aid` waiting for an
    /// aid that another process holds: drop or time out such waiters first (they let go at
    /// once). A process-wide thread left waiting for another process's lock by a waiter that
    /// gave up keeps a descriptor of that lock file until the lock comes, then releases it.
    ///
    /// # Re-entry
    ///
    /// Called from inside a `with_aid*` closure of this store, it fails with
    /// [`Error::Reentrant`] rather than wait for itself. Called while a stream of this store
    /// that holds an aid is alive in the same task, it waits for that stream, forever.
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<String>::new(dir.path());
    /// store.close().await?;
    /// assert!(matches!(store.aids().await, Err(Error::Closed)));
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) -> Result<(), Error> {
        // In a forked child, `Forked` says more than `Reentrant`: nothing of the store works.
        self.made_in().check()?;
        reentry::check_store(self.shared.key())?;
        self.shared.close().await
    }

    /// The process the store was made in, for the checks that refuse it in a forked child.
    pub(crate) fn made_in(&self) -> crate::lock::fork_guard::Epoch {
        self.shared.made_in()
    }

    /// Whether [`close`](AsyncStore::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}
