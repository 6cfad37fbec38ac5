//! A cancellation storm: tens of thousands of operations, by tasks on two handles, dropped
//! at random await points (while waiting for an aid and while holding it). After it every
//! aid is free, exclusion held throughout, every entry is whole and is what its task knows,
//! and no file is left over.
//!
//! `RUNSTATE_SEED=<seed>` (printed by each test) replays another run.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::checked::{Fail, Filled, read_all};
use common::child::DEADLOCK;
use common::{Checked, XorShift, aid, check_states, foreign_names, foreign_state_names, pid};
use futures::future::{Either, select};
use futures::{StreamExt, TryStreamExt};
use runstate::{Aid, AsyncStore, Cursor, Error, InstanceId, State};
use tokio::time::timeout;

/// The base seed: `RUNSTATE_SEED` if set, else a fixed one (see `common::seed`).
fn base_seed() -> u64 {
    common::child::base_seed(0xfa17_2024)
}

type Store = AsyncStore<Cfg>;

/// The suites' checked config: `owner` says which process or task saved it.
type Cfg = Filled;

// ---------------------------------------------------------------------------------------
// A cancellation storm: operations dropped at random await points.

/// The aids of the cancellation storm.
const CANCEL_AIDS: [u16; 3] = [21, 22, 23];

/// Who may be inside an aid: -1 for an exclusive holder, n > 0 for n shared ones.
struct Occupancy(AtomicI64);

/// Marks a holder inside; panics if the holders present exclude it.
struct Inside<'a>(&'a AtomicI64, i64);

impl Occupancy {
    /// Marks an exclusive holder inside, and sets `entered`.
    fn exclusive(&self, entered: &mut bool) -> Inside<'_> {
        *entered = true;
        if let Err(now) = self
            .0
            .compare_exchange(0, -1, Ordering::SeqCst, Ordering::SeqCst)
        {
            panic!("an exclusive holder entered while {now} (-1: exclusive) were inside");
        }
        Inside(&self.0, -1)
    }

    /// Marks a shared holder inside, and sets `entered`.
    fn shared(&self, entered: &mut bool) -> Inside<'_> {
        *entered = true;
        let prev = self.0.fetch_add(1, Ordering::SeqCst);
        assert!(prev >= 0, "a shared holder entered beside an exclusive one");
        Inside(&self.0, 1)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
    }
}

/// What a task knows of an entry it saved.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Known {
    /// Saved, not destroyed.
    Present,
    /// A save or destroy of it was dropped before it returned: it may or may not be there.
    Maybe,
}

/// A task's own entries. Only the task touches them, so under the aid's lock what it knows
/// must match the disk.
#[derive(Default)]
struct Model(HashMap<InstanceId, (Aid, State<Cfg>, Known)>);

impl Model {
    fn on(&self, a: Aid) -> Vec<InstanceId> {
        let mut ids: Vec<InstanceId> = self
            .0
            .iter()
            .filter(|(_, (x, _, _))| *x == a)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// Checks one aid's entries of this task, read under the aid's lock, against the model,
    /// and settles every `Maybe`: no operation of this aid can be in flight while it is held.
    fn settle(
        &mut self,
        a: Aid,
        owner: u64,
        all: &BTreeMap<InstanceId, State<Cfg>>,
    ) -> Result<(), String> {
        for id in self.on(a) {
            let (_, state, known) = &self.0[&id];
            match (all.get(&id), known) {
                (Some(found), _) if found != state => {
                    return Err(format!("{id} holds {found:?}, not what was saved"));
                }
                (Some(_), _) => self.0.get_mut(&id).unwrap().2 = Known::Present,
                (None, Known::Maybe) => drop(self.0.remove(&id)),
                (None, Known::Present) => return Err(format!("saved entry {id} is missing")),
            }
        }
        for (id, state) in all {
            if state.config.owner == owner && !self.0.contains_key(id) {
                return Err(format!("entry {id} of this task is there but unknown"));
            }
        }
        Ok(())
    }
}

/// Completes after `n` yields.
async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// Runs `fut` to completion, or drops it at a random point. `Some` if it completed.
async fn maybe_dropped<T>(rng: &mut XorShift, fut: impl Future<Output = T>) -> Option<T> {
    match rng.below(6) {
        // Dropped right after its first poll.
        0 => tokio::time::timeout(Duration::ZERO, fut).await.ok(),
        // Dropped after a tiny while, measured by the timer.
        1 | 2 => {
            let limit = Duration::from_micros(rng.below(1500));
            tokio::time::timeout(limit, fut).await.ok()
        }
        // Dropped after a random number of scheduler turns.
        3 | 4 => {
            let turns = rng.below(60);
            match select(pin!(fut), pin!(yields(turns))).await {
                Either::Left((out, _)) => Some(out),
                Either::Right(((), _)) => None,
            }
        }
        _ => Some(fut.await),
    }
}

/// Saves fresh entries, recording each as `Maybe` before and `Present` after.
async fn save_some(
    c: &mut Cursor<Cfg>,
    model: &mut Model,
    states: &[State<Cfg>],
) -> Result<(), Fail> {
    for state in states {
        model
            .0
            .insert(state.id, (c.aid(), state.clone(), Known::Maybe));
        c.save(state).await?;
        model.0.get_mut(&state.id).unwrap().2 = Known::Present;
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Loads `id`, checks it against the model, and destroys it.
async fn load_destroy(c: &mut Cursor<Cfg>, model: &mut Model, id: InstanceId) -> Result<(), Fail> {
    let (_, state, known) = model.0[&id].clone();
    match (c.load(id).await?, known) {
        (Some(found), _) if found != state => {
            return Err(Fail::Broken(format!("{id} changed: {found:?}")));
        }
        (Some(_), _) => {}
        (None, Known::Maybe) => {
            model.0.remove(&id);
            return Ok(());
        }
        (None, Known::Present) => return Err(Fail::Broken(format!("saved {id} is missing"))),
    }
    model.0.get_mut(&id).unwrap().2 = Known::Maybe;
    tokio::task::yield_now().await;
    if !c.destroy(id).await? {
        return Err(Fail::Broken(format!(
            "{id} vanished between load and destroy"
        )));
    }
    model.0.remove(&id);
    Ok(())
}

#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    dropped: AtomicU64,
    /// Dropped while its closure ran, holding the aid (the rest: while waiting for it).
    dropped_inside: AtomicU64,
    would_block: AtomicU64,
    timed_out: AtomicU64,
}

/// One task of the cancellation storm: `ops` random operations, each maybe dropped.
async fn cancel_task(
    store: Store,
    t: u64,
    seed: u64,
    ops: u64,
    occupancy: Arc<[Occupancy; 3]>,
    tally: Arc<Tally>,
) -> Model {
    let mut rng = XorShift::new(seed);
    let mut model = Model::default();
    for _ in 0..ops {
        let which = rng.below(3) as usize;
        let (a, occ) = (aid(CANCEL_AIDS[which]), &occupancy[which]);
        let mine = model.on(a);
        let pick = rng.next_u64();
        let victim = (!mine.is_empty()).then(|| mine[pick as usize % mine.len()]);
        let seq = rng.next_u64();
        let fresh = |n: u64, rng: &mut XorShift| -> Vec<State<Cfg>> {
            (0..n)
                .map(|i| {
                    let len = if rng.below(20) == 0 {
                        40_000
                    } else {
                        rng.below(600) as usize
                    };
                    State::new(
                        InstanceId::random(),
                        pid(t as u32),
                        Cfg::new(t, seq + i, len),
                    )
                })
                .collect()
        };
        // Keep each task's share of an aid small: past 5 entries, only destroy.
        let op = if mine.len() >= 5 { 1 } else { rng.below(7) };
        let model = &mut model;
        // Set once the closure runs: a drop after that is one inside a hold.
        let mut entered = false;
        let result: Option<Result<(), Fail>> = match op {
            0 => {
                let states = fresh(1 + rng.below(2), &mut rng);
                let work = store.with_aid(a, async |c| {
                    let _inside = occ.exclusive(&mut entered);
                    save_some(c, model, &states).await
                });
                maybe_dropped(&mut rng, work).await
            }
            1 => {
                let work = store.with_aid(a, async |c| {
                    let _inside = occ.exclusive(&mut entered);
                    match victim {
                        Some(id) => load_destroy(c, model, id).await,
                        None => Ok(()),
                    }
                });
                maybe_dropped(&mut rng, work).await
            }
            2 => {
                let work = store.with_aid_shared(a, async |c| {
                    let _inside = occ.shared(&mut entered);
                    let all = c.load_all().await?;
                    check_states(&all)?;
                    model.settle(a, t, &all)?;
                    Ok(())
                });
                maybe_dropped(&mut rng, work).await
            }
            3 => {
                let states = fresh(1, &mut rng);
                let work = store.try_with_aid(a, async |c| {
                    let _inside = occ.exclusive(&mut entered);
                    save_some(c, model, &states).await
                });
                maybe_dropped(&mut rng, work).await
            }
            4 => {
                let limit = Duration::from_micros(rng.below(3000));
                let work = store.with_aid_timeout(a, limit, async |c| {
                    let _inside = occ.exclusive(&mut entered);
                    match victim {
                        Some(id) => load_destroy(c, model, id).await,
                        None => Ok(()),
                    }
                });
                maybe_dropped(&mut rng, work).await
            }
            5 => {
                let take = (pick % 10) as usize;
                let work = store.with_aid(a, async |c| {
                    let _inside = occ.exclusive(&mut entered);
                    let mut entries = c.entries();
                    for _ in 0..take {
                        match entries.next().await {
                            Some(state) => state?.config.check()?,
                            None => break,
                        }
                    }
                    drop(entries);
                    let len = c.len().await?;
                    let ids: Vec<InstanceId> = c.ids().try_collect().await?;
                    if ids.len() != len {
                        return Err(Fail::Broken(format!("len {len}, {} ids", ids.len())));
                    }
                    Ok(())
                });
                maybe_dropped(&mut rng, work).await
            }
            _ => {
                let take = (pick % 6) as usize;
                let work = store.with_aid_shared(a, async |c| {
                    let _inside = occ.shared(&mut entered);
                    let mut ids = c.ids();
                    for _ in 0..take {
                        if ids.next().await.transpose()?.is_none() {
                            break;
                        }
                    }
                    Ok(())
                });
                maybe_dropped(&mut rng, work).await
            }
        };
        tally.ops.fetch_add(1, Ordering::Relaxed);
        match result {
            None => {
                tally.dropped.fetch_add(1, Ordering::Relaxed);
                if entered {
                    tally.dropped_inside.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(())) => {}
            Some(Err(Fail::Store(Error::WouldBlock { .. }))) => {
                tally.would_block.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(Fail::Store(Error::Timeout { .. }))) => {
                tally.timed_out.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(e)) => panic!("task {t} (seed {seed}), op {op} on aid {a}: {e}"),
        }
    }
    model
}

/// `tasks` tasks run `per_task` random operations each, most dropped at a random point;
/// then every aid is free, every entry is whole and is what its task knows, and no file is
/// left over.
async fn cancellation_storm(runtime: &str, seed: u64, tasks: u64, per_task: u64) {
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let run_dir = tmp.path().join("run");
    // Half the tasks use a second handle, with its own lock descriptors, as another process
    // would: their operations are also dropped while waiting in flock.
    let stores = [Store::new(&run_dir), Store::new(&run_dir)];
    let occupancy: Arc<[Occupancy; 3]> =
        Arc::new(std::array::from_fn(|_| Occupancy(AtomicI64::new(0))));
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            tokio::spawn(cancel_task(
                stores[t as usize % 2].clone(),
                t,
                seed ^ (t << 40),
                per_task,
                occupancy.clone(),
                tally.clone(),
            ))
        })
        .collect();
    let mut models = Vec::new();
    for task in handles {
        models.push(
            timeout(DEADLOCK * 2, task)
                .await
                .expect("a storm task deadlocked")
                .unwrap(),
        );
    }
    let storm_time = started.elapsed();

    // Every aid becomes free (a with_aid granted in this process means every hold of the
    // storm, and the work it kept running, is over), then is free for anyone at once.
    let fresh = Store::new(&run_dir);
    let mut entries = 0;
    for n in CANCEL_AIDS {
        let a = aid(n);
        let all = timeout(DEADLOCK, stores[0].with_aid(a, async |c| read_all(c).await))
            .await
            .expect("with_aid after the storm deadlocked")
            .unwrap();
        let again = timeout(DEADLOCK, stores[1].with_aid(a, async |c| read_all(c).await))
            .await
            .expect("the second handle's with_aid after the storm deadlocked")
            .unwrap();
        assert_eq!(all, again);
        // Before the fresh handle's first hold, which would sweep temporary files.
        assert_eq!(
            foreign_names(&run_dir, a),
            Vec::<String>::new(),
            "leftover files in aid {a}"
        );
        for store in [&stores[0], &stores[1], &fresh] {
            let now = store
                .try_with_aid(a, async |c| read_all(c).await)
                .await
                .unwrap_or_else(|e| panic!("aid {a} is still held after the storm: {e}"));
            assert_eq!(now, all);
        }
        // Each task's entries are exactly what it knows, and nobody else's are there.
        for (t, model) in models.iter_mut().enumerate() {
            model
                .settle(a, t as u64, &all)
                .unwrap_or_else(|e| panic!("aid {a}, task {t}: {e}"));
        }
        assert!(
            all.values().all(|s| s.config.owner < tasks),
            "an entry no task saved"
        );
        entries += all.len();
    }
    let aids: Vec<Aid> = CANCEL_AIDS.iter().map(|&n| aid(n)).collect();
    assert_eq!(foreign_state_names(&run_dir, &aids), Vec::<String>::new());
    let every: Vec<(Aid, State<Cfg>)> = fresh.entries().try_collect().await.unwrap();
    assert_eq!(every.len(), entries);
    for occ in occupancy.iter() {
        assert_eq!(occ.0.load(Ordering::SeqCst), 0, "a holder marker leaked");
    }

    let ops = tally.ops.load(Ordering::Relaxed);
    let dropped = tally.dropped.load(Ordering::Relaxed);
    let inside = tally.dropped_inside.load(Ordering::Relaxed);
    assert_eq!(ops, tasks * per_task);
    // The storm means something only if many operations were dropped, both while waiting
    // for an aid and while holding it. A sixth of them get a zero timeout, which drops any
    // operation that touches the disk, so these bounds do not depend on the machine's speed.
    assert!(dropped >= ops / 10, "too few drops: {dropped} of {ops}");
    assert!(
        inside > 0 && inside < dropped,
        "drops not spread over waiting and holding: {inside} of {dropped} inside"
    );
    eprintln!(
        "cancellation_storm ({runtime}, seed {seed}): {ops} operations by {tasks} tasks, \
         {dropped} dropped at a random await point ({inside} inside the closure, holding the \
         aid), {} WouldBlock, {} Timeout, {entries} entries left; storm {storm_time:?}, \
         total {:?}",
        tally.would_block.load(Ordering::Relaxed),
        tally.timed_out.load(Ordering::Relaxed),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancellation_storm_multi_thread() {
    cancellation_storm("multi-thread", base_seed(), 8, 6000).await;
}

#[tokio::test(flavor = "current_thread")]
async fn cancellation_storm_current_thread() {
    cancellation_storm("current-thread", base_seed() + 1, 6, 2000).await;
}
