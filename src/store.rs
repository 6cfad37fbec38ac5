//! The async store: the public entry point.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future;
use futures::stream::{self, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::disk::scan;
use crate::exec;
use crate::lock::hold::{LockMode, Wait};
use crate::lock::reentry;
use crate::lock::table::StoreState;
use crate::process;
use crate::shell::steps::{self, Listing};
use crate::{Aid, Cursor, Error, InstanceId, Liveness, Options, ReadCursor, State};

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

    /// The store's shared state, for the shell's watches.
    pub(crate) fn state(&self) -> &StoreState {
        &self.shared
    }

    /// Runs `f` while holding the aid's lock exclusively, against every other task of this
    /// process (first come, first served) and every other process.
    ///
    /// The lock is released when `f` returns, when it panics, and when this future is
    /// dropped, at whatever point; if the lock is granted after its waiter was dropped, it
    /// is released at once. Different aids never wait for each other.
    ///
    /// `f` returns `Result<T, E>` for any `E: From<Error>`, so store errors and the caller's
    /// own errors travel in one type, as with sqlx's `transaction`. (For other errors, such
    /// as `std::io::Error`, use an enum of your own with a `From` for each.)
    ///
    /// # Several `?` in one closure
    ///
    /// A closure that uses `?` and ends in `Ok(..)` leaves `E` open, and the compiler asks
    /// for it (`E0283: type annotations needed ... cannot satisfy _: From<runstate::Error>`).
    /// Name it in the last expression, `Ok::<_, Error>(value)`, or on the result:
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<u32>::new(dir.path());
    /// let id = InstanceId::random();
    /// let last = store
    ///     .with_aid(Aid::new(0)?, async |cursor| {
    ///         cursor.destroy(id).await?;
    ///         Ok::<_, Error>(cursor.is_empty().await?)
    ///     })
    ///     .await?;
    /// // Or: let last: Result<bool, Error> = store.with_aid(...).await;
    /// assert!(last);
    /// # Ok(()) }
    /// ```
    ///
    /// For one operation, [`save`](AsyncStore::save), [`replace`](AsyncStore::replace),
    /// [`load`](AsyncStore::load) and [`destroy`](AsyncStore::destroy) need no closure at all.
    ///
    /// # Re-entry
    ///
    /// The lock is not re-entrant. Inside `f`, any other hold of the same aid of this store
    /// (`with_aid*`, the one-call [`save`](AsyncStore::save) and the like,
    /// [`entries`](AsyncStore::entries), [`prune_dead`](AsyncStore::prune_dead)) would wait
    /// for `f` to end, forever, and so would [`close`](AsyncStore::close): they fail with
    /// [`Error::Reentrant`] instead (the `try_` forms with [`Error::WouldBlock`]). Use the
    /// cursor inside `f`.
    ///
    /// The check follows the polling of `f`, so two holds of one aid joined in one task
    /// (`join!`) still just wait for each other. It cannot see a hold asked for by another
    /// task that `f` waits for (one it spawned), a hold kept by a stream of `entries` between
    /// its polls, or a second store on the same run directory: those still wait forever.
    ///
    /// ```
    /// # use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<u32>::new(dir.path());
    /// let aid = Aid::new(0)?;
    /// let nested = store
    ///     .with_aid(aid, async |_| store.load(aid, InstanceId::random()).await)
    ///     .await;
    /// assert!(matches!(nested, Err(Error::Reentrant { .. })));
    /// # Ok(()) }
    /// ```
    ///
    /// # Read-modify-write
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<u32>::new(dir.path());
    /// let id = InstanceId::random();
    /// // Read-modify-write, safe against every other task and process.
    /// store
    ///     .with_aid(Aid::new(0)?, async |cursor| {
    ///         let Some(mut state) = cursor.load(id).await? else {
    ///             return cursor.save(&State::new(id, std::process::id(), 1)).await;
    ///         };
    ///         state.config += 1;
    ///         // One atomic overwrite: no reader ever finds the entry missing.
    ///         cursor.replace(&state).await.map(drop)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_aid<T, E>(
        &self,
        aid: Aid,
        f: impl AsyncFnOnce(&mut Cursor<C>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        self.exclusive(aid, Wait::Forever, f).await
    }

    /// Like [`with_aid`](AsyncStore::with_aid), but fails with [`Error::WouldBlock`] at once,
    /// without running `f`, if another task or process holds the aid.
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<String>::new(dir.path());
    /// let aid = Aid::new(1)?;
    /// store
    ///     .with_aid(aid, async |_| {
    ///         let inner = store.try_with_aid(aid, async |_| Ok::<_, Error>(())).await;
    ///         assert!(matches!(inner, Err(Error::WouldBlock { .. })));
    ///         Ok::<_, Error>(())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn try_with_aid<T, E>(
        &self,
        aid: Aid,
        f: impl AsyncFnOnce(&mut Cursor<C>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        self.exclusive(aid, Wait::Never, f).await
    }

    /// Like [`with_aid`](AsyncStore::with_aid), but waits at most `limit` for the aid, then
    /// fails with [`Error::Timeout`] without running `f`. Nothing of the store is held past
    /// the limit. If another process holds the aid, the thread that waits for it in the
    /// kernel (the process's, shared by its stores) stays, to serve the next waiter; when the
    /// lock comes, it hands it to that waiter or releases it at once.
    ///
    /// Needs a runtime with tokio's timer enabled (as `#[tokio::main]` and `#[tokio::test]`
    /// set up), like `tokio::time::timeout`.
    ///
    /// # Which clock
    ///
    /// The limit is measured on tokio's clock, as `tokio::time::timeout` measures it, from
    /// the call. Under a paused clock (tokio's `test-util`, as in
    /// `#[tokio::test(start_paused = true)]`), tokio moves the clock to the next timer
    /// whenever the runtime is idle; so a wait for another holder of this process (a task,
    /// which tokio sees) may be skipped that way, as any wait on a `tokio::sync` lock is.
    /// But while the store waits for another process's lock, it keeps a paused clock moving
    /// at real speed (in steps of about 20 ms of real time), as tokio does for a
    /// `spawn_blocking` task: the wait lasts until the other process lets go, and the limit
    /// then fires after about that much real time, never at once. The same holds for a
    /// `tokio::time::timeout` around [`with_aid`](AsyncStore::with_aid) or any other call
    /// that waits for another process's lock. With the clock not paused, this costs nothing.
    pub async fn with_aid_timeout<T, E>(
        &self,
        aid: Aid,
        limit: Duration,
        f: impl AsyncFnOnce(&mut Cursor<C>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        self.exclusive(aid, deadline(limit), f).await
    }

    /// Runs `f` with a read-only cursor while holding the aid's lock shared: shared holders
    /// of one aid run together, in this process and across processes, and exclusive holders
    /// ([`with_aid`](AsyncStore::with_aid)) exclude them. Waiting is fair: a queued exclusive
    /// holder is not overtaken by later shared ones, of this process or of any other (a
    /// shared holder that finds an exclusive one waiting, anywhere, waits behind it).
    ///
    /// [`ReadCursor`] has no `save` or `destroy`: the types keep a shared holder from writing.
    ///
    /// # Re-entry
    ///
    /// As with [`with_aid`](AsyncStore::with_aid), the lock is not re-entrant, and a nested
    /// hold of the same aid fails with [`Error::Reentrant`]. That includes a nested shared
    /// hold: it would get in only while no exclusive holder is queued (in any process), and
    /// otherwise wait behind it, which waits behind the outer hold, forever.
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<String>::new(dir.path());
    /// let n = store.with_aid_shared(Aid::new(5)?, async |cursor| cursor.len().await).await?;
    /// assert_eq!(n, 0);
    /// # Ok(()) }
    /// ```
    pub async fn with_aid_shared<T, E>(
        &self,
        aid: Aid,
        f: impl AsyncFnOnce(&mut ReadCursor<C>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        self.shared(aid, Wait::Forever, f).await
    }

    /// Like [`with_aid_shared`](AsyncStore::with_aid_shared), but fails with
    /// [`Error::WouldBlock`] at once if an exclusive holder has the aid or is queued for it,
    /// in this process or another; never because of other shared holders.
    pub async fn try_with_aid_shared<T, E>(
        &self,
        aid: Aid,
        f: impl AsyncFnOnce(&mut ReadCursor<C>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        self.shared(aid, Wait::Never, f).await
    }

    /// Like [`with_aid_shared`](AsyncStore::with_aid_shared), but waits at most `limit`, then
    /// fails with [`Error::Timeout`]; see [`with_aid_timeout`](AsyncStore::with_aid_timeout).
    pub async fn with_aid_shared_timeout<T, E>(
        &self,
        aid: Aid,
        limit: Duration,
        f: impl AsyncFnOnce(&mut ReadCursor<C>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        self.shared(aid, deadline(limit), f).await
    }

    /// Saves `state` as a new entry of `aid`, holding the aid's lock for this one operation:
    /// [`with_aid`](AsyncStore::with_aid) with [`Cursor::save`] inside, with the same
    /// results.
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<String>::new(dir.path());
    /// let aid = Aid::new(3)?;
    /// let state = State::new(InstanceId::random(), std::process::id(), "web".to_string());
    /// store.save(aid, &state).await?;
    /// assert_eq!(store.load(aid, state.id).await?, Some(state.clone()));
    /// assert!(store.destroy(aid, state.id).await?);
    /// assert_eq!(store.load(aid, state.id).await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn save(&self, aid: Aid, state: &State<C>) -> Result<(), Error> {
        self.with_aid(aid, async |cursor| cursor.save(state).await)
            .await
    }

    /// Overwrites the entry of `state.id` in `aid` with `state`, atomically, holding the
    /// aid's lock for this one operation; returns whether there was an entry (without one,
    /// nothing is written). See [`Cursor::replace`].
    ///
    /// ```
    /// # use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<String>::new(dir.path());
    /// let aid = Aid::new(3)?;
    /// let id = InstanceId::random();
    /// store.save(aid, &State::new(id, std::process::id(), "starting".into())).await?;
    /// assert!(store.replace(aid, &State::new(id, std::process::id(), "running".into())).await?);
    /// assert_eq!(store.load(aid, id).await?.map(|s| s.config), Some("running".into()));
    /// # Ok(()) }
    /// ```
    pub async fn replace(&self, aid: Aid, state: &State<C>) -> Result<bool, Error> {
        self.with_aid(aid, async |cursor| cursor.replace(state).await)
            .await
    }

    /// Reads the entry of `id` in `aid`, or `None` if there is none, holding the aid's lock
    /// shared for this one operation; see [`ReadCursor::load`].
    pub async fn load(&self, aid: Aid, id: InstanceId) -> Result<Option<State<C>>, Error> {
        self.with_aid_shared(aid, async |cursor| cursor.load(id).await)
            .await
    }

    /// Removes the entry of `id` in `aid`, holding the aid's lock for this one operation;
    /// returns whether it existed. See [`Cursor::destroy`].
    pub async fn destroy(&self, aid: Aid, id: InstanceId) -> Result<bool, Error> {
        self.with_aid(aid, async |cursor| cursor.destroy(id).await)
            .await
    }

    async fn exclusive<T, E>(
        &self,
        aid: Aid,
        wait: Wait,
        f: impl AsyncFnOnce(&mut Cursor<C>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        let hold = self.shared.hold(aid, LockMode::Exclusive, wait).await?;
        let mut cursor = Cursor::new(hold);
        let mut f = pin!(f(&mut cursor));
        let key = self.shared.key();
        future::poll_fn(|cx| reentry::poll_holding(key, aid, f.as_mut(), cx)).await
    }

    async fn shared<T, E>(
        &self,
        aid: Aid,
        wait: Wait,
        f: impl AsyncFnOnce(&mut ReadCursor<C>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        let hold = self.shared.hold(aid, LockMode::Shared, wait).await?;
        let mut cursor = ReadCursor::new(hold);
        let mut f = pin!(f(&mut cursor));
        let key = self.shared.key();
        future::poll_fn(|cx| reentry::poll_holding(key, aid, f.as_mut(), cx)).await
    }

    /// The aids that have a directory in the store, ascending. Names that are not aids are
    /// skipped. An aid whose instances have all been destroyed is still listed.
    pub async fn aids(&self) -> Result<Vec<Aid>, Error> {
        let _open = self.shared.enter()?;
        let run_dir = self.shared.run_dir().to_owned();
        // A listing of up to 10,000 names in one go: on the pool.
        exec::on_pool("aids", move || scan::list_aids(&run_dir)).await?
    }

    /// Streams every entry of every aid, in aid order, holding each aid's lock shared while it
    /// is read.
    ///
    /// Lazy and bounded in memory like [`ReadCursor::entries`]. An error about one aid or one
    /// file is one item, and the stream goes on with the rest. The stream is `Unpin`: poll it
    /// as it is. It holds a handle of the store of its own, so it may outlive `self`: return
    /// it, or move it into a task.
    ///
    /// Each aid's shared lock is taken when the stream reaches that aid and released as soon
    /// as its last batch has been read, so a stream left unfinished holds at most one aid,
    /// and only while entries of that aid are still to be read.
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// use futures::StreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<String>::new(dir.path());
    /// store.save(Aid::new(2)?, &State::new(InstanceId::random(), 9, "x".to_string())).await?;
    /// let mut entries = store.entries();
    /// while let Some(item) = entries.next().await {
    ///     match item {
    ///         Ok((aid, state)) => println!("{aid} {} {}", state.pid, state.id),
    ///         Err(e @ Error::Corrupt { .. }) => eprintln!("skipped: {e}"),
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn entries(
        &self,
    ) -> impl Stream<Item = Result<(Aid, State<C>), Error>> + Send + Unpin + use<C> {
        // The stream owns a handle of its own, so it can outlive this borrow: be returned,
        // or moved into a task.
        let (store, lister) = (self.clone(), self.clone());
        stream::once(async move { lister.aids().await })
            .flat_map(|aids| match aids {
                Ok(aids) => stream::iter(aids).map(Ok).left_stream(),
                Err(e) => stream::iter([Err(e)]).right_stream(),
            })
            .flat_map(move |aid| match aid {
                Ok(aid) => store.aid_entries(aid).left_stream(),
                Err(e) => stream::iter([Err(e)]).right_stream(),
            })
            // A store closed under the stream ends it: one `Closed` says so, not one per aid.
            .scan(false, |closed, item| {
                let end = std::mem::replace(closed, matches!(item, Err(Error::Closed)));
                future::ready((!end).then_some(item))
            })
            // Boxed so callers can poll it without pinning it first.
            .boxed()
    }

    /// One aid's entries, under its shared lock, paired with the aid.
    fn aid_entries(
        &self,
        aid: Aid,
    ) -> impl Stream<Item = Result<(Aid, State<C>), Error>> + Send + use<C> {
        let shared = self.shared.clone();
        let hold = async move { shared.hold(aid, LockMode::Shared, Wait::Forever).await };
        stream::once(hold).flat_map(move |hold| match hold {
            Ok(hold) => steps::entries::<C>(Listing::new(hold))
                .map(move |item| item.map(|state| (aid, state)))
                .left_stream(),
            Err(e) => stream::iter([Err(e)]).right_stream(),
        })
    }

    /// Whether the process of `state` is still running: [`Liveness::Alive`] only when its pid
    /// exists with the recorded start time in the same boot. Reads `/proc` (procfs: CPU work,
    /// done in place); anything it cannot read makes the answer [`Liveness::Unknown`].
    ///
    /// The answer rests on `state.process`, the identity [`State::new`] took when the state
    /// was built; a state without one ([`State::unidentified`]) is always `Unknown`.
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, Liveness, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<()>::new(dir.path());
    /// let mine = State::new(InstanceId::random(), std::process::id(), ());
    /// store.save(Aid::new(1)?, &mine).await?;
    /// let loaded = store.load(Aid::new(1)?, mine.id).await?.expect("just saved");
    /// assert_eq!(loaded, mine);
    /// assert_eq!(store.liveness(&loaded).await, Liveness::Alive);
    /// let unknown = State::unidentified(InstanceId::random(), std::process::id(), ());
    /// assert_eq!(store.liveness(&unknown).await, Liveness::Unknown);
    /// # Ok(()) }
    /// ```
    pub async fn liveness(&self, state: &State<C>) -> Liveness {
        // A few small procfs reads, which never wait on a device: in place.
        process::check(
            &self.shared.options().proc_root,
            state.pid,
            state.process.as_ref(),
        )
    }

    /// Removes, in every aid, the entries whose process is [`Liveness::Dead`], and returns
    /// them. Each aid is held exclusively while it is pruned; entries that are alive, of
    /// unknown liveness or corrupt are left alone. Stops at the first error; the entries
    /// removed before it are then not returned: use
    /// [`prune_dead_with`](AsyncStore::prune_dead_with) where they must not be missed.
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<()>::new(dir.path());
    /// // A child that has come and gone.
    /// let mut child = std::process::Command::new("true").spawn().unwrap();
    /// let state = State::new(InstanceId::random(), child.id(), ());
    /// store.with_aid(Aid::new(1)?, async |c| c.save(&state).await).await?;
    /// child.wait().unwrap();
    ///
    /// let pruned = store.prune_dead().await?;
    /// assert_eq!(pruned.len(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn prune_dead(&self) -> Result<Vec<(Aid, State<C>)>, Error> {
        let mut pruned = Vec::new();
        for aid in self.aids().await? {
            let dead = self
                .with_aid(aid, async |cursor| cursor.prune_dead().await)
                .await?;
            pruned.extend(dead.into_iter().map(|state| (aid, state)));
        }
        Ok(pruned)
    }

    /// Like [`prune_dead`](AsyncStore::prune_dead), but hands each removed entry to `f` and
    /// returns how many there were. It goes on past an aid that fails (a bad directory, an
    /// I/O error), so one aid cannot keep the others from being pruned; after trying them
    /// all, it returns the first error. Either way `f` has seen every entry removed. (A store
    /// closed meanwhile ends the pass at once with [`Error::Closed`].)
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<()>::new(dir.path());
    /// let mut child = std::process::Command::new("true").spawn().unwrap();
    /// let id = InstanceId::random();
    /// store.with_aid(Aid::new(4)?, async |c| c.save(&State::new(id, child.id(), ())).await).await?;
    /// child.wait().unwrap();
    ///
    /// let mut gone = Vec::new();
    /// let result = store.prune_dead_with(|aid, state| gone.push((aid, state.id))).await;
    /// // Even if some aid had failed, `gone` would list every entry that was removed.
    /// assert_eq!(result?, 1);
    /// assert_eq!(gone, [(Aid::new(4)?, id)]);
    /// # Ok(()) }
    /// ```
    pub async fn prune_dead_with(&self, mut f: impl FnMut(Aid, State<C>)) -> Result<usize, Error> {
        let mut count = 0;
        let mut first_error = None;
        for aid in self.aids().await? {
            let pruned = self
                .with_aid(aid, async |cursor| {
                    cursor.prune_dead_with(|state| f(aid, state)).await
                })
                .await;
            match pruned {
                Ok(n) => count += n,
                Err(e @ Error::Closed) => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(count), Err)
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

/// The wait that ends `limit` from now on tokio's clock (or never, for a limit too large to
/// represent).
fn deadline(limit: Duration) -> Wait {
    match tokio::time::Instant::now().checked_add(limit) {
        Some(at) => Wait::Until(at, limit),
        None => Wait::Forever,
    }
}
