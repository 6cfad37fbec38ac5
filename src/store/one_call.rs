//! One operation under the aid's lock, without a closure: `save`, `replace`, `load`,
//! `destroy`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Aid, AsyncStore, Error, InstanceId, State};

impl<C> AsyncStore<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Saves `state` as a new entry of `aid`, holding the aid's lock for this one operation:
    /// [`with_aid`](AsyncStore::with_aid) with [`Cursor::save`](crate::Cursor::save) inside, with the same
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
    /// nothing is written). See [`Cursor::replace`](crate::Cursor::replace).
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
    /// shared for this one operation; see [`ReadCursor::load`](crate::ReadCursor::load).
    pub async fn load(&self, aid: Aid, id: InstanceId) -> Result<Option<State<C>>, Error> {
        self.with_aid_shared(aid, async |cursor| cursor.load(id).await)
            .await
    }

    /// Removes the entry of `id` in `aid`, holding the aid's lock for this one operation;
    /// returns whether it existed. See [`Cursor::destroy`](crate::Cursor::destroy).
    pub async fn destroy(&self, aid: Aid, id: InstanceId) -> Result<bool, Error> {
        self.with_aid(aid, async |cursor| cursor.destroy(id).await)
            .await
    }
}
