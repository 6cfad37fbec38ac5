//! Waiting on changes to the store: `watch` and `wait_empty`, over the shell's inotify
//! bookkeeping (`shell/inotify.rs`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::shell::inotify;
use crate::{Aid, AsyncStore, Error, Watch};

impl<C> AsyncStore<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Watches the store: a stream of every entry saved, destroyed or replaced, by any
    /// process on the host, from the moment this returns.
    ///
    /// - No change made after this returns is missed silently: each is reported, once, in
    ///   order within its aid, or the stream says which aid (or that every aid) must be
    ///   listed again. (Changes made while it sets up may be reported or not.) Temporary
    ///   files, lock files and foreign names never show.
    /// - inotify cannot watch a directory before it exists, so a new aid's directory is
    ///   watched when the stream, polled, sees it appear, and the stream then yields
    ///   [`Change::ResyncAid`](crate::Change::ResyncAid): list that aid, as its documentation says; every change in it
    ///   from then on follows, in order. Aids are made once (an aid's directory stays when
    ///   its entries go), so this happens once per new aid.
    /// - Where the kernel's event queue overflows (a consumer that does not keep up with
    ///   `fs.inotify.max_queued_events` changes), the stream yields [`Change::Resync`](crate::Change::Resync):
    ///   changes were lost, list the store again.
    /// - If the state directory is removed, renamed or replaced (an admin's `rm -rf`), the
    ///   stream yields an error naming it, at once, even while other processes keep the old
    ///   directory open, and ends: watch again.
    /// - The stream only reports names: to see an entry, load it (it may be gone again).
    ///
    /// To follow the store's content, watch first, then list, then apply the changes: what
    /// happens between the two is then both listed and reported, never missed. Apply them by
    /// id, idempotently, as [`Change::ResyncAid`](crate::Change::ResyncAid) says, so that a change that the listing
    /// already showed changes nothing.
    ///
    /// The state directory is made if it is missing, as a hold does, and checked as a hold
    /// checks it: a symlink, another user's directory or one that others may write is
    /// refused (`Error::Insecure`). Names in it are watched through the descriptor opened
    /// then, never through its path. The stream needs a runtime with tokio's I/O driver
    /// enabled (as `#[tokio::main]` and `#[tokio::test]` set up) and holds one inotify
    /// descriptor, the state directory's descriptor, and one watch per aid directory plus two
    /// (`fs.inotify.max_user_watches`), until it is dropped.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use runstate::{Aid, AsyncStore, Change, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<String>::new(dir.path());
    /// let mut changes = store.watch().await?;
    ///
    /// let (aid, id) = (Aid::new(8)?, InstanceId::random());
    /// store.with_aid(aid, async |c| c.save(&State::new(id, 1, "x".into())).await).await?;
    /// // Aid 8 is new: its first save came before the stream could watch its directory.
    /// assert_eq!(changes.next().await.transpose()?, Some(Change::ResyncAid { aid }));
    ///
    /// store.with_aid(aid, async |c| c.destroy(id).await).await?;
    /// assert_eq!(changes.next().await.transpose()?, Some(Change::Destroyed { aid, id }));
    /// # Ok(()) }
    /// ```
    pub async fn watch(&self) -> Result<Watch, Error> {
        inotify::watch(&self.shared).await.map(Watch::new)
    }

    /// Waits until the aid holds no entries: at once if it holds none (or has no directory),
    /// otherwise until whichever process destroys its last one.
    ///
    /// It waits on inotify, with no polling: the watch is set before the directory is
    /// checked, and each removal is followed by another check. Foreign names and temporary
    /// files do not count as entries, as for [`ReadCursor::len`](crate::ReadCursor::len). It
    /// takes no lock, so an entry may be saved again right after it returns; to act on
    /// emptiness, check it again under the aid's lock. Dropping the future at any point
    /// releases its descriptor. Needs tokio's I/O driver, as [`watch`](AsyncStore::watch).
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, Error, InstanceId, State};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = AsyncStore::<()>::new(dir.path());
    /// let (aid, id) = (Aid::new(4)?, InstanceId::random());
    /// store.with_aid(aid, async |c| c.save(&State::new(id, 1, ())).await).await?;
    ///
    /// let cleaner = store.clone();
    /// let cleanup = tokio::spawn(async move {
    ///     cleaner.wait_empty(aid).await?;
    ///     // Release what the aid's instances shared.
    ///     Ok::<_, Error>(())
    /// });
    /// store.with_aid(aid, async |c| c.destroy(id).await).await?;
    /// cleanup.await.unwrap()?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_empty(&self, aid: Aid) -> Result<(), Error> {
        inotify::wait_empty(&self.shared, aid).await
    }
}
