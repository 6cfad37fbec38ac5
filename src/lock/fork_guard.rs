//! Keeping the store's lock descriptors out of forked children.
//!
//! A flock belongs to the open file description, and a child made by `fork(2)` shares every
//! description of its parent until it execs (close-on-exec acts only at exec). If the parent
//! dies while such a child has not exec'd yet (a long `pre_exec`, a child stopped before
//! exec, a child that never execs), the child keeps the parent's locks. So every descriptor
//! that holds, or may come to hold, a lock of the store is a [`TrackedFd`], listed in a
//! process-wide table that a `pthread_atfork` child handler walks right after each fork: in
//! the child, it points each listed descriptor at an inert file (or closes it), which drops
//! the child's share of the description without releasing the parent's lock (unlike
//! `LOCK_UN`). The handler runs in a child that may have been forked from any thread at any
//! moment, so it neither allocates nor takes a lock: the table is a list of fixed chunks of
//! atomic slots, allocated by the parent, linked atomically and never freed.
//!
//! A descriptor is opened and listed in two steps, and a fork in between would give the
//! child an unlisted one. So a fork is counted as it starts and as it ends (the prepare
//! and parent handlers), and a descriptor is kept only if no fork was under way or began
//! while it was being opened and listed; otherwise it is closed (it holds no lock yet) and
//! opened again. Forks are never delayed.
//!
//! A store carried into a forked child refuses to work there ([`Epoch`],
//! [`Error::Forked`]): its descriptors are no longer what it thinks they are.
//!
//! Only forks that run the `pthread_atfork` handlers are covered: libc's `fork()`, which
//! `std::process::Command` uses when it has a `pre_exec`. `posix_spawn` and `vfork` do not
//! run them, but their child execs (closing the descriptors) or exits at once; a raw
//! `clone`/`fork` system call made around libc is not covered.

use std::alloc::Layout;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::io::DupFlags;

use crate::Error;

unsafe extern "C" {
    /// POSIX; in the C library that std links (glibc, musl).
    fn pthread_atfork(
        prepare: Option<unsafe extern "C" fn()>,
        parent: Option<unsafe extern "C" fn()>,
        child: Option<unsafe extern "C" fn()>,
    ) -> i32;
}

/// How many descriptor slots a chunk of the table holds.
const CHUNK: usize = 64;

/// A part of the table. A slot holds a descriptor plus one, or 0 when free.
struct Chunk {
    slots: [AtomicI32; CHUNK],
    /// The chunk added before this one. Set before the chunk is published, never changed.
    next: AtomicPtr<Chunk>,
}

/// The newest chunk of the table; the others follow through `next`.
static TABLE: AtomicPtr<Chunk> = AtomicPtr::new(std::ptr::null_mut());

/// Forks of this process: the number begun (high 32 bits, wrapping) and the number under
/// way (low 32 bits), so that one load tells whether any fork overlapped an interval.
static FORKS: AtomicU64 = AtomicU64::new(0);
const UNDER_WAY: u64 = 0xffff_ffff;
const BEGUN: u64 = 1 << 32;

/// Bumped in each forked child: which process, in a line of forks, this one is.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// How long [`TrackedFd::open`] waits for forks under way, and how many times it opens
/// again after one raced it, before it gives up.
const PATIENCE: Duration = Duration::from_secs(1);
const ATTEMPTS: u32 = 100;

/// The prepare handler: runs in the parent just before each fork.
extern "C" fn before_fork() {
    FORKS.fetch_add(BEGUN + 1, SeqCst);
}

/// The parent handler: runs in the parent once the fork is done.
extern "C" fn after_fork_in_parent() {
    // Never below zero, even for a fork that began before the handlers were registered.
    let _ = FORKS.fetch_update(SeqCst, SeqCst, |f| (f & UNDER_WAY != 0).then_some(f - 1));
}

/// The child handler: runs in the new child, where only the forking thread exists and
/// only async-signal-safe work is allowed: atomics and plain system calls (rustix makes them
/// directly, without allocating or touching errno).
extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, SeqCst);
    // The forks under way were the parent's, and this child's threads are gone.
    FORKS.fetch_and(!UNDER_WAY, SeqCst);
    // An `O_PATH` descriptor can be neither read, written nor locked; opened at the first
    // listed descriptor, so that a process without any pays nothing.
    let mut inert: Option<Option<OwnedFd>> = None;
    let mut chunk = TABLE.load(SeqCst);
    // SAFETY: published chunks are never freed or moved.
    while let Some(c) = unsafe { chunk.as_ref() } {
        for slot in &c.slots {
            let held = slot.swap(0, SeqCst);
            if held > 0 {
                let inert = inert.get_or_insert_with(|| {
                    rustix::fs::open(c"/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).ok()
                });
                disarm(held - 1, inert.as_ref());
            }
        }
        chunk = c.next.load(SeqCst);
    }
}

/// Makes the child's descriptor `fd` refer to `inert` instead of the parent's open file
/// description, or closes it if there is no inert file. Either way the number's owner in
/// the child (a [`TrackedFd`] copied by the fork) leaves it alone from then on.
fn disarm(fd: RawFd, inert: Option<&OwnedFd>) {
    // SAFETY: `fd` was listed, so it was open at the fork (a descriptor is listed after it
    // is opened and unlisted before it is closed), and it is not closed here through this
    // value (ManuallyDrop).
    let mut target = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let replaced =
        inert.is_some_and(|i| rustix::io::dup3(i, &mut target, DupFlags::CLOEXEC).is_ok());
    if !replaced {
        // SAFETY: as above; its owner in the child never closes it (TrackedFd::drop).
        unsafe { rustix::io::close(fd) };
    }
}

/// Registers the fork handlers, once per process.
fn register() -> io::Result<()> {
    static REGISTERED: OnceLock<i32> = OnceLock::new();
    // SAFETY: the handlers are plain functions that live as long as the process; they make
    // only async-signal-safe calls (the child handler) or touch one atomic (the others).
    let rc = *REGISTERED.get_or_init(|| unsafe {
        pthread_atfork(
            Some(before_fork),
            Some(after_fork_in_parent),
            Some(after_fork_in_child),
        )
    });
    match rc {
        0 => Ok(()),
        rc => Err(io::Error::from_raw_os_error(rc)),
    }
}

/// Lists `fd` in the table; the slot to clear when it is closed.
fn list(fd: RawFd) -> io::Result<&'static AtomicI32> {
    let held = fd
        .checked_add(1)
        .filter(|&h| h > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error()))?;
    let mut chunk = TABLE.load(SeqCst);
    // SAFETY: published chunks are never freed or moved.
    while let Some(c) = unsafe { chunk.as_ref() } {
        for slot in &c.slots {
            if slot.load(SeqCst) == 0 && slot.compare_exchange(0, held, SeqCst, SeqCst).is_ok() {
                return Ok(slot);
            }
        }
        chunk = c.next.load(SeqCst);
    }
    // Every slot is taken: a new chunk, with `fd` in its first slot. All zeros are free
    // slots and a null `next`.
    // SAFETY: `Chunk` has a non-zero size.
    let new = unsafe { std::alloc::alloc_zeroed(Layout::new::<Chunk>()) }.cast::<Chunk>();
    // SAFETY: a null pointer is refused; otherwise the memory is a valid, zeroed `Chunk`
    // that lives forever (it is never freed).
    let new: &'static Chunk = unsafe { new.as_ref() }
        .ok_or_else(|| io::Error::from_raw_os_error(rustix::io::Errno::NOMEM.raw_os_error()))?;
    new.slots[0].store(held, SeqCst);
    let mut head = TABLE.load(SeqCst);
    loop {
        new.next.store(head, SeqCst);
        let ptr = std::ptr::from_ref(new).cast_mut();
        match TABLE.compare_exchange(head, ptr, SeqCst, SeqCst) {
            Ok(_) => return Ok(&new.slots[0]),
            Err(now) => head = now,
        }
    }
}

/// Waits until no fork is under way; the count of forks then.
fn quiet(deadline: Instant) -> io::Result<u64> {
    loop {
        let forks = FORKS.load(SeqCst);
        if forks & UNDER_WAY == 0 {
            return Ok(forks);
        }
        if Instant::now() >= deadline {
            return Err(raced());
        }
        std::thread::yield_now();
    }
}

fn raced() -> io::Error {
    io::Error::new(
        io::ErrorKind::WouldBlock,
        "forks in other threads kept racing the descriptor's opening, so a child might have \
         kept it unseen",
    )
}

/// A descriptor that no forked child keeps: listed for the fork handler from the moment it
/// is opened until it is closed. Use it for every descriptor that holds or may hold a lock
/// of the store, as the lock file's and the waiting threads' descriptors do.
///
/// In a forked child, a `TrackedFd` copied from the parent no longer refers to the
/// parent's file (the handler disarmed it) and is never closed by its drop (its number
/// may have been given to another file); [`TrackedFd::inherited`] tells.
#[derive(Debug)]
pub(crate) struct TrackedFd {
    fd: ManuallyDrop<OwnedFd>,
    slot: &'static AtomicI32,
    generation: u64,
}

impl TrackedFd {
    /// Opens a descriptor with `open` and lists it, so that no fork can slip in between: if
    /// a fork was under way or began meanwhile, the descriptor, which holds no lock yet, is
    /// closed and `open` called again. Fails with `fail`'s error if the fork handlers cannot
    /// be registered, if the table cannot grow (no memory), or if forks kept racing the
    /// opening for about a second: never with a descriptor left unlisted.
    pub(crate) fn open<E>(
        open: impl FnMut() -> Result<OwnedFd, E>,
        fail: impl FnOnce(io::Error) -> E,
    ) -> Result<TrackedFd, E> {
        TrackedFd::open_within(PATIENCE, open, fail)
    }

    fn open_within<E>(
        patience: Duration,
        mut open: impl FnMut() -> Result<OwnedFd, E>,
        fail: impl FnOnce(io::Error) -> E,
    ) -> Result<TrackedFd, E> {
        if let Err(e) = register() {
            return Err(fail(e));
        }
        let deadline = Instant::now() + patience;
        for _ in 0..ATTEMPTS {
            let before = match quiet(deadline) {
                Ok(forks) => forks,
                Err(e) => return Err(fail(e)),
            };
            let fd = open()?;
            let slot = match list(fd.as_raw_fd()) {
                Ok(slot) => slot,
                Err(e) => return Err(fail(e)),
            };
            if FORKS.load(SeqCst) == before {
                return Ok(TrackedFd {
                    fd: ManuallyDrop::new(fd),
                    slot,
                    generation: GENERATION.load(SeqCst),
                });
            }
            // A child forked meanwhile may have it unlisted: let it keep this one.
            slot.store(0, SeqCst);
            drop(fd);
        }
        Err(fail(raced()))
    }

    /// Whether this process is a forked child of the one that opened the descriptor, which
    /// then no longer refers to the file it was opened on.
    pub(crate) fn inherited(&self) -> bool {
        GENERATION.load(SeqCst) != self.generation
    }
}

impl Drop for TrackedFd {
    fn drop(&mut self) {
        if !self.inherited() {
            // Unlisted before it is closed, so the handler never touches a number that
            // may already belong to another file.
            self.slot.store(0, SeqCst);
            // SAFETY: dropped once, here.
            unsafe { ManuallyDrop::drop(&mut self.fd) };
        }
    }
}

impl AsFd for TrackedFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TrackedFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Which process a store was made in, to refuse its use in a forked child.
#[derive(Debug)]
pub(crate) struct Epoch(u64);

impl Epoch {
    /// This process, now. Registers the fork handlers, so that a fork from now on is seen.
    pub(crate) fn now() -> Epoch {
        // A failure shows at the first descriptor opened, which needs the handlers.
        let _ = register();
        Epoch(GENERATION.load(SeqCst))
    }

    /// `Err(Error::Forked)` in a forked child of the process the epoch was taken in.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if GENERATION.load(SeqCst) == self.0 {
            Ok(())
        } else {
            Err(Error::Forked)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_null() -> TrackedFd {
        TrackedFd::open(
            || {
                rustix::fs::open(
                    c"/dev/null",
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            },
            |e| panic!("track: {e}"),
        )
        .unwrap()
    }

    fn listed(fd: RawFd) -> bool {
        let mut chunk = TABLE.load(SeqCst);
        while let Some(c) = unsafe { chunk.as_ref() } {
            if c.slots.iter().any(|s| s.load(SeqCst) == fd + 1) {
                return true;
            }
            chunk = c.next.load(SeqCst);
        }
        false
    }

    /// Descriptors are listed while open, past one chunk, and unlisted when dropped; slots
    /// are reused.
    #[test]
    fn descriptors_are_listed_while_open() {
        let fds: Vec<TrackedFd> = (0..3 * CHUNK).map(|_| open_null()).collect();
        assert!(fds.iter().all(|fd| listed(fd.as_raw_fd())));
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        drop(fds);
        // Other tests of this binary may have reused the numbers meanwhile, but not all.
        assert!(raw.iter().filter(|&&fd| listed(fd)).count() < CHUNK);
        let again = open_null();
        assert!(listed(again.as_raw_fd()) && !again.inherited());
    }

    /// An opening raced by a fork (simulated by the handlers' counts) is made again.
    #[test]
    fn an_opening_raced_by_a_fork_is_made_again() {
        let mut opened = 0;
        let fd = TrackedFd::open(
            || {
                opened += 1;
                if opened == 1 {
                    before_fork();
                    after_fork_in_parent();
                }
                rustix::fs::open(
                    c"/dev/null",
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            },
            |e| panic!("track: {e}"),
        )
        .unwrap();
        assert!(opened >= 2, "the raced descriptor was kept");
        assert!(listed(fd.as_raw_fd()));
    }

    /// A fork that does not end (as seen from here) makes opening fail, opening nothing.
    /// (Briefly: other tests' openings wait for it meanwhile.)
    #[test]
    fn a_fork_under_way_for_too_long_fails_the_opening() {
        let patience = Duration::from_millis(20);
        before_fork();
        let start = Instant::now();
        let mut opened = false;
        let got = TrackedFd::open_within(
            patience,
            || {
                opened = true;
                Ok(rustix::fs::open(
                    c"/dev/null",
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?)
            },
            |e: io::Error| e,
        );
        after_fork_in_parent();
        let err = got.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert!(start.elapsed() >= patience && !opened);
    }
}
