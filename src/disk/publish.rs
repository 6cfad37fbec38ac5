//! Publishing entries: a new one atomically and without overwriting (three ways, the
//! cheapest that works here learned once per process), a replacement by rename, and removal.

use std::ffi::CStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{
    AtFlags, CWD, Mode, OFlags, fsync, ftruncate, linkat, openat, renameat, statat, unlinkat,
};
use rustix::io::Errno;

use crate::disk::aid_dir::{AidDir, TempMark};
use crate::disk::layout::{self, FILE_MODE};
use crate::disk::secure::open_flags;
use crate::{Error, InstanceId};

impl AidDir {
    /// Publishes `bytes` as the entry of `id`, atomically and without overwriting, the
    /// cheapest way that works here ([`PUBLISH`]). Only the fallback way uses `mark`. Call it
    /// holding the lock exclusively.
    pub(crate) fn save(
        &self,
        id: InstanceId,
        bytes: &[u8],
        mark: TempMark<'_>,
    ) -> Result<(), Error> {
        match self.save_as(&PUBLISH, id, bytes, mark) {
            // Nothing can be linked into a removed directory: save into the one at its path.
            Err(e) if e.is_not_found() && self.revive()? => self.save_as(&PUBLISH, id, bytes, mark),
            saved => saved,
        }
    }

    /// [`AidDir::save`], trying the ways from `publish` on and keeping there the first that
    /// works (the tests give their own).
    fn save_as(
        &self,
        publish: &AtomicU8,
        id: InstanceId,
        bytes: &[u8],
        mark: TempMark<'_>,
    ) -> Result<(), Error> {
        self.check_size(id, bytes)?;
        let name = layout::entry_name(id);
        let name = layout::as_cstr(&name);
        loop {
            let way = Publish::from_u8(publish.load(Ordering::Relaxed));
            let result = match way {
                Publish::EmptyPath | Publish::ProcLink => self.save_tmpfile(id, name, bytes, way),
                Publish::NamedTemp => self
                    .save_named_temp(id, name, bytes, mark)
                    .map_err(SaveError::Failed),
            };
            match result {
                Ok(()) => return self.sync_dir(),
                Err(SaveError::Failed(e)) => return Err(e),
                // Each way is given up at most once, so this loop runs at most three times.
                Err(SaveError::Unsupported) => publish.store(way as u8 + 1, Ordering::Relaxed),
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
        if let Err(e) = self.write_out(&mut file, bytes) {
            discard(&file);
            return Err(failed(e));
        }
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
        if linked.is_err() {
            discard(&file);
        }
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
    fn save_named_temp(
        &self,
        id: InstanceId,
        name: &CStr,
        bytes: &[u8],
        mark: TempMark<'_>,
    ) -> Result<(), Error> {
        let (mut file, temp) = self.make_temp("save", mark)?;
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
        if linked.is_err() {
            discard(&file);
        }
        let removed = unlinkat(&self.dir, temp.as_str(), AtFlags::empty());
        linked?;
        removed.map_err(|e| Error::io("remove temporary file", self.path.join(&temp), e))?;
        mark.set(false)
    }

    /// Makes a named temporary file, marked in the lock file while it exists: after clearing
    /// up what a killed write left, if the mark says there may be some.
    fn make_temp(&self, op: &'static str, mark: TempMark<'_>) -> Result<(File, String), Error> {
        if mark.is_set()? {
            self.sweep_temps(mark)?;
        }
        mark.set(true)?;
        let temp = layout::temp_name();
        let fd = openat(
            &self.dir,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | open_flags(),
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| Error::io(op, self.path.join(&temp), e))?;
        Ok((File::from(fd), temp))
    }

    /// Refuses an entry over the store's size cap before anything is written.
    fn check_size(&self, id: InstanceId, bytes: &[u8]) -> Result<(), Error> {
        let (size, limit) = (bytes.len() as u64, self.options().max_entry_size);
        if size > limit {
            return Err(Error::TooLarge {
                path: self.entry_path(id),
                size,
                limit,
            });
        }
        Ok(())
    }

    fn write_out(&self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
        file.write_all(bytes)?;
        if self.options().durable {
            file.sync_all()?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), Error> {
        if self.options().durable {
            fsync(&self.dir).map_err(|e| Error::io("sync directory", &self.path, e))?;
        }
        Ok(())
    }

    /// Removes the entry of `id`; `Ok(false)` if there was none.
    pub(crate) fn destroy(&self, id: InstanceId) -> Result<bool, Error> {
        let name = layout::entry_name(id);
        let unlink = || unlinkat(&self.dir, layout::as_cstr(&name), AtFlags::empty());
        let unlinked = match unlink() {
            Err(Errno::NOENT) if self.revive()? => unlink(),
            unlinked => unlinked,
        };
        match unlinked {
            Ok(()) => self.sync_dir().map(|()| true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(Error::io("destroy", self.entry_path(id), e)),
        }
    }

    /// Replaces the entry of `id` with `bytes`, atomically: the new entry is written whole
    /// under a temporary name and renamed onto the entry's name, so a reader that opens the
    /// name at any moment, locked or not, gets the old entry or the new one, and a crash
    /// leaves one of them. `Ok(false)`, with nothing written, if `id` has no entry.
    ///
    /// A crash between making the temporary file and renaming it leaves a `.tmp-` file, which
    /// listings skip: as for the fallback save, the lock file is marked meanwhile, so the
    /// next such write removes it. Call it holding the lock exclusively.
    pub(crate) fn replace(
        &self,
        id: InstanceId,
        bytes: &[u8],
        mark: TempMark<'_>,
    ) -> Result<bool, Error> {
        self.check_size(id, bytes)?;
        let name = layout::entry_name(id);
        let name = layout::as_cstr(&name);
        let stat = || statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW);
        let found = match stat() {
            Err(Errno::NOENT) if self.revive()? => stat(),
            found => found,
        };
        match found {
            Ok(_) => {}
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(Error::io("replace", self.entry_path(id), e)),
        }
        // A named file rather than O_TMPFILE + linkat: rename needs a name either way, and
        // this makes it with one call fewer.
        let (mut file, temp) = self.make_temp("replace", mark)?;
        let renamed = self
            .write_out(&mut file, bytes)
            .map_err(|e| Error::io("replace", self.entry_path(id), e))
            .and_then(|()| {
                renameat(&self.dir, temp.as_str(), &self.dir, name)
                    .map_err(|e| Error::io("replace", self.entry_path(id), e))
            });
        if renamed.is_err() {
            discard(&file);
        }
        drop(file);
        if let Err(e) = renamed {
            // The entry is as it was; the temporary file goes, and with it the mark.
            return Err(match unlinkat(&self.dir, temp.as_str(), AtFlags::empty()) {
                Ok(()) => mark.set(false).err().unwrap_or(e),
                Err(_) => e,
            });
        }
        self.sync_dir()?;
        mark.set(false)?;
        Ok(true)
    }
}

/// Frees the room of a temporary file that will not become an entry. Closing it is not
/// enough: a child forked by any thread while the file was open holds a copy of its
/// descriptor until it execs or exits, and on a full disk the next save needs that room now.
/// Only failure paths pay for it; if it fails too, the room comes back at the last close.
fn discard(file: &File) {
    let _ = ftruncate(file, 0);
}

/// The cheapest way of publishing that has worked in this process; see [`Publish`]. A fact
/// about the kernel and the process's privileges, learned once per process (as tempfile
/// remembers a missing syscall), not once per aid.
static PUBLISH: AtomicU8 = AtomicU8::new(Publish::EmptyPath as u8);

/// Ways of publishing an entry, cheapest first. A process starts with the first and moves
/// down the list, for good, when one is not supported here.
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

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, OwnedFd};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::*;
    use crate::disk::format;
    use crate::disk::layout::STATE_DIR;
    use crate::disk::secure::SYNCED;
    use crate::disk::state_dir::StateDir;
    use crate::{Aid, Options, State};

    /// An aid's directory and its lock file (whose descriptor carries the mark), as the
    /// locking layer opens them.
    struct Opened {
        dir: AidDir,
        lock: OwnedFd,
        lock_path: PathBuf,
    }

    impl Opened {
        fn mark(&self) -> TempMark<'_> {
            TempMark::new(self.lock.as_fd(), &self.lock_path)
        }
    }

    impl std::ops::Deref for Opened {
        type Target = AidDir;
        fn deref(&self) -> &AidDir {
            &self.dir
        }
    }

    fn open(run: &Path, aid: u16, options: &Options) -> Opened {
        let state = Arc::new(StateDir::open(run, options).unwrap());
        let aid = Aid::new(aid).unwrap();
        let name = layout::AidName::lock(aid);
        let lock_path = name.path_in(state.path());
        let (lock, _) = state
            .open_or_make_lock_file(name.as_cstr(), &lock_path)
            .unwrap();
        let dir = AidDir::open_after_lock(state, aid, false, || Ok(())).unwrap();
        Opened {
            dir,
            lock,
            lock_path,
        }
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
            let publish = AtomicU8::new(way as u8);
            let state = State::new(InstanceId::random(), 1, 5u8);
            let mut bytes = Vec::new();
            format::encode(&state, &mut bytes).unwrap();
            dir.save_as(&publish, state.id, &bytes, dir.mark()).unwrap();
            assert_eq!(
                Publish::from_u8(publish.load(Ordering::Relaxed)),
                way,
                "{way:?} works here"
            );
            let huge = vec![0; Options::DEFAULT_MAX_ENTRY_SIZE as usize + 1];
            let refused = dir.save_as(&publish, InstanceId::random(), &huge, dir.mark());
            assert!(
                matches!(refused, Err(Error::TooLarge { .. })),
                "{way:?}: {refused:?}"
            );
            let again = dir.save_as(&publish, state.id, b"other bytes", dir.mark());
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
        assert!(!dir.is_linked());
        let publish = AtomicU8::new(Publish::EmptyPath as u8);
        let saved = dir.save_as(&publish, InstanceId::random(), b"entry", dir.mark());
        assert!(
            matches!(&saved, Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
            "{saved:?}"
        );
        assert_eq!(
            Publish::from_u8(publish.load(Ordering::Relaxed)),
            Publish::EmptyPath,
            "a removed directory is not a reason to give up linkat"
        );
    }

    #[test]
    fn a_fallback_save_clears_up_after_a_killed_one() {
        let run = tempfile::tempdir_in("/dev/shm").unwrap();
        let dir = open(run.path(), 3, &Options::new());
        let publish = AtomicU8::new(Publish::NamedTemp as u8);
        // What a fallback save killed between creating and unlinking its file leaves.
        dir.mark().set(true).unwrap();
        std::fs::write(dir.path().join(layout::temp_name()), b"half").unwrap();

        let id = InstanceId::random();
        dir.save_as(&publish, id, b"entry", dir.mark()).unwrap();
        assert_eq!(names(dir.path()), [id.to_string()]);
        assert!(
            !dir.mark().is_set().unwrap(),
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
        dir.sweep_temps(dir.mark()).unwrap();
        let mut want = vec![".tmp-0123", &keep, "foreign", &upper, &short, &long];
        want.sort();
        assert_eq!(names(dir.path()), want, "only {temp} is ours");
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
