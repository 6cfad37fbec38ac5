//! What the closures passed to `with_aid` and `with_aid_shared` work with.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt, future};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::disk::aid_dir::{AidDir, TempMark};
use crate::disk::read::Found;
use crate::disk::{format, read};
use crate::exec::{self, Work};
use crate::lock::hold::{GoneOnDrop, Hold, LockMode};
use crate::shell::streams::{self, Listing};
use crate::{Aid, Error, InstanceId, State};

/// Read access to one aid's entries while its lock is held, shared or exclusive.
///
/// A read cursor exists only inside the closure given to
/// [`AsyncStore::with_aid_shared`](crate::AsyncStore::with_aid_shared) (and, through
/// [`Cursor`]'s `Deref`, inside [`with_aid`](crate::AsyncStore::with_aid)), which lends it as
/// `&mut`: the borrow checker keeps it from escaping, so it cannot be used after the lock is
/// released.
///
/// Every method is one logical operation; its file work runs where the crate docs' Runtime
/// section says (in place on tmpfs, in steps for long ones; on the blocking pool where it can
/// wait). Dropping its future at any point is safe: a short operation either completes or
/// has no effect, a long one stops at its next step, and the lock is released only after the
/// step in flight has finished.
///
/// A read cursor cannot write: the types refuse it.
///
/// ```compile_fail
/// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
/// async fn f(store: AsyncStore<u32>) -> Result<(), Error> {
///     store
///         .with_aid_shared(Aid::new(1)?, async |c| c.save(&State::new(InstanceId::random(), 1, 0)).await)
///         .await
/// }
/// ```
///
/// ```compile_fail
/// use runstate::{Aid, AsyncStore, Error, InstanceId};
/// async fn f(store: AsyncStore<u32>) -> Result<bool, Error> {
///     store.with_aid_shared(Aid::new(1)?, async |c| c.destroy(InstanceId::random()).await).await
/// }
/// ```
#[derive(Debug)]
pub struct ReadCursor<C> {
    hold: Arc<Hold>,
    _config: PhantomData<fn() -> C>,
}

/// Read and write access to one aid's entries while its lock is held exclusively.
///
/// A cursor exists only inside the closure given to
/// [`AsyncStore::with_aid`](crate::AsyncStore::with_aid). It has every method of
/// [`ReadCursor`] and the writing ones, and derefs to a `ReadCursor` for code written against
/// one.
#[derive(Debug)]
pub struct Cursor<C> {
    read: ReadCursor<C>,
    /// The size of the last encoded entry, to allocate the next one's buffer in one go.
    last_len: usize,
}

impl<C> Deref for Cursor<C> {
    type Target = ReadCursor<C>;

    fn deref(&self) -> &ReadCursor<C> {
        &self.read
    }
}

impl<C> DerefMut for Cursor<C> {
    fn deref_mut(&mut self) -> &mut ReadCursor<C> {
        &mut self.read
    }
}

impl<C> Cursor<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) fn new(hold: Arc<Hold>) -> Cursor<C> {
        Cursor {
            read: ReadCursor::new(hold),
            last_len: 256,
        }
    }

    /// Saves a new entry, atomically: no reader and no crash ever sees part of it.
    ///
    /// The entry holds exactly `state`: loading it gives back a value equal to it. (The
    /// process identity that guards against pid reuse is taken by [`State::new`], when the
    /// caller builds the state.)
    ///
    /// Fails with [`Error::AlreadyExists`] if the id has an entry already, which stays as it
    /// was. With [`Options::durable`](crate::Options::durable), the entry is on disk when
    /// this returns.
    pub async fn save(&mut self, state: &State<C>) -> Result<(), Error> {
        self.publish("save", state, AidDir::save).await
    }

    /// Replaces the entry of `state.id` with `state`, atomically: `Ok(true)` when it replaced
    /// one, `Ok(false)` when there was none (and nothing was written).
    ///
    /// Any reader, at any moment, even one that takes no lock and reads the file directly,
    /// finds the old entry or the new one, whole, never neither; a crash at any point leaves
    /// one of the two, and at most a temporary file that listings skip and the next replace
    /// removes. It stores `state` exactly as given, [`State::process`] included. With
    /// [`Options::durable`](crate::Options::durable), the new entry is on disk when this
    /// returns. [`AsyncStore::watch`](crate::AsyncStore::watch) reports it as
    /// [`Change::Replaced`](crate::Change::Replaced).
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<String>::new(dir.path());
    /// let id = InstanceId::random();
    /// store
    ///     .with_aid(Aid::new(2)?, async |cursor| {
    ///         cursor.save(&State::new(id, 100, "starting".into())).await?;
    ///         // A status transition, as runc rewrites its state file.
    ///         assert!(cursor.replace(&State::new(id, 100, "running".into())).await?);
    ///         assert_eq!(cursor.load(id).await?.map(|s| s.config), Some("running".into()));
    ///         // No entry, nothing written.
    ///         assert!(!cursor.replace(&State::new(InstanceId::random(), 1, "x".into())).await?);
    ///         Ok(())
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn replace(&mut self, state: &State<C>) -> Result<bool, Error> {
        self.publish("replace", state, AidDir::replace).await
    }

    /// Encodes `state` and hands its bytes to `put`, one of the aid directory's ways of
    /// publishing, as one operation of the hold: in place for an entry that fits, on the
    /// pool for a larger one.
    async fn publish<T: Send + 'static>(
        &mut self,
        op: &'static str,
        state: &State<C>,
        put: fn(&AidDir, InstanceId, &[u8], TempMark<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut bytes = Vec::with_capacity(self.last_len);
        // Work on the task's thread, so it counts against the poll budget.
        let encoded = exec::charged(|| format::encode_entry(state, &mut bytes));
        let config_len = match encoded {
            Ok(len) => len,
            Err(reason) => {
                let path = self.read.hold.dir().path().join(state.id.to_string());
                return Err(Error::Encode { path, reason });
            }
        };
        self.last_len = bytes.len();
        let id = state.id;
        self.read
            .hold
            .operate(op, Work::entry(config_len), move |hold, _| {
                put(hold.dir(), id, &bytes, hold.temp_mark())
            })
            .await
    }

    // The reading methods again, as inherent methods: `Deref` would serve method calls, but
    // a path such as `Cursor::load` and the documentation of `Cursor` need them here.

    /// The aid this cursor holds.
    pub fn aid(&self) -> Aid {
        self.read.aid()
    }

    /// Reads the entry of `id`, or `None` if there is none; see [`ReadCursor::load`].
    pub async fn load(&mut self, id: InstanceId) -> Result<Option<State<C>>, Error> {
        self.read.load(id).await
    }

    /// Counts the entries by their file names; see [`ReadCursor::len`].
    pub async fn len(&mut self) -> Result<usize, Error> {
        self.read.len().await
    }

    /// Whether the aid has no entries; see [`ReadCursor::is_empty`].
    pub async fn is_empty(&mut self) -> Result<bool, Error> {
        self.read.is_empty().await
    }

    /// Streams the ids of the entries; see [`ReadCursor::ids`].
    pub fn ids(&mut self) -> impl Stream<Item = Result<InstanceId, Error>> + Send + Unpin + '_ {
        self.read.ids()
    }

    /// Streams the entries, decoded; see [`ReadCursor::entries`].
    pub fn entries(&mut self) -> impl Stream<Item = Result<State<C>, Error>> + Send + Unpin + '_ {
        self.read.entries()
    }

    /// Reads every entry, or fails with the first error; see [`ReadCursor::load_all`].
    pub async fn load_all(&mut self) -> Result<BTreeMap<InstanceId, State<C>>, Error> {
        self.read.load_all().await
    }

    /// Removes the entries whose process is [`Liveness::Dead`](crate::Liveness::Dead) and
    /// returns them; see [`AsyncStore::prune_dead`](crate::AsyncStore::prune_dead). One pass
    /// over the directory, in steps. Corrupt files are left alone.
    ///
    /// If it fails part way, the entries removed before the failure are not returned: use
    /// [`prune_dead_with`](Cursor::prune_dead_with) where they must not be missed.
    pub async fn prune_dead(&mut self) -> Result<Vec<State<C>>, Error> {
        let (removed, failed) = self.prune().await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Like [`prune_dead`](Cursor::prune_dead), but hands each removed entry to `f` and
    /// returns how many there were. An error does not hide what was removed: if the pass
    /// fails part way, `f` still gets every entry removed before the failure, and then the
    /// error is returned.
    ///
    /// The pass runs in steps, and `f` runs after it. If this future is dropped while the
    /// pass runs, the pass stops at its next step (a step on the blocking pool stops removing
    /// entries at once), but those it had removed are not handed to `f`.
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<String>::new(dir.path());
    /// let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    /// let state = State::new(InstanceId::random(), child.id(), "netns-7".to_string());
    ///
    /// let mut released = Vec::new();
    /// store
    ///     .with_aid(Aid::new(1)?, async |cursor| {
    ///         cursor.save(&state).await?;
    ///         // The child exits; its resources are released once its entry is removed.
    ///         child.kill().unwrap();
    ///         child.wait().unwrap();
    ///         cursor.prune_dead_with(|dead| released.push(dead.config)).await
    ///     })
    ///     .await?;
    /// assert_eq!(released, ["netns-7"]);
    /// # Ok(()) }
    /// ```
    pub async fn prune_dead_with(&mut self, mut f: impl FnMut(State<C>)) -> Result<usize, Error> {
        let (removed, failed) = self.prune().await?;
        let count = removed.len();
        removed.into_iter().for_each(&mut f);
        match failed {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }

    /// Removes the dead entries, a step at a time: what it removed, and the error that
    /// stopped it, if any.
    async fn prune(&mut self) -> Result<(Vec<State<C>>, Option<Error>), Error> {
        let waiter = GoneOnDrop::default();
        let pass = streams::Prune::<C> {
            listing: Listing::new(self.read.hold.clone()),
            gone: waiter.0.clone(),
            _config: PhantomData,
        };
        let mut removed = Vec::new();
        let mut removing = streams::stream("prune", pass);
        while let Some(item) = removing.next().await {
            match item {
                Ok(state) => removed.push(state),
                Err(e) => return Ok((removed, Some(e))),
            }
        }
        Ok((removed, None))
    }

    /// Removes the entry of `id`. Returns whether it existed.
    pub async fn destroy(&mut self, id: InstanceId) -> Result<bool, Error> {
        self.read
            .hold
            .operate("destroy", Work::Small, move |hold, _| {
                hold.dir().destroy(id)
            })
            .await
    }
}

impl<C> ReadCursor<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) fn new(hold: Arc<Hold>) -> ReadCursor<C> {
        ReadCursor {
            hold,
            _config: PhantomData,
        }
    }

    /// The aid this cursor holds.
    pub fn aid(&self) -> Aid {
        self.hold.aid()
    }

    /// Reads the entry of `id`, or `None` if there is none.
    pub async fn load(&mut self, id: InstanceId) -> Result<Option<State<C>>, Error> {
        let read = |work| {
            self.hold.operate("load", work, move |hold, step| {
                let mut bytes = Vec::new();
                let found = hold.dir().read_entry(id, &mut bytes, step.max_file)?;
                Ok((found, bytes))
            })
        };
        // Read in place unless the file is too large for that; then read it on the pool.
        let (found, bytes) = match read(Work::Small).await? {
            (Found::TooLargeHere, _) => read(Work::Large).await?,
            read => read,
        };
        let dir = self.hold.dir().path();
        match found {
            Found::Read if Work::entry(bytes.len()) == Work::Large => {
                streams::decode_on_pool(dir, id, bytes).await.map(Some)
            }
            Found::Read => exec::charged(|| read::decode_entry(dir, id, &bytes)).map(Some),
            Found::Missing | Found::TooLargeHere => Ok(None),
        }
    }

    /// Counts the entries by their file names, without reading them.
    pub async fn len(&mut self) -> Result<usize, Error> {
        self.ids()
            .try_fold(0, |n, _| future::ready(Ok(n + 1)))
            .await
    }

    /// Whether the aid has no entries.
    pub async fn is_empty(&mut self) -> Result<bool, Error> {
        self.len().await.map(|n| n == 0)
    }

    /// Streams the ids of the entries, in directory order, without reading the files.
    ///
    /// Lazy: names are read in batches as the stream is polled. Foreign names are skipped.
    pub fn ids(&mut self) -> impl Stream<Item = Result<InstanceId, Error>> + Send + Unpin + '_ {
        streams::stream("ids", streams::Ids(Listing::new(self.hold.clone())))
    }

    /// Streams the entries, decoded, in directory order.
    ///
    /// Lazy and bounded in memory: files are read in steps as the stream is polled (in place
    /// on tmpfs, a few files a step, giving the runtime back between them as the crate docs'
    /// Runtime section says; on the blocking pool elsewhere, in larger steps), and each entry
    /// is decoded when it is taken, on the polling thread (large entries on the blocking
    /// pool). A file that
    /// is not a valid entry is one [`Error::Corrupt`] item naming it, and the stream goes on.
    ///
    /// The stream borrows the cursor, so other calls on it wait until the stream is dropped:
    /// to destroy some of the entries, collect their ids first.
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// use futures::TryStreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<String>::new(dir.path());
    /// let pids = store
    ///     .with_aid(Aid::new(3)?, async |cursor| {
    ///         cursor.save(&State::new(InstanceId::random(), 100, "a".to_string())).await?;
    ///         cursor.entries().map_ok(|state| state.pid).try_collect::<Vec<u32>>().await
    ///     })
    ///     .await?;
    /// assert_eq!(pids, [100]);
    /// # Ok(()) }
    /// ```
    pub fn entries(&mut self) -> impl Stream<Item = Result<State<C>, Error>> + Send + Unpin + '_ {
        streams::entries(Listing::new(self.hold.clone()))
    }

    /// Reads every entry, or fails with the first error.
    pub async fn load_all(&mut self) -> Result<BTreeMap<InstanceId, State<C>>, Error> {
        let mut all = BTreeMap::new();
        let mut entries = self.entries();
        while let Some(state) = entries.try_next().await? {
            all.insert(state.id, state);
        }
        Ok(all)
    }
}

/// A cursor on a hold, as the `with_aid*` family makes it: how it holds the aid, and how it
/// is made on the hold.
pub(crate) trait HeldCursor {
    /// How a cursor of this type holds its aid.
    const MODE: LockMode;
    /// A cursor on `hold`.
    fn on(hold: Arc<Hold>) -> Self;
}

impl<C> HeldCursor for Cursor<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    const MODE: LockMode = LockMode::Exclusive;
    fn on(hold: Arc<Hold>) -> Self {
        Cursor::new(hold)
    }
}

impl<C> HeldCursor for ReadCursor<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    const MODE: LockMode = LockMode::Shared;
    fn on(hold: Arc<Hold>) -> Self {
        ReadCursor::new(hold)
    }
}
