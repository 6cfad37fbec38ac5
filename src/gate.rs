//! The writers' gate: how a writer waiting in one process stops new readers in every other.
//!
//! `flock(2)` grants `LOCK_SH` to anyone while no `LOCK_EX` is held, even with a `LOCK_EX`
//! waiting, and a process's shared holders share one `LOCK_SH` (`lock.rs`), so readers that
//! overlap, in one process or several, could keep a writer out forever. The gate is a
//! second lock on the same lock file: an open-file-description (OFD) lock, `fcntl(2)`
//! `F_OFD_SETLKW`, on the whole file. On Linux, OFD locks and flocks never conflict with one
//! another, so the gate and the aid's flock are two independent locks of one file. (On NFS,
//! where `flock` is emulated with byte-range locks, they would interact; the run directory
//! belongs on a local filesystem, normally tmpfs.)
//!
//! # Protocol
//!
//! - A writer first tries `LOCK_EX` without blocking, on the store's descriptor; if it gets
//!   it, it never touches the gate, so an uncontended exclusive hold costs what it did.
//! - A writer that must wait does so on a thread of its own (`flock_wait.rs`), on a
//!   descriptor of its own: it takes the gate exclusively (`F_WRLCK`, waiting behind any
//!   writer already there), then waits for `LOCK_EX`, and lets go of the gate the moment it
//!   has it. "A writer is queued" means: some open file description holds the gate.
//! - A reader, before it takes or joins its process's `LOCK_SH`, asks whether any writer
//!   holds the gate (`F_OFD_GETLK`, one syscall, taking nothing). If none does, it goes on as
//!   before; if one does, it does not join, and waits on a thread of its own: it passes the
//!   gate (takes it shared, `F_RDLCK`, which waits while a writer holds it, and lets go at
//!   once), then waits for `LOCK_SH`.
//!
//! So once a writer anywhere holds the gate, no new shared holder anywhere gets in before it:
//! only readers that asked before the writer took the gate (at most one per task that was
//! about to take the aid) can still overtake it. Writers queue among themselves on the gate,
//! in the kernel's order, and the one in front waits in the kernel's flock queue, where only
//! the holders of the moment stand before it.
//!
//! # Why it cannot deadlock
//!
//! Order the locks: the in-process turn, then the process's first-reader mutex, then the
//! gate, then the flock. Every wait follows that order:
//! - The gate is held exclusively only by a writer's waiting thread, which waits for one
//!   thing, the flock, and holds nothing else (no turn, no mutex: those belong to the task
//!   that waits for the thread's answer, and the thread never waits for that task).
//! - The gate is held shared only by a reader's waiting thread, between two calls that do
//!   not block: a reader never holds the gate while it waits for the flock, nor a writer
//!   while it waits for another writer.
//! - A flock is held by holders (a `Hold`), which wait for nothing of the aid; a thread that
//!   got the flock hands it over or releases it without waiting.
//!
//! So a writer at the gate waits only for the flock's holders of the moment, who leave
//! without waiting for the gate, and a reader at the gate waits only for writers that are
//! themselves in front. The one cycle left is the user's: a task that holds the aid shared
//! and takes it shared again (or waits for a task that does) while a writer is queued,
//! anywhere, waits behind that writer, which waits for the outer hold. That was already so
//! for a writer queued in the same process; it is documented on `with_aid_shared`.
//!
//! A waiting thread whose waiter gave up keeps its place until the flock comes, then lets go
//! of everything (`flock_wait.rs`); until then, a writer's thread still counts as a queued
//! writer. Its wait is bounded by the holders of the moment, as a live writer's would be.
//!
//! Every gate lock is taken on a waiting thread's own descriptor (a second open of the lock
//! file), which that thread owns and closes; the store's own descriptors only ever ask
//! (`F_OFD_GETLK`). So the gate adds no long-lived descriptor to the store.

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

/// Lets go of the gate taken by [`take`] (nothing if this description holds none).
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
        // Passing leaves nothing held: a writer closes the gate again at once.
        take(writer.as_fd()).unwrap();
        assert!(writer_queued(reader.as_fd()).unwrap());
    }
}
