//! Opening the store's files safely: flags that never follow a link or block on a fifo,
//! directories made and checked private (as ssh checks key permissions), and the parent
//! fsync that makes a new name durable.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, fstat, fsync, mkdirat, openat};
use rustix::io::Errno;
use rustix::path::Arg;

use crate::Error;
use crate::disk::layout::DIR_MODE;

/// Flags for every open of an existing file: never follow a link, never block on a fifo,
/// never leak into a child.
pub(crate) fn open_flags() -> OFlags {
    OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY
}

/// Opens `name` under `parent` (making it if missing) without following links and checks
/// that it is a directory that `euid` owns and nobody else may write. With `durable`, a
/// directory made here has its parent fsynced too. It opens first and makes only on
/// `ENOENT`: the directory is there on every open but the first.
pub(crate) fn open_private_dir(
    parent: BorrowedFd<'_>,
    name: impl Arg + Copy,
    path: &Path,
    durable: bool,
    euid: u32,
) -> Result<OwnedFd, Error> {
    let fd = match open_dir(parent, name, path)? {
        Some(fd) => fd,
        None => {
            make_dir(parent, name, path, durable)?;
            open_dir(parent, name, path)?.ok_or_else(|| missing(path))?
        }
    };
    check_private_as(&fd, path, FileType::Directory, euid)?;
    Ok(fd)
}

/// Opens the directory `name` under `parent` without following a link; `None` if there is
/// none. Unchecked: see [`check_private_as`].
pub(crate) fn open_dir(
    parent: BorrowedFd<'_>,
    name: impl Arg,
    path: &Path,
) -> Result<Option<OwnedFd>, Error> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | open_flags();
    match openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(Error::insecure(
            path,
            "not a directory (a symlink or a file stands there)",
        )),
        Err(e) => Err(Error::io("open directory", path, e)),
    }
}

/// Makes the directory `name` under `parent`, private; `true` if this call made it, `false`
/// if something stood there already. With `durable`, a directory made has its parent fsynced.
pub(crate) fn make_dir(
    parent: BorrowedFd<'_>,
    name: impl Arg,
    path: &Path,
    durable: bool,
) -> Result<bool, Error> {
    match mkdirat(parent, name, Mode::from_raw_mode(DIR_MODE)) {
        Ok(()) => {
            if durable {
                sync_parent(parent, path)?;
            }
            Ok(true)
        }
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(Error::io("create directory", path, e)),
    }
}

/// The error of a directory made and gone before it could be opened.
pub(crate) fn missing(path: &Path) -> Error {
    Error::io("open directory", path, Errno::NOENT)
}

/// Makes a new name in `parent` durable: without this fsync, a crash can lose the entry of
/// `path` in its directory even though `path` itself was synced, and with it what it holds.
pub(crate) fn sync_parent(parent: BorrowedFd<'_>, path: &Path) -> Result<(), Error> {
    let parent_path = path.parent().unwrap_or(path);
    fsync(parent).map_err(|e| Error::io("sync directory", parent_path, e))?;
    #[cfg(test)]
    SYNCED.with(|synced| synced.borrow_mut().push(parent_path.to_owned()));
    Ok(())
}

/// Refuses a store object that another user owns or that others may write, as ssh refuses
/// loose key permissions: whoever can write there can forge or delete entries. Returns what
/// `fstat` said of it.
pub(crate) fn check_private(
    fd: impl AsFd,
    path: &Path,
    want: FileType,
) -> Result<rustix::fs::Stat, Error> {
    check_private_as(fd, path, want, rustix::process::geteuid().as_raw())
}

/// [`check_private`] for a user id already known: a store asks for it once
/// ([`StateDir::euid`](crate::disk::state_dir::StateDir::euid)), not at every open.
pub(crate) fn check_private_as(
    fd: impl AsFd,
    path: &Path,
    want: FileType,
    euid: u32,
) -> Result<rustix::fs::Stat, Error> {
    let st = counted_fstat(fd).map_err(|e| Error::io("stat", path, e))?;
    let insecure = |reason: String| Error::insecure(path, reason);
    if FileType::from_raw_mode(st.st_mode) != want {
        return Err(insecure(format!("expected a {want:?}")));
    }
    if st.st_uid != euid {
        return Err(insecure(format!(
            "owned by uid {}, not by uid {euid}",
            st.st_uid
        )));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(insecure(format!(
            "mode {:o} lets others write it",
            st.st_mode & 0o7777
        )));
    }
    Ok(st)
}

/// `fstat`, counted on this thread in tests (`FSTATS`): the calls a hold makes beyond the
/// floor's are what tests of its cost look at.
pub(crate) fn counted_fstat(fd: impl AsFd) -> rustix::io::Result<rustix::fs::Stat> {
    #[cfg(test)]
    FSTATS.set(FSTATS.get() + 1);
    fstat(fd)
}

#[cfg(test)]
thread_local! {
    /// How many times this thread called [`counted_fstat`].
    pub(crate) static FSTATS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };

    /// The directories [`sync_parent`] fsynced on this thread, in order.
    pub(crate) static SYNCED: std::cell::RefCell<Vec<std::path::PathBuf>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}
