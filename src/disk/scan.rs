//! Listing directories with `getdents64`, a buffer at a time and no allocation per name:
//! an aid's entry names ([`Scan`]), its temporary files to sweep ([`Sweep`]), and the
//! store's aids ([`list_aids`]).

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawDir, openat, statat, unlinkat};
use rustix::io::Errno;

use crate::disk::aid_dir::{AidDir, TempMark};
use crate::disk::layout::{self, STATE_DIR};
use crate::disk::secure::{check_private, open_flags};
use crate::{Aid, Error, InstanceId};

impl AidDir {
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

    /// Starts a listing of the directory's entry names, `read_size` bytes of names a
    /// `getdents64` call ([`Scan::set_read_size`]), with its first buffer read.
    ///
    /// A removed directory must never read as "no entries": `getdents64` fails on it with
    /// `ENOENT`, found by the first read that the listing makes anyway, and then the
    /// directory at its path is listed instead ([`AidDir::revive`]).
    pub(crate) fn scan(&self, read_size: usize) -> Result<Scan, Error> {
        let first = || {
            let mut scan = Scan::new(self.reopen()?, read_size);
            scan.fetch(&self.path).map(|()| scan)
        };
        match first() {
            Err(e) if e.is_not_found() && self.revive()? => first(),
            scan => scan,
        }
    }

    /// Removes temporary files that a killed process left behind, and the lock file's mark
    /// that there may be some. Call it holding the lock exclusively, so no save in progress
    /// loses its file.
    pub(crate) fn sweep_temps(&self, mark: TempMark<'_>) -> Result<(), Error> {
        let mut sweep = self.sweep()?;
        while self.sweep_step(&mut sweep, mark)? {}
        Ok(())
    }

    /// Starts a sweep ([`AidDir::sweep_temps`]) to make in steps: the hold drives it
    /// (`lock/hold.rs` `Hold::sweep_temps`) on an aid's first exclusive hold in a store.
    pub(crate) fn sweep(&self) -> Result<Sweep, Error> {
        Ok(Sweep {
            fd: self.reopen()?,
            buf: vec![MaybeUninit::uninit(); DIRENT_BUF_SMALL],
        })
    }

    /// One step of a sweep: the temporary files among the next names of the directory, and
    /// at the end the lock file's mark. Returns whether there is more.
    pub(crate) fn sweep_step(&self, sweep: &mut Sweep, mark: TempMark<'_>) -> Result<bool, Error> {
        let mut failed = None;
        let mut read = |fd: &OwnedFd, buf: &mut [MaybeUninit<u8>]| {
            read_dirents(fd, buf, |name, kind| {
                self.sweep_name(name, kind, &mut failed)
            })
        };
        let more = match read(&sweep.fd, &mut sweep.buf) {
            // A removed directory (see `scan`): sweep the one at its path.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.revive()? => {
                sweep.fd = self.reopen()?;
                read(&sweep.fd, &mut sweep.buf)
            }
            more => more,
        }
        .map_err(|e| Error::io("list", &self.path, e))?;
        if let Some(e) = failed {
            return Err(e);
        }
        if more {
            return Ok(true);
        }
        // Cleared only where set: a read-only store's lock file cannot be written, and an
        // unmarked one needs no write.
        if mark.is_set()? {
            mark.set(false)?;
        }
        Ok(false)
    }

    /// Removes `name` if it is a temporary file, keeping the first failure in `failed`.
    fn sweep_name(&self, name: &CStr, kind: FileType, failed: &mut Option<Error>) {
        if failed.is_none() && layout::is_temp_name(name.to_bytes()) && kind != FileType::Directory
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
                Err(e) => *failed = Some(Error::io("remove temporary file", path(), e)),
            }
        }
    }
}

/// Whether `name` is `.` or `..`, which every directory lists.
fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

/// Bytes of directory entries fetched per `getdents64` call: about 500 entry names.
pub(crate) const DIRENT_BUF: usize = 32 << 10;

#[cfg(test)]
thread_local! {
    /// The largest `getdents64` buffer a listing on this thread has used, for the tests.
    pub(crate) static LARGEST_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The smallest `getdents64` buffer a listing uses: about 70 entry names. A sweep's steps run
/// in place on the runtime's thread, and `getdents64` costs about 300 ns a name in a huge
/// tmpfs directory (the names' dentries are cold), so a 32 KiB read there holds the thread
/// for 180 us and this one for 25 us. On small directories the extra calls cost next to
/// nothing: a name costs far more to use than to list.
pub(crate) const DIRENT_BUF_SMALL: usize = 4 << 10;

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
    /// Grown to `read_size` on first use.
    buf: Vec<MaybeUninit<u8>>,
    /// Bytes fetched per `getdents64` call.
    read_size: usize,
    ids: Vec<InstanceId>,
    next: usize,
    more: bool,
}

impl Scan {
    /// A listing of the directory open as `fd` (a descriptor of its own: the listing moves
    /// its position), nothing read yet.
    fn new(fd: OwnedFd, read_size: usize) -> Scan {
        let mut scan = Scan {
            fd,
            buf: Vec::new(),
            read_size: DIRENT_BUF,
            ids: Vec::new(),
            next: 0,
            more: true,
        };
        scan.set_read_size(read_size);
        scan
    }

    /// Sets how many bytes of names each later `getdents64` call fetches (clamped to
    /// [`DIRENT_BUF_SMALL`]..=[`DIRENT_BUF`]): small for a step run in place, where one call on a huge
    /// directory would otherwise hold the runtime's thread for its whole buffer.
    pub(crate) fn set_read_size(&mut self, bytes: usize) {
        self.read_size = bytes.clamp(DIRENT_BUF_SMALL, DIRENT_BUF);
    }

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

    /// Gives back the id [`Scan::next_id`] returned last, to be returned again.
    pub(crate) fn unget(&mut self) {
        self.next = self.next.saturating_sub(1);
    }

    /// Appends the next entries' ids to `out` until it holds `max` items or the listing
    /// ends.
    pub(crate) fn next_ids(
        &mut self,
        path: &Path,
        max: usize,
        out: &mut Vec<Result<InstanceId, Error>>,
    ) {
        while out.len() < max {
            let Some(id) = self.next_id(path) else {
                break;
            };
            out.push(id);
        }
    }

    /// Reads the next names from the directory once those fetched are used up, so that
    /// [`Scan::is_done`] is exact: a stream whose batch ended at the directory's last entry
    /// then knows it, and lets go of the aid at once. The next batch would have made the
    /// same call, so it costs nothing extra.
    pub(crate) fn fetch(&mut self, path: &Path) -> Result<(), Error> {
        while self.next == self.ids.len() && self.more {
            self.ids.clear();
            self.next = 0;
            #[cfg(test)]
            LARGEST_READ.set(LARGEST_READ.get().max(self.read_size));
            if self.buf.len() < self.read_size {
                self.buf.resize(self.read_size, MaybeUninit::uninit());
            }
            let ids = &mut self.ids;
            match read_dirents(&self.fd, &mut self.buf[..self.read_size], |name, _| {
                match layout::parse_entry_name(name) {
                    Some(id) => ids.push(id),
                    None if is_dot(name) => {}
                    None => tracing::debug!(
                        dir = %path.display(),
                        name = %name.to_string_lossy(),
                        "skipping a name that is not an entry's"
                    ),
                }
            }) {
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

/// Whether the aid directory open as `fd` (at `path`, for messages) holds no entry names;
/// foreign names do not count. Pass a descriptor of its own: the listing moves its position.
pub(crate) fn holds_no_entry(fd: OwnedFd, path: &Path) -> Result<bool, Error> {
    match Scan::new(fd, DIRENT_BUF).next_id(path) {
        None => Ok(true),
        Some(Ok(_)) => Ok(false),
        Some(Err(e)) => Err(e),
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
    list_aids_in(fd, &state_path)
}

/// The aids that have a directory in the state directory open as `fd` (at `state_path`, for
/// messages), ascending. Pass a descriptor of its own: the listing moves its position.
pub(crate) fn list_aids_in(fd: OwnedFd, state_path: &Path) -> Result<Vec<Aid>, Error> {
    let mut aids = Vec::new();
    for_each_dirent(&fd, state_path, |name, kind| {
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
