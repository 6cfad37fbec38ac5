//! A really full small tmpfs: after a save fails with `ENOSPC`, destroying one entry of the
//! same size frees the room for the next save, at once, whatever else the process does
//! meanwhile (other threads forking children, a busy machine).
//!
//! Needs root to mount a tmpfs of its own; elsewhere it says it is skipped.

#[allow(unused_macros)]
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Fills the tmpfs with entries until a save fails with ENOSPC, destroys one entry, and
/// saves again: that save must succeed. Returns how many entries fitted.
async fn fill_free_and_save(run: &Path) -> usize {
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
    let victim = saved[saved.len() / 2];
    store
        .with_aid(aid, async |c| {
            assert!(c.destroy(victim).await?);
            c.save(&failed).await
        })
        .await
        .unwrap_or_else(|e| {
            let mut held = Vec::new();
            for p in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                    continue;
                };
                for fd in fds.flatten() {
                    if let Ok(t) = std::fs::read_link(fd.path()) {
                        if t.starts_with(run) || t.to_string_lossy().contains("/tmp/.tmp") {
                            let comm =
                                std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                            held.push(format!("{:?} {} -> {t:?}", p.file_name(), comm.trim()));
                        }
                    }
                }
            }
            let df = Command::new("df").arg(run).output().unwrap();
            panic!(
                "saved {} entries, destroyed one, saved again: {e}\nheld: {held:#?}\n{}",
                saved.len(),
                String::from_utf8_lossy(&df.stdout)
            )
        });
    store.close().await.unwrap();
    saved.len()
}

/// Other threads of the process fork children all along, as a supervisor (or libtest's
/// other tests) does: a fork copies every descriptor open at that moment.
///
/// Ignored for now: it reproduces issue 17 item 12 in about 1 of 18 runs beside a CPU hog on
/// both cores, and the cause is not yet fixed (see the notes of the branch `liveness`). Run
/// it with `cargo test --test full_disk -- --ignored --nocapture`; a failure lists which
/// processes hold descriptors into the full tmpfs.
#[test]
#[ignore = "reproduces issue 17 item 12 intermittently; not fixed yet"]
fn room_freed_by_a_destroy_is_there_for_the_next_save() {
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
                    let _ = Command::new("true").status();
                }
            })
        })
        .collect();
    let mut fitted = Vec::new();
    for round in 0..40 {
        let run = fs.path().join(format!("run{round}"));
        let rt = if round % 2 == 0 {
            common::current_thread_runtime()
        } else {
            common::multi_thread_runtime(2)
        };
        fitted.push(rt.block_on(fill_free_and_save(&run)));
        std::fs::remove_dir_all(&run).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for f in forkers {
        f.join().unwrap();
    }
    eprintln!("entries that fitted, per round: {fitted:?}");
}
