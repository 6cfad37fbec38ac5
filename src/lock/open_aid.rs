//! An aid's files, open: its directory (the core's [`AidDir`]) and its lock file (this
//! layer's [`LockFile`]), opened together, checked together, and cached together by the
//! store's table (`lock/store_state.rs`).

use std::path::Path;
use std::sync::Arc;

use crate::disk::aid_dir::{AidDir, TempMark};
use crate::disk::state_dir::StateDir;
use crate::lock::file::LockFile;
use crate::{Aid, Error};

/// An aid's directory and lock file, open.
#[derive(Debug)]
pub(crate) struct OpenAid {
    lock: LockFile,
    dir: AidDir,
}

impl OpenAid {
    /// Opens (making as needed) the aid's lock file and directory in `state_dir`. The lock
    /// file first: if it is refused, no aid directory is left behind to be listed.
    /// The lock file's owner and mode are checked at its first lock, by the `fstat` that
    /// also finds it linked ([`LockFile::is_linked`]), or now if the directory must be made.
    pub(crate) fn open(state_dir: Arc<StateDir>, aid: Aid) -> Result<OpenAid, Error> {
        let (lock, made) = LockFile::open(&state_dir, aid)?;
        let dir = AidDir::open_after_lock(state_dir, aid, made, || lock.check())?;
        #[cfg(test)]
        OPENED.set(OPENED.get() + 1);
        Ok(OpenAid { lock, dir })
    }

    /// Whether the lock file opened is still linked. Locking a lock file that was removed
    /// would exclude nobody who opens the new one, so a holder checks this once it has the
    /// lock, and opens both files again if not. One `fstat`: a removal (of the file, or of
    /// the whole state directory), or a file renamed over, unlinks the old inode (a file
    /// renamed away keeps its link and is not noticed; nothing in the store does that).
    /// The directory is checked where it is used, when a name is not found in it
    /// (`AidDir::revive`), so a hold that finds what it looks for pays nothing for it.
    pub(crate) fn is_current(&self) -> bool {
        self.lock.is_linked()
    }

    /// The aid's directory, whose methods are the core's whole operations.
    pub(crate) fn dir(&self) -> &AidDir {
        &self.dir
    }

    /// The aid's lock file: the flock, the writers' gate, and the temporary-file mark.
    pub(crate) fn lock(&self) -> &LockFile {
        &self.lock
    }

    /// The lock file's temporary-file mark, for the core's writes that may leave a file.
    pub(crate) fn temp_mark(&self) -> TempMark<'_> {
        self.lock.temp_mark()
    }

    /// The lock file's path, for messages.
    pub(crate) fn lock_path(&self) -> &Path {
        self.lock.path()
    }
}

#[cfg(test)]
thread_local! {
    /// How many times an opening of an aid's files succeeded on this thread.
    static OPENED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::time::Duration;

    use rustix::fs::{FlockOperation, flock};

    use crate::disk::aid_dir::MARK_READS;
    use crate::disk::secure::FSTATS;
    use crate::lock::hold::{LockMode, Wait};
    use crate::lock::open_aid::OPENED;
    use crate::lock::store_state::StoreState;
    use crate::{Aid, Error, Options};

    fn aid(n: u16) -> Aid {
        Aid::new(n).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A store on `run` whose state directory is open (through a hold of aid 0), so that
    /// what a hold costs after it is the aid's alone.
    async fn store(run: &std::path::Path) -> StoreState {
        let store = StoreState::new(run.to_owned(), Options::default());
        drop(
            store
                .hold(aid(0), LockMode::Exclusive, Wait::Never)
                .await
                .unwrap(),
        );
        store
    }

    /// `fstat` calls and reads of the temporary-file mark on this thread (the tests' runtime
    /// is current-thread and the store is on tmpfs, so the store's file work runs here).
    fn counted() -> (u64, u64) {
        (FSTATS.get(), MARK_READS.get())
    }

    fn lock_path(run: &std::path::Path, n: u16) -> PathBuf {
        run.join("state").join(format!("{n}.lock"))
    }

    /// The calls ([`counted`]) of a hold of `aid` in a new store, and the store. `None` if
    /// the aid's files were opened off this thread: a fork under way in another test sends
    /// an opening to the pool.
    async fn counted_hold(
        run: &std::path::Path,
        aid: Aid,
        mode: LockMode,
    ) -> Option<((u64, u64), StoreState)> {
        let store = store(run).await;
        let (before, opened) = (counted(), OPENED.get());
        drop(store.hold(aid, mode, Wait::Forever).await.unwrap());
        let after = counted();
        if OPENED.get() == opened {
            store.close().await.unwrap();
            return None;
        }
        Some(((after.0 - before.0, after.1 - before.1), store))
    }

    /// What a hold of an aid whose files are not open costs beyond the floor's open, flock,
    /// unlock and close: one `fstat` checking the directory, and one after the lock that
    /// checks the lock file's owner and mode, that it is linked, and that its temporary-file
    /// mark is clear (no read of it). A first hold, which makes both, checks neither: one
    /// `fstat`. Both used to cost 3 `fstat` and a read of the mark.
    #[test]
    fn a_cold_hold_checks_the_lock_file_with_the_fstat_after_its_lock() {
        let run = tempfile::tempdir_in("/dev/shm").unwrap();
        runtime().block_on(async {
            for (n, mode) in [(1, LockMode::Exclusive), (2, LockMode::Shared)] {
                let mut first = None;
                for fresh in (n * 1000..).take(100) {
                    first = counted_hold(run.path(), aid(fresh), mode).await;
                    if first.is_some() {
                        break;
                    }
                }
                let (calls, made) = first.expect("an opening on this thread in 100 tries");
                assert_eq!(calls, (1, 0), "a first hold ({mode:?}): fstat, mark reads");
                made.close().await.unwrap();

                drop(
                    store(run.path())
                        .await
                        .hold(aid(n), mode, Wait::Never)
                        .await,
                );
                let mut cold = None;
                for _ in 0..100 {
                    cold = counted_hold(run.path(), aid(n), mode).await;
                    if cold.is_some() {
                        break;
                    }
                }
                let (calls, cold) = cold.expect("an opening on this thread in 100 tries");
                assert_eq!(calls, (2, 0), "a cold hold ({mode:?}): fstat, mark reads");
                // Held again with its files open: the one `fstat` that finds it linked.
                let before = counted();
                drop(cold.hold(aid(n), mode, Wait::Forever).await.unwrap());
                assert_eq!(counted().0 - before.0, 1, "a warm hold ({mode:?})");
                cold.close().await.unwrap();
            }
        });
    }

    /// The mark is read only when the `fstat` after the lock found the lock file not empty:
    /// one a killed writer left set is still read, and its temporary file swept.
    #[test]
    fn a_mark_left_set_is_still_read_and_swept_on_a_cold_hold() {
        let run = tempfile::tempdir_in("/dev/shm").unwrap();
        runtime().block_on(async {
            let setup = store(run.path()).await;
            drop(
                setup
                    .hold(aid(3), LockMode::Exclusive, Wait::Never)
                    .await
                    .unwrap(),
            );
            setup.close().await.unwrap();
            // What a writer killed between marking and removing its file leaves.
            let temp = run
                .path()
                .join("state/3/.tmp-5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a");
            std::fs::write(&temp, b"partial").unwrap();
            std::fs::write(lock_path(run.path(), 3), [1]).unwrap();
            let cold = store(run.path()).await;
            drop(
                cold.hold(aid(3), LockMode::Exclusive, Wait::Never)
                    .await
                    .unwrap(),
            );
            assert!(!temp.exists(), "the temporary file is swept");
            let mark = std::fs::metadata(lock_path(run.path(), 3)).unwrap().len();
            assert_eq!(mark, 0, "and the mark cleared");
            cold.close().await.unwrap();
        });
    }

    /// The lock file's check moved after its first lock, but never after a wait: a loose
    /// lock file that another process holds is refused at once, by every way of holding,
    /// and an aid whose directory is missing gets none made for a refused lock file.
    #[test]
    fn a_loose_lock_file_is_refused_before_any_wait_and_before_its_directory_is_made() {
        let run = tempfile::tempdir_in("/dev/shm").unwrap();
        runtime().block_on(async {
            let setup = store(run.path()).await;
            drop(
                setup
                    .hold(aid(1), LockMode::Exclusive, Wait::Never)
                    .await
                    .unwrap(),
            );
            setup.close().await.unwrap();
            let loose = std::fs::Permissions::from_mode(0o660);
            std::fs::set_permissions(lock_path(run.path(), 1), loose.clone()).unwrap();
            // Another process's lock: a second open file description.
            let other = std::fs::File::open(lock_path(run.path(), 1)).unwrap();
            flock(&other, FlockOperation::LockExclusive).unwrap();
            let store = store(run.path()).await;
            let insecure = |r: Result<_, Error>| match r {
                Err(Error::Insecure { path, .. }) => assert_eq!(path, lock_path(run.path(), 1)),
                other => panic!("expected Insecure, got {other:?}"),
            };
            for mode in [LockMode::Exclusive, LockMode::Shared] {
                for wait in [Wait::Forever, Wait::Never] {
                    let hold = store.hold(aid(1), mode, wait);
                    let got = tokio::time::timeout(Duration::from_secs(60), hold).await;
                    insecure(got.expect("refused, not waited for"));
                }
            }
            flock(&other, FlockOperation::Unlock).unwrap();
            for mode in [LockMode::Exclusive, LockMode::Shared] {
                insecure(store.hold(aid(1), mode, Wait::Forever).await);
            }

            // A loose lock file left without its aid's directory.
            std::fs::File::create(lock_path(run.path(), 2)).unwrap();
            std::fs::set_permissions(lock_path(run.path(), 2), loose).unwrap();
            let got = store.hold(aid(2), LockMode::Exclusive, Wait::Never).await;
            assert!(matches!(got, Err(Error::Insecure { .. })), "{got:?}");
            assert!(
                !run.path().join("state/2").exists(),
                "no directory made for a refused lock file"
            );
            store.close().await.unwrap();
        });
    }
}
