//! The cross-process half of an aid's lock: `flock(2)` on the aid's lock file.
//!
//! flock locks belong to an open file description, so two holders sharing one descriptor
//! would never exclude each other, and the first to unlock would unlock both. The store
//! therefore opens one descriptor per aid and lets `lock/hold.rs` decide who may touch it: one
//! exclusive holder at a time, or any number of shared holders that together own one
//! `LOCK_SH`, counted here, taken by the first and dropped by the last. A lock that had to be
//! waited for comes on a descriptor of its own (`lock/kernel_wait.rs`), which then stands for
//! the store's until it is released.
//!
//! A shared holder joins or takes its process's `LOCK_SH` only while no writer is queued
//! for the aid anywhere (the writers' gate, `lock/gate.rs`, which also says why the two locks
//! cannot deadlock); otherwise it waits behind that writer.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{FileType, FlockOperation, flock};
use rustix::io::Errno;
use tokio::sync::oneshot;

use crate::disk::aid_dir::TempMark;
use crate::disk::layout::AidName;
use crate::disk::secure::{check_private_as, counted_fstat};
use crate::disk::state_dir::StateDir;
use crate::lock::fork_guard::TrackedFd;
use crate::lock::gate;
use crate::lock::hold::LockMode;
use crate::lock::kernel_wait::{self, Granted, Kind, Locked};
use crate::{Aid, Error};

/// An open lock file. The descriptor is close-on-exec and tracked
/// ([`crate::lock::fork_guard`]), so children never keep the lock, even before they exec.
#[derive(Debug)]
pub(crate) struct LockFile {
    fd: TrackedFd,
    path: PathBuf,
    /// How many shared holders of this process own the `LOCK_SH`.
    readers: Mutex<usize>,
    /// The descriptor that holds this process's lock when it came through a wait
    /// ([`crate::lock::kernel_wait`]) rather than through `fd`.
    granted: Mutex<Option<Locked>>,
    /// The user the file must belong to, while its owner and mode are still to be checked:
    /// a file opened but not yet locked is checked by the `fstat` that follows its first
    /// lock, which also tells whether it is still linked ([`LockFile::is_linked`]), so a
    /// cold hold pays one `fstat` for both. Checked before any wait, never after it.
    check_as: Option<u32>,
    /// Whether that check passed.
    checked: AtomicBool,
    /// Raised by an `fstat` made while this process holds the lock that found the file
    /// linked; lowered by [`LockFile::is_linked`], which takes it instead of a call of its
    /// own, and by [`LockFile::unlock`].
    linked_at_lock: AtomicBool,
    /// Raised by an `fstat` made while this process holds the lock that found the file
    /// empty, so its temporary-file mark clear ([`TempMark::known`]); lowered when the mark
    /// is written and by [`LockFile::unlock`].
    clear_at_lock: AtomicBool,
}

/// The longest pause between two attempts of a wait: how late, at worst, a waiter notices
/// that the lock was released, or that it has been given up.
const MAX_BACKOFF: Duration = Duration::from_millis(2);

impl LockFile {
    /// Opens (making it if missing) the lock file of `aid` in `state_dir`, tracked so that
    /// no forked child keeps the lock (`lock/fork_guard.rs`); `true` with it if this call
    /// made it. Its owner and mode are checked at its first lock (or before a wait, or by
    /// [`LockFile::check`]); one made here needs no check: it was made private, in the
    /// checked state directory.
    pub(crate) fn open(state_dir: &StateDir, aid: Aid) -> Result<(LockFile, bool), Error> {
        let name = AidName::lock(aid);
        let (name, path) = (name.as_cstr(), name.path_in(state_dir.path()));
        let mut made = false;
        let fd = TrackedFd::open(
            || {
                let (fd, new) = state_dir.open_or_make_lock_file(name, &path)?;
                made = new;
                Ok(fd)
            },
            |e| Error::io("track lock file", &path, e),
        )?;
        let mut file = LockFile::new(fd, path);
        if !made {
            file.check_as = Some(state_dir.euid());
        }
        Ok((file, made))
    }

    pub(crate) fn new(fd: TrackedFd, path: PathBuf) -> LockFile {
        LockFile {
            fd,
            path,
            readers: Mutex::new(0),
            granted: Mutex::new(None),
            check_as: None,
            checked: AtomicBool::new(false),
            linked_at_lock: AtomicBool::new(false),
            clear_at_lock: AtomicBool::new(false),
        }
    }

    /// Checks the file's owner and mode now if they are still to be checked: before any
    /// wait for it, and before anything is made for an aid whose lock file it is.
    pub(crate) fn check(&self) -> Result<(), Error> {
        self.check_after(false)
    }

    /// The check of a file opened but not checked yet, after a lock attempt that got the
    /// lock (`locked`) or not: if refused, a lock got is let go. Nothing if checked already.
    fn check_after(&self, locked: bool) -> Result<(), Error> {
        let Some(euid) = self.check_as else {
            return Ok(());
        };
        if self.checked.load(Ordering::Acquire) {
            return Ok(());
        }
        let regular = FileType::RegularFile;
        match check_private_as(&self.fd, &self.path, regular, euid) {
            Ok(st) => {
                self.checked.store(true, Ordering::Release);
                if locked {
                    self.noted_at_lock(&st);
                }
                Ok(())
            }
            Err(e) => {
                if locked {
                    while let Err(Errno::INTR) = flock(&self.fd, FlockOperation::Unlock) {}
                }
                Err(e)
            }
        }
    }

    /// Keeps what an `fstat` made under this process's lock said, until the lock is let go.
    fn noted_at_lock(&self, st: &rustix::fs::Stat) {
        self.clear_at_lock.store(st.st_size == 0, Ordering::Release);
        self.linked_at_lock
            .store(st.st_nlink > 0, Ordering::Release);
    }

    /// The lock file's path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this process is a forked child of the one that opened the file: the
    /// descriptor is then no longer the lock file's, and the aid is not this process's.
    pub(crate) fn inherited(&self) -> bool {
        self.fd.inherited()
    }

    /// Whether the file is still linked: one removed while open locks nothing that anyone
    /// who opens its path again would see.
    ///
    /// Call it holding the lock: it takes what the `fstat` of the first lock of a file just
    /// opened said, or makes one.
    pub(crate) fn is_linked(&self) -> bool {
        if self.linked_at_lock.swap(false, Ordering::AcqRel) {
            return true;
        }
        match counted_fstat(&self.fd) {
            Ok(st) => {
                self.clear_at_lock.store(st.st_size == 0, Ordering::Release);
                st.st_nlink > 0
            }
            Err(_) => false,
        }
    }

    fn readers(&self) -> std::sync::MutexGuard<'_, usize> {
        // The count is updated in one statement; a panic elsewhere cannot leave it half-done.
        self.readers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One `flock` call, retried on interruption; `Ok(false)` if a non-blocking attempt
    /// found the lock taken.
    fn flock(&self, op: FlockOperation) -> Result<bool, Error> {
        loop {
            return match flock(&self.fd, op) {
                Ok(()) => Ok(true),
                Err(Errno::WOULDBLOCK) => Ok(false),
                Err(Errno::INTR) => continue,
                Err(e) => Err(Error::io("lock", &self.path, e)),
            };
        }
    }

    /// Repeats a non-blocking `attempt` with growing pauses until it succeeds, `deadline`
    /// passes or `gone` is raised; `Ok(false)` in the last two cases. The fallback for when
    /// a wait in the kernel cannot be set up ([`crate::lock::kernel_wait`]): a blocked `flock`
    /// cannot be called off, but a polling one stops when its caller has given up.
    fn polling(
        deadline: Option<Instant>,
        gone: &AtomicBool,
        mut attempt: impl FnMut() -> Result<bool, Error>,
    ) -> Result<bool, Error> {
        let mut pause = Duration::from_micros(50);
        loop {
            if attempt()? {
                return Ok(true);
            }
            if gone.load(Ordering::Acquire) {
                return Ok(false);
            }
            let sleep = match deadline {
                None => pause,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => pause.min(left),
                    _ => return Ok(false),
                },
            };
            std::thread::sleep(sleep);
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }

    /// Takes the exclusive lock if no other process holds it. Never blocks.
    pub(crate) fn try_exclusive(&self) -> Result<bool, Error> {
        let locked = self.flock(FlockOperation::NonBlockingLockExclusive)?;
        self.check_after(locked)?;
        Ok(locked)
    }

    /// Waits for the exclusive lock, without limit (`None`) or until a deadline; `Ok(false)`
    /// if the deadline came first or the waiter is `gone`. Blocks: call it on the blocking
    /// pool. The writers' gate is not waited for here: the caller has it already, or found
    /// it taken and could not wait for it in the kernel.
    pub(crate) fn exclusive(
        &self,
        until: Option<Instant>,
        gone: &AtomicBool,
    ) -> Result<bool, Error> {
        Self::polling(until, gone, || self.try_exclusive())
    }

    /// Drops the exclusive lock. Never blocks. The only failures of `LOCK_UN` are a bad
    /// descriptor or an interruption before any change, so it cannot leave the lock held.
    pub(crate) fn unlock(&self) {
        self.linked_at_lock.store(false, Ordering::Release);
        self.clear_at_lock.store(false, Ordering::Release);
        let granted = self
            .granted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // A granted descriptor unlocks as it is dropped. In a forked child, the descriptor is
        // no longer the lock file's.
        if granted.is_none() && !self.fd.inherited() {
            while let Err(Errno::INTR) = flock(&self.fd, FlockOperation::Unlock) {}
        }
    }

    /// Starts waiting, on a thread of its own, for the exclusive lock, the shared lock for
    /// this process as its first reader (`Kind::Flock`), or the writers' gate
    /// (`Kind::Gate`, `Kind::GatePass`), which another process keeps from us; see
    /// [`crate::lock::kernel_wait`]. Adopt a granted flock with [`LockFile::adopt`]; a granted
    /// gate is held until dropped.
    pub(crate) fn wait(&self, kind: Kind) -> Result<oneshot::Receiver<Granted>, Error> {
        kernel_wait::start(&self.fd, kind).map_err(|e| Error::io("lock", &self.path, e))
    }

    /// Takes the writers' gate ([`crate::lock::gate`]) on the store's descriptor, if no other
    /// writer holds it. Never blocks. Only an exclusive holder waiting for the flock may call
    /// it (it has this store's exclusive turn), and it releases the gate with
    /// [`LockFile::leave_gate`].
    pub(crate) fn try_gate(&self) -> Result<bool, Error> {
        self.check()?;
        gate::try_take(self.fd.as_fd()).map_err(|e| Error::io("lock", &self.path, e))
    }

    /// Releases the gate taken by [`LockFile::try_gate`]. Never blocks. It fails only on a
    /// bad descriptor, whose closing would release it.
    pub(crate) fn leave_gate(&self) {
        let _ = gate::release(self.fd.as_fd());
    }

    /// Whether a writer, in any process, is queued for the aid at the writers' gate
    /// ([`crate::lock::gate`]). Never blocks.
    pub(crate) fn writer_queued(&self) -> Result<bool, Error> {
        gate::writer_queued(self.fd.as_fd()).map_err(|e| Error::io("lock", &self.path, e))
    }

    /// Makes a descriptor granted by a wait this process's holder of the lock: of the
    /// exclusive lock, or of the shared lock as its first reader. Until released, it stands
    /// for the store's descriptor in [`LockFile::unlock`].
    pub(crate) fn adopt(&self, granted: Granted, mode: LockMode) -> Result<(), Error> {
        let shared = mode == LockMode::Shared;
        let fd = granted.map_err(|e| Error::io("lock", &self.path, e))?;
        let mut readers = self.readers();
        if shared && *readers > 0 {
            // Readers of this process took the lock without waiting while this one waited:
            // theirs stands, and one lock of the process is enough.
            drop(fd);
        } else {
            *self.granted.lock().unwrap_or_else(|e| e.into_inner()) = Some(fd);
        }
        if shared {
            *readers += 1;
        }
        Ok(())
    }

    /// The writers' gate that a wait ([`LockFile::wait`]) granted, held until dropped.
    pub(crate) fn gate_granted(&self, granted: Granted) -> Result<Locked, Error> {
        granted.map_err(|e| Error::io("lock", &self.path, e))
    }

    /// Whether an `fstat` made under the lock held now found this file empty, so its
    /// temporary-file mark clear: known without a read.
    pub(crate) fn mark_known_clear(&self) -> bool {
        self.clear_at_lock.load(Ordering::Acquire)
    }

    /// The mark, in this file, that a temporary file may have been left
    /// ([`TempMark`]): the core's to read and write, on this descriptor.
    pub(crate) fn temp_mark(&self) -> TempMark<'_> {
        TempMark::new(self.fd.as_fd(), &self.path).known(&self.clear_at_lock)
    }

    /// Joins this process's shared lock, or takes it for the process, unless a writer, in
    /// any process, holds the aid or is queued for it at the writers' gate
    /// ([`crate::lock::gate`]). Never blocks: a shared holder never waits for another shared
    /// holder, so `Ok(false)` always means a writer.
    pub(crate) fn try_shared(&self) -> Result<bool, Error> {
        if self.writer_queued()? {
            self.check()?;
            return Ok(false);
        }
        // Under the count's mutex, so that the first reader's non-blocking flock is not
        // mistaken for a writer by the readers that come meanwhile: they wait for the call
        // (not for the lock) and then join.
        let mut readers = self.readers();
        if *readers == 0 {
            let locked = self.flock(FlockOperation::NonBlockingLockShared)?;
            self.check_after(locked)?;
            if !locked {
                return Ok(false);
            }
        }
        *readers += 1;
        Ok(true)
    }

    /// Waits for the shared lock for this process, as [`LockFile::exclusive`] waits, by
    /// repeating [`LockFile::try_shared`].
    pub(crate) fn first_shared(
        &self,
        until: Option<Instant>,
        gone: &AtomicBool,
    ) -> Result<bool, Error> {
        Self::polling(until, gone, || self.try_shared())
    }

    /// Leaves the shared lock; the last shared holder of this process drops it.
    pub(crate) fn leave_shared(&self) {
        let mut readers = self.readers();
        *readers = readers.saturating_sub(1);
        if *readers == 0 {
            self.unlock();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Two opens of one file: two open file descriptions, whose flocks conflict as two
    /// processes' would.
    fn two_opens() -> (tempfile::TempDir, LockFile, LockFile) {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("1.lock");
        let open = || {
            let open = || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map(std::os::fd::OwnedFd::from)
            };
            let fd = crate::lock::fork_guard::may_wait(true, || TrackedFd::open(open, |e| e));
            LockFile::new(fd.unwrap(), path.clone())
        };
        let (ours, theirs) = (open(), open());
        (dir, ours, theirs)
    }

    /// The polling wait, used where no thread can wait in the kernel: it gives up at its
    /// deadline, or at once when its waiter is gone, and takes the lock once it is free.
    #[test]
    fn a_polling_wait_stops_at_its_deadline_or_its_waiter_and_gets_a_free_lock() {
        let (_dir, ours, theirs) = two_opens();
        assert!(theirs.try_exclusive().unwrap());
        let here = AtomicBool::new(false);
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!ours.exclusive(Some(soon), &here).unwrap());
        assert!(Instant::now() >= soon);
        assert!(
            !ours
                .first_shared(Some(soon), &AtomicBool::new(true))
                .unwrap()
        );

        let ours = Arc::new(ours);
        let gone = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (ours, gone) = (ours.clone(), gone.clone());
            std::thread::spawn(move || ours.exclusive(None, &gone).unwrap())
        };
        std::thread::sleep(Duration::from_millis(10));
        gone.store(true, Ordering::Release);
        assert!(!waiter.join().unwrap(), "a gone waiter stops waiting");

        let waiter = {
            let ours = ours.clone();
            std::thread::spawn(move || ours.exclusive(None, &AtomicBool::new(false)).unwrap())
        };
        std::thread::sleep(Duration::from_millis(10));
        theirs.unlock();
        assert!(waiter.join().unwrap(), "the lock, once free, is taken");
        assert!(!theirs.try_exclusive().unwrap());
    }
}
