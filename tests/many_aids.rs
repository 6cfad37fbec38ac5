//! Every aid in use (issue 9, part 2): a store's open descriptors stay bounded however many
//! of the 10,000 aids it touches, so the usual limit of 1024 open files is enough.
//!
//! Descriptors are counted in `/proc/self/fd`, which the whole process shares; libtest runs
//! a binary's tests on parallel threads, so each check runs in a child process of its own
//! (this binary again, with only [`child_process`] selected), where nothing else opens files.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use runstate::{Aid, AsyncStore, Error, InstanceId, Options, ProcessIdentity, State};

use common::child::{Flavor, child_var, role, role_command, say, spawn_kid};
use common::{XorShift, aid, run_dir};

type Store = AsyncStore<u64>;

/// The name of the child's entry point, which the parent selects with `--exact`.
const CHILD_TEST: &str = "child_process";

/// The open-file limit the children run under: the usual default soft limit.
const NOFILE: u64 = 1024;

/// Descriptors a store may have open besides its aids' two each: the state directory, a
/// listing's own descriptor of a directory, an entry file being written or read by each
/// operation in flight, and the odd `/proc` file read for an identity.
const SLACK: usize = 16;

/// Runs `role` in a child process on a runtime of `flavor`, under [`NOFILE`] open files, and
/// waits for it to succeed; returns what it said with `@@DONE`.
async fn in_child(role: &str, flavor: Flavor, run_dir: &Path, extra: &[(&str, String)]) -> String {
    let mut cmd = role_command(CHILD_TEST, role);
    cmd.env("RUNSTATE_MANY_DIR", run_dir)
        .env("RUNSTATE_MANY_FLAVOR", flavor.name());
    for (key, value) in extra {
        cmd.env(key, value);
    }
    let mut kid = spawn_kid(format!("{role} child"), cmd);
    // Every line is a step, so that a slow machine gets DEADLOCK per step, not for all.
    let done = loop {
        let said = kid.expect("").await;
        if let Some(done) = said.strip_prefix("DONE") {
            break done.trim().to_owned();
        }
    };
    kid.finish().await;
    done
}

// ---------------------------------------------------------------------------------------
// The child side.

/// Not a test of its own: the entry point of the child processes the other tests spawn.
/// Outside a [`role`] it does nothing.
#[test]
fn child_process() {
    let Some(role) = role() else {
        return;
    };
    lower_nofile();
    let dir = PathBuf::from(child_var("RUNSTATE_MANY_DIR"));
    let flavor = Flavor::from_name(&child_var("RUNSTATE_MANY_FLAVOR"));
    flavor.runtime().block_on(async {
        match role.as_str() {
            "every_aid" => child_every_aid(&dir).await,
            "cycle" => {
                let open_aids = child_var("RUNSTATE_MANY_OPEN_AIDS").parse().unwrap();
                child_cycle(&dir, open_aids).await
            }
            "exhaust" => child_exhaust(&dir).await,
            other => panic!("unknown role {other}"),
        }
    });
}

/// Lowers this process's soft limit of open files to [`NOFILE`], before any store exists.
fn lower_nofile() {
    set_nofile(NOFILE);
}

/// Sets this process's soft limit of open files (the lowest descriptor number it may not
/// use) to `limit`, or to the hard limit if that is lower.
fn set_nofile(limit: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let old = getrlimit(Resource::Nofile);
    let soft = old.maximum.map_or(limit, |hard| hard.min(limit));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: old.maximum,
        },
    )
    .unwrap();
    assert_eq!(getrlimit(Resource::Nofile).current, Some(soft));
}

/// How many descriptors this process has open (not counting the one that lists them).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count() - 1
}

/// Tracks the open descriptors against a bound above a baseline, and the most seen.
struct Fds {
    baseline: usize,
    most: AtomicUsize,
}

impl Fds {
    fn new() -> Fds {
        let baseline = open_fds();
        Fds {
            baseline,
            most: AtomicUsize::new(0),
        }
    }

    /// Asserts that at most `bound` descriptors are open beyond the baseline, at `when`.
    fn check(&self, bound: usize, when: &str) {
        let extra = open_fds().saturating_sub(self.baseline);
        self.most.fetch_max(extra, Ordering::Relaxed);
        assert!(
            extra <= bound,
            "{extra} descriptors open beyond the {} before the store, over the bound of \
             {bound}, {when}",
            self.baseline
        );
    }

    /// [`Fds::check`], and tells the parent that the child has got this far.
    fn step(&self, bound: usize, when: &str) {
        self.check(bound, when);
        say(format!("STEP {when}"));
    }

    /// The most descriptors seen beyond the baseline since the last call.
    fn take_most(&self) -> usize {
        self.most.swap(0, Ordering::Relaxed)
    }
}

/// The CPU time this process has used so far (user and system), from `/proc/self/stat`:
/// the figure to report on a busy machine, where wall time says little.
fn cpu_time() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // In USER_HZ, which Linux fixes at 100 for what it shows in /proc.
    std::time::Duration::from_millis(ticks * 10)
}

/// The identity of a process that has exited and been reaped: an entry recording it is
/// `Dead`.
fn dead_process() -> (u32, ProcessIdentity) {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    // A zombie still has its identity; take it before reaping.
    let start = Instant::now();
    let identity = loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat.rfind(')').map(|i| stat[i + 1..].trim_start());
        if state.is_some_and(|s| s.starts_with('Z')) {
            break ProcessIdentity::of(pid).expect("a zombie has an identity");
        }
        assert!(start.elapsed() < common::DEADLOCK, "`true` never exited");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.wait().unwrap();
    (pid, identity)
}

/// Saves one entry in each of the 10,000 aids (even aids: a dead process, odd aids: this
/// one), lists them all, prunes the dead ones, and uses a second store alongside: all under
/// 1024 open files, with the descriptors counted after every phase and every 1,000 aids.
async fn child_every_aid(dir: &Path) {
    let fds = Fds::new();
    let one_store = 2 * Options::DEFAULT_OPEN_AIDS + SLACK;
    let started = Instant::now();
    let store = Store::new(dir);
    let (dead_pid, dead) = dead_process();
    let me = std::process::id();

    let mut expected = BTreeMap::new();
    for n in 0..=9999u16 {
        let a = aid(n);
        let state = match n % 2 {
            0 => State::unidentified(InstanceId::random(), dead_pid, u64::from(n))
                .with_process(Some(dead.clone())),
            _ => State::new(InstanceId::random(), me, u64::from(n)),
        };
        store
            .save(a, &state)
            .await
            .unwrap_or_else(|e| panic!("save in aid {n}: {e}"));
        expected.insert((a, state.id), state);
        if n % 1000 == 999 {
            fds.step(one_store, &format!("after saving in aids 0..={n}"));
        }
    }
    let saved = started.elapsed();

    let aids = store.aids().await.unwrap();
    assert_eq!(aids, (0..=9999).map(aid).collect::<Vec<_>>());
    fds.step(one_store, "after aids()");

    let mut entries = store.entries();
    let mut listed = BTreeMap::new();
    while let Some((a, state)) = entries.try_next().await.unwrap() {
        let dup = listed.insert((a, state.id), state);
        assert!(dup.is_none(), "entries() listed an entry twice");
        if listed.len() % 1000 == 0 {
            fds.step(
                one_store,
                &format!("after listing {} entries", listed.len()),
            );
        }
    }
    drop(entries);
    assert_eq!(listed.len(), 10_000);
    assert!(listed == expected, "entries() differ from what was saved");
    fds.step(one_store, "after entries()");
    let listed_at = started.elapsed();

    let pruned = store.prune_dead().await.unwrap();
    let pruned: BTreeSet<(Aid, InstanceId)> = pruned.into_iter().map(|(a, s)| (a, s.id)).collect();
    let dead_ones: BTreeSet<(Aid, InstanceId)> = expected
        .iter()
        .filter(|(_, s)| s.pid == dead_pid)
        .map(|(key, _)| *key)
        .collect();
    assert_eq!(pruned.len(), 5_000);
    assert!(pruned == dead_ones, "prune_dead removed other entries");
    fds.step(one_store, "after prune_dead()");
    let pruned_at = started.elapsed();

    let one_most = fds.take_most();

    // A second store in the same process, while the first keeps its cache of open aids.
    let second = Store::new(dir);
    let two_stores = 2 * one_store;
    let fresh = State::new(InstanceId::random(), me, 7);
    for n in [0, 1, 5_000, 9_999] {
        second.save(aid(n), &fresh).await.unwrap();
        assert_eq!(
            second.load(aid(n), fresh.id).await.unwrap().as_ref(),
            Some(&fresh)
        );
    }
    assert_eq!(second.aids().await.unwrap().len(), 10_000);
    // One aid's listing and prune, and a whole listing's first thousand entries.
    let some = second
        .with_aid(aid(1), async |c| {
            c.prune_dead().await?;
            c.load_all().await
        })
        .await
        .unwrap();
    assert_eq!(some.len(), 2);
    let first: Vec<_> = second.entries().take(1000).try_collect().await.unwrap();
    assert_eq!(first.len(), 1000);
    fds.step(two_stores, "after using a second store");
    // And the first still works alongside.
    assert_eq!(store.load(aid(9_999), fresh.id).await.unwrap(), Some(fresh));
    fds.step(two_stores, "after using the first store again");

    second.close().await.unwrap();
    store.close().await.unwrap();
    fds.step(SLACK, "after closing both stores");
    say(format!(
        "DONE descriptors beyond the baseline of {}: at most {one_most} (bound {one_store}) \
         with one store, {} (bound {two_stores}) with two; wall time: saves {saved:?}, \
         aids+entries {:?}, prune {:?}, second store {:?}; CPU time {:?}",
        fds.baseline,
        fds.take_most(),
        listed_at - saved,
        pruned_at - listed_at,
        started.elapsed() - pruned_at,
        cpu_time(),
    ));
}

/// Tasks that cycle nested holds over 100 aids, with a store that keeps `open_aids` unheld
/// aids open: the descriptors stay within the cache's two per aid plus two per aid held or
/// being opened, and everything saved is loaded back.
async fn child_cycle(dir: &Path, open_aids: usize) {
    const TASKS: usize = 3;
    const ROUNDS: usize = 120;
    const AIDS: u16 = 100;
    let fds = Arc::new(Fds::new());
    // Each task holds at most two aids at once; one more holds aid 99 throughout.
    let most_held = 2 * TASKS + 1;
    let bound = 2 * open_aids + 2 * most_held + SLACK;
    let store = Store::with_options(dir, Options::new().open_aids(open_aids));
    let saved = Arc::new(Mutex::new(BTreeMap::new()));

    // A long holder of one aid, mixed in among the others.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let long = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .with_aid(aid(AIDS - 1), async |c| {
                    c.save(&State::unidentified(InstanceId::random(), 1, 99))
                        .await?;
                    held_tx.send(()).unwrap();
                    released.await.unwrap();
                    c.len().await
                })
                .await
        })
    };
    held_rx.await.unwrap();

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (store, fds, saved) = (store.clone(), fds.clone(), saved.clone());
            tokio::spawn(async move {
                let mut rng = XorShift::new(t as u64 + 1);
                for round in 0..ROUNDS {
                    // Outer aids below 50, inner ones above: one order, so no deadlock.
                    let outer = aid(rng.below(50) as u16);
                    let inner = aid(50 + rng.below(u64::from(AIDS) - 51) as u16);
                    let state = State::unidentified(
                        InstanceId::random(),
                        round as u32,
                        (t * ROUNDS + round) as u64,
                    );
                    let inner_state = State::unidentified(InstanceId::random(), 2, round as u64);
                    let shared_inner = round % 3 == 0;
                    store
                        .with_aid(outer, async |c| {
                            c.save(&state).await?;
                            fds.check(bound, &format!("task {t} holding {outer}"));
                            if shared_inner {
                                store
                                    .with_aid_shared(inner, async |r| r.len().await)
                                    .await?;
                            } else {
                                store
                                    .with_aid(inner, async |i| {
                                        i.save(&inner_state).await?;
                                        fds.check(
                                            bound,
                                            &format!("task {t} holding {outer} and {inner}"),
                                        );
                                        Ok::<_, Error>(())
                                    })
                                    .await?;
                            }
                            assert_eq!(c.load(state.id).await?.as_ref(), Some(&state));
                            Ok::<_, Error>(())
                        })
                        .await
                        .unwrap();
                    {
                        let mut saved = saved.lock().unwrap();
                        saved.insert((outer, state.id), state);
                        if !shared_inner {
                            saved.insert((inner, inner_state.id), inner_state);
                        }
                    }
                    if round % 8 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    fds.check(bound, "after the tasks");
    release.send(()).unwrap();
    assert_eq!(long.await.unwrap().unwrap(), 1);

    // With nothing held, one more hold of an aid not in the cache closes what the cache
    // does not keep.
    let quiet = 2 * (open_aids + 1) + SLACK;
    store
        .with_aid(aid(9_000), async |c| c.len().await)
        .await
        .unwrap();
    fds.check(quiet, "after a hold with nothing else held");

    // Everything saved is there, through this store and through a fresh one.
    let saved = std::mem::take(&mut *saved.lock().unwrap());
    for reader in [
        store.clone(),
        Store::with_options(dir, Options::new().open_aids(open_aids)),
    ] {
        let mut listed: BTreeMap<(Aid, InstanceId), State<u64>> = BTreeMap::new();
        let mut entries = reader.entries();
        while let Some((a, state)) = entries.try_next().await.unwrap() {
            if a != aid(AIDS - 1) {
                listed.insert((a, state.id), state);
            }
        }
        assert!(listed == saved, "what was saved is not what is listed");
        for ((a, id), state) in saved.iter().step_by(7) {
            assert_eq!(reader.load(*a, *id).await.unwrap().as_ref(), Some(state));
        }
        fds.check(bound, "after reading back");
        reader.close().await.unwrap();
    }
    say(format!(
        "DONE open_aids({open_aids}): {} entries; most descriptors beyond the baseline of {}: \
         {} (bound {bound})",
        saved.len(),
        fds.baseline,
        fds.take_most()
    ));
}

/// The highest descriptor number this process has open.
fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap()
}

/// Whether `r` failed for want of a descriptor (`EMFILE`), naming a path.
fn out_of_descriptors<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Io { source, .. }) if source.raw_os_error() == Some(24))
}

/// Holds aid `n`, saves in it, and holds the next one inside, until something fails;
/// returns that error. `saved` gets each entry saved on the way.
fn hold_deeper<'a>(
    store: &'a Store,
    n: u16,
    saved: &'a mut Vec<(Aid, InstanceId)>,
) -> futures::future::BoxFuture<'a, Error> {
    Box::pin(async move {
        assert!(
            saved.len() < 50,
            "50 aids held at once under a limit of a few descriptors"
        );
        let state = State::unidentified(InstanceId::random(), 1, u64::from(n));
        let held = store
            .with_aid(aid(n), async |c| {
                c.save(&state).await?;
                saved.push((aid(n), state.id));
                Ok::<_, Error>(hold_deeper(store, n + 1, saved).await)
            })
            .await;
        held.unwrap_or_else(|e| e)
    })
}

/// Nested holds of ever more aids under a limit of open files that leaves room for only a
/// few, for each of several sizes of room, so that what runs out is in turn the lock file's
/// open, the directory's, a sweep's or a save's: the hold or save that finds no descriptor
/// fails with `EMFILE` as an error (no panic, no descriptor leaked), and once everything is
/// let go, the store works as before.
async fn child_exhaust(dir: &Path) {
    let mut seen = Vec::new();
    for (room, warm) in (3..=10u16).flat_map(|room| [(room, false), (room, true)]) {
        let before = open_fds();
        let store = Store::with_options(dir, Options::new().open_aids(2));
        let first = aid(100 * room + 50 * u16::from(warm));
        // Opens the state directory (and an aid) while descriptors are plentiful.
        store
            .save(aid(9_000), &State::unidentified(InstanceId::random(), 1, 0))
            .await
            .unwrap();
        if warm {
            // Held once before, and swept then: a hold now needs only the two files, and a
            // save one more.
            for n in 0..20 {
                let a = aid(first.get() + n);
                store.with_aid(a, async |c| c.len().await).await.unwrap();
            }
        }
        // Fill the free numbers below the highest open descriptor (a parent may have passed
        // one with a high number), so that the limit leaves exactly `room` free.
        let top = highest_fd();
        let mut fillers = Vec::new();
        loop {
            let filler = std::fs::File::open("/dev/null").unwrap();
            if std::os::fd::AsRawFd::as_raw_fd(&filler) as u64 > top {
                break;
            }
            fillers.push(filler);
        }
        set_nofile(top + 1 + u64::from(room));

        let mut saved = Vec::new();
        let err = hold_deeper(&store, first.get(), &mut saved).await;
        let failed: Result<(), Error> = Err(err);
        assert!(out_of_descriptors(&failed), "room {room}: {failed:?}");
        let Err(Error::Io { op, .. }) = &failed else {
            unreachable!()
        };
        let warmth = if warm { "warm" } else { "cold" };
        seen.push(format!(
            "{room} free, {warmth}: {} held, then {op};",
            saved.len()
        ));

        // Everyone has let go: with the limit back up, the store works again, and every
        // entry that was saved is there.
        set_nofile(NOFILE);
        drop(fillers);
        for (a, id) in &saved {
            assert!(store.load(*a, *id).await.unwrap().is_some());
        }
        for n in 0..=saved.len() as u16 {
            let a = aid(first.get() + n);
            store
                .save(a, &State::unidentified(InstanceId::random(), 2, 0))
                .await
                .unwrap();
        }
        store.close().await.unwrap();
        assert_eq!(
            open_fds(),
            before,
            "room {room}: descriptors left open after close"
        );
    }
    say(format!(
        "DONE aids held and saved in at once, and what failed: {}",
        seen.join(" ")
    ));
}

// ---------------------------------------------------------------------------------------
// The tests.

/// Every aid 0..=9999 in use under a limit of 1024 open files: saving, `aids()`, `entries()`,
/// `prune_dead()` and a second store all succeed, with at most 2 × 64 + 16 descriptors
/// open beyond those of the process before the store (2 × that with two stores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aid_under_1024_open_files() {
    let tmp = run_dir();
    let started = Instant::now();
    let said = in_child("every_aid", Flavor::Multi, tmp.path(), &[]).await;
    eprintln!(
        "every_aid (multi-thread child): {said}; in all {:?}",
        started.elapsed()
    );
}

/// Nested holds over 100 aids from several tasks with no unheld aid kept open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycling_holds_with_no_cache() {
    for flavor in [Flavor::Current, Flavor::Multi] {
        let tmp = run_dir();
        let extra = [("RUNSTATE_MANY_OPEN_AIDS", "0".to_string())];
        let said = in_child("cycle", flavor, tmp.path(), &extra).await;
        eprintln!("cycle ({flavor:?} child): {said}");
    }
}

/// Nested holds over 100 aids from several tasks with a cache of 4 unheld aids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycling_holds_with_a_small_cache() {
    for flavor in [Flavor::Current, Flavor::Multi] {
        let tmp = run_dir();
        let extra = [("RUNSTATE_MANY_OPEN_AIDS", "4".to_string())];
        let said = in_child("cycle", flavor, tmp.path(), &extra).await;
        eprintln!("cycle ({flavor:?} child): {said}");
    }
}

/// Two stores on one run directory (two processes, as far as `flock` can tell) whose caches
/// keep no aid or one aid open, so that nearly every hold opens the aid's files anew and
/// closes them after: tasks of both increment counters in 8 aids, with shared readers
/// among them. No two writers of an aid are ever inside at once, no reader sees a counter
/// missing, and no increment is lost.
async fn small_caches_still_exclude() {
    const AIDS: u16 = 8;
    const TASKS: u64 = 3;
    const ROUNDS: u64 = 100;
    let tmp = run_dir();
    let stores = [
        Store::with_options(tmp.path(), Options::new().open_aids(0)),
        Store::with_options(tmp.path(), Options::new().open_aids(1)),
    ];
    let counter = |n: u16| InstanceId::from_bytes([n as u8 + 1; 16]);
    for n in 0..AIDS {
        let first = State::unidentified(counter(n), 1, 0);
        stores[0].save(aid(n), &first).await.unwrap();
    }
    let inside: Arc<Vec<AtomicBool>> =
        Arc::new((0..AIDS).map(|_| AtomicBool::new(false)).collect());
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for t in 0..TASKS {
            let (store, inside) = (store.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = XorShift::new(10 * s as u64 + t + 1);
                for round in 0..ROUNDS {
                    let n = rng.below(u64::from(AIDS)) as u16;
                    let id = counter(n);
                    if round % 4 == 3 {
                        let seen = store
                            .with_aid_shared(aid(n), async |c| c.load(id).await)
                            .await
                            .unwrap();
                        assert!(seen.is_some(), "a reader saw counter {n} missing");
                        continue;
                    }
                    store
                        .with_aid(aid(n), async |c| {
                            let _in = common::Inside::enter(&inside[usize::from(n)]);
                            let old = c.load(id).await?.expect("the counter is there");
                            tokio::task::yield_now().await;
                            c.destroy(id).await?;
                            let new = State::unidentified(id, 1, old.config + 1);
                            c.save(&new).await
                        })
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for task in tasks {
        common::no_deadlock("the counting tasks", task)
            .await
            .unwrap();
    }
    let mut total = 0;
    for n in 0..AIDS {
        let state = stores[1].load(aid(n), counter(n)).await.unwrap().unwrap();
        total += state.config;
    }
    let writes = 2 * TASKS * (ROUNDS - ROUNDS / 4);
    assert_eq!(total, writes, "lost increments");
}

both_runtimes!(small_caches_still_exclude);

/// Out of descriptors, a hold or a save fails with `EMFILE` as an error, leaks nothing,
/// and the store works again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_an_error() {
    for flavor in [Flavor::Current, Flavor::Multi] {
        let tmp = run_dir();
        let said = in_child("exhaust", flavor, tmp.path(), &[]).await;
        eprintln!("exhaust ({flavor:?} child): {said}");
    }
}
