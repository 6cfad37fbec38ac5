//! One aid's open directory: opened safely, checked current, and the paths of its entries.
//! Its whole operations are in the files beside this one: `publish.rs` (save, replace,
//! destroy), `read.rs` (load, bounded reads, decoding) and `scan.rs` (listing, sweeping).
//! Nothing here is async; the async shell runs whole operations where they cannot stall the
//! runtime (see `exec/`).

use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FileType, ftruncate};
use rustix::io::{DupFlags, dup3, pread, pwrite};

use crate::disk::layout::AidName;
use crate::disk::secure::{
    check_private_as, counted_fstat, make_dir, missing, open_dir, open_private_dir,
};
use crate::disk::state_dir::StateDir;
use crate::{Aid, Error, InstanceId, Options};

/// An aid's directory, open. Its lock file belongs to the locking layer (`lock/file.rs`);
/// the operations that need the lock file's temporary-file mark are given it as a
/// [`TempMark`].
#[derive(Debug)]
pub(crate) struct AidDir {
    aid: Aid,
    pub(super) path: PathBuf,
    pub(super) dir: OwnedFd,
    state_dir: Arc<StateDir>,
}

impl AidDir {
    /// Opens (making as needed) the aid's directory in `state_dir`, after the aid's lock file
    /// was opened, so that no aid directory is left behind to be listed for a lock file that
    /// is refused: `before_make` runs before a missing directory is made, and may refuse (the lock file's check). With `new` (the
    /// lock file was made just now, so the directory is most likely missing too), it makes
    /// the directory before opening it rather than after a failed open.
    pub(crate) fn open_after_lock(
        state_dir: Arc<StateDir>,
        aid: Aid,
        new: bool,
        before_make: impl FnOnce() -> Result<(), Error>,
    ) -> Result<AidDir, Error> {
        let name = AidName::dir(aid);
        let (name, path) = (name.as_cstr(), name.path_in(state_dir.path()));
        let (parent, euid) = (state_dir.fd(), state_dir.euid());
        let found = match new {
            true => None,
            false => open_dir(parent, name, &path)?,
        };
        let dir = match found {
            Some(dir) => {
                check_private_as(&dir, &path, FileType::Directory, euid)?;
                dir
            }
            None => {
                before_make()?;
                let made = make_dir(parent, name, &path, state_dir.options().durable)?;
                let dir = open_dir(parent, name, &path)?.ok_or_else(|| missing(&path))?;
                // One this call made needs no check: it was made private, in the state
                // directory, which is checked private (owned by this user, writable by
                // nobody else), so only this user or root could have put another in its
                // place since, and they can change it after any check just as well.
                if !made {
                    check_private_as(&dir, &path, FileType::Directory, euid)?;
                }
                dir
            }
        };
        Ok(AidDir {
            aid,
            path,
            dir,
            state_dir,
        })
    }

    /// The aid whose directory this is.
    pub(crate) fn aid(&self) -> Aid {
        self.aid
    }

    /// Whether the directory is still linked: entries published into a removed one are lost.
    pub(crate) fn is_linked(&self) -> bool {
        counted_fstat(&self.dir).is_ok_and(|st| st.st_nlink > 0)
    }

    /// After a name was not found: if the directory was removed (an admin's `rm -rf`, a
    /// cleaner), opens the aid's directory in the state directory again (making it, as a
    /// hold does) and returns `true`, so that the caller tries once more. `false` if the
    /// directory is still linked: the name really is not there.
    ///
    /// The holder checks only its lock file after each lock (`lock/open_aid.rs`), so this is
    /// where a directory removed while the store was idle is found, at the cost of one
    /// `fstat` on the path that missed, never on one that found its name. With the state
    /// directory removed too, `false`: the lock held is then in the removed directory as
    /// well, and the next hold opens everything anew.
    pub(crate) fn revive(&self) -> Result<bool, Error> {
        if self.is_linked() {
            return Ok(false);
        }
        let name = AidName::dir(self.aid);
        let durable = self.state_dir.options().durable;
        let euid = self.state_dir.euid();
        let parent = self.state_dir.fd();
        let fresh = match open_private_dir(parent, name.as_cstr(), &self.path, durable, euid) {
            Ok(fresh) => fresh,
            // The state directory is gone too: there is nothing at the path to go to.
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        };
        // The new directory takes the old one's descriptor number, in one step: every user
        // of `self.dir`, on any thread, has the old directory or the new one, and no
        // descriptor is closed under it.
        // SAFETY: the number stays owned by `self.dir`; the ManuallyDrop never closes it.
        let mut ours = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(self.dir.as_raw_fd()) });
        dup3(&fresh, &mut ours, DupFlags::CLOEXEC)
            .map_err(|e| Error::io("open directory", &self.path, e))?;
        tracing::warn!(
            path = %self.path.display(),
            "the aid's directory was removed while open; opened it again"
        );
        Ok(true)
    }

    /// Whether short file work here runs in place rather than on the blocking pool.
    pub(crate) fn in_place(&self) -> bool {
        self.state_dir.in_place()
    }

    /// The store's options, kept once in the state directory.
    pub(crate) fn options(&self) -> &Options {
        self.state_dir.options()
    }

    /// The directory's path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn entry_path(&self, id: InstanceId) -> PathBuf {
        self.path.join(id.to_string())
    }
}

/// The mark, in the aid's lock file, that a fallback save or a replace may have left a
/// temporary file: the lock file's first byte is 1 from before such a write creates its file
/// until after it has removed it, so one killed in between leaves the mark for the next to
/// act on. The lock file is the locking layer's (`lock/file.rs`); this borrows its
/// descriptor. Use it holding the lock exclusively.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TempMark<'a> {
    fd: std::os::fd::BorrowedFd<'a>,
    path: &'a Path,
    /// Raised by the locking layer when an `fstat` made under the lock found the file empty
    /// (the mark clear) and nothing has set it since: [`TempMark::is_set`] then needs no read.
    clear: Option<&'a AtomicBool>,
}

impl<'a> TempMark<'a> {
    /// The mark in the lock file open as `fd`, at `path` (for messages).
    pub(crate) fn new(fd: std::os::fd::BorrowedFd<'a>, path: &'a Path) -> TempMark<'a> {
        TempMark {
            fd,
            path,
            clear: None,
        }
    }

    /// The mark, known clear while `clear` is raised; lowered here whenever the mark is
    /// written.
    pub(crate) fn known(self, clear: &'a AtomicBool) -> TempMark<'a> {
        TempMark {
            clear: Some(clear),
            ..self
        }
    }

    /// Whether the mark is set.
    pub(crate) fn is_set(self) -> Result<bool, Error> {
        if self
            .clear
            .is_some_and(|clear| clear.load(Ordering::Acquire))
        {
            return Ok(false);
        }
        #[cfg(test)]
        MARK_READS.set(MARK_READS.get() + 1);
        let mut byte = [0u8];
        match pread(self.fd, &mut byte, 0) {
            Ok(n) => Ok(n == 1 && byte[0] == 1),
            Err(e) => Err(Error::io("read lock file", self.path, e)),
        }
    }

    /// Sets the mark (one byte), or clears it (no bytes, so a lock file that was never
    /// marked stays empty).
    pub(crate) fn set(self, on: bool) -> Result<(), Error> {
        if let Some(clear) = self.clear {
            clear.store(false, Ordering::Release);
        }
        let done = if on {
            pwrite(self.fd, &[1], 0).map(drop)
        } else {
            ftruncate(self.fd, 0)
        };
        done.map_err(|e| Error::io("write lock file", self.path, e))
    }
}

#[cfg(test)]
thread_local! {
    /// How many times this thread read a temporary-file mark.
    pub(crate) static MARK_READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
