//! The `with_aid*` family: a closure run while the aid is held, exclusive or shared, waiting
//! forever, not at all, or up to a limit. All six are one call, [`AsyncStore::holding`](crate::AsyncStore::holding).

use std::pin::pin;
use std::time::Duration;

use futures::future;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cursor::HeldCursor;
use crate::lock::hold::Wait;
use crate::lock::reentry;
use crate::{Aid, AsyncStore, Cursor, Error, ReadCursor};

impl<C> AsyncStore<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
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
        self.holding(aid, Wait::Forever, f).await
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
        self.holding(aid, Wait::Never, f).await
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
        self.holding(aid, deadline(limit), f).await
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
        self.holding(aid, Wait::Forever, f).await
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
        self.holding(aid, Wait::Never, f).await
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
        self.holding(aid, deadline(limit), f).await
    }

    /// The one call behind every `with_aid*`: holds the aid as the cursor type `K` asks
    /// (exclusive for [`Cursor`], shared for [`ReadCursor`]), waiting as `wait` allows, and
    /// runs `f` with a cursor on the hold, refusing a nested hold of the same aid inside it.
    async fn holding<K, T, E>(
        &self,
        aid: Aid,
        wait: Wait,
        f: impl AsyncFnOnce(&mut K) -> Result<T, E>,
    ) -> Result<T, E>
    where
        K: HeldCursor,
        E: From<Error>,
    {
        let hold = self.shared.hold(aid, K::MODE, wait).await?;
        let mut cursor = K::on(hold);
        let mut f = pin!(f(&mut cursor));
        let key = self.shared.key();
        future::poll_fn(|cx| reentry::poll_holding(key, aid, f.as_mut(), cx)).await
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
