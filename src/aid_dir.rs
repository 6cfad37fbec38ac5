//! The synchronous file logic of one aid: opening its directory safely, publishing entries
//! atomically, reading them back and listing them. Nothing here is async; the async shell
//! runs whole operations where they cannot stall the runtime (see `blocking.rs`).

use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{
    AtFlags, CWD, FileType, Mode, OFlags, RawDir, fstat, fsync, linkat, mkdirat, openat, renameat,
    statat, unlinkat,
};
use rustix::io::Errno;
use serde::de::DeserializeOwned;

use crate::error::CorruptKind;
use crate::fork_guard::TrackedFd;
use crate::layout::{self, DIR_MODE, FILE_MODE, STATE_DIR};
use crate::lock::LockFile;
use crate::{Aid, Error, InstanceId, Options, State, format};

/// An aid's directory and lock file, open.
#[derive(Debug)]
pub(crate) struct AidDir {
    path: PathBuf,
    dir: OwnedFd,
    state_dir: Arc<StateDir>,
    pub(crate) lock: LockFile,
    options: Options,
    /// The cheapest way of publishing that has worked here; see [`Publish`].
    publish: AtomicU8,
}

/// Flags for every open of an existing file: never follow a link, never block on a fifo,
/// never leak into a child.
fn open_flags() -> OFlags {
    OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY
}

/// Makes `name` under `parent` if missing, opens it without following links and checks that
/// it is a directory of ours that nobody else may write. With `durable`, a directory made
/// here has its parent fsynced too.
fn open_private_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    path: &Path,
    durable: bool,
) -> Result<OwnedFd, Error> {
    match mkdirat(parent, name, Mode::from_raw_mode(DIR_MODE)) {
        Ok(()) if durable => sync_parent(parent, path)?,
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(Error::io("create directory", path, e)),
    }
    let fd = openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | open_flags(),
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => {
            Error::insecure(path, "not a directory (a symlink or a file stands there)")
        }
        e => Error::io("open directory", path, e),
    })?;
    check_private(&fd, path, FileType::Directory)?;
    Ok(fd)
}

/// Makes a new name in `parent` durable: without this fsync, a crash can lose the entry of
/// `path` in its directory even though `path` itself was synced, and with it what it holds.
fn sync_parent(parent: BorrowedFd<'_>, path: &Path) -> Result<(), Error> {
    let parent_path = path.parent().unwrap_or(path);
    fsync(parent).map_err(|e| Error::io("sync directory", parent_path, e))?;
    #[cfg(test)]
    tests::SYNCED.with(|synced| synced.borrow_mut().push(parent_path.to_owned()));
    Ok(())
}

/// Refuses a store object that another user owns or that others may write, as ssh refuses
/// loose key permissions: whoever can write there can forge or delete entries. Returns what
/// `fstat` said of it.
fn check_private(fd: impl AsFd, path: &Path, want: FileType) -> Result<rustix::fs::Stat, Error> {
    let st = fstat(fd).map_err(|e| Error::io("stat", path, e))?;
    let insecure = |reason: String| Error::insecure(path, reason);
    if FileType::from_raw_mode(st.st_mode) != want {
        return Err(insecure(format!("expected a {want:?}")));
    }
    let euid = rustix::process::geteuid().as_raw();
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

/// The open `<run_dir>/state` directory: one per store, shared by its aids' directories.
#[derive(Debug)]
pub(crate) struct StateDir {
    fd: OwnedFd,
    path: PathBuf,
    /// Whether short file work here may run in place (see `blocking.rs`): on tmpfs or
    /// ramfs, not durable, and not sent to the pool by the options.
    in_place: bool,
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
        let fd = open_private_dir(run.as_fd(), STATE_DIR, &path, durable)?;
        // f_type's width differs between targets.
        #[allow(clippy::unnecessary_cast)]
        let on_memory = rustix::fs::fstatfs(&fd)
            .is_ok_and(|fs| matches!(fs.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC));
        let in_place = on_memory && !durable && !options.on_pool;
        Ok(StateDir { fd, path, in_place })
    }

    /// Whether short file work here runs in place rather than on the blocking pool.
    pub(crate) fn in_place(&self) -> bool {
        self.in_place
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

impl AidDir {
    /// Opens (making as needed) the aid's directory and lock file in `state`.
    pub(crate) fn open(
        state_dir: Arc<StateDir>,
        aid: Aid,
        options: &Options,
    ) -> Result<AidDir, Error> {
        let durable = options.durable;
        let (state, state_path) = (&state_dir.fd, &state_dir.path);

        // The lock file first: if it is refused, no aid directory is left behind to be listed.
        let lock_name = layout::lock_name(aid);
        let lock_path = state_path.join(&lock_name);
        let refused = |e| match e {
            Errno::LOOP => Error::insecure(&lock_path, "a symlink stands there"),
            // O_RDWR on a directory, or any open of a socket.
            Errno::ISDIR | Errno::NXIO => Error::insecure(
                &lock_path,
                "not a regular file (a directory or a socket stands there)",
            ),
            e => Error::io("open lock file", &lock_path, e),
        };
        let flags = OFlags::RDWR | open_flags();
        let mode = Mode::from_raw_mode(FILE_MODE);
        // Opened first without O_CREAT, so that the one open that does create the file is
        // known, and only it pays for the fsync that durable mode needs.
        let open_lock = || loop {
            match openat(state, lock_name.as_str(), flags, mode) {
                Ok(fd) => break Ok(fd),
                Err(Errno::NOENT) => {}
                // A read-only file system: nobody can write entries there, so its readers
                // need no writable lock file (flock works on a read-only descriptor), and
                // its writers fail on their first write.
                Err(Errno::ROFS) => {
                    let read_only = OFlags::RDONLY | open_flags();
                    match openat(state, lock_name.as_str(), read_only, mode) {
                        Ok(fd) => break Ok(fd),
                        Err(e) => return Err(refused(e)),
                    }
                }
                Err(e) => return Err(refused(e)),
            }
            match openat(
                state,
                lock_name.as_str(),
                flags | OFlags::CREATE | OFlags::EXCL,
                mode,
            ) {
                Ok(fd) => {
                    if durable {
                        sync_parent(state.as_fd(), &lock_path)?;
                    }
                    break Ok(fd);
                }
                // Made by another opener meanwhile: open theirs.
                Err(Errno::EXIST) => {}
                Err(e) => return Err(refused(e)),
            }
        };
        // Tracked, so that no forked child keeps the lock (see fork_guard.rs).
        let lock_fd = TrackedFd::open(open_lock, |e| Error::io("track lock file", &lock_path, e))?;
        check_private(&lock_fd, &lock_path, FileType::RegularFile)?;

        let name = aid.to_string();
        let path = state_path.join(&name);
        let dir = open_private_dir(state.as_fd(), &name, &path, durable)?;

        Ok(AidDir {
            path,
            dir,
            state_dir,
            lock: LockFile::new(lock_fd, lock_path),
            options: options.clone(),
            publish: AtomicU8::new(Publish::EmptyPath as u8),
        })
    }

    /// Whether the lock file and the directory opened are still linked. Locking a lock file
    /// that was removed would exclude nobody who opens the new one, so a holder checks this
    /// once it has the lock, and opens them again if not. Two `fstat` calls: a removal, or a
    /// file renamed over, unlinks the old inode (a file renamed away keeps its link and is
    /// not noticed; nothing in the store does that).
    pub(crate) fn is_current(&self) -> bool {
        self.lock.is_linked() && self.is_linked()
    }

    /// Whether the directory is still linked: entries published into a removed one are lost.
    fn is_linked(&self) -> bool {
        fstat(&self.dir).is_ok_and(|st| st.st_nlink > 0)
    }

    /// Whether short file work here runs in place rather than on the blocking pool.
    pub(crate) fn in_place(&self) -> bool {
        self.state_dir.in_place
    }

    /// The lock file's path, for messages.
    pub(crate) fn lock_path(&self) -> &Path {
        self.lock.path()
    }

    /// The store's options.
    pub(crate) fn options(&self) -> &Options {
        &self.options
    }

    /// The directory's path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn entry_path(&self, id: InstanceId) -> PathBuf {
        self.path.join(id.to_string())
    }

    /// Publishes `bytes` as the entry of `id`, atomically and without overwriting.
    pub(crate) fn save(&self, id: InstanceId, bytes: &[u8]) -> Result<(), Error> {
        let (size, limit) = (bytes.len() as u64, self.options.max_entry_size);
        if size > limit {
            return Err(Error::TooLarge {
                path: self.entry_path(id),
                size,
                limit,
            });
        }
        let name = layout::entry_name(id);
        let name = layout::as_cstr(&name);
        loop {
            let way = Publish::from_u8(self.publish.load(Ordering::Relaxed));
            let result = match way {
                Publish::EmptyPath | Publish::ProcLink => self.save_tmpfile(id, name, bytes, way),
                Publish::NamedTemp => self
                    .save_named_temp(id, name, bytes)
                    .map_err(SaveError::Failed),
            };
            match result {
                Ok(()) => return self.sync_dir(),
                Err(SaveError::Failed(e)) => return Err(e),
                // Each way is given up at most once, so this loop runs at most three times.
                Err(SaveError::Unsupported) => self.publish.store(way as u8 + 1, Ordering::Relaxed),
            }
        }
    }

    /// An unnamed file in the directory, linked in only once complete: a crash at any point
    /// leaves either nothing or the whole entry, and no temporary file to clean up.
    fn save_tmpfile(
        &self,
        id: InstanceId,
        name: &CStr,
        bytes: &[u8],
        way: Publish,
    ) -> Result<(), SaveError> {
        let failed =
            |e: std::io::Error| SaveError::Failed(Error::io("save", self.entry_path(id), e));
        let fd = match openat(
            &self.dir,
            c".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        ) {
            Ok(fd) => fd,
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                return Err(SaveError::Unsupported);
            }
            Err(e) => return Err(failed(e.into())),
        };
        let mut file = File::from(fd);
        self.write_out(&mut file, bytes).map_err(failed)?;
        let linked = match way {
            // Needs CAP_DAC_READ_SEARCH on older kernels; saves a walk through /proc.
            Publish::EmptyPath => linkat(&file, c"", &self.dir, name, AtFlags::EMPTY_PATH),
            _ => {
                let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
                linkat(
                    CWD,
                    proc_path.as_str(),
                    &self.dir,
                    name,
                    AtFlags::SYMLINK_FOLLOW,
                )
            }
        };
        match linked {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => Err(SaveError::Failed(Error::AlreadyExists {
                path: self.entry_path(id),
            })),
            // A directory removed under us says ENOENT too: that is a failure of this save,
            // not a reason to give up the cheaper way for good.
            Err(Errno::NOENT) if !self.is_linked() => Err(failed(Errno::NOENT.into())),
            // Not allowed, no /proc, or a file system that cannot link an unnamed file.
            Err(Errno::NOENT | Errno::XDEV | Errno::PERM | Errno::OPNOTSUPP | Errno::INVAL) => {
                Err(SaveError::Unsupported)
            }
            Err(e) => Err(failed(e.into())),
        }
    }

    /// The portable way: a named temporary file, hard-linked to its final name (link, unlike
    /// rename, refuses to overwrite), then unlinked. A crash can leave the temporary file;
    /// [`AidDir::sweep_temps`] removes it later.
    fn save_named_temp(&self, id: InstanceId, name: &CStr, bytes: &[u8]) -> Result<(), Error> {
        // A fallback save that was killed left its mark: clear up after it first.
        if self.lock.temps_marked()? {
            self.sweep_temps()?;
        }
        self.lock.mark_temps(true)?;
        let temp = layout::temp_name();
        let fd = openat(
            &self.dir,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | open_flags(),
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| Error::io("save", self.path.join(&temp), e))?;
        let mut file = File::from(fd);
        let linked = self
            .write_out(&mut file, bytes)
            .map_err(|e| Error::io("save", self.entry_path(id), e))
            .and_then(|()| {
                match linkat(&self.dir, temp.as_str(), &self.dir, name, AtFlags::empty()) {
                    Ok(()) => Ok(()),
                    Err(Errno::EXIST) => Err(Error::AlreadyExists {
                        path: self.entry_path(id),
                    }),
                    Err(e) => Err(Error::io("save", self.entry_path(id), e)),
                }
            });
        let removed = unlinkat(&self.dir, temp.as_str(), AtFlags::empty());
        linked?;
        removed.map_err(|e| Error::io("remove temporary file", self.path.join(&temp), e))?;
        self.lock.mark_temps(false)
    }

    fn write_out(&self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
        file.write_all(bytes)?;
        if self.options.durable {
            file.sync_all()?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), Error> {
        if self.options.durable {
            fsync(&self.dir).map_err(|e| Error::io("sync directory", &self.path, e))?;
        }
        Ok(())
    }

    /// Removes the entry of `id`; `Ok(false)` if there was none.
    pub(crate) fn destroy(&self, id: InstanceId) -> Result<bool, Error> {
        let name = layout::entry_name(id);
        match unlinkat(&self.dir, layout::as_cstr(&name), AtFlags::empty()) {
            Ok(()) => self.sync_dir().map(|()| true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(Error::io("destroy", self.entry_path(id), e)),
        }
    }

    /// Reads the bytes of the entry of `id` into `buf`, undecoded; `Ok(false)` if there is
    /// none.
    pub(crate) fn read_entry(&self, id: InstanceId, buf: &mut Vec<u8>) -> Result<bool, Error> {
        let name = layout::entry_name(id);
        buf.clear();
        self.read_file(layout::as_cstr(&name), id, buf)
    }

    /// Reads and decodes the entry of `id`, reusing `buf`.
    pub(crate) fn load<C: DeserializeOwned>(
        &self,
        id: InstanceId,
        buf: &mut Vec<u8>,
    ) -> Result<Option<State<C>>, Error> {
        let name = layout::entry_name(id);
        buf.clear();
        if !self.read_file(layout::as_cstr(&name), id, buf)? {
            return Ok(None);
        }
        decode_entry(&self.path, id, buf).map(Some)
    }

    /// Reads the next entry files of `scan`, undecoded, one after another into `bytes`: at
    /// most `max` files, and no more once `max_bytes` have been read. Each file is one item
    /// of `out`: its id and where its bytes are, or the error in its place.
    ///
    /// Streams decode the entries later, one at a time as they are taken: decoded in a
    /// batch, a hundred configs would be alive at once, and the allocator's churn on them
    /// cost more than the hop the batch saves.
    pub(crate) fn read_raw_batch(
        &self,
        scan: &mut Scan,
        max: usize,
        max_bytes: usize,
        bytes: &mut Vec<u8>,
        out: &mut Vec<Result<(InstanceId, Range<usize>), Error>>,
    ) {
        while out.len() < max && bytes.len() < max_bytes {
            let id = match scan.next_id(&self.path) {
                None => break,
                Some(Err(e)) => {
                    out.push(Err(e));
                    continue;
                }
                Some(Ok(id)) => id,
            };
            let start = bytes.len();
            let name = layout::entry_name(id);
            match self.read_file(layout::as_cstr(&name), id, bytes) {
                Ok(true) => out.push(Ok((id, start..bytes.len()))),
                // Destroyed since it was listed (by a foreign process): no longer an entry.
                Ok(false) => {}
                Err(e) => out.push(Err(e)),
            }
        }
    }

    /// Reads a whole entry file into `buf`; `Ok(false)` if it does not exist. The size cap is
    /// checked on the open file before a byte is read, so a huge file costs nothing.
    fn read_file(&self, name: &CStr, id: InstanceId, buf: &mut Vec<u8>) -> Result<bool, Error> {
        let not_a_file = || Error::corrupt(self.entry_path(id), CorruptKind::NotAFile);
        let fd = match openat(
            &self.dir,
            name,
            OFlags::RDONLY | open_flags(),
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(false),
            Err(Errno::LOOP | Errno::NXIO | Errno::ISDIR) => return Err(not_a_file()),
            Err(e) => return Err(Error::io("read", self.entry_path(id), e)),
        };
        let st = fstat(&fd).map_err(|e| Error::io("read", self.entry_path(id), e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(not_a_file());
        }
        let size = st.st_size as u64;
        let limit = self.options.max_entry_size;
        if size > limit {
            return Err(Error::corrupt(
                self.entry_path(id),
                CorruptKind::TooLarge { size, limit },
            ));
        }
        let start = buf.len();
        let mut file = File::from(fd);
        let read_failed = |e| Error::io("read", self.entry_path(id), e);
        let result = if size <= PREALLOC_MAX {
            // Published entries never change, so the size from fstat is the size to read, in
            // one read(2); a foreign file that grows meanwhile is cut at that size, and one
            // that shrinks yields what it has.
            buf.resize(start + size as usize, 0);
            read_into(&mut file, &mut buf[start..])
                .map(|filled| buf.truncate(start + filled))
                .map_err(read_failed)
        } else {
            // Only under a raised cap. The size may be a sparse file's claim, so memory
            // follows the bytes that really arrive, and the file is read only while it can
            // still be an entry and is within the cap.
            buf.resize(start + PREALLOC_MAX as usize, 0);
            read_into(&mut file, &mut buf[start..])
                .map_err(read_failed)
                .and_then(|filled| {
                    buf.truncate(start + filled);
                    if !format::may_be_entry(&buf[start..]) {
                        return Ok(());
                    }
                    let more = limit.saturating_add(1).saturating_sub(filled as u64);
                    (&file).take(more).read_to_end(buf).map_err(read_failed)?;
                    let read = (buf.len() - start) as u64;
                    match read > limit {
                        true => Err(Error::corrupt(
                            self.entry_path(id),
                            CorruptKind::TooLarge {
                                size: size.max(read),
                                limit,
                            },
                        )),
                        false => Ok(()),
                    }
                })
        };
        // A failed read leaves `buf` as it found it.
        if result.is_err() {
            buf.truncate(start);
        }
        result.map(|()| true)
    }

    /// A new descriptor of the directory: a listing needs a position of its own.
    fn reopen(&self) -> Result<OwnedFd, Error> {
        openat(
            &self.dir,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("list", &self.path, e))
    }

    /// Starts a listing of the directory's entry names.
    pub(crate) fn scan(&self) -> Result<Scan, Error> {
        let fd = self.reopen()?;
        Ok(Scan {
            fd,
            buf: vec![MaybeUninit::uninit(); DIRENT_BUF],
            ids: Vec::new(),
            next: 0,
            more: true,
        })
    }

    /// The next entry of `scan`, read into `buf` and decoded, or the error in its place.
    pub(crate) fn next_entry<C: DeserializeOwned>(
        &self,
        scan: &mut Scan,
        buf: &mut Vec<u8>,
    ) -> Option<Result<State<C>, Error>> {
        loop {
            return match scan.next_id(&self.path)? {
                Ok(id) => match self.load(id, buf) {
                    Ok(Some(state)) => Some(Ok(state)),
                    // Destroyed since it was listed: another holder cannot do that, but a
                    // foreign process can; it simply is no longer an entry.
                    Ok(None) => continue,
                    Err(e) => Some(Err(e)),
                },
                Err(e) => Some(Err(e)),
            };
        }
    }

    /// Removes temporary files that a killed process left behind, and the lock file's mark
    /// that there may be some. Call it holding the lock exclusively, so no save in progress
    /// loses its file.
    pub(crate) fn sweep_temps(&self) -> Result<(), Error> {
        let mut sweep = self.sweep()?;
        while self.sweep_step(&mut sweep)? {}
        Ok(())
    }

    /// Starts a sweep ([`AidDir::sweep_temps`]) to make in steps.
    pub(crate) fn sweep(&self) -> Result<Sweep, Error> {
        Ok(Sweep {
            fd: self.reopen()?,
            buf: vec![MaybeUninit::uninit(); DIRENT_BUF],
        })
    }

    /// One step of a sweep: the temporary files among the next names of the directory, and
    /// at the end the lock file's mark. Returns whether there is more.
    pub(crate) fn sweep_step(&self, sweep: &mut Sweep) -> Result<bool, Error> {
        let mut failed = None;
        let more = read_dirents(&sweep.fd, &mut sweep.buf, |name, kind| {
            if failed.is_none()
                && layout::is_temp_name(name.to_bytes())
                && kind != FileType::Directory
            {
                let path = || self.path.join(name.to_string_lossy().as_ref());
                match unlinkat(&self.dir, name, AtFlags::empty()) {
                    Ok(()) => tracing::info!(
                        path = %path().display(),
                        "removed a temporary file that a killed save left"
                    ),
                    Err(Errno::NOENT) => {}
                    // A directory (where d_type is not filled in) or an immutable file: not
                    // something a save left, and failing would fail every exclusive hold.
                    Err(Errno::ISDIR | Errno::PERM) => {}
                    Err(e) => failed = Some(Error::io("remove temporary file", path(), e)),
                }
            }
        })
        .map_err(|e| Error::io("list", &self.path, e))?;
        if let Some(e) = failed {
            return Err(e);
        }
        if more {
            return Ok(true);
        }
        // Cleared only where set: a read-only store's lock file cannot be written, and an
        // unmarked one needs no write.
        if self.lock.temps_marked()? {
            self.lock.mark_temps(false)?;
        }
        Ok(false)
    }

    /// Replaces the entry of `id` with `bytes`, atomically: the new entry is written whole
    /// under a temporary name and renamed onto the entry's name, so a reader that opens the
    /// name at any moment, locked or not, gets the old entry or the new one, and a crash
    /// leaves one of them. `Ok(false)`, with nothing written, if `id` has no entry.
    ///
    /// A crash between making the temporary file and renaming it leaves a `.tmp-` file, which
    /// listings skip: as for the fallback save, the lock file is marked meanwhile, so the
    /// next such write removes it. Call it holding the lock exclusively.
    pub(crate) fn replace(&self, id: InstanceId, bytes: &[u8]) -> Result<bool, Error> {
        let (size, limit) = (bytes.len() as u64, self.options.max_entry_size);
        if size > limit {
            return Err(Error::TooLarge {
                path: self.entry_path(id),
                size,
                limit,
            });
        }
        let name = layout::entry_name(id);
        let name = layout::as_cstr(&name);
        match statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => {}
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(Error::io("replace", self.entry_path(id), e)),
        }
        if self.lock.temps_marked()? {
            self.sweep_temps()?;
        }
        self.lock.mark_temps(true)?;
        // A named file rather than O_TMPFILE + linkat: rename needs a name either way, and
        // this makes it with one call fewer.
        let temp = layout::temp_name();
        let fd = openat(
            &self.dir,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | open_flags(),
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| Error::io("replace", self.path.join(&temp), e))?;
        let mut file = File::from(fd);
        let renamed = self
            .write_out(&mut file, bytes)
            .map_err(|e| Error::io("replace", self.entry_path(id), e))
            .and_then(|()| {
                renameat(&self.dir, temp.as_str(), &self.dir, name)
                    .map_err(|e| Error::io("replace", self.entry_path(id), e))
            });
        drop(file);
        if let Err(e) = renamed {
            // The entry is as it was; the temporary file goes, and with it the mark.
            return Err(match unlinkat(&self.dir, temp.as_str(), AtFlags::empty()) {
                Ok(()) => self.lock.mark_temps(false).err().unwrap_or(e),
                Err(_) => e,
            });
        }
        self.sync_dir()?;
        self.lock.mark_temps(false)?;
        Ok(true)
    }
}

/// The most of a file's claimed size that is allocated before its bytes arrive. Entries are
/// far smaller under the default cap; only a raised cap lets a larger file be read.
const PREALLOC_MAX: u64 = 4 << 20;

/// Fills `buf` from `file` up to its length or the end of the file; returns the bytes read.
fn read_into(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decodes the bytes of the entry file of `id` in the aid directory `dir`.
pub(crate) fn decode_entry<C: DeserializeOwned>(
    dir: &Path,
    id: InstanceId,
    bytes: &[u8],
) -> Result<State<C>, Error> {
    let path = || dir.join(id.to_string());
    // Caught per file, so a config whose Deserialize panics on one file costs that file
    // alone, as any other corrupt entry does.
    let state: State<C> = match catch_unwind(AssertUnwindSafe(|| format::decode(bytes))) {
        Ok(Ok(state)) => state,
        Ok(Err(why)) => return Err(Error::corrupt(path(), CorruptKind::Undecodable(why))),
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            return Err(Error::corrupt(path(), CorruptKind::DecodePanicked(message)));
        }
    };
    if state.id != id {
        return Err(Error::corrupt(
            path(),
            CorruptKind::IdMismatch { found: state.id },
        ));
    }
    Ok(state)
}

/// The text of a panic's payload, for the error that replaces it.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Ways of publishing an entry, cheapest first. A store starts with the first and moves down
/// the list, for good, when one is not supported here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Publish {
    /// `O_TMPFILE`, then `linkat(fd, "", AT_EMPTY_PATH)`.
    EmptyPath = 0,
    /// `O_TMPFILE`, then `linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW)`.
    ProcLink = 1,
    /// A named temporary file, then `linkat` and `unlinkat`.
    NamedTemp = 2,
}

impl Publish {
    fn from_u8(n: u8) -> Publish {
        match n {
            0 => Publish::EmptyPath,
            1 => Publish::ProcLink,
            _ => Publish::NamedTemp,
        }
    }
}

enum SaveError {
    /// This way of saving does not work here; try the fallback.
    Unsupported,
    Failed(Error),
}

/// Whether `name` is `.` or `..`, which every directory lists.
fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

/// Bytes of directory entries fetched per `getdents64` call: about 500 entry names.
const DIRENT_BUF: usize = 32 << 10;

/// Reads one `getdents64` buffer of `fd` and calls `each` for its entries. Returns `false`
/// at the end of the directory. A fresh `RawDir` per call is fine because the kernel keeps
/// the position in the open file, and each call drains what it fetched.
fn read_dirents(
    fd: &OwnedFd,
    buf: &mut [MaybeUninit<u8>],
    mut each: impl FnMut(&CStr, FileType),
) -> std::io::Result<bool> {
    let mut raw = RawDir::new(fd, buf);
    loop {
        match raw.next() {
            None => return Ok(false),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(entry)) => each(entry.file_name(), entry.file_type()),
        }
        if raw.is_buffer_empty() {
            return Ok(true);
        }
    }
}

/// Calls `each` for every entry of the directory `fd` (its own position, so pass a fresh
/// descriptor).
fn for_each_dirent(
    fd: &OwnedFd,
    path: &Path,
    mut each: impl FnMut(&CStr, FileType),
) -> Result<(), Error> {
    let mut buf = vec![MaybeUninit::uninit(); DIRENT_BUF];
    while read_dirents(fd, &mut buf, &mut each).map_err(|e| Error::io("list", path, e))? {}
    Ok(())
}

/// A sweep of temporary files in progress ([`AidDir::sweep_step`]).
pub(crate) struct Sweep {
    fd: OwnedFd,
    buf: Vec<MaybeUninit<u8>>,
}

/// A listing in progress of one aid directory's entry names: the ids of one `getdents64`
/// buffer at a time, with no allocation per name.
pub(crate) struct Scan {
    fd: OwnedFd,
    buf: Vec<MaybeUninit<u8>>,
    ids: Vec<InstanceId>,
    next: usize,
    more: bool,
}

impl Scan {
    /// Whether the listing has reached its end.
    pub(crate) fn is_done(&self) -> bool {
        !self.more && self.next == self.ids.len()
    }

    /// The next entry's id, skipping foreign names.
    pub(crate) fn next_id(&mut self, path: &Path) -> Option<Result<InstanceId, Error>> {
        if let Err(e) = self.fetch(path) {
            return Some(Err(e));
        }
        let id = *self.ids.get(self.next)?;
        self.next += 1;
        Some(Ok(id))
    }

    /// Reads the next names from the directory once those fetched are used up, so that
    /// [`Scan::is_done`] is exact: a stream whose batch ended at the directory's last entry
    /// then knows it, and lets go of the aid at once. The next batch would have made the
    /// same call, so it costs nothing extra.
    pub(crate) fn fetch(&mut self, path: &Path) -> Result<(), Error> {
        while self.next == self.ids.len() && self.more {
            self.ids.clear();
            self.next = 0;
            let ids = &mut self.ids;
            match read_dirents(
                &self.fd,
                &mut self.buf,
                |name, _| match layout::parse_entry_name(name) {
                    Some(id) => ids.push(id),
                    None if is_dot(name) => {}
                    None => tracing::debug!(
                        dir = %path.display(),
                        name = %name.to_string_lossy(),
                        "skipping a name that is not an entry's"
                    ),
                },
            ) {
                Ok(more) => self.more = more,
                Err(e) => {
                    self.more = false;
                    return Err(Error::io("list", path, e));
                }
            }
        }
        Ok(())
    }
}

/// The aids that have a directory under `<run_dir>/state`, ascending. Junk is skipped.
pub(crate) fn list_aids(run_dir: &Path) -> Result<Vec<Aid>, Error> {
    let state_path = run_dir.join(STATE_DIR);
    // The run directory first, so that an error about it names it, and one about `state`
    // can only be about `state`.
    let parent = if run_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        run_dir
    };
    let run = match openat(
        CWD,
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("open directory", run_dir, e)),
    };
    let fd = match openat(
        &run,
        STATE_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | open_flags(),
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Vec::new()),
        Err(Errno::LOOP | Errno::NOTDIR) => {
            return Err(Error::insecure(
                state_path,
                "not a directory (a symlink or a file stands there)",
            ));
        }
        Err(e) => return Err(Error::io("list", &state_path, e)),
    };
    // Listed names are only as good as the directory: one that others may write is refused
    // here as it is when an aid is held.
    check_private(&fd, &state_path, FileType::Directory)?;
    let mut aids = Vec::new();
    for_each_dirent(&fd, &state_path, |name, kind| {
        let Some(aid) = layout::parse_aid_name(name.to_bytes()) else {
            return;
        };
        let is_dir = match kind {
            FileType::Directory => true,
            // Some file systems do not fill in d_type.
            FileType::Unknown => statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
            _ => false,
        };
        if is_dir {
            aids.push(aid);
        }
    })?;
    aids.sort_unstable();
    Ok(aids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(run: &Path, aid: u16, options: &Options) -> AidDir {
        let state = Arc::new(StateDir::open(run, options).unwrap());
        AidDir::open(state, Aid::new(aid).unwrap(), options).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn every_way_of_publishing_refuses_to_overwrite_and_leaves_no_temporary_file() {
        for way in [Publish::EmptyPath, Publish::ProcLink, Publish::NamedTemp] {
            let run = tempfile::tempdir_in("/dev/shm").unwrap();
            let dir = open(run.path(), 1, &Options::new());
            dir.publish.store(way as u8, Ordering::Relaxed);
            let state = State::new(InstanceId::random(), 1, 5u8);
            let mut bytes = Vec::new();
            format::encode(&state, &mut bytes).unwrap();
            dir.save(state.id, &bytes).unwrap();
            assert_eq!(
                Publish::from_u8(dir.publish.load(Ordering::Relaxed)),
                way,
                "{way:?} works here"
            );
            let huge = vec![0; Options::DEFAULT_MAX_ENTRY_SIZE as usize + 1];
            let refused = dir.save(InstanceId::random(), &huge);
            assert!(
                matches!(refused, Err(Error::TooLarge { .. })),
                "{way:?}: {refused:?}"
            );
            let again = dir.save(state.id, b"other bytes");
            assert!(
                matches!(again, Err(Error::AlreadyExists { .. })),
                "{way:?}: {again:?}"
            );
            assert_eq!(
                dir.load::<u8>(state.id, &mut Vec::new()).unwrap(),
                Some(state.clone())
            );
            assert_eq!(names(dir.path()), [state.id.to_string()], "{way:?}");
            let mode = std::fs::metadata(dir.path().join(state.id.to_string())).unwrap();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn a_save_into_a_removed_directory_fails_and_keeps_the_cheap_way() {
        let run = tempfile::tempdir_in("/dev/shm").unwrap();
        let dir = open(run.path(), 1, &Options::new());
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert!(!dir.is_current());
        let saved = dir.save(InstanceId::random(), b"entry");
        assert!(
            matches!(&saved, Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
            "{saved:?}"
        );
        assert_eq!(
            Publish::from_u8(dir.publish.load(Ordering::Relaxed)),
            Publish::EmptyPath,
            "a removed directory is not a reason to give up linkat"
        );
    }

    #[test]
    fn a_fallback_save_clears_up_after_a_killed_one() {
        let run = tempfile::tempdir_in("/dev/shm").unwrap();
        let dir = open(run.path(), 3, &Options::new());
        dir.publish
            .store(Publish::NamedTemp as u8, Ordering::Relaxed);
        // What a fallback save killed between creating and unlinking its file leaves.
        dir.lock.mark_temps(true).unwrap();
        std::fs::write(dir.path().join(layout::temp_name()), b"half").unwrap();

        let id = InstanceId::random();
        dir.save(id, b"entry").unwrap();
        assert_eq!(names(dir.path()), [id.to_string()]);
        assert!(
            !dir.lock.temps_marked().unwrap(),
            "a completed save leaves no mark"
        );
    }

    #[test]
    fn sweeping_removes_temporary_files_only() {
        let run = tempfile::tempdir_in("/dev/shm").unwrap();
        let dir = open(run.path(), 2, &Options::new());
        let keep = InstanceId::random().to_string();
        let hex = InstanceId::random().to_string();
        let upper = format!(".tmp-{}", hex.to_uppercase());
        let short = format!(".tmp-{}", &hex[1..]);
        let long = format!(".tmp-{hex}0");
        let temp = layout::temp_name();
        for name in [".tmp-0123", &keep, "foreign", &upper, &short, &long, &temp] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        dir.sweep_temps().unwrap();
        let mut want = vec![".tmp-0123", &keep, "foreign", &upper, &short, &long];
        want.sort();
        assert_eq!(names(dir.path()), want, "only {temp} is ours");
    }

    thread_local! {
        /// The directories [`sync_parent`] fsynced on this thread, in order.
        pub(super) static SYNCED: std::cell::RefCell<Vec<PathBuf>> = const {
            std::cell::RefCell::new(Vec::new())
        };
    }

    fn synced() -> Vec<PathBuf> {
        SYNCED.with(|synced| std::mem::take(&mut *synced.borrow_mut()))
    }

    #[test]
    fn durable_mode_syncs_the_parent_of_every_name_it_makes() {
        let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
        let run = tmp.path().join("run");
        let state = run.join(STATE_DIR);
        let durable = Options::new().durable(true);
        synced();
        open(&run, 1, &durable);
        // state/ in the run directory; the lock file and the aid's directory in state/.
        assert_eq!(synced(), [run.clone(), state.clone(), state.clone()]);
        open(&run, 1, &durable);
        assert_eq!(synced(), Vec::<PathBuf>::new(), "nothing new was made");
        open(&run, 2, &durable);
        assert_eq!(synced(), [state.clone(), state.clone()]);
        open(&run, 3, &Options::new());
        assert_eq!(synced(), Vec::<PathBuf>::new(), "not durable");
    }
}
