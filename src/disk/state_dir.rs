//! The open `<run_dir>/state` directory, shared by every aid directory of a store, with
//! what a store learns once about it: its file system, and the store's options.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, fstat, openat, statat};
use rustix::io::Errno;

use crate::disk::layout::{DIR_MODE, FILE_MODE, STATE_DIR};
use crate::disk::secure::{check_private_as, open_flags, open_private_dir, sync_parent};
use crate::{Error, Options};

/// The open `<run_dir>/state` directory: one per store, shared by its aids' directories.
#[derive(Debug)]
pub(crate) struct StateDir {
    fd: OwnedFd,
    path: PathBuf,
    /// Whether short file work here may run in place (see `exec/`): on tmpfs or
    /// ramfs, not durable, and not sent to the pool by the options.
    in_place: bool,
    /// The store's options, kept once here for every aid directory opened in it.
    options: Options,
    /// The user the store's files must belong to, asked once per store.
    euid: u32,
}

/// `f_type` of the file systems whose file work never waits on a device.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

impl StateDir {
    /// Opens `<run_dir>/state`, making it and the run directory if needed.
    pub(crate) fn open(run_dir: &Path, options: &Options) -> Result<StateDir, Error> {
        let durable = options.durable;
        if !run_dir.as_os_str().is_empty() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(run_dir)
                .map_err(|e| Error::io("create directory", run_dir, e))?;
        }
        let parent = if run_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            run_dir
        };
        let run = openat(
            CWD,
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open directory", run_dir, e))?;
        let path = run_dir.join(STATE_DIR);
        let euid = rustix::process::geteuid().as_raw();
        let fd = open_private_dir(run.as_fd(), STATE_DIR, &path, durable, euid)?;
        Ok(StateDir::opened(fd, path, options, euid))
    }

    /// Opens `<run_dir>/state` as [`StateDir::open`] does, checked the same way, but makes
    /// nothing: `Ok(None)` if it or the run directory is not there.
    pub(crate) fn open_existing(
        run_dir: &Path,
        options: &Options,
    ) -> Result<Option<StateDir>, Error> {
        let parent = if run_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            run_dir
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let run = match openat(CWD, parent, flags, Mode::empty()) {
            Ok(run) => run,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(Error::io("open directory", run_dir, e)),
        };
        let path = run_dir.join(STATE_DIR);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | open_flags();
        let fd = match openat(&run, STATE_DIR, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => {
                let reason = "not a directory (a symlink or a file stands there)";
                return Err(Error::insecure(&path, reason));
            }
            Err(e) => return Err(Error::io("open directory", &path, e)),
        };
        let euid = rustix::process::geteuid().as_raw();
        check_private_as(&fd, &path, FileType::Directory, euid)?;
        Ok(Some(StateDir::opened(fd, path, options, euid)))
    }

    /// The state directory open as `fd`, with what is learned once about it.
    fn opened(fd: OwnedFd, path: PathBuf, options: &Options, euid: u32) -> StateDir {
        let durable = options.durable;
        // f_type's width differs between targets.
        #[allow(clippy::unnecessary_cast)]
        let on_memory = rustix::fs::fstatfs(&fd)
            .is_ok_and(|fs| matches!(fs.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC));
        let in_place = on_memory && !durable && !options.on_pool;
        StateDir {
            fd,
            path,
            in_place,
            options: options.clone(),
            euid,
        }
    }

    /// The user the store's files must belong to ([`check_private_as`]).
    pub(crate) fn euid(&self) -> u32 {
        self.euid
    }

    /// Whether short file work here runs in place rather than on the blocking pool.
    pub(crate) fn in_place(&self) -> bool {
        self.in_place
    }

    /// The store's options.
    pub(crate) fn options(&self) -> &Options {
        &self.options
    }

    /// The directory's path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The open directory, to open names in.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A new descriptor of the directory, for a listing, which needs a position of its own.
    pub(crate) fn reopen(&self) -> Result<OwnedFd, Error> {
        openat(
            &self.fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("list", &self.path, e))
    }

    /// Opens the lock file `name` (at `path`, for messages), making it if missing; `true`
    /// with it if this call made it. Returns its descriptor unchecked: the locking layer
    /// lists it for the fork handler first (`lock/fork_guard.rs`, which may call this
    /// again) and checks that it is private at its first lock (`lock/file.rs`).
    pub(crate) fn open_or_make_lock_file(
        &self,
        name: &CStr,
        path: &Path,
    ) -> Result<(OwnedFd, bool), Error> {
        let state = &self.fd;
        let refused = |e| match e {
            Errno::LOOP => Error::insecure(path, "a symlink stands there"),
            // O_RDWR on a directory, or any open of a socket.
            Errno::ISDIR | Errno::NXIO => Error::insecure(
                path,
                "not a regular file (a directory or a socket stands there)",
            ),
            e => Error::io("open lock file", path, e),
        };
        let flags = OFlags::RDWR | open_flags();
        let mode = Mode::from_raw_mode(FILE_MODE);
        // Opened first without O_CREAT, so that the one open that does create the file is
        // known, and only it pays for the fsync that durable mode needs.
        loop {
            match openat(state, name, flags, mode) {
                Ok(fd) => return Ok((fd, false)),
                Err(Errno::NOENT) => {}
                // A read-only file system: nobody can write entries there, so its readers
                // need no writable lock file (flock works on a read-only descriptor), and
                // its writers fail on their first write.
                Err(Errno::ROFS) => {
                    let read_only = OFlags::RDONLY | open_flags();
                    let fd = openat(state, name, read_only, mode).map_err(refused)?;
                    return Ok((fd, false));
                }
                Err(e) => return Err(refused(e)),
            }
            match openat(state, name, flags | OFlags::CREATE | OFlags::EXCL, mode) {
                Ok(fd) => {
                    if self.options.durable {
                        sync_parent(state.as_fd(), path)?;
                    }
                    return Ok((fd, true));
                }
                // Made by another opener meanwhile: open theirs.
                Err(Errno::EXIST) => {}
                Err(e) => return Err(refused(e)),
            }
        }
    }

    /// Whether this is still the directory at its path: one removed (an admin's `rm -rf`, a
    /// tmpfiles cleaner) and perhaps made again by another store must be opened again.
    pub(crate) fn is_current(&self) -> bool {
        let (Ok(ours), Ok(named)) = (
            fstat(&self.fd),
            statat(CWD, &self.path, AtFlags::SYMLINK_NOFOLLOW),
        ) else {
            return false;
        };
        ours.st_nlink > 0 && (ours.st_dev, ours.st_ino) == (named.st_dev, named.st_ino)
    }
}
