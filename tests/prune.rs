//! Pruning dead entries: nothing removed goes unreported, and one bad aid does not keep the
//! others from being pruned. Every test runs on both tokio runtimes.

#[macro_use]
mod common;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::pin;
use std::task::Poll;

use runstate::{Aid, AsyncStore, Error, InstanceId, State};

type Store = AsyncStore<String>;

both_runtimes!(
    prune_dead_with_reports_every_removed_entry_past_a_failing_aid,
    prune_dead_with_on_a_cursor_hands_over_what_it_removed,
);

/// A child that runs until [`kill`]ed: entries saved while it runs record its identity,
/// so they read as dead once it is gone.
fn child() -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap()
}

fn kill(mut child: std::process::Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn aid(n: u16) -> Aid {
    Aid::new(n).unwrap()
}

async fn save(store: &Store, aid: Aid, state: &State<String>) {
    store
        .with_aid(aid, async |c| c.save(state).await)
        .await
        .unwrap();
}

fn entry_names(run: &Path, aid: Aid) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("state").join(aid.to_string()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

async fn prune_dead_with_reports_every_removed_entry_past_a_failing_aid() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let store = Store::new(dir.path());
    let doomed = child();
    let dead = doomed.id();
    let me = std::process::id();
    let (one, bad, three) = (aid(1), aid(2), aid(3));
    let gone_one = State::new(InstanceId::random(), dead, "one".to_string());
    let alive_one = State::new(InstanceId::random(), me, "alive".to_string());
    let gone_bad = State::new(InstanceId::random(), dead, "bad".to_string());
    let gone_three = State::new(InstanceId::random(), dead, "three".to_string());
    save(&store, one, &gone_one).await;
    save(&store, one, &alive_one).await;
    save(&store, bad, &gone_bad).await;
    save(&store, three, &gone_three).await;
    kill(doomed);

    // Aid 2's directory becomes writable by its group: the store refuses to use it.
    let bad_dir = dir.path().join("state").join(bad.to_string());
    std::fs::set_permissions(&bad_dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    // A fresh handle, so nothing about aid 2 is cached from the saves.
    let store = Store::new(dir.path());

    let mut seen = Vec::new();
    let result = store
        .prune_dead_with(|aid, state| seen.push((aid, state.id, state.config)))
        .await;
    assert!(
        matches!(result, Err(Error::Insecure { ref path, .. }) if path == &bad_dir),
        "the failing aid is reported: {result:?}"
    );
    seen.sort();
    let mut want = vec![
        (one, gone_one.id, "one".to_string()),
        (three, gone_three.id, "three".to_string()),
    ];
    want.sort();
    assert_eq!(seen, want, "every removed entry was handed over");

    // What was reported is gone from disk, and nothing else is.
    assert_eq!(entry_names(dir.path(), one), [alive_one.id.to_string()]);
    assert!(entry_names(dir.path(), three).is_empty());
    std::fs::set_permissions(&bad_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(entry_names(dir.path(), bad), [gone_bad.id.to_string()]);

    // Once the directory is fixed, the entry left behind is pruned like any other.
    let pruned = store.prune_dead().await.unwrap();
    assert_eq!(pruned.len(), 1);
    assert_eq!((pruned[0].0, pruned[0].1.id), (bad, gone_bad.id));
}

async fn prune_dead_with_on_a_cursor_hands_over_what_it_removed() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let store = Store::new(dir.path());
    let doomed = child();
    let dead = doomed.id();
    let ids: Vec<InstanceId> = (0..3).map(|_| InstanceId::random()).collect();
    let alive = InstanceId::random();
    let (count, mut seen) = store
        .with_aid(aid(9), async |c| {
            for id in &ids {
                c.save(&State::new(*id, dead, id.to_string())).await?;
            }
            c.save(&State::new(alive, std::process::id(), String::new()))
                .await?;
            kill(doomed);
            let mut seen = Vec::new();
            let count = c
                .prune_dead_with(|state| seen.push((state.id, state.config)))
                .await?;
            assert_eq!(c.len().await?, 1, "only the live entry is left");
            Ok::<_, Error>((count, seen))
        })
        .await
        .unwrap();
    assert_eq!(count, 3);
    seen.sort();
    let mut want: Vec<(InstanceId, String)> = ids.iter().map(|id| (*id, id.to_string())).collect();
    want.sort();
    assert_eq!(seen, want);
}

/// A prune whose future is dropped mid-pass stops removing entries, since nobody would be
/// told of them: on tmpfs at the pause where its steps in place gave the runtime back, off
/// tmpfs within the step in flight on the blocking pool.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_prune_stops_removing_entries() {
    // More than two steps on the pool remove (`Step::ON_POOL`, 128 files): the one that was
    // seen removing and the next may have begun.
    const N: usize = 300;
    for place in [common::Place::Tmpfs, common::Place::Disk] {
        let dir = common::run_dir_in(place);
        let store = Store::new(dir.path());
        let doomed = child();
        let dead = doomed.id();
        let aid = aid(21);
        store
            .with_aid(aid, async |c| {
                for _ in 0..N {
                    c.save(&State::new(InstanceId::random(), dead, "x".repeat(1000)))
                        .await?;
                }
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
        kill(doomed);

        let mut seen = 0;
        let left = store
            .with_aid(aid, async |c| {
                {
                    let mut prune = pin!(c.prune_dead_with(|_| seen += 1));
                    // Polled until it has removed some entries (in place, a poll's budget at
                    // a time; on the pool, a step at a time), then dropped.
                    let started = std::time::Instant::now();
                    loop {
                        let poll =
                            std::future::poll_fn(|cx| Poll::Ready(prune.as_mut().poll(cx))).await;
                        assert!(poll.is_pending(), "{place:?}: the pass ended undropped");
                        if entry_names(dir.path(), aid).len() < N {
                            break;
                        }
                        assert!(
                            started.elapsed() < common::DEADLOCK,
                            "{place:?}: no removal"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
                // The holder's next operation waits for a step still on the pool to end.
                c.len().await
            })
            .await
            .unwrap();
        assert_eq!(seen, 0, "{place:?}");
        assert!(
            left > 0,
            "{place:?}: the dropped pass went on removing all {N} entries"
        );
        assert_eq!(entry_names(dir.path(), aid).len(), left, "{place:?}");
        println!(
            "{place:?}: {} of {N} entries removed before the drop",
            N - left
        );
    }
}
