//! The store inside a `tokio::task::LocalSet`, on both runtimes, in a process where every
//! panic aborts, as with `panic = "abort"`: every operation works and nothing is printed.
//!
//! A child process (this test binary again, see `common/child.rs`) installs a panic hook that
//! aborts, so even a panic that the store caught (tokio refuses `block_in_place` inside a
//! `LocalSet` on a multi-thread runtime with a panic) would end it. The parent checks that it
//! exits with success and an empty stderr. Each runtime runs with the store on tmpfs (short
//! file work in place), off tmpfs (file work on the blocking pool) and on tmpfs with
//! `Options::work_on_pool(true)`.

mod common;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use common::child::{Flavor, child_var, role, role_command, say, spawn_kid};
use common::{AppConfig, Place, aid, config, on_memory, pid, run_dir_in};
use futures::{StreamExt, TryStreamExt};
use runstate::{AsyncStore, Error, InstanceId, Liveness, Options, State};
use tokio::sync::oneshot;
use tokio::task::LocalSet;

type Store = AsyncStore<AppConfig>;

/// The test the child runs, in the role [`ROLE`].
const CHILD_TEST: &str = "every_operation_in_a_local_set_in_a_child";
const ROLE: &str = "local_set";
const DIR: &str = "RUNSTATE_LOCAL_SET_DIR";
const FLAVOR: &str = "RUNSTATE_LOCAL_SET_FLAVOR";
const ON_POOL: &str = "RUNSTATE_LOCAL_SET_ON_POOL";

/// Runs the child on `flavor` with its store at `place` (sending all its file work to the
/// pool if `on_pool`), and checks that it went through every operation, exited with
/// success and printed nothing to stderr.
fn run_child(flavor: Flavor, place: Place, on_pool: bool) {
    let dir = run_dir_in(place);
    assert_eq!(on_memory(dir.path()), place == Place::Tmpfs);
    let mut cmd = role_command(CHILD_TEST, ROLE);
    cmd.env(DIR, dir.path())
        .env(FLAVOR, flavor.name())
        .env(ON_POOL, if on_pool { "1" } else { "0" });
    common::run_current_thread(async move {
        let what = format!("child ({flavor:?}, {place:?}, on pool: {on_pool})");
        let mut kid = spawn_kid(what, cmd);
        kid.expect("done").await;
        kid.finish_quietly().await;
    });
}

#[test]
fn multi_thread_on_tmpfs() {
    run_child(Flavor::Multi, Place::Tmpfs, false);
}

#[test]
fn multi_thread_off_tmpfs() {
    run_child(Flavor::Multi, Place::Disk, false);
}

#[test]
fn multi_thread_with_work_on_pool() {
    run_child(Flavor::Multi, Place::Tmpfs, true);
}

#[test]
fn current_thread_on_tmpfs() {
    run_child(Flavor::Current, Place::Tmpfs, false);
}

#[test]
fn current_thread_off_tmpfs() {
    run_child(Flavor::Current, Place::Disk, false);
}

#[test]
fn current_thread_with_work_on_pool() {
    run_child(Flavor::Current, Place::Tmpfs, true);
}

/// The child: does nothing outside its [`role`].
#[test]
fn every_operation_in_a_local_set_in_a_child() {
    match role() {
        Some(role) if role == ROLE => {}
        Some(other) => panic!("unknown role {other}"),
        None => return,
    }
    let dir = child_var(DIR);
    // `panic = "abort"`, in effect: any panic, caught or not, ends the process, after saying
    // why on stderr for the parent's report.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("aborting on a panic: {info}");
        std::process::abort();
    }));
    let flavor = Flavor::from_name(&child_var(FLAVOR));
    let on_pool = child_var(ON_POOL) == "1";
    let runtime = flavor.runtime();
    LocalSet::new().block_on(&runtime, every_operation(PathBuf::from(dir), on_pool));
    say("done");
}

/// A config over 64 KiB, which the store encodes and decodes on the pool.
fn big_config(n: u64) -> AppConfig {
    let mut big = config(n);
    big.env.insert("BLOB".into(), common::pattern(n, 100 << 10));
    big
}

/// The state of a process that has come and gone: `prune_dead` removes it.
fn dead_state(n: u64) -> State<AppConfig> {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let state = State::new(InstanceId::random(), child.id(), config(n));
    child.wait().unwrap();
    state
}

/// Every operation of the store, from inside a `LocalSet`: in its `block_on` body and in
/// `spawn_local` tasks that share the store through an `Rc`.
async fn every_operation(dir: PathBuf, on_pool: bool) {
    let store = Rc::new(Store::with_options(
        &dir,
        Options::new().work_on_pool(on_pool),
    ));
    let (a, b, c) = (aid(1), aid(2), aid(3));

    // A cursor's every operation, in one exclusive hold.
    let small = State::new(InstanceId::random(), pid(1), config(1));
    let big = State::new(InstanceId::random(), pid(2), big_config(2));
    store
        .with_aid(a, async |cur| {
            assert!(cur.is_empty().await?);
            cur.save(&small).await?;
            cur.save(&big).await?;
            assert_eq!(cur.load(small.id).await?.as_ref(), Some(&small));
            assert_eq!(cur.load(big.id).await?.as_ref(), Some(&big));
            assert_eq!(cur.len().await?, 2);
            let mut ids: Vec<InstanceId> = cur.ids().try_collect().await?;
            ids.sort();
            let mut want = vec![small.id, big.id];
            want.sort();
            assert_eq!(ids, want);
            let streamed: Vec<State<AppConfig>> = cur.entries().try_collect().await?;
            assert_eq!(streamed.len(), 2);
            let all = cur.load_all().await?;
            assert_eq!(all.get(&big.id), Some(&big));
            assert!(cur.destroy(small.id).await?);
            assert!(!cur.destroy(small.id).await?);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    // The one-call forms.
    let one = State::new(InstanceId::random(), pid(3), config(3));
    store.save(b, &one).await.unwrap();
    assert_eq!(store.load(b, one.id).await.unwrap(), Some(one.clone()));
    assert!(store.destroy(b, one.id).await.unwrap());
    assert_eq!(store.load(b, one.id).await.unwrap(), None);
    store.save(b, &one).await.unwrap();

    // Shared holds, and their try and timeout forms.
    let n = store
        .with_aid_shared(a, async |cur| {
            let all = cur.load_all().await?;
            let listed: Vec<_> = cur.entries().try_collect().await?;
            assert_eq!(listed.len(), all.len());
            Ok::<_, Error>(all.len())
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = store
        .try_with_aid_shared(a, async |cur| cur.len().await)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = store
        .with_aid_shared_timeout(a, Duration::from_secs(10), async |cur| cur.len().await)
        .await
        .unwrap();
    assert_eq!(n, 1);

    // try_with_aid: free, then held by another local task.
    store
        .try_with_aid(a, async |cur| cur.len().await)
        .await
        .unwrap();
    let (held_tx, held_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let holder = tokio::task::spawn_local({
        let store = store.clone();
        async move {
            store
                .with_aid(a, async |_| {
                    held_tx.send(()).unwrap();
                    go_rx.await.unwrap();
                    Ok::<_, Error>(())
                })
                .await
        }
    });
    held_rx.await.unwrap();
    let busy = store.try_with_aid(a, async |cur| cur.len().await).await;
    assert!(matches!(busy, Err(Error::WouldBlock { .. })), "{busy:?}");
    go_tx.send(()).unwrap();
    holder.await.unwrap().unwrap();

    // with_aid_timeout: given, then timed out while another handle (another process, as far
    // as flock goes) holds the aid, then given once it lets go: the wait for another
    // process's lock runs on a thread of its own.
    store
        .with_aid_timeout(a, Duration::from_secs(10), async |cur| cur.len().await)
        .await
        .unwrap();
    let other = Store::new(&dir);
    let (held_tx, held_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let holder = tokio::task::spawn_local(async move {
        other
            .with_aid(a, async |_| {
                held_tx.send(()).unwrap();
                go_rx.await.unwrap();
                Ok::<_, Error>(())
            })
            .await
    });
    held_rx.await.unwrap();
    let late = store
        .with_aid_timeout(a, Duration::from_millis(5), async |cur| cur.len().await)
        .await;
    assert!(matches!(late, Err(Error::Timeout { .. })), "{late:?}");
    // Waiting (in the kernel, most likely) when the other lets go.
    let (waited, ()) = tokio::join!(
        store.with_aid_timeout(a, Duration::from_secs(20), async |cur| cur.len().await),
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            go_tx.send(()).unwrap();
        },
    );
    assert_eq!(waited.unwrap(), 1);
    holder.await.unwrap().unwrap();

    // Local tasks contending for one aid.
    let tasks: Vec<_> = (0..6)
        .map(|t| {
            let store = store.clone();
            tokio::task::spawn_local(async move {
                for i in 0..5 {
                    let s = State::new(
                        InstanceId::random(),
                        pid(100 + t * 10 + i),
                        config(i.into()),
                    );
                    store.with_aid(c, async |cur| cur.save(&s).await).await?;
                    tokio::task::yield_now().await;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    // The store-wide listings.
    assert_eq!(store.aids().await.unwrap(), [a, b, c]);
    let everything: Vec<_> = store.entries().try_collect().await.unwrap();
    assert_eq!(everything.len(), 1 + 1 + 30);
    let streamed = store.entries().filter(|e| std::future::ready(e.is_ok()));
    assert_eq!(streamed.count().await, 32);

    // Liveness, and pruning the entries of dead processes three ways.
    let mine = State::new(InstanceId::random(), std::process::id(), config(7));
    assert_eq!(store.liveness(&mine).await, Liveness::Alive);
    let dead = dead_state(8);
    assert_eq!(store.liveness(&dead).await, Liveness::Dead);
    assert_eq!(store.liveness(&one).await, Liveness::Unknown);
    store.save(b, &dead).await.unwrap();
    store.save(b, &mine).await.unwrap();
    let pruned = store.prune_dead().await.unwrap();
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0].1.id, dead.id);
    let dead = dead_state(9);
    store.save(b, &dead).await.unwrap();
    let pruned = store
        .with_aid(b, async |cur| cur.prune_dead().await)
        .await
        .unwrap();
    assert_eq!(pruned.len(), 1);
    store.save(c, &dead_state(10)).await.unwrap();
    let mut seen = Vec::new();
    let n = store
        .prune_dead_with(|aid, state| seen.push((aid, state.pid)))
        .await
        .unwrap();
    assert_eq!((n, seen.len()), (1, 1));

    // Closing waits for nothing here, and then refuses.
    store.close().await.unwrap();
    assert!(store.is_closed());
    assert!(matches!(store.aids().await, Err(Error::Closed)));
    assert!(matches!(store.load(a, big.id).await, Err(Error::Closed)));
    check_files(&dir);
}

/// What the child left: three aid directories and their lock files, nothing else.
fn check_files(dir: &Path) {
    let names = common::names_in(&dir.join("state"));
    assert_eq!(names, ["1", "1.lock", "2", "2.lock", "3", "3.lock"]);
}
