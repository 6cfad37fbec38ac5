//! Liveness of an entry's process, and removing the entries of dead ones.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::process;
use crate::{Aid, AsyncStore, Error, Liveness, State};

impl<C> AsyncStore<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
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
}
