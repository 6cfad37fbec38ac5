//! Listing the store: its aids, and every entry of every aid.

use futures::future;
use futures::stream::{self, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::disk::scan;
use crate::exec;
use crate::lock::hold::{LockMode, Wait};
use crate::shell::streams::{self, Listing};
use crate::{Aid, AsyncStore, Error, State};

impl<C> AsyncStore<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
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
    /// Lazy and bounded in memory like [`ReadCursor::entries`](crate::ReadCursor::entries). An error about one aid or one
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
            Ok(hold) => streams::entries::<C>(Listing::new(hold))
                .map(move |item| item.map(|state| (aid, state)))
                .left_stream(),
            Err(e) => stream::iter([Err(e)]).right_stream(),
        })
    }
}
