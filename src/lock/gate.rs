//! The writers' gate: how a writer waiting in one process stops new readers in every other.
//!
//! `flock(2)` grants `LOCK_SH` to anyone while no `LOCK_EX` is held, even with a `LOCK_EX`
//! waiting, and a process's shared holders share one `LOCK_SH` (`lock/file.rs`), so readers
//! that overlap, in one process or several, could keep a writer out forever. The gate is a
//! second lock on the same lock file: an open-file-description (OFD) lock, `fcntl(2)`
//! `F_OFD_SETLKW`, on the whole file. On Linux, OFD locks and flocks never conflict with one
//! another, so the gate and the aid's flock are two independent locks of one file. (On NFS,
//! where `flock` is emulated with byte-range locks, they may interact; the run directory
//! belongs on a local filesystem, normally tmpfs.)
//!
//! # Protocol
//!
//! - A writer first tries `LOCK_EX` without blocking, on the store's descriptor; if it gets
//!   it, it never touches the gate, so an uncontended exclusive hold costs what it did.
//! - A writer that must wait takes the gate exclusively (`F_WRLCK`): at once, on the store's
//!   descriptor, if no other writer has it; otherwise waiting behind the writers there. Then
//!   it tries `LOCK_EX` once more, and otherwise waits for it.
//!   It keeps the gate until it has the flock, or gives up, and then lets go at once.
//!   "A writer is queued" means: some open file description holds the gate.
//! - A reader, before it joins or takes its process's `LOCK_SH`, asks whether any writer
//!   holds the gate (`F_OFD_GETLK`: one syscall, taking nothing). If none does, it goes on as
//!   before. If one does (or `LOCK_SH` is refused), it does not join: with `Wait::Never` it
//!   fails; otherwise it waits until the gate is open (takes it shared, `F_RDLCK`, which
//!   waits while a writer holds it, and lets go at once), then tries `LOCK_SH` once more,
//!   and otherwise waits for it.
//!
//! Waits at the gate run like the waits for the flock (`lock/kernel_wait.rs`): in the kernel,
//! on a thread of its own with a descriptor of its own (a second open of the lock file), which
//! hands the descriptor, holding the gate, to the waiter. A writer keeps the gate (on the
//! store's descriptor, or on the one handed over) in its future, so a writer dropped or timed
//! out while it waits for the flock releases the gate as its future is dropped, and one that
//! gives up before the gate comes leaves the thread to release it when it does. On the store's
//! descriptor, the gate is only ever held by the one writer of that store that is waiting (it
//! has the store's exclusive turn); that store's readers, kept out by that turn meanwhile, are
//! the only ones its `F_OFD_GETLK` could not see it from. A blocking wait never uses the
//! store's descriptor: a thread left waiting there would take the gate after its writer left.
//! So the gate adds no descriptor to the store: only the waiting threads' own, as the flock
//! waits already had.
//!
//! So once a writer anywhere holds the gate, no new shared holder anywhere gets in before it:
//! only readers that asked before the writer took the gate (at most one per task that was
//! about to take the aid) can still overtake it, and a reader already waiting in the
//! kernel's flock queue may be granted the flock alongside or before it (at most one such
//! wait per process and store). Writers queue among themselves on the gate, in the kernel's
//! order; the one in front waits in the flock queue behind the holders of the moment.
//! Where no thread can wait (no `/proc` to reopen the file, or no thread to be had), a
//! writer that finds the gate taken by another writer goes on without it and polls for the
//! flock: readers can then overtake it.
//!
//! # Why it cannot deadlock
//!
//! Order the locks: the in-process turn, then the process's first-reader mutex, then the
//! gate, then the flock. Every wait follows that order:
//! - The gate is held exclusively only by a writer that waits for the flock (or by a
//!   thread about to hand it over or release it). That writer waits for the flock and for
//!   nothing else.
//! - The gate is held shared only by a reader that has just passed it, until its task drops
//!   it, which waits for nothing meanwhile.
//! - The flock is held by holders (a `Hold`), which wait for nothing of the aid, and by
//!   threads that got it and hand it over or release it without waiting.
//! - A reader waiting for the gate, or a writer waiting for it behind another writer, holds
//!   only locks of its own process, taken before (its turn; a reader, the first-reader
//!   mutex), and nothing of the flock.
//!
//! So a writer at the gate waits only for the flock's holders of the moment, who leave
//! without waiting for the gate, and a reader at the gate waits only for writers that are
//! themselves in front. The one cycle left is the user's: a task that holds the aid shared
//! and takes it shared again (or waits for a task that does) while a writer is queued,
//! anywhere, waits behind that writer, which waits for the outer hold. That was already so
//! for a writer queued in the same process; `with_aid_shared` documents it.

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;

/// Whether some writer holds the gate of the lock file open as `fd`: a writer of another
/// process, or of this one waiting on its own descriptor. Never blocks; takes nothing.
pub(crate) fn writer_queued(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut lock = whole_file(libc::F_RDLCK);
    fcntl(fd, libc::F_OFD_GETLK, &mut lock)?;
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

/// Takes the gate for a writer, waiting behind any writer that holds it. Blocks: call it on
/// a waiting thread, on a descriptor of its own. Released by [`release`], or when the last
/// descriptor of this open file description is closed.
pub(crate) fn take(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    fcntl(fd, libc::F_OFD_SETLKW, &mut whole_file(libc::F_WRLCK))
}

/// Takes the gate for a writer if no other open file description holds it. Never blocks.
/// On the store's own descriptor, only the one writer of the store that is waiting (it has
/// the store's exclusive turn) may take it, so that one release cannot end another's hold.
pub(crate) fn try_take(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    match fcntl(fd, libc::F_OFD_SETLK, &mut whole_file(libc::F_WRLCK)) {
        Ok(()) => Ok(true),
        Err(Errno::AGAIN | Errno::ACCESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Lets go of the gate taken by [`take`] or [`try_take`] (nothing if this description holds
/// none).
pub(crate) fn release(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    fcntl(fd, libc::F_OFD_SETLK, &mut whole_file(libc::F_UNLCK))
}

/// Waits until no writer holds the gate, for a reader: takes it shared, which waits while a
/// writer holds it. Let go at once with [`release`]. Blocks: call it on a waiting thread, on
/// a descriptor of its own (a shared lock on a description that holds the gate exclusively
/// would replace that one).
pub(crate) fn pass_wait(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    fcntl(fd, libc::F_OFD_SETLKW, &mut whole_file(libc::F_RDLCK))
}

/// A lock request for the whole file, now and as it grows.
fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is plain old data; all zeroes is a valid value (and `l_pid` must be 0
    // for the OFD commands).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 0;
    lock
}

/// One OFD-lock `fcntl`, retried on interruption.
fn fcntl(fd: BorrowedFd<'_>, cmd: libc::c_int, lock: &mut libc::flock) -> Result<(), Errno> {
    loop {
        // SAFETY: `fd` is open for the duration of the call, and `lock` points to a valid,
        // exclusively borrowed `struct flock`, which the OFD lock commands read and
        // (`F_OFD_GETLK`) write.
        let done = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, lock as *mut libc::flock) };
        if done != -1 {
            return Ok(());
        }
        let raw = std::io::Error::last_os_error().raw_os_error();
        match Errno::from_raw_os_error(raw.unwrap_or(libc::EIO)) {
            Errno::INTR => continue,
            e => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, OwnedFd};
    use std::time::Duration;

    use super::*;

    fn open_file(path: &std::path::Path) -> OwnedFd {
        OwnedFd::from(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .unwrap(),
        )
    }

    /// The gate is seen by other descriptions, holds back a passing reader until it opens,
    /// and is independent of the file's flock.
    #[test]
    fn a_closed_gate_holds_readers_back_until_it_opens() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("1.lock");
        let (store, writer, reader) = (open_file(&path), open_file(&path), open_file(&path));
        assert!(!writer_queued(store.as_fd()).unwrap());
        // Independent of flock: a LOCK_EX elsewhere neither shows nor blocks.
        rustix::fs::flock(&store, rustix::fs::FlockOperation::LockExclusive).unwrap();
        take(writer.as_fd()).unwrap();
        assert!(writer_queued(store.as_fd()).unwrap());
        assert!(writer_queued(reader.as_fd()).unwrap());
        assert!(
            !try_take(store.as_fd()).unwrap(),
            "two writers at the gate at once"
        );
        let passed = std::thread::spawn(move || {
            pass_wait(reader.as_fd()).unwrap();
            release(reader.as_fd()).unwrap();
            reader
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(!passed.is_finished(), "a reader passed a closed gate");
        release(writer.as_fd()).unwrap();
        let reader = passed.join().unwrap();
        assert!(!writer_queued(store.as_fd()).unwrap());
        // Passing leaves nothing held: a writer takes the gate again at once, and releases it.
        assert!(try_take(store.as_fd()).unwrap());
        assert!(writer_queued(reader.as_fd()).unwrap());
        assert!(
            !writer_queued(store.as_fd()).unwrap(),
            "a description sees its own lock"
        );
        release(store.as_fd()).unwrap();
        assert!(!writer_queued(reader.as_fd()).unwrap());
    }
}
