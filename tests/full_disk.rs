//! A really full disk: a save that fails gives its room back at once, even to a process
//! whose other threads fork children; an entry destroyed gives its room back once no child
//! forked while its file was open is left (issue 17 item 12).

#[allow(unused_macros)]
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, RwLock};

use runstate::{Aid, AsyncStore, Error, InstanceId, State};

/// The size of the tmpfs, as in the issue.
const FS_SIZE: &str = "256k";
/// The config of every entry: some pages each, not a whole number of them.
const CONFIG_LEN: usize = 20_000;

/// A tmpfs of [`FS_SIZE`] mounted at a new directory, unmounted when dropped.
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    fn mount() -> Result<SmallTmpfs, String> {
        let dir = tempfile::tempdir_in("/tmp").map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_SIZE}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (not root?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallTmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn is_enospc(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(28))
}

/// What is left to do after a round whose save after the destroy failed.
struct Late {
    store: AsyncStore<String>,
    failed: State<String>,
    /// Which other processes had files of the tmpfs open right after the failure.
    held: Vec<String>,
    /// Free blocks of the tmpfs right after the failure, and right after the first ENOSPC.
    free: (u64, u64),
}

/// The free blocks of the file system of `path`.
fn free_blocks(path: &Path) -> u64 {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a plain system call into a zeroed struct.
    unsafe {
        let mut fs: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(path.as_ptr(), &mut fs), 0);
        fs.f_bfree as u64
    }
}

/// Fills the tmpfs with entries until a save fails with ENOSPC, destroys one entry, and
/// saves again. Returns how many entries fitted, and [`Late`] if that save failed.
async fn fill_free_and_save(run: &Path) -> (usize, Option<Late>) {
    let store = AsyncStore::<String>::new(run);
    let aid = Aid::new(1).unwrap();
    let config = "x".repeat(CONFIG_LEN);
    let mut saved = Vec::new();
    let failed = loop {
        let state = State::new(InstanceId::random(), 1, config.clone());
        match store.with_aid(aid, async |c| c.save(&state).await).await {
            Ok(()) => saved.push(state.id),
            Err(e) if is_enospc(&e) => break state,
            Err(e) => panic!("save {}: {e}", saved.len()),
        }
        assert!(saved.len() < 1000, "the tmpfs never filled");
    };
    assert!(!saved.is_empty(), "not even one entry fitted");
    let free_after_enospc = free_blocks(run);
    let victim = saved[saved.len() / 2];
    let again = store
        .with_aid(aid, async |c| {
            assert!(c.destroy(victim).await?);
            c.save(&failed).await
        })
        .await;
    match again {
        Ok(()) => {
            store.close().await.unwrap();
            (saved.len(), None)
        }
        Err(e) if is_enospc(&e) => {
            let free = (free_blocks(run), free_after_enospc);
            let held = held_elsewhere(run);
            let late = Late {
                store,
                failed,
                held,
                free,
            };
            (saved.len(), Some(late))
        }
        Err(e) => panic!("save after a destroy: {e}"),
    }
}

/// The descriptors of files under `run` that other processes have open.
fn held_elsewhere(run: &Path) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut held = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(t) = std::fs::read_link(fd.path()) {
                if t.starts_with(run) && t.to_string_lossy().ends_with(" (deleted)") {
                    let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                    held.push(format!("{pid} {} -> {t:?}", comm.trim()));
                }
            }
        }
    }
    held
}

/// Taken shared by each fork of the forker threads, exclusively to wait until no child of
/// theirs is left (each is awaited until it exits).
static FORKS: RwLock<()> = RwLock::new(());

/// Other threads of the process fork children all along, as a supervisor (or libtest's
/// other tests) does. A child holds a copy of every descriptor open at its fork until it
/// execs, so the room of an entry destroyed meanwhile may come back only then: if the save
/// after the destroy fails with ENOSPC, it must succeed once those children are gone. A
/// failed save's own partial file never holds room (see the test above).
///
/// A stress test, not run by default (about 5 s of forking; it needs root to mount a tmpfs):
/// `cargo test --test full_disk -- --ignored --nocapture`, best beside a CPU hog on every
/// core, `for i in 1 2; do (while :; do :; done) & done` (kill them afterwards). It prints
/// `late release: N of 40 rounds` and which children held the destroyed entry's file.
#[test]
#[ignore = "stress test: forks for seconds; run it by hand, see its doc"]
fn room_freed_by_a_destroy_is_there_once_forked_children_are_gone() {
    let fs = match SmallTmpfs::mount() {
        Ok(fs) => fs,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let forkers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _fork = FORKS.read().unwrap();
                    let _ = Command::new("true").status();
                }
            })
        })
        .collect();
    let (mut fitted, mut late) = (Vec::new(), 0);
    for round in 0..40 {
        let run = fs.path().join(format!("run{round}"));
        let rt = if round % 2 == 0 {
            common::current_thread_runtime()
        } else {
            common::multi_thread_runtime(2)
        };
        let (n, left) = rt.block_on(fill_free_and_save(&run));
        fitted.push(n);
        if let Some(Late {
            store,
            failed,
            held,
            free,
        }) = left
        {
            late += 1;
            eprintln!(
                "round {round}: room came back late: free blocks {} after the destroy, {} \
                 after the first ENOSPC; held right after: {held:#?}",
                free.0, free.1
            );
            let quiet = FORKS.write().unwrap();
            let aid = Aid::new(1).unwrap();
            let again = rt.block_on(store.with_aid(aid, async |c| c.save(&failed).await));
            drop(quiet);
            if let Err(e) = again {
                let df = Command::new("df").arg(&run).output().unwrap();
                panic!(
                    "round {round}: no room even with no forked child left: {e}\n{}",
                    String::from_utf8_lossy(&df.stdout)
                );
            }
            rt.block_on(store.close()).unwrap();
        }
        std::fs::remove_dir_all(&run).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for f in forkers {
        f.join().unwrap();
    }
    eprintln!("late release: {late} of 40 rounds; entries that fitted, per round: {fitted:?}");
}

/// The child that [`fork_in_the_write`] forked, 0 if none yet.
static HOLDER: AtomicI32 = AtomicI32::new(0);

/// SIGXFSZ handler: it runs in the thread whose write went over `RLIMIT_FSIZE`, so inside
/// the store's write, with the entry's temporary file open. It forks a child that holds a
/// copy of every descriptor, as one forked by another thread of a supervisor at that moment
/// would, and that waits to be killed. A raw `fork` system call: nothing but the system
/// call itself runs in a signal handler.
extern "C" fn fork_in_the_write(_: libc::c_int) {
    if HOLDER.load(Ordering::SeqCst) != 0 {
        return;
    }
    // SAFETY: with no stack given, clone duplicates the caller like fork(2); the child runs
    // only system calls (pause) until it is killed.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
    if pid == 0 {
        loop {
            // SAFETY: a plain system call.
            unsafe { libc::pause() };
        }
    }
    HOLDER.store(pid as i32, Ordering::SeqCst);
}

/// Runs `op` with writes to files limited to `limit` bytes, which stops the store's write
/// with `EFBIG` and raises SIGXFSZ in it; returns `op`'s result and the child forked then.
fn fail_a_write_while_forking<T>(limit: u64, op: impl FnOnce() -> T) -> (T, i32) {
    HOLDER.store(0, Ordering::SeqCst);
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut old), 0);
        let low = libc::rlimit {
            rlim_cur: limit,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &low), 0);
    }
    let result = op();
    // SAFETY: as above.
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &old), 0) };
    (result, HOLDER.load(Ordering::SeqCst))
}

/// The files in `dir` that are removed but that the process `pid` still has open: their
/// sizes and allocated 512-byte blocks.
fn held_removed_files(pid: i32, dir: &Path) -> Vec<(String, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut held = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with(&*dir.to_string_lossy()) && target.ends_with(" (deleted)") {
            let meta = std::fs::metadata(fd.path()).unwrap();
            if meta.is_file() {
                held.push((target, meta.len(), meta.blocks()));
            }
        }
    }
    held
}

fn kill(pid: i32) {
    // SAFETY: plain system calls on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// One way of writing an entry.
type Op<'a> = &'a dyn Fn() -> Result<(), Error>;

/// A save or replace whose write fails gives its partial file's room back at once, even
/// while a child forked during that write (by any thread of the process, before it execs)
/// holds a copy of the file's descriptor. On a full disk, that room is what the next save
/// needs. The write is made to fail deterministically at 8 KiB with `RLIMIT_FSIZE`, and
/// the child is forked from within it by the SIGXFSZ that the kernel raises there.
///
/// In a process of its own: the file size limit and the signal handler are process-wide.
#[test]
fn a_failed_write_frees_its_room_though_a_forked_child_holds_its_descriptor() {
    let name = "a_failed_write_frees_its_room_though_a_forked_child_holds_its_descriptor";
    common::child::isolated(name, || {
        // SAFETY: installs a handler that makes only system calls and atomic accesses.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = fork_in_the_write as *const () as usize;
            assert_eq!(
                libc::sigaction(libc::SIGXFSZ, &action, std::ptr::null_mut()),
                0
            );
        }
        let run = common::run_dir();
        let rt = common::current_thread_runtime();
        let store = AsyncStore::<String>::new(run.path());
        let aid = Aid::new(1).unwrap();
        let dir = run.path().join("state").join("1");
        let small = State::new(InstanceId::random(), 1, "small".to_string());
        rt.block_on(store.with_aid(aid, async |c| c.save(&small).await))
            .unwrap();
        let big = "x".repeat(CONFIG_LEN);
        let new = State::new(InstanceId::random(), 1, big.clone());
        let replacement = State::new(small.id, 2, big);

        let ops: [(&str, Op); 2] = [
            ("save", &|| {
                rt.block_on(store.with_aid(aid, async |c| c.save(&new).await))
            }),
            ("replace", &|| {
                rt.block_on(store.with_aid(aid, async |c| c.replace(&replacement).await))
                    .map(|replaced| assert!(replaced))
            }),
        ];
        for (what, op) in ops {
            let (result, child) = fail_a_write_while_forking(8192, op);
            assert!(
                matches!(&result, Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EFBIG)),
                "{what}: {result:?}"
            );
            assert!(child > 0, "{what}: no SIGXFSZ in the write");
            let held = held_removed_files(child, &dir);
            kill(child);
            assert_eq!(
                held.len(),
                1,
                "{what}: the child holds the failed file: {held:?}"
            );
            assert_eq!(
                (held[0].1, held[0].2),
                (0, 0),
                "{what}: the failed write's room is still taken: {held:?}"
            );
        }
        let kept = rt.block_on(store.with_aid(aid, async |c| c.load(small.id).await));
        assert_eq!(
            kept.unwrap(),
            Some(small),
            "a failed replace keeps the entry"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "nothing but the entry is left"
        );
        rt.block_on(store.close()).unwrap();
    });
}
