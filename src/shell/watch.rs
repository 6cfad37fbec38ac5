//! Watching the store: a stream of the changes any process makes, and a wait for an aid to
//! empty, both on inotify.
//!
//! inotify comes from rustix, which the store already uses for every other system call, and
//! the descriptor waits in tokio's reactor through `AsyncFd`: twenty lines that a crate such
//! as `inotify` would replace with a dependency and a second copy of the same bindings.
//!
//! What the kernel reports, and what it means here (the store's own writes, see
//! `disk/publish.rs`): a save links a new name (`IN_CREATE`), a replace renames a temporary
//! file onto an entry's name (`IN_MOVED_TO`), a destroy unlinks it (`IN_DELETE`). Temporary
//! files, lock files and foreign names are filtered out by name, with `disk/layout.rs`'s
//! parsers.
//!
//! Reading a few kilobytes of events from an inotify descriptor never blocks, so it runs on
//! the polling thread. So does the listing of a newly made aid directory (it is new, so
//! small) and the relisting of aids after an overflow (rare); the initial setup, which may
//! list up to 10,000 aids, runs as the store's other file work does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{CWD, Mode, OFlags, RawDir, openat};
use rustix::io::Errno;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::unix::AsyncFd;

use crate::disk::layout::{self, STATE_DIR};
use crate::disk::scan;
use crate::disk::state_dir::StateDir;
use crate::shell::place;
use crate::{Aid, AsyncStore, Error, InstanceId};

/// One change to the store, as [`AsyncStore::watch`] reports it.
///
/// The enum is `#[non_exhaustive]`: keep a catch-all arm.
///
/// ```
/// use runstate::{Aid, Change, InstanceId};
///
/// let aid = Aid::new(3)?;
/// let change = Change::Saved { aid, id: InstanceId::from_bytes([1; 16]) };
/// assert_eq!(change.aid(), Some(aid));
/// assert_eq!(Change::Resync.id(), None);
/// # Ok::<(), runstate::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Change {
    /// A new entry was saved ([`Cursor::save`](crate::Cursor::save)).
    Saved {
        /// The aid it was saved in.
        aid: Aid,
        /// The entry's id.
        id: InstanceId,
    },
    /// An entry was removed ([`Cursor::destroy`](crate::Cursor::destroy), a prune, or a
    /// foreign process that unlinked or moved the file away).
    Destroyed {
        /// The aid it was removed from.
        aid: Aid,
        /// The entry's id.
        id: InstanceId,
    },
    /// An entry was replaced in place ([`Cursor::replace`](crate::Cursor::replace), or any
    /// rename onto an entry's name).
    Replaced {
        /// The aid of the entry.
        aid: Aid,
        /// The entry's id.
        id: InstanceId,
    },
    /// The kernel's event queue overflowed, so some changes were lost: list the store
    /// again. Changes made after this item are reported as usual.
    Resync,
}

impl Change {
    /// The aid the change is about; `None` for [`Change::Resync`].
    pub fn aid(&self) -> Option<Aid> {
        match *self {
            Change::Saved { aid, .. }
            | Change::Destroyed { aid, .. }
            | Change::Replaced { aid, .. } => Some(aid),
            Change::Resync => None,
        }
    }

    /// The id of the entry the change is about; `None` for [`Change::Resync`].
    pub fn id(&self) -> Option<InstanceId> {
        match *self {
            Change::Saved { id, .. }
            | Change::Destroyed { id, .. }
            | Change::Replaced { id, .. } => Some(id),
            Change::Resync => None,
        }
    }
}

/// The stream of [`Change`]s that [`AsyncStore::watch`] returns.
///
/// It owns its inotify descriptor and nothing of the store: it is `Send`, `Unpin` and
/// `'static`, and dropping it closes the descriptor. It does not keep the store open, and
/// [`AsyncStore::close`] does not end it.
///
/// An `Err` item means that changes may have been missed (a new aid directory could not be
/// watched, say): list again as for [`Change::Resync`]. The stream ends, after an error
/// item, only if reading inotify fails or the state directory itself is removed.
#[derive(Debug)]
#[must_use = "a watch reports nothing unless it is polled"]
pub struct Watch {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<MaybeUninit<u8>>,
    book: Book,
    done: bool,
}

/// What a watch knows about its watches, and the items it has still to hand out.
#[derive(Debug)]
struct Book {
    run_dir: PathBuf,
    state_path: PathBuf,
    state_wd: i32,
    /// Watch descriptor to aid, for every aid directory watched.
    aids: HashMap<i32, Aid>,
    /// Per aid directory watch: the ids that a listing of the newly made directory reported
    /// as saved. Their `IN_CREATE` may still be queued, and must not be reported again. An
    /// id's next event decides: a create is that duplicate; anything else ends the doubt.
    /// Cleared whenever the queue is found empty, as everything queued before the listing
    /// has been read by then.
    listed: HashMap<i32, HashSet<InstanceId>>,
    pending: VecDeque<Result<Change, Error>>,
}

/// Events on the state directory: aid directories appearing, and the directory going away.
fn state_mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW
}

/// Events on an aid directory: names appearing, replaced and going away.
fn aid_mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW
}

/// Bytes read from inotify at a time: about 80 events of entry names.
const EVENT_BUF: usize = 4096;

fn new_inotify(path: &Path) -> Result<OwnedFd, Error> {
    inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
        .map_err(|e| Error::io("watch", path, e))
}

/// Registers `fd`, which it owns (an `OwnedFd`, or one shared in an `Arc`), with the
/// runtime's reactor; outside a runtime, an error rather than tokio's panic.
fn register<T: AsRawFd>(fd: T, path: &Path) -> Result<AsyncFd<T>, Error> {
    if tokio::runtime::Handle::try_current().is_err() {
        let outside = std::io::Error::other("not inside a tokio runtime");
        return Err(Error::io("watch", path, outside));
    }
    // Deprecated in tokio 1.53.3 for types that may close their descriptor while registered,
    // which an owned one cannot; its replacement is unsafe and needs a newer tokio.
    #[allow(deprecated)]
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
        .map_err(|e| Error::io("watch", path, e))
}

/// The entry ids in the directory at `path`, calling `each` for each; `Ok(false)` if
/// `each` asked to stop. A directory that is not there has none.
fn list_ids(path: &Path, mut each: impl FnMut(InstanceId) -> bool) -> Result<bool, Error> {
    let fd = match openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(true),
        Err(e) => return Err(Error::io("list", path, e)),
    };
    let mut buf = vec![MaybeUninit::uninit(); 8 << 10];
    let mut dir = RawDir::new(fd, &mut buf);
    while let Some(entry) = dir.next() {
        let entry = entry.map_err(|e| Error::io("list", path, e))?;
        if let Some(id) = layout::parse_entry_name(entry.file_name()) {
            if !each(id) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl Book {
    fn aid_path(&self, aid: Aid) -> PathBuf {
        self.state_path.join(aid.to_string())
    }

    /// Watches the directory of `aid`. `Ok(None)` if it is not there (any more).
    fn watch_aid(&mut self, inotify: BorrowedFd<'_>, aid: Aid) -> Result<Option<i32>, Error> {
        let path = self.aid_path(aid);
        match inotify::add_watch(inotify, &path, aid_mask()) {
            Ok(wd) => {
                self.aids.insert(wd, aid);
                Ok(Some(wd))
            }
            // Removed again, or something else than a directory stands there.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => Ok(None),
            Err(e) => Err(Error::io("watch", path, e)),
        }
    }

    /// Watches every aid directory there is.
    fn watch_all(&mut self, inotify: BorrowedFd<'_>) -> Result<(), Error> {
        for aid in scan::list_aids(&self.run_dir)? {
            self.watch_aid(inotify, aid)?;
        }
        Ok(())
    }

    /// A new aid directory: watched first, then listed, so that an entry saved in it before
    /// the watch was in place is reported from the listing, and one saved after, from its
    /// event (once: see [`Book::listed`]).
    fn new_aid(&mut self, inotify: BorrowedFd<'_>, aid: Aid) {
        let wd = match self.watch_aid(inotify, aid) {
            Ok(Some(wd)) => wd,
            Ok(None) => return,
            Err(e) => return self.pending.push_back(Err(e)),
        };
        let listed = self.listed.entry(wd).or_default();
        let pending = &mut self.pending;
        let path = self.state_path.join(aid.to_string());
        if let Err(e) = list_ids(&path, |id| {
            if listed.insert(id) {
                pending.push_back(Ok(Change::Saved { aid, id }));
            }
            true
        }) {
            pending.push_back(Err(e));
        }
    }

    /// The queue overflowed: aid directories made meanwhile are watched now, and the
    /// caller is told to list again.
    fn overflowed(&mut self, inotify: BorrowedFd<'_>) {
        self.listed.clear();
        if let Err(e) = self.watch_all(inotify) {
            self.pending.push_back(Err(e));
        }
        if !matches!(self.pending.back(), Some(Ok(Change::Resync))) {
            self.pending.push_back(Ok(Change::Resync));
        }
    }

    /// Reads one buffer of events and turns them into items. `Ok(false)` ends the stream.
    fn read(
        &mut self,
        inotify: BorrowedFd<'_>,
        buf: &mut [MaybeUninit<u8>],
    ) -> Result<bool, Errno> {
        let mut reader = inotify::Reader::new(inotify, buf);
        match reader.next() {
            Ok(first) => {
                let mut more = self.on_event(inotify, &first);
                while more && !reader.is_buffer_empty() {
                    match reader.next() {
                        Ok(event) => more = self.on_event(inotify, &event),
                        Err(_) => break,
                    }
                }
                Ok(more)
            }
            Err(Errno::AGAIN) => {
                // Everything queued so far has been read, including the creates that a
                // listing of a new aid directory may have raced with.
                self.listed.clear();
                Err(Errno::AGAIN)
            }
            Err(e) => Err(e),
        }
    }

    /// Turns one event into what it means for the caller. `false` ends the stream.
    fn on_event(&mut self, inotify: BorrowedFd<'_>, event: &inotify::Event<'_>) -> bool {
        let mask = event.events();
        if mask.contains(ReadFlags::QUEUE_OVERFLOW) {
            self.overflowed(inotify);
            return true;
        }
        let wd = event.wd();
        let name = event.file_name();
        if wd == self.state_wd {
            if mask.intersects(ReadFlags::DELETE_SELF | ReadFlags::IGNORED) {
                let gone = std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the state directory was removed; watch again",
                );
                self.pending
                    .push_back(Err(Error::io("watch", &self.state_path, gone)));
                return false;
            }
            if mask.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO)
                && mask.contains(ReadFlags::ISDIR)
            {
                if let Some(aid) = name.and_then(|n| layout::parse_aid_name(n.to_bytes())) {
                    self.new_aid(inotify, aid);
                }
            }
            return true;
        }
        // A watch removed since, whose last events are still queued, is unknown.
        let Some(&aid) = self.aids.get(&wd) else {
            return true;
        };
        if mask.contains(ReadFlags::IGNORED) {
            // The directory is gone; its entries' removals were reported before this.
            self.aids.remove(&wd);
            self.listed.remove(&wd);
            return true;
        }
        let Some(id) = name.and_then(layout::parse_entry_name) else {
            return true;
        };
        let listed = self
            .listed
            .get_mut(&wd)
            .is_some_and(|listed| listed.remove(&id));
        let change = if mask.contains(ReadFlags::CREATE) {
            if listed {
                return true;
            }
            Change::Saved { aid, id }
        } else if mask.contains(ReadFlags::MOVED_TO) {
            Change::Replaced { aid, id }
        } else if mask.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM) {
            Change::Destroyed { aid, id }
        } else {
            return true;
        };
        self.pending.push_back(Ok(change));
        true
    }
}

impl Stream for Watch {
    type Item = Result<Change, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Watch {
            fd,
            buf,
            book,
            done,
        } = self.get_mut();
        loop {
            if let Some(item) = book.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            if *done {
                return Poll::Ready(None);
            }
            let mut guard = match fd.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => {
                    *done = true;
                    return Poll::Ready(Some(Err(Error::io("watch", &book.state_path, e))));
                }
            };
            match book.read(guard.get_inner().as_fd(), buf) {
                Ok(more) => *done = !more,
                Err(Errno::AGAIN) => guard.clear_ready(),
                Err(Errno::INTR) => {}
                Err(e) => {
                    *done = true;
                    return Poll::Ready(Some(Err(Error::io("watch", &book.state_path, e))));
                }
            }
        }
    }
}

impl futures::stream::FusedStream for Watch {
    fn is_terminated(&self) -> bool {
        self.done && self.book.pending.is_empty()
    }
}

impl<C> AsyncStore<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Watches the store: a stream of every entry saved, destroyed or replaced, by any
    /// process on the host, from the moment this returns.
    ///
    /// - Every change made after this returns is reported, once, in order within each aid,
    ///   including in aids whose directory is made later. (Changes made while it sets up may
    ///   be reported or not.) Temporary files, lock files and foreign names never show.
    /// - inotify cannot watch a directory before it exists, so a new aid's directory is
    ///   watched when the stream, polled, sees it appear, and then listed: the entries it
    ///   holds by then are reported as saved, each once (in directory order), and changes
    ///   from then on as they come. An entry saved *and destroyed again* in a new aid
    ///   before the stream saw its directory is not reported; keep polling the stream to
    ///   keep that moment short.
    /// - Where the kernel's event queue overflows (a consumer that does not keep up with
    ///   `fs.inotify.max_queued_events` changes), the stream yields [`Change::Resync`]:
    ///   changes were lost, list the store again. No change is ever dropped silently.
    /// - The stream only reports names: to see an entry, load it (it may be gone again).
    ///
    /// To follow the store's content, watch first, then list, then apply the changes: what
    /// happens between the two is then both listed and reported, never missed.
    ///
    /// The state directory is made if it is missing, as a hold does. The stream needs a
    /// runtime with tokio's I/O driver enabled (as `#[tokio::main]` and `#[tokio::test]` set
    /// up) and holds one inotify descriptor and one watch per aid directory
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
    /// assert_eq!(changes.next().await.transpose()?, Some(Change::Saved { aid, id }));
    ///
    /// store.with_aid(aid, async |c| c.destroy(id).await).await?;
    /// assert_eq!(changes.next().await.transpose()?, Some(Change::Destroyed { aid, id }));
    /// # Ok(()) }
    /// ```
    pub async fn watch(&self) -> Result<Watch, Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let run_dir = self.run_dir().to_owned();
        let options = self.options().clone();
        let state_path = run_dir.join(STATE_DIR);
        let book = Book {
            run_dir,
            state_path,
            state_wd: -1,
            aids: HashMap::new(),
            listed: HashMap::new(),
            pending: VecDeque::new(),
        };
        // Up to 10,000 directories to watch: on the pool.
        let (inotify, book) = place::on_pool("watch", move || {
            let mut book = book;
            // Made if missing, as a hold makes it, so there is something to watch.
            drop(StateDir::open(&book.run_dir, &options)?);
            let inotify = new_inotify(&book.state_path)?;
            // The state directory first: an aid made after this is seen by its event, one
            // made before by the listing (or both, which is harmless).
            book.state_wd = inotify::add_watch(&inotify, &book.state_path, state_mask())
                .map_err(|e| Error::io("watch", &book.state_path, e))?;
            book.watch_all(inotify.as_fd())?;
            Ok::<_, Error>((inotify, book))
        })
        .await??;
        let fd = register(inotify, &book.state_path)?;
        Ok(Watch {
            fd,
            buf: vec![MaybeUninit::uninit(); EVENT_BUF],
            book,
            done: false,
        })
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
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let path = self.run_dir().join(STATE_DIR).join(aid.to_string());
        let inotify = {
            let path = path.clone();
            place::on_pool("wait_empty", move || {
                let inotify = new_inotify(&path)?;
                Ok::<_, Error>(match watch_then_check(&inotify, &path)? {
                    true => None,
                    false => Some(inotify),
                })
            })
            .await??
        };
        let Some(inotify) = inotify else {
            return Ok(());
        };
        // Shared with the checks, which run as file work.
        let fd = register(Arc::new(inotify), &path)?;
        let mut buf = vec![MaybeUninit::<u8>::uninit(); EVENT_BUF];
        loop {
            let mut guard = fd
                .readable()
                .await
                .map_err(|e| Error::io("wait_empty", &path, e))?;
            // Drained whole, so that one check serves every removal queued so far.
            let mut removed = false;
            loop {
                let mut reader = inotify::Reader::new(guard.get_inner(), &mut buf);
                match reader.next() {
                    Ok(_) => {
                        removed = true;
                        while !reader.is_buffer_empty() && reader.next().is_ok() {}
                    }
                    Err(Errno::AGAIN) => break guard.clear_ready(),
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(Error::io("wait_empty", &path, e)),
                }
            }
            if removed {
                let (inotify, path) = (fd.get_ref().clone(), path.clone());
                let empty = place::on_pool("wait_empty", move || watch_then_check(&inotify, &path))
                    .await??;
                if empty {
                    return Ok(());
                }
            }
        }
    }
}

/// Watches the aid directory at `path` for removals (again: it may have been removed and
/// made anew), then says whether it holds no entries.
fn watch_then_check(inotify: &OwnedFd, path: &Path) -> Result<bool, Error> {
    let mask = WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::DELETE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW;
    match inotify::add_watch(inotify, path, mask) {
        Ok(_) => {}
        // No directory, so no entries.
        Err(Errno::NOENT) => return Ok(true),
        Err(e) => return Err(Error::io("wait_empty", path, e)),
    }
    list_ids(path, |_| false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item that reading `inotify` until it is empty yields.
    fn drain(book: &mut Book, inotify: &OwnedFd) -> Vec<Change> {
        let mut buf = vec![MaybeUninit::uninit(); EVENT_BUF];
        while let Ok(true) = book.read(inotify.as_fd(), &mut buf) {}
        book.pending.drain(..).map(|item| item.unwrap()).collect()
    }

    /// The race the listing of a new aid directory is for, played out step by step: an entry
    /// saved after the directory's watch was added and before it was listed is both listed
    /// and queued, and is reported once. So is one saved before the watch (listed only),
    /// and one saved after the listing (queued only).
    #[test]
    fn an_entry_both_listed_and_queued_is_reported_once() {
        let run = tempfile::tempdir_in("/dev/shm").unwrap();
        let state_path = run.path().join(STATE_DIR);
        std::fs::create_dir(&state_path).unwrap();
        let inotify = new_inotify(&state_path).unwrap();
        let mut book = Book {
            run_dir: run.path().to_owned(),
            state_wd: inotify::add_watch(&inotify, &state_path, state_mask()).unwrap(),
            state_path: state_path.clone(),
            aids: HashMap::new(),
            listed: HashMap::new(),
            pending: VecDeque::new(),
        };
        let aid = Aid::new(7).unwrap();
        let ids = [1, 2, 3].map(|n| InstanceId::from_bytes([n; 16]));
        let entry = |id: InstanceId| state_path.join("7").join(id.to_string());
        std::fs::create_dir(state_path.join("7")).unwrap();
        std::fs::write(entry(ids[0]), b"").unwrap();
        // What `new_aid` does when it handles the directory's event, with a save between
        // its two steps.
        book.watch_aid(inotify.as_fd(), aid).unwrap();
        std::fs::write(entry(ids[1]), b"").unwrap();
        book.new_aid(inotify.as_fd(), aid);
        std::fs::write(entry(ids[2]), b"").unwrap();
        let mut seen = drain(&mut book, &inotify);
        seen.sort_by_key(|c| c.id());
        let want = ids.map(|id| Change::Saved { aid, id });
        assert_eq!(seen, want);
        assert!(book.listed.is_empty(), "forgotten once the queue was empty");

        std::fs::remove_file(entry(ids[1])).unwrap();
        std::fs::write(entry(ids[1]), b"").unwrap();
        assert_eq!(
            drain(&mut book, &inotify),
            [
                Change::Destroyed { aid, id: ids[1] },
                Change::Saved { aid, id: ids[1] }
            ]
        );
    }
}
