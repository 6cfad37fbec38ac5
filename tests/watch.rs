//! `AsyncStore::watch` and `AsyncStore::wait_empty`: changes made by other processes, new
//! aids, replaces, foreign names, overflow, and descriptors released on drop.
//!
//! Other processes are this test binary again, with only `child_process` selected and
//! `RUNSTATE_WATCH_*` variables saying what to do (see `tests/common/child.rs`).
//!
//! "No duplicates" is checked with a sentinel: after the changes under test, the parent saves
//! one more entry and collects changes up to it. inotify has one queue per descriptor, so
//! anything reported twice would come before the sentinel.

#[macro_use]
mod common;

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::child::{Flavor, Kid, child_var, role_command, say};
use common::{aid, no_deadlock, pid, run_dir};
use futures::StreamExt;
use runstate::{Aid, AsyncStore, Change, Error, InstanceId, State, Watch};

const CHILD_TEST: &str = "child_process";

type Store = AsyncStore<String>;

fn id(n: u8) -> InstanceId {
    InstanceId::from_bytes([n; 16])
}

fn state(id: InstanceId, text: &str) -> State<String> {
    State::new(id, pid(1), text.to_owned())
}

async fn save(store: &Store, aid: Aid, id: InstanceId) {
    store
        .with_aid(aid, async |c| c.save(&state(id, "x")).await)
        .await
        .unwrap();
}

/// Saves a sentinel entry in `aid` and returns every change reported before it.
async fn until_sentinel(store: &Store, watch: &mut Watch, aid: Aid) -> Vec<Change> {
    let sentinel = InstanceId::random();
    save(store, aid, sentinel).await;
    let mut seen = Vec::new();
    no_deadlock("the sentinel's change", async {
        loop {
            let change = watch.next().await.expect("the stream goes on").unwrap();
            if change == (Change::Saved { aid, id: sentinel }) {
                return;
            }
            seen.push(change);
        }
    })
    .await;
    seen
}

/// The changes of one aid, in order.
fn of(aid: Aid, changes: &[Change]) -> Vec<Change> {
    changes
        .iter()
        .filter(|c| c.aid() == Some(aid))
        .copied()
        .collect()
}

fn spawn_child(role: &str, run_dir: &Path, flavor: Flavor) -> Kid {
    let mut cmd = role_command(CHILD_TEST, role);
    cmd.env("RUNSTATE_WATCH_DIR", run_dir)
        .env("RUNSTATE_WATCH_FLAVOR", flavor.name())
        .stdin(Stdio::piped());
    common::child::spawn_kid(role, cmd)
}

// ---------------------------------------------------------------------------------------
// Watch.

/// Another process saves, replaces and destroys, in an aid that existed and in one it makes,
/// among foreign files: each change is reported once, in order, and nothing else is.
async fn changes_from_another_process() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    save(&store, aid(1), id(0xee)).await;
    let mut watch = store.watch().await.unwrap();
    let mut kid = spawn_child("script", dir.path(), Flavor::Current);
    let (a, b, c, d) = (id(0xa), id(0xb), id(0xc), id(0xd));
    // Aid 2 is new: the watch says so, and the child goes on once it has.
    kid.expect("NEW_AID").await;
    let mut seen = Vec::new();
    no_deadlock("aid 2's resync", async {
        while seen.last() != Some(&Change::ResyncAid { aid: aid(2) }) {
            seen.push(watch.next().await.unwrap().unwrap());
        }
    })
    .await;
    writeln!(kid.stdin.as_mut().unwrap(), "go").unwrap();
    kid.finish().await;
    seen.extend(until_sentinel(&store, &mut watch, aid(1)).await);
    let one = aid(1);
    assert_eq!(
        of(one, &seen),
        [
            Change::Saved { aid: one, id: a },
            Change::Replaced { aid: one, id: a },
            Change::Saved { aid: one, id: b },
            Change::Destroyed { aid: one, id: a },
            Change::Destroyed {
                aid: one,
                id: id(0xee)
            },
        ],
        "all: {seen:?}"
    );
    let two = aid(2);
    // The first save in aid 2 is reported if the stream watched the directory before it.
    let mut of_two = of(two, &seen);
    let raced = of_two.get(1) == Some(&Change::Saved { aid: two, id: c });
    if raced {
        of_two.remove(1);
    }
    assert_eq!(
        of_two,
        [
            Change::ResyncAid { aid: two },
            Change::Replaced { aid: two, id: c },
            Change::Destroyed { aid: two, id: c },
            Change::Saved { aid: two, id: d },
        ],
        "all: {seen:?}"
    );
    assert_eq!(
        seen.len(),
        9 + raced as usize,
        "nothing else shows: {seen:?}"
    );
}

/// The child's side of [`changes_from_another_process`].
async fn child_script(run_dir: &Path) {
    let store = Store::new(run_dir);
    let (one, two) = (aid(1), aid(2));
    let (a, b, c, d) = (id(0xa), id(0xb), id(0xc), id(0xd));
    // Foreign names around the store's own: none of them may show.
    let state_dir = run_dir.join("state");
    std::fs::write(state_dir.join("1").join("README"), b"x").unwrap();
    let temp = format!(".tmp-{}", InstanceId::random());
    std::fs::write(state_dir.join("1").join(&temp), b"x").unwrap();
    std::fs::remove_file(state_dir.join("1").join(&temp)).unwrap();
    std::fs::write(state_dir.join("1").join(a.to_string().to_uppercase()), b"x").unwrap();
    std::fs::create_dir(state_dir.join("junk")).unwrap();
    std::fs::write(state_dir.join("junk").join(c.to_string()), b"x").unwrap();
    std::fs::create_dir(state_dir.join("0123")).unwrap();
    std::fs::write(state_dir.join("0123").join(c.to_string()), b"x").unwrap();
    std::fs::write(state_dir.join("77.lock"), b"").unwrap();

    store
        .with_aid(one, async |cur| {
            cur.save(&state(a, "a1")).await?;
            assert!(cur.replace(&state(a, "a2")).await?);
            assert!(!cur.replace(&state(id(0x99), "none")).await?);
            cur.save(&state(b, "b")).await?;
            cur.destroy(a).await?;
            cur.destroy(id(0xee)).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    store
        .with_aid(two, async |cur| cur.save(&state(c, "c1")).await)
        .await
        .unwrap();
    say("NEW_AID");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    store
        .with_aid(two, async |cur| {
            assert!(cur.replace(&state(c, "c2")).await?);
            cur.destroy(c).await?;
            cur.save(&state(d, "d")).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
}

/// Aids made one after another by another process, each with entries saved the moment it
/// exists, race the watch being added to each new directory: every entry is reported once,
/// from the listing of the new directory or from its event.
async fn new_aids_race_their_watch() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    save(&store, aid(1), id(0xee)).await;
    let mut watch = store.watch().await.unwrap();
    // Read while the child works, so that new directories are watched as they come, and
    // list each new aid again when told, as `ResyncAid` says.
    let sentinel = InstanceId::random();
    let lister = store.clone();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut listed = std::collections::BTreeMap::new();
        loop {
            match watch.next().await.unwrap().unwrap() {
                Change::Saved { id, .. } if id == sentinel => return (seen, listed),
                Change::ResyncAid { aid } => {
                    let ids = lister
                        .with_aid_shared(aid, async |c| {
                            Ok::<_, Error>(c.ids().collect::<Vec<_>>().await)
                        })
                        .await
                        .unwrap();
                    let mut ids: Vec<InstanceId> = ids.into_iter().map(Result::unwrap).collect();
                    ids.sort();
                    listed.insert(aid, ids);
                    seen.push(Change::ResyncAid { aid });
                }
                change => seen.push(change),
            }
        }
    });
    spawn_child("new_aids", dir.path(), Flavor::Multi)
        .finish()
        .await;
    save(&store, aid(1), sentinel).await;
    let (seen, listed) = no_deadlock("the sentinel", reader).await.unwrap();
    let mut saved = 0;
    for n in 0..NEW_AIDS {
        let a = aid(100 + n);
        let got = of(a, &seen);
        // First the resync, then the saves made after the watch was added, in order: the
        // last ones of the three.
        assert_eq!(got.first(), Some(&Change::ResyncAid { aid: a }), "{seen:?}");
        let after: Vec<Change> = (3 - (got.len() as u8 - 1)..3)
            .map(|k| Change::Saved {
                aid: a,
                id: new_aid_id(n, k),
            })
            .collect();
        assert_eq!(got[1..], after, "aid {a}; all: {seen:?}");
        saved += after.len();
        // The listing made on the resync and the saves after it: all three, none missed.
        let mut all = listed[&a].clone();
        all.extend(after.iter().filter_map(Change::id));
        all.sort();
        all.dedup();
        let want: Vec<InstanceId> = (0..3).map(|k| new_aid_id(n, k)).collect();
        assert_eq!(all, want, "aid {a}; all: {seen:?}");
    }
    assert_eq!(seen.len(), NEW_AIDS as usize + saved, "{seen:?}");
}

const NEW_AIDS: u16 = 40;

fn new_aid_id(n: u16, k: u8) -> InstanceId {
    let mut bytes = [k; 16];
    bytes[..2].copy_from_slice(&n.to_be_bytes());
    InstanceId::from_bytes(bytes)
}

/// The child's side of [`new_aids_race_their_watch`].
async fn child_new_aids(run_dir: &Path) {
    let store = Store::new(run_dir);
    for n in 0..NEW_AIDS {
        store
            .with_aid(aid(100 + n), async |cur| {
                for k in 0..3 {
                    cur.save(&state(new_aid_id(n, k), "x")).await?;
                }
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
    }
}

/// A replace is one `Replaced`; a replace with no entry, nothing.
async fn replace_is_reported_once() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let one = aid(1);
    save(&store, one, id(0xee)).await;
    let mut watch = store.watch().await.unwrap();
    store
        .with_aid(one, async |c| {
            c.save(&state(id(1), "a")).await?;
            assert!(c.replace(&state(id(1), "b")).await?);
            assert!(c.replace(&state(id(1), "c")).await?);
            assert!(!c.replace(&state(id(2), "none")).await?);
            c.destroy(id(1)).await
        })
        .await
        .unwrap();
    let seen = until_sentinel(&store, &mut watch, one).await;
    assert_eq!(
        seen,
        [
            Change::Saved {
                aid: one,
                id: id(1)
            },
            Change::Replaced {
                aid: one,
                id: id(1)
            },
            Change::Replaced {
                aid: one,
                id: id(1)
            },
            Change::Destroyed {
                aid: one,
                id: id(1)
            },
        ]
    );
}

/// A watch on a store with no state directory yet makes it, and sees the first aid.
async fn watch_before_anything_exists() {
    let dir = run_dir();
    let run = dir.path().join("not/yet");
    let store = Store::new(&run);
    let mut watch = store.watch().await.unwrap();
    assert!(run.join("state").is_dir());
    // Aid 5 is new: its first save came before the stream could watch its directory.
    save(&store, aid(5), id(2)).await;
    let first = no_deadlock("a resync", watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, Change::ResyncAid { aid: aid(5) });
    save(&store, aid(5), id(1)).await;
    let next = no_deadlock("a change", watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next,
        Change::Saved {
            aid: aid(5),
            id: id(1)
        }
    );
}

/// More changes than the kernel queues, while nobody reads: the stream says `Resync` after
/// the changes it still has, and goes on reporting later ones.
async fn overflow_yields_resync() {
    let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if max > 200_000 {
        eprintln!("max_queued_events is {max}: too many changes to force an overflow quickly");
        return;
    }
    let dir = run_dir();
    let store = Store::new(dir.path());
    let one = aid(1);
    save(&store, one, id(0xee)).await;
    let mut watch = store.watch().await.unwrap();
    // Plain files with entry names: one IN_CREATE each, as a save makes, but quicker.
    let aid_dir = dir.path().join("state/1");
    let made = max + 100;
    for _ in 0..made {
        std::fs::write(aid_dir.join(InstanceId::random().to_string()), b"").unwrap();
    }
    let mut saved = 0;
    no_deadlock("Resync", async {
        loop {
            match watch.next().await.unwrap().unwrap() {
                Change::Saved { .. } => saved += 1,
                Change::Resync => break,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(saved < made, "{saved} of {made} reported, and a Resync");
    // Only one Resync for one overflow, and later changes are reported.
    let seen = until_sentinel(&store, &mut watch, one).await;
    assert_eq!(seen, [], "after the Resync");
}

/// Names that are not entries never show: in an aid directory, in the state directory and in
/// a directory that is not an aid's.
async fn foreign_names_never_show() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    save(&store, aid(1), id(0xee)).await;
    let mut watch = store.watch().await.unwrap();
    let state_dir = dir.path().join("state");
    let one = state_dir.join("1");
    for name in [
        "README".to_string(),
        format!(".tmp-{}", InstanceId::random()),
        id(0xab).to_string().to_uppercase(),
        format!("{}.swp", id(0xab)),
    ] {
        std::fs::write(one.join(&name), b"x").unwrap();
        std::fs::rename(one.join(&name), one.join(format!("{name}~"))).unwrap();
        std::fs::remove_file(one.join(format!("{name}~"))).unwrap();
    }
    std::fs::write(state_dir.join("9.lock"), b"").unwrap();
    for junk in ["junk", "0123", "10000"] {
        std::fs::create_dir(state_dir.join(junk)).unwrap();
        std::fs::write(state_dir.join(junk).join(id(4).to_string()), b"x").unwrap();
    }
    // A file named like an aid is not an aid directory.
    std::fs::write(state_dir.join("12"), b"x").unwrap();
    // An aid directory with nothing of the store's in it yet: new, so listed again.
    std::fs::create_dir(state_dir.join("13")).unwrap();
    std::fs::write(state_dir.join("13").join("README"), b"x").unwrap();
    assert_eq!(
        until_sentinel(&store, &mut watch, aid(1)).await,
        [Change::ResyncAid { aid: aid(13) }]
    );
}

/// The state directory removed under the stream: its entries' removals, then an error
/// naming it, then the end.
async fn a_removed_state_directory_ends_the_stream() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    save(&store, aid(1), id(1)).await;
    let mut watch = store.watch().await.unwrap();
    store.close().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let mut seen = Vec::new();
    let end = no_deadlock("the end of the stream", async {
        loop {
            match watch.next().await.expect("an error before the end") {
                Ok(change) => seen.push(change),
                Err(e) => return e,
            }
        }
    })
    .await;
    assert!(
        matches!(&end, Error::Io { path, .. } if path == &dir.path().join("state")),
        "{end}"
    );
    assert_eq!(
        seen,
        [Change::Destroyed {
            aid: aid(1),
            id: id(1)
        }]
    );
    assert!(watch.next().await.is_none());
}

/// `rm -rf state/` while another process keeps the old directory open, as any store with an
/// aid open does: the stream still ends at once with the error naming it. The kernel reports
/// the directory's own removal (`IN_DELETE_SELF`) only once that process closes it; before,
/// the stream went deaf, silently, for as long as the other process ran (issue 17, item 6).
async fn a_removed_state_directory_ends_the_stream_while_another_process_keeps_it_open() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    save(&store, aid(1), id(1)).await;
    store.close().await.unwrap();
    let mut kid = spawn_child("keeper", dir.path(), Flavor::Current);
    kid.expect("KEEPING").await;
    let watcher = Store::new(dir.path());
    let mut watch = watcher.watch().await.unwrap();
    watcher.close().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let end = no_deadlock("the error naming the removed state directory", async {
        loop {
            match watch.next().await.expect("an error before the end") {
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await;
    assert!(
        matches!(&end, Error::Io { path, .. } if path == &dir.path().join("state")),
        "{end}"
    );
    assert!(watch.next().await.is_none());
    writeln!(kid.stdin.as_mut().unwrap(), "go").unwrap();
    kid.finish().await;
}

/// The child's side: keeps aid 1 of the store open until told.
async fn child_keeper(run_dir: &Path) {
    let store = Store::new(run_dir);
    store
        .with_aid_shared(aid(1), async |c| c.len().await)
        .await
        .unwrap();
    say("KEEPING");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    drop(store);
}

/// One entry saved, replaced and destroyed in an aid made right after `watch()` returned,
/// before the stream is polled: inotify cannot have seen any of it, and the stream says so
/// (`ResyncAid`) rather than nothing (issue 17, item 7).
async fn changes_in_a_brand_new_aid_are_never_missed_silently() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    save(&store, aid(1), id(0xee)).await;
    let mut watch = store.watch().await.unwrap();
    let new = aid(9);
    store
        .with_aid(new, async |c| {
            c.save(&state(id(1), "a")).await?;
            assert!(c.replace(&state(id(1), "b")).await?);
            c.destroy(id(1)).await
        })
        .await
        .unwrap();
    let seen = until_sentinel(&store, &mut watch, aid(1)).await;
    assert_eq!(seen, [Change::ResyncAid { aid: new }]);
    // From then on, its changes come in order.
    store
        .with_aid(new, async |c| {
            c.save(&state(id(2), "a")).await?;
            c.destroy(id(2)).await
        })
        .await
        .unwrap();
    let seen = until_sentinel(&store, &mut watch, aid(1)).await;
    assert_eq!(
        seen,
        [
            Change::Saved {
                aid: new,
                id: id(2)
            },
            Change::Destroyed {
                aid: new,
                id: id(2)
            }
        ]
    );
}

/// `state` swapped for a symlink to another directory, by whoever may write the run
/// directory (here, as root, the same swap): `wait_empty` and `watch` refuse it as holds do,
/// on a store that had the real one open and on a fresh one. Before, `wait_empty` answered
/// from the other directory, where the aid was empty, while the real aid held an entry
/// (issue 17, item 8).
async fn a_symlinked_state_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = run_dir();
    let run = dir.path();
    let store = Store::new(run);
    save(&store, aid(1), id(1)).await;
    let decoy = run.join("decoy");
    std::fs::create_dir_all(decoy.join("1")).unwrap();
    for d in [decoy.clone(), decoy.join("1")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::rename(run.join("state"), run.join("real")).unwrap();
    std::os::unix::fs::symlink(&decoy, run.join("state")).unwrap();
    for (who, store) in [
        ("the store", store.clone()),
        ("a fresh store", Store::new(run)),
    ] {
        let waited = no_deadlock("wait_empty", store.wait_empty(aid(1))).await;
        assert!(
            matches!(waited, Err(Error::Insecure { .. })),
            "{who}: wait_empty gave {waited:?}"
        );
        let watched = store.watch().await;
        assert!(
            matches!(watched, Err(Error::Insecure { .. })),
            "{who}: watch gave {:?}",
            watched.map(drop)
        );
    }
}

both_runtimes!(
    a_removed_state_directory_ends_the_stream_while_another_process_keeps_it_open,
    changes_in_a_brand_new_aid_are_never_missed_silently,
    a_symlinked_state_directory_is_refused,
);

both_runtimes!(
    a_removed_state_directory_ends_the_stream,
    changes_from_another_process,
    new_aids_race_their_watch,
    replace_is_reported_once,
    watch_before_anything_exists,
    overflow_yields_resync,
    foreign_names_never_show,
    wait_empty_when_another_process_destroys_the_last_entry,
    wait_empty_at_once_when_empty,
);

#[test]
fn a_closed_store_refuses_to_watch() {
    common::run_current_thread(async {
        let dir = run_dir();
        let store = Store::new(dir.path());
        store.close().await.unwrap();
        assert!(matches!(store.watch().await, Err(Error::Closed)));
        assert!(matches!(store.wait_empty(aid(1)).await, Err(Error::Closed)));
    });
}

#[test]
fn the_stream_is_send_static_and_unpin() {
    fn check<T: Send + Unpin + 'static + futures::Stream<Item = Result<Change, Error>>>() {}
    check::<Watch>();
    fn send<T: Send>(_: &T) {}
    let store = Store::new("/nonexistent");
    send(&store.watch());
    send(&store.wait_empty(aid(1)));
}

// ---------------------------------------------------------------------------------------
// Wait until empty.

/// `wait_empty` waits while entries remain, and returns once another process has destroyed
/// the last one.
async fn wait_empty_when_another_process_destroys_the_last_entry() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let three = aid(3);
    for n in 1..=3 {
        save(&store, three, id(n)).await;
    }
    let waiter = store.clone();
    let wait = tokio::spawn(async move { waiter.wait_empty(three).await });
    let mut kid = spawn_child("destroyer", dir.path(), Flavor::Current);
    let mut stdin = kid.stdin.take().unwrap();
    for n in 1..=3 {
        writeln!(stdin, "{n}").unwrap();
        stdin.flush().unwrap();
        assert_eq!(kid.expect("DESTROYED").await, n.to_string());
        if n < 3 {
            // Not a speed check: it must not have returned with entries left.
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(!wait.is_finished(), "returned with {} entries left", 3 - n);
        }
    }
    drop(stdin);
    no_deadlock("wait_empty", wait).await.unwrap().unwrap();
    kid.finish().await;
    let left = store
        .with_aid(three, async |c| c.len().await)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// The child's side: destroys `id(n)` in aid 3 for each number `n` read on stdin.
async fn child_destroyer(run_dir: &Path) {
    let store = Store::new(run_dir);
    // A thread hands the lines over as they come.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let n: u8 = line.trim().parse().unwrap();
        let gone = store
            .with_aid(aid(3), async |c| c.destroy(id(n)).await)
            .await
            .unwrap();
        assert!(gone);
        say(format!("DESTROYED {n}"));
    }
}

/// No directory, an empty one, or one with only foreign and temporary files: at once.
async fn wait_empty_at_once_when_empty() {
    let dir = run_dir();
    let store = Store::new(dir.path().join("nothing/here"));
    no_deadlock("no store", store.wait_empty(aid(1)))
        .await
        .unwrap();
    assert!(!dir.path().join("nothing").exists(), "waiting made nothing");

    let store = Store::new(dir.path());
    save(&store, aid(2), id(1)).await;
    store
        .with_aid(aid(2), async |c| c.destroy(id(1)).await)
        .await
        .unwrap();
    let two = dir.path().join("state/2");
    std::fs::write(two.join("README"), b"x").unwrap();
    std::fs::write(two.join(format!(".tmp-{}", InstanceId::random())), b"x").unwrap();
    no_deadlock("foreign files only", store.wait_empty(aid(2)))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Descriptors, checked in a child process of their own, where no other test runs.

#[test]
fn dropping_a_watch_or_a_wait_releases_its_descriptor() {
    let dir = run_dir();
    common::run_current_thread(async {
        spawn_child("fds", dir.path(), Flavor::Current)
            .finish()
            .await;
    });
}

/// The inotify descriptors this process has open.
fn inotify_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_str() == Some("anon_inode:inotify"))
        .count()
}

async fn child_fds(run_dir: &Path) {
    let store = Store::new(run_dir);
    save(&store, aid(1), id(1)).await;
    assert_eq!(inotify_fds(), 0);
    let watch = store.watch().await.unwrap();
    assert_eq!(inotify_fds(), 1);
    drop(watch);
    assert_eq!(inotify_fds(), 0, "a dropped watch");

    // A wait that is pending when it is dropped.
    let wait = tokio::time::timeout(Duration::from_millis(20), store.wait_empty(aid(1))).await;
    assert!(wait.is_err(), "aid 1 is not empty");
    assert_eq!(inotify_fds(), 0, "a dropped wait_empty");

    // One that completes.
    store
        .with_aid(aid(1), async |c| c.destroy(id(1)).await)
        .await
        .unwrap();
    store.wait_empty(aid(1)).await.unwrap();
    assert_eq!(inotify_fds(), 0, "a completed wait_empty");
}

// ---------------------------------------------------------------------------------------

/// What children run; outside a role ([`common::child::role`]), nothing.
#[test]
fn child_process() {
    let Some(role) = common::child::role() else {
        return;
    };
    let dir = std::path::PathBuf::from(child_var("RUNSTATE_WATCH_DIR"));
    let flavor = Flavor::from_name(&child_var("RUNSTATE_WATCH_FLAVOR"));
    flavor.runtime().block_on(async {
        match role.as_str() {
            "script" => child_script(&dir).await,
            "new_aids" => child_new_aids(&dir).await,
            "destroyer" => child_destroyer(&dir).await,
            "fds" => child_fds(&dir).await,
            "keeper" => child_keeper(&dir).await,
            other => panic!("unknown role {other}"),
        }
    });
    if role == "fds" {
        // And once more on the other runtime.
        let other = dir.join("other");
        flavor
            .other()
            .runtime()
            .block_on(async { child_fds(&other).await });
    }
}
