//! The inotify bookkeeping behind the public [`Watch`](crate::Watch) (the changes any
//! process makes) and behind `wait_empty` (a wait for an aid to empty).
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
//! the polling thread. So does the relisting of aids after an overflow (rare); the initial
//! setup, which may list up to 10,000 aids, runs as the store's other file work does.
//!
//! Names are watched through the state directory's descriptor (`/proc/self/fd/<n>`), as a
//! hold opens them relative to it: a `state` name swapped for a symlink is never followed.

use std::collections::{HashMap, VecDeque};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{FileType, Mode, OFlags, openat};
use rustix::io::Errno;
use tokio::io::unix::AsyncFd;

use crate::disk::layout::{self, STATE_DIR};
use crate::disk::scan;
use crate::disk::secure::{check_private, open_flags};
use crate::disk::state_dir::StateDir;
use crate::exec;
use crate::lock::fork_guard;
use crate::lock::store_state::StoreState;
use crate::{Aid, Change, Error};

/// The inotify descriptor and bookkeeping behind a [`Watch`](crate::Watch): the changes any
/// process makes, read from the kernel as the stream is polled.
#[derive(Debug)]
pub(crate) struct Changes {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<MaybeUninit<u8>>,
    book: Book,
    done: bool,
    /// The process the watch was made in: its descriptor is that process's.
    made_in: fork_guard::Epoch,
}

/// What a watch knows about its watches, and the items it has still to hand out.
#[derive(Debug)]
struct Book {
    /// The state directory, open as a hold opens it: names in it are watched through this
    /// descriptor ([`Book::at`]), never through the `state` name in the run directory, which
    /// may stand for another directory by now.
    state: Arc<StateDir>,
    /// Where the state directory is watched: `/proc/self/fd/<its descriptor>`.
    at: PathBuf,
    /// The run directory's watch, for the `state` name's removal or replacement.
    run_wd: i32,
    state_wd: i32,
    /// Watch descriptor to aid, for every aid directory watched.
    aids: HashMap<i32, Aid>,
    pending: VecDeque<Result<Change, Error>>,
}

/// Events on the run directory: `state` removed, renamed or replaced. The kernel reports a
/// directory's own removal (`IN_DELETE_SELF`) only once every descriptor of it is closed, in
/// every process, and any other store that has an aid open keeps one; its name going away
/// is reported at once.
fn run_mask() -> WatchFlags {
    WatchFlags::DELETE | WatchFlags::MOVED_FROM | WatchFlags::MOVED_TO | WatchFlags::ONLYDIR
}

/// The path through which names in the open state directory are watched: its descriptor in
/// `/proc/self/fd`, a link the kernel follows to the directory itself, whatever stands at its
/// path now. Without `/proc`, its path, checked against the descriptor once watched.
fn watch_path(state: &StateDir) -> PathBuf {
    let fd = PathBuf::from(format!("/proc/self/fd/{}", state.fd().as_raw_fd()));
    if fd.is_dir() {
        fd
    } else {
        state.path().to_owned()
    }
}

/// The error that ends a watch whose state directory was removed.
fn state_removed(path: &Path) -> Error {
    let gone = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the state directory was removed; watch again",
    );
    Error::io("watch", path, gone)
}

/// Events on the state directory: aid directories appearing, and the directory going away.
/// Watched through [`watch_path`], a link to follow.
fn state_mask() -> WatchFlags {
    WatchFlags::CREATE | WatchFlags::MOVED_TO | WatchFlags::DELETE_SELF | WatchFlags::ONLYDIR
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

impl Book {
    /// Watches the directory of `aid`. `Ok(None)` if it is not there (any more).
    fn watch_aid(&mut self, inotify: BorrowedFd<'_>, aid: Aid) -> Result<Option<i32>, Error> {
        let name = aid.to_string();
        let path = self.state.path().join(&name);
        match inotify::add_watch(inotify, self.at.join(&name), aid_mask()) {
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
        for aid in scan::list_aids_in(self.state.reopen()?, self.state.path())? {
            self.watch_aid(inotify, aid)?;
        }
        Ok(())
    }

    /// A new aid directory: watched, then the caller told to list it again. What happened in
    /// it before its watch was added cannot be known (an entry saved and destroyed again
    /// leaves nothing); what happens after comes from its events, which are queued behind
    /// the one being handled, so after this item. Listing it here instead would report its
    /// entries in directory order, not in the order they were made, and still miss what came
    /// and went.
    fn new_aid(&mut self, inotify: BorrowedFd<'_>, aid: Aid) {
        let item = self
            .watch_aid(inotify, aid)
            .map(|_| Change::ResyncAid { aid });
        self.pending.push_back(item);
    }

    /// The queue overflowed: aid directories made meanwhile are watched now, and the
    /// caller is told to list again.
    fn overflowed(&mut self, inotify: BorrowedFd<'_>) {
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
            Err(Errno::AGAIN) => Err(Errno::AGAIN),
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
        if wd == self.run_wd {
            let is_state = name.is_some_and(|n| n.to_bytes() == STATE_DIR.as_bytes());
            if is_state && !mask.contains(ReadFlags::IGNORED) {
                self.pending
                    .push_back(Err(state_removed(self.state.path())));
                return false;
            }
            return true;
        }
        if wd == self.state_wd {
            if mask.intersects(ReadFlags::DELETE_SELF | ReadFlags::IGNORED) {
                self.pending
                    .push_back(Err(state_removed(self.state.path())));
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
            return true;
        }
        let Some(id) = name.and_then(layout::parse_entry_name) else {
            return true;
        };
        let change = if mask.contains(ReadFlags::CREATE) {
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

impl Stream for Changes {
    type Item = Result<Change, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Changes {
            fd,
            buf,
            book,
            done,
            made_in,
        } = self.get_mut();
        // In a forked child the inotify descriptor is shared with the parent: reading it
        // would take the parent's events.
        if !*done && made_in.check().is_err() {
            *done = true;
            book.pending.clear();
            return Poll::Ready(Some(Err(Error::Forked)));
        }
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
                    return Poll::Ready(Some(Err(Error::io("watch", book.state.path(), e))));
                }
            };
            match book.read(guard.get_inner().as_fd(), buf) {
                Ok(more) => *done = !more,
                Err(Errno::AGAIN) => guard.clear_ready(),
                Err(Errno::INTR) => {}
                Err(e) => {
                    *done = true;
                    return Poll::Ready(Some(Err(Error::io("watch", book.state.path(), e))));
                }
            }
        }
    }
}

impl futures::stream::FusedStream for Changes {
    fn is_terminated(&self) -> bool {
        self.done && self.book.pending.is_empty()
    }
}

/// [`AsyncStore::watch`](crate::AsyncStore::watch) on the store's shared state.
pub(crate) async fn watch(store: &StoreState) -> Result<Changes, Error> {
    store.made_in().check()?;
    if store.is_closed() {
        return Err(Error::Closed);
    }
    let run_dir = store.run_dir().to_owned();
    let Some(state) = store.current_state_dir(true).await? else {
        return Err(state_removed(&run_dir.join(STATE_DIR)));
    };
    // Up to 10,000 directories to watch: on the pool.
    let (inotify, book) = exec::on_pool("watch", move || {
        let state_path = state.path().to_owned();
        let inotify = new_inotify(&state_path)?;
        let run = if run_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &run_dir
        };
        // The run directory first: a state directory removed after this is reported.
        let run_wd = inotify::add_watch(&inotify, run, run_mask())
            .map_err(|e| Error::io("watch", run, e))?;
        let at = watch_path(&state);
        // Then the state directory: an aid made after this is seen by its event, one
        // made before by the listing below (or both, which is harmless).
        let state_wd = inotify::add_watch(&inotify, &at, state_mask())
            .map_err(|e| Error::io("watch", &state_path, e))?;
        if !state.is_current() {
            return Err(state_removed(&state_path));
        }
        let mut book = Book {
            state,
            at,
            run_wd,
            state_wd,
            aids: HashMap::new(),
            pending: VecDeque::new(),
        };
        book.watch_all(inotify.as_fd())?;
        Ok::<_, Error>((inotify, book))
    })
    .await??;
    let fd = register(inotify, book.state.path())?;
    Ok(Changes {
        fd,
        buf: vec![MaybeUninit::uninit(); EVENT_BUF],
        book,
        done: false,
        made_in: store.made_in(),
    })
}

/// [`AsyncStore::wait_empty`](crate::AsyncStore::wait_empty) on the store's shared state.
pub(crate) async fn wait_empty(store: &StoreState, aid: Aid) -> Result<(), Error> {
    store.made_in().check()?;
    if store.is_closed() {
        return Err(Error::Closed);
    }
    let path = store.run_dir().join(STATE_DIR).join(aid.to_string());
    // No state directory, so no entries.
    let Some(state) = store.current_state_dir(false).await? else {
        return Ok(());
    };
    let inotify = {
        let path = path.clone();
        exec::on_pool("wait_empty", move || {
            let inotify = new_inotify(&path)?;
            Ok::<_, Error>(match watch_then_check(&inotify, &state, aid)? {
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
        // Carried into a forked child: the descriptor is shared with the parent.
        store.made_in().check()?;
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
            // The state directory as a hold finds it: opened again if it was removed.
            let Some(state) = store.current_state_dir(false).await? else {
                return Ok(());
            };
            let inotify = fd.get_ref().clone();
            let empty = exec::on_pool("wait_empty", move || {
                watch_then_check(&inotify, &state, aid)
            })
            .await??;
            if empty {
                return Ok(());
            }
        }
    }
}

/// Watches the directory of `aid` in `state` for removals (again: it may have been removed
/// and made anew), then says whether it holds no entries. Both go through the open state
/// directory, and the directory is checked as a hold checks it: a symlink, another user's
/// directory or one that others may write is refused, never followed or believed.
fn watch_then_check(inotify: &OwnedFd, state: &StateDir, aid: Aid) -> Result<bool, Error> {
    let name = aid.to_string();
    let path = state.path().join(&name);
    let mask = WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::DELETE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW;
    let not_a_dir = || Error::insecure(&path, "not a directory (a symlink or a file stands there)");
    match inotify::add_watch(inotify, watch_path(state).join(&name), mask) {
        Ok(_) => {}
        // No directory, so no entries.
        Err(Errno::NOENT) => return Ok(true),
        Err(Errno::NOTDIR | Errno::LOOP) => return Err(not_a_dir()),
        Err(e) => return Err(Error::io("wait_empty", &path, e)),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | open_flags();
    let fd = match openat(state.fd(), name.as_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(true),
        Err(Errno::NOTDIR | Errno::LOOP) => return Err(not_a_dir()),
        Err(e) => return Err(Error::io("wait_empty", &path, e)),
    };
    check_private(&fd, &path, FileType::Directory)?;
    scan::holds_no_entry(fd, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstanceId;

    /// Every item that reading `inotify` until it is empty yields.
    fn drain(book: &mut Book, inotify: &OwnedFd) -> Vec<Change> {
        let mut buf = vec![MaybeUninit::uninit(); EVENT_BUF];
        while let Ok(true) = book.read(inotify.as_fd(), &mut buf) {}
        book.pending.drain(..).map(|item| item.unwrap()).collect()
    }

    /// A new aid directory is watched, then reported as `ResyncAid`, before any of its own
    /// changes: what happened in it before its watch was added (an entry saved and destroyed
    /// again, another saved) cannot be known; what happens after comes in order after it.
    #[test]
    fn a_new_aid_is_resynced_before_its_changes() {
        let run = tempfile::tempdir_in("/dev/shm").unwrap();
        let state = Arc::new(StateDir::open(run.path(), &crate::Options::new()).unwrap());
        let inotify = new_inotify(state.path()).unwrap();
        let at = watch_path(&state);
        let mut book = Book {
            state_wd: inotify::add_watch(&inotify, &at, state_mask()).unwrap(),
            run_wd: -1,
            at,
            state: state.clone(),
            aids: HashMap::new(),
            pending: VecDeque::new(),
        };
        let aid = Aid::new(7).unwrap();
        let id = |n: u8| InstanceId::from_bytes([n; 16]);
        let entry = |n: u8| state.path().join("7").join(id(n).to_string());
        std::fs::create_dir(state.path().join("7")).unwrap();
        std::fs::write(entry(1), b"").unwrap();
        std::fs::remove_file(entry(1)).unwrap();
        std::fs::write(entry(2), b"").unwrap();
        assert_eq!(drain(&mut book, &inotify), [Change::ResyncAid { aid }]);
        std::fs::write(entry(3), b"").unwrap();
        std::fs::remove_file(entry(2)).unwrap();
        assert_eq!(
            drain(&mut book, &inotify),
            [
                Change::Saved { aid, id: id(3) },
                Change::Destroyed { aid, id: id(2) }
            ]
        );
    }
}
