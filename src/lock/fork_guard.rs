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
//! child an unlisted one. So opening-and-listing and forking exclude each other, through a
//! lock of atomics ([`STATE`]) that openers take shared and the prepare handler takes for
//! the fork (released by the parent handler, reset by the child handler). Forks take turns
//! with openers: once a fork ends, the openers that wait go before the next fork, so neither
//! side waits longer than one turn of the other: an opener at most one fork (the kernel
//! serialises forks of a process anyway: it copies the memory map under its write lock), a
//! fork at most the openings under way (an `open(2)` each, on tmpfs microseconds). An opening
//! never fails because of forks, and it never waits on a runtime thread: there it only tries,
//! and the caller moves it to a thread that may wait ([`may_wait`]) if a fork is in the way.
//!
//! A store carried into a forked child refuses to work there ([`Epoch`],
//! [`Error::Forked`]): its descriptors are no longer what it thinks they are.
//!
//! Only forks that run the `pthread_atfork` handlers are covered: libc's `fork()`, which
//! `std::process::Command` uses when it has a `pre_exec`. `posix_spawn` and `vfork` do not
//! run them, but their child execs (closing the descriptors) or exits at once; a raw
//! `clone`/`fork` system call made around libc is not covered.

use std::alloc::Layout;
use std::cell::Cell;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64};

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

/// Openings and forks, which exclude each other: openers inside ([`OPEN`]), a fork inside
/// ([`FORKING`]), openers and forks waiting ([`WANT_OPEN`], [`WANT_FORK`]), and whose turn
/// it is once a fork ends ([`OPENERS_TURN`]). One word, so that each step is one CAS.
static STATE: AtomicU64 = AtomicU64::new(0);
const OPEN: u64 = 1;
const OPEN_MASK: u64 = 0xffff;
const FORKING: u64 = 1 << 16;
/// Set by a fork that ends while openers wait: they go before the next fork; cleared once
/// every opener that waited is in.
const OPENERS_TURN: u64 = 1 << 17;
const WANT_OPEN: u64 = 1 << 20;
const WANT_OPEN_MASK: u64 = 0xf_ffff << 20;
const WANT_FORK: u64 = 1 << 40;
const WANT_FORK_MASK: u64 = 0xf_ffff << 40;

/// Bumped whenever a waiter of [`STATE`] may go on: the futex word they sleep on.
static WAKE: AtomicU32 = AtomicU32::new(0);

/// The longest a waiter sleeps before it looks again: a safety net only, as every change a
/// waiter waits for wakes it.
const NAP_NS: i64 = 10_000_000;

/// Bumped in each forked child: which process, in a line of forks, this one is.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's fork entered [`STATE`] (its prepare handler ran ours).
    static FORKING_HERE: Cell<bool> = const { Cell::new(false) };
    /// Whether this thread may wait for forks to end ([`may_wait`]).
    static MAY_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// Sleeps until [`WAKE`] moves from `seen` (or a nap has passed).
fn nap(seen: u32) {
    let nap = libc::timespec {
        tv_sec: 0,
        tv_nsec: NAP_NS,
    };
    // SAFETY: FUTEX_WAIT reads the aligned, live word and sleeps; nothing else is touched.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            WAKE.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            &nap as *const libc::timespec,
        )
    };
}

/// Wakes every waiter of [`STATE`].
fn wake() {
    WAKE.fetch_add(1, Release);
    // SAFETY: FUTEX_WAKE only reads the word's address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            WAKE.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

/// The prepare handler: runs in the parent just before each fork. Waits for the openings
/// under way (and, if the last fork let openers wait, for their turn), so that the child
/// has every descriptor of the store listed.
extern "C" fn before_fork() {
    STATE.fetch_add(WANT_FORK, AcqRel);
    loop {
        let seen = WAKE.load(Acquire);
        let entered = STATE.fetch_update(AcqRel, Acquire, |s| {
            (s & (OPEN_MASK | FORKING | OPENERS_TURN) == 0).then(|| s - WANT_FORK + FORKING)
        });
        if entered.is_ok() {
            FORKING_HERE.set(true);
            return;
        }
        nap(seen);
    }
}

/// The parent handler: runs in the parent once the fork is done; the openers that waited
/// go next.
extern "C" fn after_fork_in_parent() {
    // Not for a fork whose prepare handler was registered after it began.
    if !FORKING_HERE.replace(false) {
        return;
    }
    let before = STATE.fetch_update(AcqRel, Acquire, |s| {
        let s = s & !FORKING;
        Some(match s & WANT_OPEN_MASK {
            0 => s,
            _ => s | OPENERS_TURN,
        })
    });
    // A system call only if someone waits.
    if before.is_ok_and(|s| s & (WANT_OPEN_MASK | WANT_FORK_MASK) != 0) {
        wake();
    }
}

/// The child handler: runs in the new child, where only the forking thread exists and
/// only async-signal-safe work is allowed: atomics and plain system calls (rustix makes them
/// directly, without allocating or touching errno).
extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, SeqCst);
    // The openers, forks and waiters were the parent's, and this child's threads are gone.
    FORKING_HERE.set(false);
    STATE.store(0, SeqCst);
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

/// An opening, inside [`STATE`]: no fork begins until it is dropped.
struct Opening;

impl Opening {
    /// Enters at once if no fork is under way or waiting.
    fn try_enter() -> Option<Opening> {
        STATE
            .fetch_update(Acquire, Relaxed, |s| {
                (s & (FORKING | WANT_FORK_MASK) == 0 && s & OPEN_MASK < OPEN_MASK)
                    .then_some(s + OPEN)
            })
            .ok()
            .map(|_| Opening)
    }

    /// Enters, waiting for the fork under way and then for this opener's turn: at most one
    /// fork, since forks that come meanwhile wait for the openers that waited.
    fn enter() -> Opening {
        if let Some(opening) = Opening::try_enter() {
            return opening;
        }
        STATE.fetch_add(WANT_OPEN, AcqRel);
        loop {
            let seen = WAKE.load(Acquire);
            let entered = STATE.fetch_update(AcqRel, Acquire, |s| {
                let turn = s & WANT_FORK_MASK == 0 || s & OPENERS_TURN != 0;
                (s & FORKING == 0 && turn && s & OPEN_MASK < OPEN_MASK).then(|| {
                    let s = s - WANT_OPEN + OPEN;
                    match s & WANT_OPEN_MASK {
                        // Every opener that waited is in: the forks' turn.
                        0 => s & !OPENERS_TURN,
                        _ => s,
                    }
                })
            });
            if entered.is_ok() {
                return Opening;
            }
            nap(seen);
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        let before = STATE.fetch_sub(OPEN, Release);
        if before & (WANT_FORK_MASK | WANT_OPEN_MASK) != 0 {
            wake();
        }
    }
}

/// Runs `f` with this thread allowed (`allowed`) to wait for forks while it opens tracked
/// descriptors: on the blocking pool or a thread of the store's own, never on a runtime
/// thread. Elsewhere, an opening that meets a fork fails with an error [`busy`] recognises.
pub(crate) fn may_wait<T>(allowed: bool, f: impl FnOnce() -> T) -> T {
    /// Restores the thread's permission, even if `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            MAY_WAIT.set(self.0);
        }
    }
    let _restore = Restore(MAY_WAIT.replace(allowed));
    f()
}

/// The error of an opening that met a fork on a thread that may not wait for it.
#[derive(Debug)]
struct ForkUnderWay;

impl std::fmt::Display for ForkUnderWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a fork is under way in another thread; open where waiting is allowed")
    }
}

impl std::error::Error for ForkUnderWay {}

/// Whether `e` says that an opening met a fork and opened nothing: do it again on a thread
/// that may wait ([`may_wait`]).
pub(crate) fn busy(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|e| e.is::<ForkUnderWay>())
}

/// [`busy`], for the store's error.
pub(crate) fn busy_error(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if busy(source))
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

/// The slot a closed descriptor left free last (or null): where [`list`] looks first. A
/// store that touches many aids closes one aid's lock file for each it opens, so this spares
/// a walk over every open one. Only a hint: the slot is taken by the same CAS as in the walk.
static FREED: AtomicPtr<AtomicI32> = AtomicPtr::new(std::ptr::null_mut());

/// Lists `fd` in the table; the slot to clear when it is closed.
fn list(fd: RawFd) -> io::Result<&'static AtomicI32> {
    let held = fd
        .checked_add(1)
        .filter(|&h| h > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error()))?;
    // SAFETY: FREED holds null or a slot of a published chunk, which is never freed.
    if let Some(slot) = unsafe { FREED.swap(std::ptr::null_mut(), Relaxed).as_ref() }
        && slot.compare_exchange(0, held, SeqCst, SeqCst).is_ok()
    {
        return Ok(slot);
    }
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
    /// Opens a descriptor with `open` and lists it, with no fork in between: forks wait for
    /// the opening, and an opening waits for the fork under way, where this thread may wait
    /// ([`may_wait`]). Elsewhere (a runtime thread) it fails instead, opening nothing, with
    /// `fail`'s error of an error that [`busy`] recognises. Fails with `fail`'s error too if
    /// the fork handlers cannot be registered or the table cannot grow (no memory): never
    /// with a descriptor left unlisted.
    pub(crate) fn open<E>(
        open: impl FnOnce() -> Result<OwnedFd, E>,
        fail: impl FnOnce(io::Error) -> E,
    ) -> Result<TrackedFd, E> {
        if let Err(e) = register() {
            return Err(fail(e));
        }
        let opening = match Opening::try_enter() {
            Some(opening) => opening,
            None if MAY_WAIT.get() => Opening::enter(),
            None => {
                return Err(fail(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    ForkUnderWay,
                )));
            }
        };
        let fd = open()?;
        let slot = match list(fd.as_raw_fd()) {
            Ok(slot) => slot,
            Err(e) => return Err(fail(e)),
        };
        drop(opening);
        Ok(TrackedFd {
            fd: ManuallyDrop::new(fd),
            slot,
            generation: GENERATION.load(Relaxed),
        })
    }

    /// Whether this process is a forked child of the one that opened the descriptor, which
    /// then no longer refers to the file it was opened on.
    pub(crate) fn inherited(&self) -> bool {
        generation() != self.generation
    }
}

impl Drop for TrackedFd {
    fn drop(&mut self) {
        if !self.inherited() {
            // Unlisted before it is closed, so the handler never touches a number that
            // may already belong to another file.
            self.slot.store(0, SeqCst);
            FREED.store(std::ptr::from_ref(self.slot).cast_mut(), Relaxed);
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

/// This process's place in a line of forks: different in every forked child of the process.
pub(crate) fn generation() -> u64 {
    // The child handler bumps it on the one thread a child starts with, before any of the
    // child's code runs, and threads started later see it: no ordering needed.
    GENERATION.load(Relaxed)
}

/// Which process a store was made in, to refuse its use in a forked child: every operation
/// checks it, with one relaxed load.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epoch(u64);

impl Epoch {
    /// This process, now. Registers the fork handlers, so that a fork from now on is seen.
    pub(crate) fn now() -> Epoch {
        // A failure shows at the first descriptor opened, which needs the handlers.
        let _ = register();
        Epoch(generation())
    }

    /// `Err(Error::Forked)` in a forked child of the process the epoch was taken in.
    pub(crate) fn check(self) -> Result<(), Error> {
        match generation() == self.0 {
            true => Ok(()),
            false => Err(Error::Forked),
        }
    }
}

/// A future that refuses with `Error::Forked` when polled in a forked child of the process
/// whose `epoch` it was given, before it polls `fut`: a future carried into a child holds
/// descriptors and registrations of the parent's.
pub(crate) async fn refuse_in_child<T>(
    epoch: Epoch,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        if let Err(e) = epoch.check() {
            return std::task::Poll::Ready(Err(e));
        }
        fut.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_null() -> TrackedFd {
        may_wait(true, || {
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
        })
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

    /// An opening that meets a fork (simulated by the handlers) fails at once, opening
    /// nothing, where the thread may not wait, and waits for the fork's end where it may; a
    /// fork waits for the opening under way. (Briefly: other tests' openings wait too.)
    #[test]
    fn openings_and_forks_exclude_each_other() {
        let (forking_tx, forking_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let fork = std::thread::spawn(move || {
            before_fork();
            forking_tx.send(()).unwrap();
            end_rx.recv().unwrap();
            after_fork_in_parent();
        });
        forking_rx.recv().unwrap();
        let mut opened = false;
        let refused = TrackedFd::open(
            || {
                opened = true;
                rustix::fs::open(
                    c"/dev/null",
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io::Error::from)
            },
            |e| e,
        )
        .unwrap_err();
        assert!(busy(&refused) && !opened, "{refused}");

        let waiter = std::thread::spawn(|| may_wait(true, open_null));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "an opening went on during a fork");
        end_tx.send(()).unwrap();
        fork.join().unwrap();
        let fd = waiter.join().unwrap();
        assert!(listed(fd.as_raw_fd()));

        // A fork waits for the opening under way.
        let opening = Opening::enter();
        let fork = std::thread::spawn(|| {
            before_fork();
            after_fork_in_parent();
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!fork.is_finished(), "a fork began during an opening");
        drop(opening);
        fork.join().unwrap();
    }

    /// Openers that wait for a fork go before the next fork: a line of forks cannot keep
    /// them out.
    #[test]
    fn waiting_openers_go_before_the_next_fork() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let forkers: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(SeqCst) {
                        before_fork();
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        after_fork_in_parent();
                    }
                })
            })
            .collect();
        for _ in 0..20 {
            drop(may_wait(true, open_null));
        }
        stop.store(true, SeqCst);
        forkers.into_iter().for_each(|f| f.join().unwrap());
    }
}
