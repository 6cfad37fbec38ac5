//! `floor`: the same on-disk work as the crate, as plain synchronous rustix code on one
//! thread. No runtime, no thread hops, no allocation beyond what encoding and decoding need:
//! what the system calls and the encoding cost by themselves.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    AtFlags, CWD, Dir, FileType, FlockOperation, Mode, OFlags, flock, fstat, linkat, mkdirat,
    openat, unlinkat,
};
use rustix::io::Errno;

use std::hint::black_box;

use runstate::InstanceId;
use tokio::runtime::Runtime;

use crate::common::{self, Decoded, Entry};
use crate::measure::Timing;
use crate::workloads::{AID, Imp};

fn open_flags() -> OFlags {
    OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY
}

fn mkdir_open(parent: impl AsFd, name: &str) -> io::Result<OwnedFd> {
    match mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(openat(
        &parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | open_flags(),
        Mode::empty(),
    )?)
}

/// `<run_dir>/state`, made if missing, open.
pub fn state_dir(run_dir: &Path) -> io::Result<OwnedFd> {
    std::fs::create_dir_all(run_dir)?;
    let run = openat(
        CWD,
        run_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    mkdir_open(&run, "state")
}

/// One aid's directory and lock file, open (made if missing).
pub struct FloorAid {
    dir: OwnedFd,
    lock: OwnedFd,
    buf: Vec<u8>,
}

impl FloorAid {
    /// Opens an aid (made if missing) under `run_dir`.
    pub fn open(run_dir: &Path, aid: u16) -> io::Result<FloorAid> {
        FloorAid::open_in(&state_dir(run_dir)?, aid)
    }

    /// Opens an aid in an open state directory as cheaply as the kernel allows: one
    /// `openat` of the directory if it exists (else `mkdirat` first) and one of the lock
    /// file (made if missing).
    pub fn open_in(state: &OwnedFd, aid: u16) -> io::Result<FloorAid> {
        let name = aid.to_string();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | open_flags();
        let dir = match openat(state, &name, flags, Mode::empty()) {
            Err(Errno::NOENT) => mkdir_open(state, &name)?,
            dir => dir?,
        };
        let lock = openat(
            state,
            format!("{aid}.lock"),
            OFlags::RDWR | OFlags::CREATE | open_flags(),
            Mode::from_raw_mode(0o600),
        )?;
        Ok(FloorAid {
            dir,
            lock,
            buf: Vec::new(),
        })
    }

    pub fn lock(&self) {
        flock(&self.lock, FlockOperation::LockExclusive).expect("flock");
    }

    pub fn unlock(&self) {
        flock(&self.lock, FlockOperation::Unlock).expect("unlock");
    }

    /// Identifies the process from /proc (unless the state carries its identity), encodes
    /// and publishes an entry: O_TMPFILE, write, linkat, close.
    pub fn save(&mut self, state: &Entry) -> io::Result<()> {
        let process = common::identity(state, identify);
        self.save_as(state, process.as_ref())
    }

    /// Publishes an entry with a known process identity.
    pub fn save_as(
        &mut self,
        state: &Entry,
        process: Option<&common::ProcIdent>,
    ) -> io::Result<()> {
        self.buf.clear();
        common::encode(state, process, &mut self.buf);
        let fd = openat(
            &self.dir,
            c".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut written = 0;
        while written < self.buf.len() {
            written += rustix::io::write(&fd, &self.buf[written..])?;
        }
        let name = common::entry_name(state.id);
        let name = std::ffi::CStr::from_bytes_with_nul(&name).expect("nul");
        // The cheapest link the kernel allows here, as the crate does: AT_EMPTY_PATH where
        // permitted, else the /proc/self/fd link.
        match linkat(&fd, c"", &self.dir, name, AtFlags::EMPTY_PATH) {
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {
                let mut path = [0u8; 32];
                let path = common::proc_fd_path(fd.as_raw_fd(), &mut path);
                linkat(CWD, path, &self.dir, name, AtFlags::SYMLINK_FOLLOW)?;
            }
            linked => linked?,
        }
        Ok(())
    }

    pub fn destroy(&self, id: InstanceId) -> io::Result<bool> {
        let name = common::entry_name(id);
        let name = std::ffi::CStr::from_bytes_with_nul(&name).expect("nul");
        match unlinkat(&self.dir, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and decodes every entry (openat + fstat + one read + close each), handing each
    /// to `f`. Returns how many there were.
    pub fn entries(&mut self, mut f: impl FnMut(Decoded)) -> io::Result<usize> {
        let mut dir = Dir::read_from(&self.dir)?;
        let mut n = 0;
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = common::parse_entry_name(name.to_bytes()) else {
                continue;
            };
            let fd = openat(
                &self.dir,
                name,
                OFlags::RDONLY | open_flags(),
                Mode::empty(),
            )?;
            let st = fstat(&fd)?;
            let size = st.st_size as usize;
            self.buf.clear();
            self.buf.resize(size, 0);
            let mut got = 0;
            while got < size {
                let r = rustix::io::read(&fd, &mut self.buf[got..])?;
                if r == 0 {
                    break;
                }
                got += r;
            }
            drop(fd);
            let state = common::decode(&self.buf[..got], id).map_err(io::Error::other)?;
            f(state);
            n += 1;
        }
        Ok(n)
    }

    /// Counts the entry names.
    pub fn len(&self) -> io::Result<usize> {
        let mut dir = Dir::read_from(&self.dir)?;
        let mut n = 0;
        while let Some(entry) = dir.read() {
            if common::parse_entry_name(entry?.file_name().to_bytes()).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Reads a small /proc file with one openat, one read and one close.
fn read_small<'a>(path: &std::ffi::CStr, buf: &'a mut [u8; 1024]) -> Option<&'a [u8]> {
    let fd = openat(CWD, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let n = rustix::io::read(&fd, &mut buf[..]).ok()?;
    Some(&buf[..n])
}

/// The identity of `pid`, read as cheaply as possible: `/proc/<pid>/stat` and the boot id,
/// each with openat + read + close.
pub fn identify(pid: u32) -> Option<common::ProcIdent> {
    use std::io::Write as _;
    let mut path = [0u8; 32];
    write!(&mut path[..], "/proc/{pid}/stat\0").ok()?;
    let path = std::ffi::CStr::from_bytes_until_nul(&path).ok()?;
    let mut stat = [0u8; 1024];
    let stat = read_small(path, &mut stat)?;
    // The boot id cannot change while the process runs: read once, as the crate does.
    static BOOT: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        let mut boot = [0u8; 1024];
        read_small(c"/proc/sys/kernel/random/boot_id", &mut boot).map(<[u8]>::to_vec)
    });
    common::ident(stat, boot.as_deref()?)
}

/// The aids with a directory under `<run_dir>/state`, ascending.
pub fn aids(run_dir: &Path) -> io::Result<Vec<u16>> {
    let fd = openat(
        CWD,
        run_dir.join("state"),
        OFlags::RDONLY | OFlags::DIRECTORY | open_flags(),
        Mode::empty(),
    )?;
    let mut dir = Dir::new(fd)?;
    let mut out = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        if entry.file_type() != FileType::Directory {
            continue;
        }
        if let Some(aid) = common::parse_aid_name(entry.file_name().to_bytes()) {
            out.push(aid);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Setup helper (never timed): an aid with `n` entries saved by the floor writer, which
/// writes byte for byte what the crate writes.
pub fn populate(run_dir: &Path, aid: u16, ids: &[InstanceId], template: &Entry) -> io::Result<()> {
    let mut a = FloorAid::open(run_dir, aid)?;
    let mut state = template.clone();
    let process = common::identity(&state, identify);
    for &id in ids {
        state.id = id;
        a.save_as(&state, process.as_ref())?;
    }
    Ok(())
}

/// The floor as an implementation: everything on the calling thread, no runtime.
pub struct Floor;

impl Imp for Floor {
    fn name(&self) -> &'static str {
        "floor"
    }

    fn saves(
        &self,
        _rt: &Runtime,
        t: &mut Timing,
        dir: &Path,
        template: &Entry,
        ids: &[InstanceId],
        each: bool,
    ) {
        let mut st = template.clone();
        let mut a = FloorAid::open(dir, AID).expect("open");
        t.start();
        if !each {
            a.lock();
        }
        for &id in ids {
            st.id = id;
            if each {
                a.lock();
            }
            a.save(&st).expect("save");
            if each {
                a.unlock();
            }
        }
        if !each {
            a.unlock();
        }
        t.stop();
    }

    fn read_all(&self, _rt: &Runtime, t: &mut Timing, dir: &Path) -> usize {
        let mut a = FloorAid::open(dir, AID).expect("open");
        t.start();
        a.lock();
        let got = a
            .entries(|s| {
                black_box(s);
            })
            .expect("entries");
        a.unlock();
        t.stop();
        got
    }

    fn len(&self, _rt: &Runtime, t: &mut Timing, dir: &Path) -> usize {
        let a = FloorAid::open(dir, AID).expect("open");
        t.start();
        a.lock();
        let got = a.len().expect("len");
        a.unlock();
        t.stop();
        got
    }

    fn destroys(&self, _rt: &Runtime, t: &mut Timing, dir: &Path, ids: &[InstanceId]) {
        let a = FloorAid::open(dir, AID).expect("open");
        t.start();
        a.lock();
        for &id in ids {
            assert!(a.destroy(id).expect("destroy"));
        }
        a.unlock();
        t.stop();
    }

    fn empty_holds(&self, _rt: &Runtime, t: &mut Timing, dir: &Path, holds: usize) {
        let a = FloorAid::open(dir, AID).expect("open");
        t.start();
        for _ in 0..holds {
            a.lock();
            a.unlock();
        }
        t.stop();
    }

    fn aids(&self, _rt: &Runtime, t: &mut Timing, dir: &Path) -> usize {
        t.start();
        let got = aids(dir).expect("aids").len();
        t.stop();
        got
    }

    /// Keeps nothing between holds (no cache to warm): open, flock, unlock, close.
    fn holds_in_turn(&self, _rt: &Runtime, t: &mut Timing, dir: &Path, aids: &[u16], _warm: bool) {
        let state = state_dir(dir).expect("state dir");
        t.start();
        for &a in aids {
            let aid = FloorAid::open_in(&state, a).expect("open");
            aid.lock();
            aid.unlock();
        }
        t.stop();
    }

    fn contended(
        &self,
        _rt: &Runtime,
        t: &mut Timing,
        dir: &Path,
        states: Vec<Entry>,
        rounds: usize,
    ) {
        let mut a = FloorAid::open(dir, AID).expect("open");
        t.start();
        for _ in 0..rounds {
            for st in &states {
                a.lock();
                a.save(st).expect("save");
                assert!(a.destroy(st.id).expect("destroy"));
                a.unlock();
            }
        }
        t.stop();
    }
}
