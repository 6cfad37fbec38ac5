//! Telling a live instance from a ghost: a pid alone is reused, so an entry also records its
//! process's start time (field 22 of `/proc/<pid>/stat`) and the boot it started in
//! (`/proc/sys/kernel/random/boot_id`), as runc and crun do.
//!
//! The kernel shifts the start times it shows by the reader's time namespace's boottime
//! offset, so two supervisors in different time namespaces (`unshare --time`, a CRIU
//! restore) read different numbers for one process. Start times are therefore recorded and
//! compared in the host's clock: each reader undoes its own offset
//! (`/proc/self/timens_offsets`). Only an offset that is not a whole number of ticks makes
//! that conversion inexact (by one tick), so only then are start times compared within one
//! tick; otherwise exactly.
//!
//! A start time tells apart only processes started in different ticks. From Linux 6.9 a
//! pidfd's inode number (pidfs) is unique for the boot, so it is recorded too where the
//! kernel has it, and a pid reused within the same tick is told apart as well.
//!
//! Synchronous (a few small procfs reads, which never wait on a device), and outside the
//! core: it is about processes, not the store's files.

use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

mod timens;

use timens::{boottime_offset, to_host};

/// Who a pid was when its state was built: enough to tell it from a later process that
/// reuses the pid.
///
/// ```
/// use runstate::ProcessIdentity;
///
/// let me = ProcessIdentity::of(std::process::id()).expect("/proc shows this process");
/// assert_eq!(ProcessIdentity::of(std::process::id()), Some(me));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessIdentity {
    /// The process's start time, in clock ticks after boot (`/proc/<pid>/stat`, field 22),
    /// in the host's clock: as read outside any time namespace, whichever namespace the
    /// saving process was in.
    pub start_time: u64,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), a UUID.
    pub boot_id: String,
    /// Whether `start_time` is exact. It is not when it was converted from a time namespace
    /// whose boottime offset is not a whole number of clock ticks (the conversion can then be
    /// one tick off), nor in entries saved by versions that did not record this: such start
    /// times are compared within one tick, others exactly.
    #[serde(default)]
    pub start_exact: bool,
    /// The inode number of a pidfd of the process (`fstat` on `pidfd_open(pid)`), unique
    /// among the processes of one boot where pidfds live in pidfs (Linux 6.9 and later,
    /// 64-bit); `None` on older kernels, for a process in another pid namespace than the
    /// recorder's `/proc`, and in entries saved by versions that did not record it. When both
    /// sides have one, a process is the recorded one only if it has the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfs_inode: Option<u64>,
}

/// The boot id of this machine, read from `/proc` once per process: it cannot change while
/// the process runs.
static BOOT_ID: OnceLock<String> = OnceLock::new();

impl ProcessIdentity {
    /// An identity from its parts, for states read from elsewhere and for tests: its start
    /// time is taken as exact, and it has no pidfs inode.
    pub fn new(start_time: u64, boot_id: impl Into<String>) -> ProcessIdentity {
        ProcessIdentity {
            start_time,
            boot_id: boot_id.into(),
            start_exact: true,
            pidfs_inode: None,
        }
    }

    /// The identity of `pid` now, from `/proc`; `None` if `/proc` does not show it. A zombie
    /// (exited, not yet reaped) has one too, so that its entry reads as dead.
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        identify(Path::new("/proc"), pid, &BOOT_ID)
    }

    /// The identity of `pid` as the proc file system mounted at `proc_root` shows it: for
    /// another pid namespace's `/proc`, or a fake one in tests (see
    /// [`Options::proc_root`](crate::Options::proc_root)).
    pub fn read(proc_root: impl AsRef<Path>, pid: u32) -> Option<ProcessIdentity> {
        let proc_root = proc_root.as_ref();
        if proc_root == Path::new("/proc") {
            return ProcessIdentity::of(pid);
        }
        identify(proc_root, pid, &OnceLock::new())
    }
}

/// Whether an entry's process is still running.
///
/// Its text form, in `Display` and with serde, is the lowercase name.
///
/// ```
/// use runstate::Liveness;
/// assert_eq!(Liveness::Dead.to_string(), "dead");
/// assert_eq!(format!("[{:<7}]", Liveness::Alive), "[alive  ]");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// The pid exists, with the recorded start time, in the same boot, and with the
    /// recorded pidfs inode where both the entry and this kernel have one. Start times are
    /// compared in the host's clock, to the clock tick (10 ms): exactly, unless a time
    /// namespace's offset that is not a whole number of ticks was undone on either side
    /// (see [`ProcessIdentity::start_exact`]), then within one tick.
    Alive,
    /// The pid is gone (`/proc` does not show it, and where that is this process's own
    /// `/proc`, `kill(pid, 0)` finds no process either), or now belongs to another process,
    /// or the machine has rebooted.
    Dead,
    /// The entry records no identity (its process was not visible in `/proc` when it was
    /// saved), or `/proc` cannot be read, or hides a process that has the pid (as with
    /// `hidepid=2`): nothing can be said.
    Unknown,
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad, not write_str, so that width and alignment work in tables.
        f.pad(match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown",
        })
    }
}

/// What reading a process's start time found.
enum Probe {
    /// Running (or stopped, sleeping...), with this start time.
    Started(Start),
    /// Exited but not yet reaped by its parent (a zombie), with this start time.
    Exited(Start),
    Gone,
    Unreadable,
}

/// A start time in the host's clock, and whether converting it there was exact.
#[derive(Clone, Copy)]
struct Start {
    ticks: u64,
    exact: bool,
}

fn start_time(proc_root: &Path, pid: u32) -> Probe {
    let mut path = proc_root.to_path_buf();
    path.push(pid.to_string());
    path.push("stat");
    let mut buf = [0u8; 1024];
    let Some(offset) = boottime_offset(proc_root) else {
        return Probe::Unreadable;
    };
    let start = |s: &Stat| Start {
        ticks: to_host(s.start, offset.ticks),
        exact: offset.exact,
    };
    match read_small(&path, &mut buf) {
        Ok(stat) => match parse_stat(stat) {
            // Z: a zombie; X: dead, being reaped. The state is the main thread's: a process
            // whose main thread has exited while others run shows Z too, but with more than
            // one thread, and is alive.
            Some(
                s @ Stat {
                    state: b'Z' | b'X',
                    threads: ..=1,
                    ..
                },
            ) => Probe::Exited(start(&s)),
            Some(s) => Probe::Started(start(&s)),
            None => Probe::Unreadable,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Probe::Gone,
        // ESRCH: the process exited between open and read.
        Err(e) if e.raw_os_error() == Some(3) => Probe::Gone,
        Err(_) => Probe::Unreadable,
    }
}

/// Whether a start time read now is the recorded one's: equal, or one tick apart where
/// undoing an offset that is not a whole number of ticks, on either side, can leave that.
/// A pid reused one tick later (`ns_last_pid`, a small `pid_max`) is told apart only where
/// both conversions were exact, or by the pidfs inode.
fn same_start(recorded: &ProcessIdentity, now: Start) -> bool {
    match recorded.start_exact && now.exact {
        true => recorded.start_time == now.ticks,
        false => recorded.start_time.abs_diff(now.ticks) <= 1,
    }
}

/// The pidfs inode of the process `pid` of this process's own pid namespace: `Ok(None)`
/// where pidfds are not in pidfs (before Linux 6.9: every pidfd shares one anonymous inode)
/// or inode numbers are not unique (32-bit), or no pidfd can be had (no descriptor left, a
/// thread's id); `Err` only when no process has the pid.
fn pidfs_inode(pid: u32) -> Result<Option<u64>, ()> {
    const PIDFS_MAGIC: i64 = 0x5049_4446;
    static IN_PIDFS: OnceLock<bool> = OnceLock::new();
    if usize::BITS < 64 || IN_PIDFS.get() == Some(&false) {
        return Ok(None);
    }
    // 0 would be this process, and pids beyond i32 are no process's.
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Err(());
    };
    let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Err(()),
        Err(_) => return Ok(None),
    };
    let in_pidfs = match IN_PIDFS.get() {
        Some(&known) => known,
        None => match rustix::fs::fstatfs(&fd) {
            #[allow(clippy::unnecessary_cast)] // f_type's type differs between targets.
            Ok(fs) => *IN_PIDFS.get_or_init(|| fs.f_type as i64 == PIDFS_MAGIC),
            Err(_) => return Ok(None),
        },
    };
    if !in_pidfs {
        return Ok(None);
    }
    #[allow(clippy::unnecessary_cast)] // st_ino is u32 on some 32-bit targets.
    Ok(rustix::fs::fstat(&fd).ok().map(|st| st.st_ino as u64))
}

/// Reads a small /proc file with one read(2) into `buf`. /proc files report size 0, so
/// `fs::read` would stat them and then read in growing steps; a stat line or a boot id fits
/// in 1 KiB. A file that fills the buffer is cut, which a stat line never is (its fields
/// after the command name are numbers, and the name is at most 64 bytes).
pub(super) fn read_small<'b>(path: &Path, buf: &'b mut [u8]) -> std::io::Result<&'b [u8]> {
    use std::io::Read;
    let n = std::fs::File::open(path)?.read(buf)?;
    Ok(&buf[..n])
}

/// What liveness needs of a stat line.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    /// Field 3: the main thread's state, one letter.
    state: u8,
    /// Field 20: how many threads the process has.
    threads: u64,
    /// Field 22: the start time, in clock ticks after boot.
    start: u64,
}

/// The fields of a stat line that liveness needs. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let after = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
    let mut fields = std::str::from_utf8(after).ok()?.split_ascii_whitespace();
    let state = match fields.next()?.as_bytes() {
        [letter] => *letter,
        _ => return None,
    };
    // After field 3: field 20 is the 17th next, and field 22 the 2nd after that.
    let threads = fields.nth(20 - 4)?.parse().ok()?;
    let start = fields.nth(1)?.parse().ok()?;
    Some(Stat {
        state,
        threads,
        start,
    })
}

fn boot_id(proc_root: &Path) -> Option<String> {
    let mut buf = [0u8; 128];
    let text = read_small(&proc_root.join("sys/kernel/random/boot_id"), &mut buf).ok()?;
    let id = std::str::from_utf8(text).ok()?.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// The identity of `pid` now, or `None` if `/proc` does not show it. `boot` caches the boot
/// id, which cannot change while this process runs, once it has been read.
pub(crate) fn identify(
    proc_root: &Path,
    pid: u32,
    boot: &OnceLock<String>,
) -> Option<ProcessIdentity> {
    // A zombie is identified too: an entry saved for a child that exited at once is then
    // known to be dead, rather than of unknown liveness.
    let (Probe::Started(start) | Probe::Exited(start)) = start_time(proc_root, pid) else {
        return None;
    };
    // A pid reused between the two reads leaves an identity that matches no process, which
    // reads as dead: so the recorded process is, by then.
    let pidfs_inode = match proc_is_ours(proc_root) {
        true => pidfs_inode(pid).ok().flatten(),
        false => None,
    };
    let boot_id = match boot.get() {
        Some(id) => id.clone(),
        // Only a boot id that was read is kept: a failed read is tried again next time.
        None => {
            let id = boot_id(proc_root)?;
            boot.get_or_init(|| id).clone()
        }
    };
    Some(ProcessIdentity {
        start_time: start.ticks,
        boot_id,
        start_exact: start.exact,
        pidfs_inode,
    })
}

/// Whether the process recorded as `pid` with `identity` is still running.
pub(crate) fn check(proc_root: &Path, pid: u32, identity: Option<&ProcessIdentity>) -> Liveness {
    let Some(identity) = identity else {
        return Liveness::Unknown;
    };
    match boot_id(proc_root) {
        Some(boot) if boot != identity.boot_id => return Liveness::Dead,
        Some(_) => {}
        None => return Liveness::Unknown,
    }
    match start_time(proc_root, pid) {
        Probe::Started(t) if same_start(identity, t) => match identity.pidfs_inode {
            // Read after the start time: a pid reused in between has another inode.
            Some(recorded) if proc_is_ours(proc_root) => match pidfs_inode(pid) {
                Ok(Some(now)) if now != recorded => Liveness::Dead,
                Ok(_) => Liveness::Alive,
                // Gone since its start time was read.
                Err(()) => Liveness::Dead,
            },
            _ => Liveness::Alive,
        },
        // An exited process is dead even before its parent reaps it.
        Probe::Started(_) | Probe::Exited(_) => Liveness::Dead,
        // Only our own namespace's pids can be asked about with a signal: a watched one's
        // numbers are other processes here.
        Probe::Gone if proc_is_ours(proc_root) => confirm_gone(pid),
        Probe::Gone => Liveness::Dead,
        Probe::Unreadable => Liveness::Unknown,
    }
}

/// Whether `pid` still runs, by its pid alone: for an entry without identity, whose pid
/// cannot be told from a later process's. An exited process not yet reaped is dead.
pub(crate) fn check_pid(proc_root: &Path, pid: u32) -> Liveness {
    match start_time(proc_root, pid) {
        Probe::Started(_) => Liveness::Alive,
        Probe::Exited(_) => Liveness::Dead,
        Probe::Gone if proc_is_ours(proc_root) => confirm_gone(pid),
        Probe::Gone => Liveness::Dead,
        Probe::Unreadable => Liveness::Unknown,
    }
}

/// Whether `proc_root` shows this process's own pid namespace: its `self` is our pid.
pub(crate) fn proc_is_ours(proc_root: &Path) -> bool {
    std::fs::read_link(proc_root.join("self"))
        .is_ok_and(|target| target.as_os_str() == std::process::id().to_string().as_str())
}

/// A `/proc` mounted with `hidepid=2` hides other users' processes as if they were gone
/// (ENOENT), and a dead verdict lets `prune_dead` delete the entry, so a pid missing from
/// our own namespace's `/proc` is confirmed with `kill(pid, 0)` first: only ESRCH means that
/// no such process exists.
fn confirm_gone(pid: u32) -> Liveness {
    // 0 and pids beyond i32 are no process's; kill(0) would even test the process group.
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Liveness::Dead;
    };
    match rustix::process::test_kill_process(pid) {
        Err(rustix::io::Errno::SRCH) => Liveness::Dead,
        // Success or EPERM: a process has the pid, and /proc does not show it.
        _ => Liveness::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // Fields 3 to 22: the state, 16 numbers, the thread count, one number, the start.
        let line = |comm: &str, state: char, threads: u64| {
            let middle: Vec<String> = (4..=19).map(|n| n.to_string()).collect();
            format!(
                "77 ({comm}) {state} {} {threads} 21 424242 23\n",
                middle.join(" ")
            )
        };
        for comm in ["sleep", "a) b (c", "))", "x y z", ") Z ("] {
            let stat = parse_stat(line(comm, 'S', 3).as_bytes());
            let want = Stat {
                state: b'S',
                threads: 3,
                start: 424242,
            };
            assert_eq!(stat, Some(want), "{comm}");
        }
        let zombie = parse_stat(line("sleep", 'Z', 1).as_bytes()).unwrap();
        assert_eq!((zombie.state, zombie.threads), (b'Z', 1));
        assert_eq!(parse_stat(b"77 (sleep S 1 2"), None);
        assert_eq!(parse_stat(b"77 (sleep) S 1 2"), None);
        assert_eq!(parse_stat(b"77 (sleep) SS 1 2"), None);
    }

    /// A process whose main thread has exited while another thread runs shows state Z with
    /// two threads: it is alive, not exited.
    #[test]
    fn a_zombie_main_thread_with_live_threads_is_alive() {
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        std::fs::create_dir_all(root.path().join("sys/kernel/random")).unwrap();
        std::fs::write(root.path().join("sys/kernel/random/boot_id"), "b\n").unwrap();
        let identity = ProcessIdentity::new(424242, "b");
        let stat = |state: char, threads: u64| {
            let middle: Vec<String> = (4..=19).map(|n| n.to_string()).collect();
            let dir = root.path().join("77");
            std::fs::create_dir_all(&dir).unwrap();
            let text = format!(
                "77 (app) {state} {} {threads} 21 424242 23\n",
                middle.join(" ")
            );
            std::fs::write(dir.join("stat"), text).unwrap();
        };
        stat('Z', 2);
        assert_eq!(check(root.path(), 77, Some(&identity)), Liveness::Alive);
        stat('Z', 1);
        assert_eq!(check(root.path(), 77, Some(&identity)), Liveness::Dead);
        stat('S', 1);
        assert_eq!(check(root.path(), 77, Some(&identity)), Liveness::Alive);
    }

    /// A reader in a time namespace undoes its offset: identities are recorded in the
    /// host's clock, and compared there: exactly where the offsets were whole ticks, within
    /// one tick where one was not.
    #[test]
    fn start_times_are_read_in_the_hosts_clock() {
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        std::fs::create_dir_all(root.path().join("sys/kernel/random")).unwrap();
        std::fs::write(root.path().join("sys/kernel/random/boot_id"), "b\n").unwrap();
        std::fs::create_dir_all(root.path().join("self")).unwrap();
        let middle: Vec<String> = (4..=19).map(|n| n.to_string()).collect();
        std::fs::create_dir_all(root.path().join("77")).unwrap();
        let text = format!("77 (app) S {} 1 21 424242 23\n", middle.join(" "));
        std::fs::write(root.path().join("77/stat"), text).unwrap();
        let offsets = root.path().join("self/timens_offsets");
        let hz = rustix::param::clock_ticks_per_second();
        std::fs::write(&offsets, "monotonic 7 0\nboottime 1000 0\n").unwrap();

        let me = identify(root.path(), 77, &OnceLock::new()).unwrap();
        assert_eq!(me.start_time, 424242 - 1000 * hz);
        assert!(me.start_exact);
        assert_eq!(me.pidfs_inode, None, "a foreign /proc's pids are not ours");
        let at = |start_time: u64| ProcessIdentity::new(start_time, "b");
        let inexact = |start_time: u64| ProcessIdentity {
            start_exact: false,
            ..at(start_time)
        };
        assert_eq!(check(root.path(), 77, Some(&me)), Liveness::Alive);
        // A pid reused one tick later: both conversions exact, so not the recorded process.
        for other in [me.start_time + 1, me.start_time - 1, me.start_time - 2] {
            assert_eq!(check(root.path(), 77, Some(&at(other))), Liveness::Dead);
        }
        // Recorded through an offset of part of a tick (or by an earlier version): one tick
        // apart is the same process, two are not.
        let one_off = inexact(me.start_time + 1);
        assert_eq!(check(root.path(), 77, Some(&one_off)), Liveness::Alive);
        let two_off = inexact(me.start_time - 2);
        assert_eq!(check(root.path(), 77, Some(&two_off)), Liveness::Dead);
        // Read through an offset of part of a tick: likewise, whatever the record says.
        let frac = format!("boottime 1000 {}\n", 1_000_000_000 / hz / 2);
        std::fs::write(&offsets, frac).unwrap();
        let read = identify(root.path(), 77, &OnceLock::new()).unwrap();
        assert!(!read.start_exact);
        assert_eq!(
            check(root.path(), 77, Some(&at(me.start_time + 1))),
            Liveness::Alive
        );
        assert_eq!(
            check(root.path(), 77, Some(&at(me.start_time + 2))),
            Liveness::Dead
        );
        std::fs::write(&offsets, "monotonic 7 0\nboottime 1000 0\n").unwrap();

        // Read from outside the namespace (this test's own offset is none), the same stat
        // line is another process's.
        std::fs::write(&offsets, "boottime 0 0\n").unwrap();
        assert_eq!(check(root.path(), 77, Some(&me)), Liveness::Dead);
        // A negative offset; and an unreadable one says nothing.
        std::fs::write(&offsets, "boottime -2 0\n").unwrap();
        assert_eq!(
            check(root.path(), 77, Some(&at(424242 + 2 * hz))),
            Liveness::Alive
        );
        std::fs::write(&offsets, "boottime ?\n").unwrap();
        assert_eq!(check(root.path(), 77, Some(&me)), Liveness::Unknown);
        assert_eq!(identify(root.path(), 77, &OnceLock::new()), None);
    }

    #[test]
    fn this_process_is_alive() {
        let me = identify(Path::new("/proc"), std::process::id(), &OnceLock::new())
            .expect("/proc shows this process");
        assert_eq!(
            check(Path::new("/proc"), std::process::id(), Some(&me)),
            Liveness::Alive
        );
        // Outside any time namespace start times are exact: one tick later is another
        // process that reused the pid.
        for later in [1, 2] {
            let older = ProcessIdentity {
                start_time: me.start_time.wrapping_add(later),
                ..me.clone()
            };
            assert_eq!(
                check(Path::new("/proc"), std::process::id(), Some(&older)),
                Liveness::Dead
            );
        }
        // Another process's pidfs inode (where the kernel has pidfs): not this process.
        if let Some(inode) = me.pidfs_inode {
            let other = ProcessIdentity {
                pidfs_inode: Some(inode + 1),
                ..me.clone()
            };
            let pid = std::process::id();
            assert_eq!(check(Path::new("/proc"), pid, Some(&other)), Liveness::Dead);
        } else {
            eprintln!("skipped the pidfs check: pidfds are not in pidfs on this kernel");
        }
        let rebooted = ProcessIdentity {
            boot_id: "another-boot".into(),
            ..me
        };
        assert_eq!(
            check(Path::new("/proc"), std::process::id(), Some(&rebooted)),
            Liveness::Dead
        );
        assert_eq!(
            check(Path::new("/proc"), std::process::id(), None),
            Liveness::Unknown
        );
    }
}
