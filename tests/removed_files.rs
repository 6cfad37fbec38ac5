//! Files removed under a store (issue 14, part 3): an admin's `rm -rf`, or a tmpfiles
//! cleaner, takes away `state/`, an aid's lock file or an aid's directory while a store has
//! them open. A store that kept locking its unlinked lock file would exclude nobody who opens
//! the new one, and one that kept saving into an unlinked directory would lose its entries.
//!
//! Two stores on one run directory stand in for two processes: each opens its own files,
//! so each has its own open file descriptions, which is all `flock` looks at (as in
//! `tests/release.rs`). Store A has used the aid (its files are open) when they are removed,
//! idle or while holding the aid; store B then takes the aid and keeps it. A must find the
//! aid taken, wait for B on the new lock file, and then save where everyone else looks.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use runstate::{Aid, AsyncStore, Error, InstanceId, Options, State};
use tokio::sync::oneshot;

use common::{DEADLOCK, Inside, aid, flock_waiters, run_dir, state_dir};

type Store = AsyncStore<String>;

/// What is removed under the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Removal {
    /// `rm -rf <run_dir>/state`.
    StateDir,
    /// `rm <run_dir>/state/<aid>.lock`.
    LockFile,
    /// `rm -rf <run_dir>/state/<aid>`.
    AidDir,
}

impl Removal {
    fn apply(self, run: &Path, aid: Aid) {
        match self {
            Removal::StateDir => std::fs::remove_dir_all(state_dir(run)).unwrap(),
            Removal::LockFile => std::fs::remove_file(lock_path(run, aid)).unwrap(),
            Removal::AidDir => std::fs::remove_dir_all(common::aid_dir(run, aid)).unwrap(),
        }
    }

    /// Whether entries saved before the removal survive it.
    fn keeps_entries(self) -> bool {
        self == Removal::LockFile
    }
}

fn lock_path(run: &Path, aid: Aid) -> PathBuf {
    state_dir(run).join(format!("{aid}.lock"))
}

/// A state with a pid no process has, so that the store records no identity for it
/// (whatever version of `save`), and a config that says who saved it.
fn state(who: &str) -> State<String> {
    State::new(InstanceId::random(), common::pid(7), who.to_string())
}

/// The aid's entries as a store that has never opened anything sees them.
async fn listed(run: &Path, aid: Aid) -> BTreeMap<InstanceId, State<String>> {
    let fresh = Store::new(run);
    let all = fresh
        .with_aid_shared(aid, async |c| c.load_all().await)
        .await
        .unwrap();
    fresh.close().await.unwrap();
    all
}

/// Polls until `done`, failing if `task` ends first or after [`DEADLOCK`].
async fn wait_until<T>(what: &str, task: &tokio::task::JoinHandle<T>, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(!task.is_finished(), "{what}: the waiter ended instead");
        assert!(start.elapsed() < DEADLOCK, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Store A (and A2, which reads) have the aid's files open; `removal` takes them away, while
/// A is idle or while it holds the aid. Then B holds the aid: A and A2 are kept out, A waits
/// for B on the new lock file, and its entries land where B and a fresh store see them.
async fn removal(removal: Removal, while_held: bool) {
    let tmp = run_dir();
    let run = tmp.path();
    let aid = aid(42);
    let a = Store::new(run);
    let a2 = Store::new(run);
    let b = Store::new(run);
    let inside = Arc::new(AtomicBool::new(false));
    let mut expected = BTreeMap::new();

    // A2 reads the aid once, so it keeps the files open too.
    a2.with_aid_shared(aid, async |c| c.len().await)
        .await
        .unwrap();
    let first = state("A, before the removal");
    if while_held {
        let in_hold = state("A, inside the hold, after the removal");
        let saved_after = a
            .with_aid(aid, async |c| {
                let _in = Inside::enter(&inside);
                c.save(&first).await?;
                removal.apply(run, aid);
                // Where this lands is not promised, but it must not be lost silently:
                // if the save succeeds, its entry is found below.
                Ok::<_, Error>(c.save(&in_hold).await)
            })
            .await
            .unwrap();
        eprintln!("{removal:?}: a save in the hold after the removal: {saved_after:?}");
        if saved_after.is_ok() {
            let kept = listed(run, aid).await;
            assert!(
                kept.contains_key(&in_hold.id),
                "{removal:?}: a save after the removal succeeded but its entry is nowhere"
            );
            expected.insert(in_hold.id, in_hold);
        }
    } else {
        a.with_aid(aid, async |c| {
            let _in = Inside::enter(&inside);
            c.save(&first).await
        })
        .await
        .unwrap();
        removal.apply(run, aid);
    }
    if removal.keeps_entries() {
        expected.insert(first.id, first);
    }

    // B takes the aid and keeps it until told.
    let (held_tx, held_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let theirs = state("B");
    expected.insert(theirs.id, theirs.clone());
    let b_task = {
        let (b, inside) = (b.clone(), inside.clone());
        tokio::spawn(async move {
            b.with_aid(aid, async |c| {
                let _in = Inside::enter(&inside);
                held_tx.send(()).unwrap();
                go_rx.await.unwrap();
                c.save(&theirs).await
            })
            .await
        })
    };
    held_rx.await.unwrap();

    // A2 and A find the aid taken, though the files they had open are free to lock.
    let r = a2
        .try_with_aid_shared(aid, async |_| {
            let _in = Inside::enter(&inside);
            Ok::<_, Error>(())
        })
        .await;
    assert!(
        matches!(r, Err(Error::WouldBlock { .. })),
        "{removal:?}: a shared try got {r:?} while B holds the aid"
    );
    let r = a
        .try_with_aid(aid, async |_| {
            let _in = Inside::enter(&inside);
            Ok::<_, Error>(())
        })
        .await;
    assert!(
        matches!(r, Err(Error::WouldBlock { .. })),
        "{removal:?}: a try got {r:?} while B holds the aid"
    );

    // A waits for B, in the kernel, on the lock file at the path; it gets in once B lets go.
    let mine = state("A, after the removal");
    expected.insert(mine.id, mine.clone());
    let a_task = {
        let (a, inside) = (a.clone(), inside.clone());
        tokio::spawn(async move {
            a.with_aid(aid, async |c| {
                let _in = Inside::enter(&inside);
                c.save(&mine).await?;
                assert_eq!(c.load(mine.id).await?.as_ref(), Some(&mine));
                c.load_all().await
            })
            .await
        })
    };
    let lock = lock_path(run, aid);
    wait_until("A waits for the lock file at the path", &a_task, || {
        flock_waiters(&lock) == 1
    })
    .await;
    go_tx.send(()).unwrap();
    b_task.await.unwrap().unwrap();
    let seen_by_a = a_task.await.unwrap().unwrap();
    assert_eq!(seen_by_a, expected, "{removal:?}: what A saw in its hold");
    assert_eq!(listed(run, aid).await, expected, "{removal:?}: on disk");
    assert_eq!(
        a2.with_aid_shared(aid, async |c| c.load_all().await)
            .await
            .unwrap(),
        expected,
        "{removal:?}: what A2 sees"
    );
    assert_eq!(a.aids().await.unwrap(), [aid]);

    // And the other way round: while A holds, B is kept out.
    a.with_aid(aid, async |_| {
        let _in = Inside::enter(&inside);
        let r = b.try_with_aid(aid, async |_| Ok::<_, Error>(())).await;
        assert!(matches!(r, Err(Error::WouldBlock { .. })), "{r:?}");
        Ok::<_, Error>(())
    })
    .await
    .unwrap();

    // Removed again with nobody else around, A makes the files anew on its next hold.
    removal.apply(run, aid);
    let again = state("A, alone after a second removal");
    a.with_aid(aid, async |c| c.save(&again).await)
        .await
        .unwrap();
    let survivors = listed(run, aid).await;
    assert!(
        survivors.contains_key(&again.id),
        "{removal:?}: A's save after the second removal is not on disk"
    );
    if removal.keeps_entries() {
        expected.insert(again.id, again);
        assert_eq!(survivors, expected);
    } else {
        assert_eq!(survivors.len(), 1);
    }
    for store in [a, a2, b] {
        store.close().await.unwrap();
    }
}

async fn state_dir_removed_while_idle() {
    removal(Removal::StateDir, false).await;
}

async fn lock_file_removed_while_idle() {
    removal(Removal::LockFile, false).await;
}

async fn aid_dir_removed_while_idle() {
    removal(Removal::AidDir, false).await;
}

async fn state_dir_removed_while_held() {
    removal(Removal::StateDir, true).await;
}

async fn lock_file_removed_while_held() {
    removal(Removal::LockFile, true).await;
}

async fn aid_dir_removed_while_held() {
    removal(Removal::AidDir, true).await;
}

both_runtimes!(
    state_dir_removed_while_idle,
    lock_file_removed_while_idle,
    aid_dir_removed_while_idle,
    state_dir_removed_while_held,
    lock_file_removed_while_held,
    aid_dir_removed_while_held,
);

/// A waiter already queued in the kernel on the old lock file when `state/` is removed:
/// once the old holder lets go, the waiter gets the old file's lock, finds it removed, and
/// queues again on the new one, behind B, who took the new file meanwhile. (B got in while
/// the old holder still held the removed file: nothing can stop that, since nothing links
/// the two files.)
async fn waiter_on_a_removed_lock_file_moves_to_the_new_one() {
    let tmp = run_dir();
    let run = tmp.path();
    let aid = aid(3);
    let (a, a2, b) = (Store::new(run), Store::new(run), Store::new(run));
    let lock = lock_path(run, aid);
    // A2 has the files open before anything happens.
    a2.with_aid_shared(aid, async |c| c.len().await)
        .await
        .unwrap();

    // A holds the aid until told.
    let (a_held_tx, a_held_rx) = oneshot::channel();
    let (a_go_tx, a_go_rx) = oneshot::channel::<()>();
    let a_task = tokio::spawn(async move {
        a.with_aid(aid, async |_| {
            a_held_tx.send(()).unwrap();
            a_go_rx.await.unwrap();
            Ok::<_, Error>(())
        })
        .await
    });
    a_held_rx.await.unwrap();

    // A2 queues for it, in the kernel, on the file that is about to be removed.
    let inside = Arc::new(AtomicBool::new(false));
    let mine = state("A2");
    let a2_task = {
        let (a2, inside, mine) = (a2.clone(), inside.clone(), mine.clone());
        tokio::spawn(async move {
            a2.with_aid(aid, async |c| {
                let _in = Inside::enter(&inside);
                c.save(&mine).await
            })
            .await
        })
    };
    wait_until("A2 waits for A", &a2_task, || flock_waiters(&lock) == 1).await;
    Removal::StateDir.apply(run, aid);

    // B takes the new files, and keeps them.
    let (b_held_tx, b_held_rx) = oneshot::channel();
    let (b_go_tx, b_go_rx) = oneshot::channel::<()>();
    let theirs = state("B");
    let b_task = {
        let (b, inside, theirs) = (b.clone(), inside.clone(), theirs.clone());
        tokio::spawn(async move {
            b.with_aid(aid, async |c| {
                let _in = Inside::enter(&inside);
                b_held_tx.send(()).unwrap();
                b_go_rx.await.unwrap();
                c.save(&theirs).await
            })
            .await
        })
    };
    b_held_rx.await.unwrap();

    // A lets go: A2 gets the old file, and must move on to wait for B on the new one.
    a_go_tx.send(()).unwrap();
    a_task.await.unwrap().unwrap();
    wait_until("A2 waits for B on the new lock file", &a2_task, || {
        flock_waiters(&lock) == 1
    })
    .await;
    b_go_tx.send(()).unwrap();
    b_task.await.unwrap().unwrap();
    common::no_deadlock("A2", a2_task).await.unwrap().unwrap();
    let on_disk = listed(run, aid).await;
    assert_eq!(
        on_disk,
        BTreeMap::from([(mine.id, mine), (theirs.id, theirs)])
    );
    a2.close().await.unwrap();
    b.close().await.unwrap();
}

both_runtimes!(waiter_on_a_removed_lock_file_moves_to_the_new_one);

/// A save inside a hold whose aid directory was removed under it (the lock file stays, so
/// the hold still excludes) goes into the directory made anew at its path, and leaves no
/// temporary-file mark on the lock file. With the whole state directory removed, nothing can
/// be saved where others look: the save fails, and its error names the entry being saved, as
/// every other failed save does.
///
/// Before 21eaed2, `linkat`'s `ENOENT` in the removed directory was taken for "this way of
/// publishing is unsupported": the save fell back to a named temporary file, failed there,
/// named `state/<aid>/.tmp-<random>` (a file that never existed) and left the lock file
/// marked.
#[test]
fn a_save_into_a_removed_directory_names_the_entry() {
    common::run_current_thread(async {
        let tmp = run_dir();
        let run = tmp.path();
        let aid = aid(8);
        let store = Store::new(run);
        let s = state("A");
        store
            .with_aid(aid, async |c| {
                Removal::AidDir.apply(run, aid);
                c.save(&s).await
            })
            .await
            .unwrap();
        assert!(listed(run, aid).await.contains_key(&s.id));
        let mark = std::fs::metadata(lock_path(run, aid)).unwrap().len();
        assert_eq!(
            mark, 0,
            "the lock file is marked as if a temporary file was left"
        );

        let s = state("A, after rm -rf state/");
        let err = store
            .with_aid(aid, async |c| {
                Removal::StateDir.apply(run, aid);
                Ok::<_, Error>(c.save(&s).await.unwrap_err())
            })
            .await
            .unwrap();
        match &err {
            Error::Io { op, path, source } => {
                assert_eq!(*op, "save");
                assert_eq!(path, &common::entry_path(run, aid, s.id), "{err}");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        // The next hold finds the files gone and makes them anew.
        store
            .with_aid(aid, async |c| c.save(&s).await)
            .await
            .unwrap();
        assert!(listed(run, aid).await.contains_key(&s.id));
    });
}

/// After `rm -rf state/`, aids that the store does not have open are held at once: the
/// removed state directory is found when opening an aid's files fails, not only once an aid
/// it has open is held again (issue 17, item 5). With no aid kept open (`open_aids(0)`) every
/// hold opens the files; with a cache, aids 2 to 4 are new to the store.
async fn aids_not_open_are_held_after_state_dir_removed(open_aids: usize) {
    let tmp = run_dir();
    let run = tmp.path();
    let store = Store::with_options(run, Options::new().open_aids(open_aids));
    store.save(aid(1), &state("before")).await.unwrap();
    Removal::StateDir.apply(run, aid(1));
    for n in [2, 3, 4, 1] {
        for _ in 0..3 {
            let s = state("after the removal");
            store
                .save(aid(n), &s)
                .await
                .unwrap_or_else(|e| panic!("open_aids({open_aids}), aid {n}: {e}"));
            assert!(listed(run, aid(n)).await.contains_key(&s.id));
            assert_eq!(store.load(aid(n), s.id).await.unwrap(), Some(s));
        }
    }
    store.close().await.unwrap();
}

async fn uncached_aids_after_state_dir_removed() {
    aids_not_open_are_held_after_state_dir_removed(0).await;
}

async fn new_aids_after_state_dir_removed() {
    aids_not_open_are_held_after_state_dir_removed(64).await;
}

both_runtimes!(
    uncached_aids_after_state_dir_removed,
    new_aids_after_state_dir_removed
);

/// The holder checks only its lock file after each lock; an aid directory removed while the
/// store was idle and made anew by another store, with entries, is found where it is used.
/// A read must never take the removed directory for an empty aid, and a save, a replace or a
/// destroy must act on the directory at the path.
async fn a_directory_removed_while_idle_is_found_where_it_is_used() {
    let tmp = run_dir();
    let run = tmp.path();
    let aid = aid(6);
    let (a, b) = (Store::new(run), Store::new(run));
    let old = state("A, before");
    a.save(aid, &old).await.unwrap();
    Removal::AidDir.apply(run, aid);
    let theirs = state("B");
    b.save(aid, &theirs).await.unwrap();
    // Reads of every kind, on A's open directory, which was removed.
    let seen = a
        .with_aid_shared(aid, async |c| {
            Ok::<_, Error>((
                c.load(theirs.id).await?,
                c.len().await?,
                c.load_all().await?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(seen.0.as_ref(), Some(&theirs));
    assert_eq!(seen.1, 1);
    assert_eq!(seen.2, BTreeMap::from([(theirs.id, theirs.clone())]));
    // Writes after a second removal, the first thing in the hold each time.
    Removal::AidDir.apply(run, aid);
    b.save(aid, &theirs).await.unwrap();
    let mut replaced = theirs.clone();
    replaced.config = "A replaced it".into();
    assert!(
        a.with_aid(aid, async |c| c.replace(&replaced).await)
            .await
            .unwrap()
    );
    Removal::AidDir.apply(run, aid);
    b.save(aid, &theirs).await.unwrap();
    assert!(a.destroy(aid, theirs.id).await.unwrap());
    assert_eq!(listed(run, aid).await, BTreeMap::new());
    for store in [a, b] {
        store.close().await.unwrap();
    }
}

both_runtimes!(a_directory_removed_while_idle_is_found_where_it_is_used);
