//! An aid's files, open: its directory (the core's [`AidDir`]) and its lock file (this
//! layer's [`LockFile`]), opened together, checked together, and cached together by the
//! store's table (`lock/store_state.rs`).

use std::path::Path;
use std::sync::Arc;

use crate::disk::aid_dir::{AidDir, TempMark};
use crate::disk::state_dir::StateDir;
use crate::lock::file::LockFile;
use crate::{Aid, Error};

/// An aid's directory and lock file, open.
#[derive(Debug)]
pub(crate) struct OpenAid {
    lock: LockFile,
    dir: AidDir,
}

impl OpenAid {
    /// Opens (making as needed) the aid's lock file and directory in `state_dir`. The lock
    /// file first: if it is refused, no aid directory is left behind to be listed.
    pub(crate) fn open(state_dir: Arc<StateDir>, aid: Aid) -> Result<OpenAid, Error> {
        let lock = LockFile::open(&state_dir, aid)?;
        let dir = AidDir::open(state_dir, aid)?;
        Ok(OpenAid { lock, dir })
    }

    /// Whether the lock file opened is still linked. Locking a lock file that was removed
    /// would exclude nobody who opens the new one, so a holder checks this once it has the
    /// lock, and opens both files again if not. One `fstat`: a removal (of the file, or of
    /// the whole state directory), or a file renamed over, unlinks the old inode (a file
    /// renamed away keeps its link and is not noticed; nothing in the store does that).
    /// The directory is checked where it is used, when a name is not found in it
    /// (`AidDir::revive`), so a hold that finds what it looks for pays nothing for it.
    pub(crate) fn is_current(&self) -> bool {
        self.lock.is_linked()
    }

    /// The aid's directory, whose methods are the core's whole operations.
    pub(crate) fn dir(&self) -> &AidDir {
        &self.dir
    }

    /// The aid's lock file: the flock, the writers' gate, and the temporary-file mark.
    pub(crate) fn lock(&self) -> &LockFile {
        &self.lock
    }

    /// The lock file's temporary-file mark, for the core's writes that may leave a file.
    pub(crate) fn temp_mark(&self) -> TempMark<'_> {
        self.lock.temp_mark()
    }

    /// The lock file's path, for messages.
    pub(crate) fn lock_path(&self) -> &Path {
        self.lock.path()
    }
}
