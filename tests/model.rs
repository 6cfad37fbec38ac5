//! Model-based test: random sequences of operations on a few aids, run by concurrent tasks
//! (one per aid), checked result by result against an in-memory model of the store.
//!
//! Each case makes a fresh run directory and a random list of phases. A concurrent phase
//! runs one task per aid, each with its own list of transactions (one `with_aid`-like call
//! holding one to three operations); a task owns its aid's model, so every result is
//! determined by the model even though the tasks run at once. Some transactions are dropped
//! part-way: the results they logged before the drop are still checked, and the one
//! operation that was in flight may or may not have happened, so the model accepts either
//! and resyncs that id by loading it. Between concurrent phases come store-wide checks:
//! `aids`, the store-wide `entries` stream, a full comparison with the model and with the
//! files on disk, and closing the store (every call must then fail with `Error::Closed`)
//! and opening a new one on the same directory.
//!
//! `RUNSTATE_MODEL_CASES` sets the number of cases of the multi-thread property (default
//! 2500); the current-thread property runs a quarter as many.

#[allow(unused_macros)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, UNIX_EPOCH};

use common::{AppConfig, config, no_deadlock, pid, run_dir};
use futures::StreamExt;
use futures::future::{Either, select};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use runstate::{Aid, AsyncStore, Cursor, Error, InstanceId, ReadCursor, State};
use tokio::task::yield_now;

/// The config stored in each entry: the suites' realistic one.
type Cfg = AppConfig;

type St = State<Cfg>;
type Store = AsyncStore<Cfg>;
type Entries = BTreeMap<InstanceId, St>;

/// Which id an operation is about, resolved against the model when it runs.
#[derive(Clone, Debug)]
enum Target {
    /// The n-th id of the model (modulo its size); a fixed absent id if the model is empty.
    Existing(usize),
    /// An id of these bytes: almost surely absent.
    Fresh([u8; 16]),
}

#[derive(Clone, Debug)]
enum Op {
    /// Save a state made from the seed under the target id.
    Save(Target, u64),
    Destroy(Target),
    Load(Target),
    Len,
    Ids,
    Entries,
    LoadAll,
}

/// Which entry point a transaction goes through. Shared ones are only used by transactions
/// that only read; the others fall back to their exclusive counterpart.
#[derive(Clone, Copy, Debug)]
enum Access {
    Plain,
    Try,
    Timeout,
    Shared,
    TryShared,
    SharedTimeout,
}

/// Whether and when a transaction's future is dropped.
#[derive(Clone, Copy, Debug)]
enum Interrupt {
    Never,
    /// Raced against this many `yield_now`s with `futures::future::select`.
    Yields(u8),
    /// Polled by hand this many times (yielding in between), then dropped.
    Polls(u8),
    /// Given this many microseconds by `tokio::time::timeout`.
    Timer(u16),
}

#[derive(Clone, Debug)]
struct Txn {
    ops: Vec<Op>,
    access: Access,
    interrupt: Interrupt,
}

#[derive(Clone, Debug)]
enum Phase {
    /// One list of transactions per aid, run by concurrent tasks.
    Concurrent(Vec<Vec<Txn>>),
    Aids,
    StoreEntries,
    Reopen,
    Verify,
}

#[derive(Clone, Debug)]
struct Case {
    aids: Vec<u16>,
    phases: Vec<Phase>,
}

const AIDS_PER_CASE: usize = 3;

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => any::<usize>().prop_map(Target::Existing),
        1 => any::<[u8; 16]>().prop_map(Target::Fresh),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<[u8; 16]>(), any::<u64>()).prop_map(|(b, s)| Op::Save(Target::Fresh(b), s)),
        2 => (any::<usize>(), any::<u64>()).prop_map(|(i, s)| Op::Save(Target::Existing(i), s)),
        3 => target().prop_map(Op::Destroy),
        3 => target().prop_map(Op::Load),
        1 => Just(Op::Len),
        1 => Just(Op::Ids),
        1 => Just(Op::Entries),
        1 => Just(Op::LoadAll),
    ]
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        4 => Just(Access::Plain),
        1 => Just(Access::Try),
        1 => Just(Access::Timeout),
        2 => Just(Access::Shared),
        1 => Just(Access::TryShared),
        1 => Just(Access::SharedTimeout),
    ]
}

fn interrupt() -> impl Strategy<Value = Interrupt> {
    prop_oneof![
        5 => Just(Interrupt::Never),
        1 => (0u8..12).prop_map(Interrupt::Yields),
        1 => (0u8..12).prop_map(Interrupt::Polls),
        1 => (0u16..400).prop_map(Interrupt::Timer),
    ]
}

fn txn() -> impl Strategy<Value = Txn> {
    (prop::collection::vec(op(), 1..4), access(), interrupt()).prop_map(
        |(ops, access, interrupt)| Txn {
            ops,
            access,
            interrupt,
        },
    )
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        8 => prop::collection::vec(prop::collection::vec(txn(), 0..5), AIDS_PER_CASE)
            .prop_map(Phase::Concurrent),
        1 => Just(Phase::Aids),
        1 => Just(Phase::StoreEntries),
        1 => Just(Phase::Reopen),
        1 => Just(Phase::Verify),
    ]
}

fn case(max_phases: usize) -> impl Strategy<Value = Case> {
    // Small aids, the largest ones and anything between: aids sort as numbers, not text.
    let aid = prop_oneof![0u16..12, 9990u16..=9999, 0u16..=9999];
    (
        prop::collection::btree_set(aid, AIDS_PER_CASE),
        prop::collection::vec(phase(), 1..max_phases),
    )
        .prop_map(|(aids, phases)| Case {
            aids: aids.into_iter().collect(),
            phases,
        })
}

/// An operation with its id resolved.
#[derive(Clone, Debug)]
enum Step {
    Save(St),
    Destroy(InstanceId),
    Load(InstanceId),
    Len,
    Ids,
    Entries,
    LoadAll,
}

impl Step {
    fn writes(&self) -> bool {
        matches!(self, Step::Save(_) | Step::Destroy(_))
    }

    /// The id a write is about.
    fn written(&self) -> Option<InstanceId> {
        match self {
            Step::Save(s) => Some(s.id),
            Step::Destroy(id) => Some(*id),
            _ => None,
        }
    }
}

/// What one step returned.
#[derive(Debug)]
enum Outcome {
    Save(Result<(), Error>),
    Destroy(Result<bool, Error>),
    Load(Result<Option<St>, Error>),
    Len(Result<usize, Error>),
    Ids(Vec<Result<InstanceId, Error>>),
    Entries(Vec<Result<St, Error>>),
    LoadAll(Result<Entries, Error>),
}

fn state_from_seed(id: InstanceId, seed: u64) -> St {
    let config = config(seed);
    let time = match seed % 4 {
        0 => UNIX_EPOCH - Duration::new(seed % 100_000, (seed % 1_000_000_000) as u32),
        1 => UNIX_EPOCH,
        _ => UNIX_EPOCH + Duration::new(seed >> 34, (seed % 1_000_000_000) as u32),
    };
    // A pid no process can have, so save records no process identity and a loaded entry
    // equals the saved one.
    State::new(id, pid((seed % 100_000) as u32), config).with_time(time)
}

/// One aid's model: what its directory must hold.
#[derive(Debug)]
struct AidModel {
    aid: Aid,
    dir: PathBuf,
    entries: Entries,
}

impl AidModel {
    fn entry_path(&self, id: InstanceId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn resolve_target(&self, target: &Target) -> InstanceId {
        match target {
            Target::Existing(i) if !self.entries.is_empty() => {
                *self.entries.keys().nth(i % self.entries.len()).unwrap()
            }
            Target::Existing(i) => {
                InstanceId::from_bytes(((*i as u128) ^ 0x5eed_0000_0000_0000_0000).to_le_bytes())
            }
            Target::Fresh(bytes) => InstanceId::from_bytes(*bytes),
        }
    }

    fn resolve(&self, op: &Op) -> Step {
        match op {
            Op::Save(t, seed) => Step::Save(state_from_seed(self.resolve_target(t), *seed)),
            Op::Destroy(t) => Step::Destroy(self.resolve_target(t)),
            Op::Load(t) => Step::Load(self.resolve_target(t)),
            Op::Len => Step::Len,
            Op::Ids => Step::Ids,
            Op::Entries => Step::Entries,
            Op::LoadAll => Step::LoadAll,
        }
    }

    /// Checks one step's outcome against the model, and applies the step to it.
    fn check(&mut self, step: &Step, outcome: Outcome) {
        let aid = self.aid;
        let ctx = || format!("aid {aid}, step {step:?}");
        match (step, outcome) {
            (Step::Save(s), Outcome::Save(r)) => {
                if self.entries.contains_key(&s.id) {
                    match r {
                        Err(Error::AlreadyExists { path }) => {
                            assert_eq!(path, self.entry_path(s.id), "{}", ctx())
                        }
                        other => panic!("{}: expected AlreadyExists, got {other:?}", ctx()),
                    }
                    return;
                }
                if let Err(e) = r {
                    panic!("{}: save failed: {e:?}", ctx());
                }
                self.entries.insert(s.id, s.clone());
            }
            (Step::Destroy(id), Outcome::Destroy(r)) => {
                let existed = self.entries.remove(id).is_some();
                match r {
                    Ok(found) => assert_eq!(found, existed, "{}", ctx()),
                    Err(e) => panic!("{}: destroy failed: {e:?}", ctx()),
                }
            }
            (Step::Load(id), Outcome::Load(r)) => match r {
                Ok(found) => assert_eq!(found.as_ref(), self.entries.get(id), "{}", ctx()),
                Err(e) => panic!("{}: load failed: {e:?}", ctx()),
            },
            (Step::Len, Outcome::Len(r)) => match r {
                Ok(n) => assert_eq!(n, self.entries.len(), "{}", ctx()),
                Err(e) => panic!("{}: len failed: {e:?}", ctx()),
            },
            (Step::Ids, Outcome::Ids(items)) => {
                let mut seen = BTreeSet::new();
                for item in items {
                    match item {
                        Ok(id) => assert!(seen.insert(id), "{}: {id} listed twice", ctx()),
                        Err(e) => panic!("{}: ids failed: {e:?}", ctx()),
                    }
                }
                let want: BTreeSet<InstanceId> = self.entries.keys().copied().collect();
                assert_eq!(seen, want, "{}", ctx());
            }
            (Step::Entries, Outcome::Entries(items)) => {
                let mut seen = Entries::new();
                for item in items {
                    match item {
                        Ok(s) => {
                            let id = s.id;
                            assert!(seen.insert(id, s).is_none(), "{}: {id} twice", ctx());
                        }
                        Err(e) => panic!("{}: entries failed: {e:?}", ctx()),
                    }
                }
                assert_eq!(seen, self.entries, "{}", ctx());
            }
            (Step::LoadAll, Outcome::LoadAll(r)) => match r {
                Ok(all) => assert_eq!(all, self.entries, "{}", ctx()),
                Err(e) => panic!("{}: load_all failed: {e:?}", ctx()),
            },
            (step, outcome) => unreachable!("{step:?} gave {outcome:?}"),
        }
    }

    /// A write that was in flight when its future was dropped may or may not have happened:
    /// `found` is what loading its id gave afterwards.
    fn resync(&mut self, step: &Step, found: Option<St>) {
        let aid = self.aid;
        match step {
            Step::Save(s) => match self.entries.get(&s.id) {
                // AlreadyExists or not, the old entry must be untouched.
                Some(old) => assert_eq!(found.as_ref(), Some(old), "aid {aid}: {step:?}"),
                None => {
                    if let Some(found) = found {
                        assert_eq!(&found, s, "aid {aid}: dropped save left another entry");
                        self.entries.insert(s.id, found);
                    }
                }
            },
            Step::Destroy(id) => match self.entries.get(id) {
                Some(old) => match found {
                    Some(found) => assert_eq!(&found, old, "aid {aid}: {step:?}"),
                    None => {
                        self.entries.remove(id);
                    }
                },
                None => assert_eq!(found, None, "aid {aid}: dropped destroy made {id}"),
            },
            _ => {}
        }
    }
}

async fn read_step(c: &mut ReadCursor<Cfg>, step: &Step) -> Outcome {
    match step {
        Step::Load(id) => Outcome::Load(c.load(*id).await),
        Step::Len => Outcome::Len(c.len().await),
        Step::Ids => Outcome::Ids(c.ids().collect().await),
        Step::Entries => Outcome::Entries(c.entries().collect().await),
        Step::LoadAll => Outcome::LoadAll(c.load_all().await),
        Step::Save(_) | Step::Destroy(_) => unreachable!("a write on a read cursor"),
    }
}

async fn write_step(c: &mut Cursor<Cfg>, step: &Step) -> Outcome {
    match step {
        Step::Save(s) => Outcome::Save(c.save(s).await),
        Step::Destroy(id) => Outcome::Destroy(c.destroy(*id).await),
        _ => read_step(c, step).await,
    }
}

/// A limit no healthy test comes near: the timeout variants must behave like the plain ones.
const LONG: Duration = Duration::from_secs(30);

/// Runs `steps` in one hold of `aid`, logging each outcome as soon as it is known.
async fn run_txn(
    store: &Store,
    aid: Aid,
    steps: &[Step],
    access: Access,
    log: &mut Vec<Outcome>,
) -> Result<(), Error> {
    let access = match (access, steps.iter().any(Step::writes)) {
        (Access::Shared, true) => Access::Plain,
        (Access::TryShared, true) => Access::Try,
        (Access::SharedTimeout, true) => Access::Timeout,
        (access, _) => access,
    };
    let write = async |c: &mut Cursor<Cfg>| {
        for step in steps {
            log.push(write_step(c, step).await);
        }
        Ok::<_, Error>(())
    };
    match access {
        Access::Plain => store.with_aid(aid, write).await,
        Access::Try => store.try_with_aid(aid, write).await,
        Access::Timeout => store.with_aid_timeout(aid, LONG, write).await,
        shared => {
            let read = async |c: &mut ReadCursor<Cfg>| {
                for step in steps {
                    log.push(read_step(c, step).await);
                }
                Ok::<_, Error>(())
            };
            match shared {
                Access::Shared => store.with_aid_shared(aid, read).await,
                Access::TryShared => store.try_with_aid_shared(aid, read).await,
                _ => store.with_aid_shared_timeout(aid, LONG, read).await,
            }
        }
    }
}

/// Runs `fut` to completion, or drops it as `how` says. `Some` if it completed.
async fn interrupted<F: Future>(fut: F, how: Interrupt) -> Option<F::Output> {
    let mut fut = pin!(fut);
    match how {
        Interrupt::Never => Some(fut.await),
        Interrupt::Yields(n) => {
            let turns = pin!(async {
                for _ in 0..n {
                    yield_now().await;
                }
            });
            match select(fut, turns).await {
                Either::Left((out, _)) => Some(out),
                Either::Right(((), _)) => None,
            }
        }
        Interrupt::Polls(n) => {
            for _ in 0..n {
                let polled = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
                if let Poll::Ready(out) = polled {
                    return Some(out);
                }
                yield_now().await;
            }
            None
        }
        Interrupt::Timer(us) => tokio::time::timeout(Duration::from_micros(u64::from(us)), fut)
            .await
            .ok(),
    }
}

/// Counts over a whole property run, for the summary line.
#[derive(Default)]
struct Stats {
    cases: AtomicU64,
    ops: AtomicU64,
    txns: AtomicU64,
    dropped: AtomicU64,
    dropped_done: AtomicU64,
    /// Dropped with a write in flight, which then turned out to have happened, or not.
    in_flight_done: AtomicU64,
    in_flight_undone: AtomicU64,
    reopens: AtomicU64,
}

/// One task: runs its aid's transactions in order, checking every outcome.
async fn aid_task(store: Store, mut model: AidModel, txns: Vec<Txn>, stats: &Stats) -> AidModel {
    let aid = model.aid;
    for txn in txns {
        let steps: Vec<Step> = txn.ops.iter().map(|op| model.resolve(op)).collect();
        let mut log = Vec::new();
        let ran = interrupted(
            run_txn(&store, aid, &steps, txn.access, &mut log),
            txn.interrupt,
        )
        .await;
        stats.txns.fetch_add(1, Ordering::Relaxed);
        let logged = log.len();
        stats.ops.fetch_add(logged as u64, Ordering::Relaxed);
        // Whatever finished before a drop is checked like any other result.
        for (step, outcome) in steps.iter().zip(log) {
            model.check(step, outcome);
        }
        match ran {
            Some(result) => {
                if let Err(e) = result {
                    panic!("aid {aid}: {:?} failed: {e:?}", txn.access);
                }
                assert_eq!(logged, steps.len(), "aid {aid}: a step was skipped");
                if !matches!(txn.interrupt, Interrupt::Never) {
                    stats.dropped_done.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                // The step in flight, if any, may or may not have happened; later ones did
                // not start. The next holder waits for work still running on the blocking
                // pool, so what it finds is final.
                let in_flight = steps.get(logged).filter(|s| s.writes());
                let id = in_flight.and_then(Step::written);
                let (found, len) = store
                    .with_aid(aid, async |c| {
                        let found = match id {
                            Some(id) => c.load(id).await?,
                            None => None,
                        };
                        Ok::<_, Error>((found, c.len().await?))
                    })
                    .await
                    .unwrap_or_else(|e| panic!("aid {aid}: resync failed: {e:?}"));
                if let Some(step) = in_flight {
                    let before = model.entries.get(&id.unwrap()).cloned();
                    let after = found.clone();
                    model.resync(step, found);
                    let counter = if before == after {
                        &stats.in_flight_undone
                    } else {
                        &stats.in_flight_done
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                assert_eq!(len, model.entries.len(), "aid {aid}: len after a drop");
            }
        }
    }
    model
}

/// The whole store, as the models say.
struct World {
    run: PathBuf,
    store: Store,
    models: BTreeMap<Aid, AidModel>,
    /// Aids that have a directory: every aid a transaction ever reached.
    dirs: BTreeSet<Aid>,
}

impl World {
    async fn check_aids(&self) {
        let aids = self.store.aids().await.unwrap();
        assert_eq!(aids, self.dirs.iter().copied().collect::<Vec<_>>());
    }

    async fn check_store_entries(&self) {
        let items: Vec<_> = self.store.entries().collect().await;
        let mut seen: BTreeMap<Aid, Entries> = BTreeMap::new();
        let mut last = None;
        for item in items {
            let (aid, state) = item.unwrap_or_else(|e| panic!("store entries: {e:?}"));
            assert!(last <= Some(aid), "aid {aid} listed after {last:?}");
            last = Some(aid);
            let id = state.id;
            assert!(
                seen.entry(aid).or_default().insert(id, state).is_none(),
                "{aid}/{id} listed twice"
            );
        }
        let want: BTreeMap<Aid, Entries> = self
            .models
            .iter()
            .filter(|(_, m)| !m.entries.is_empty())
            .map(|(&aid, m)| (aid, m.entries.clone()))
            .collect();
        assert_eq!(seen, want);
    }

    /// Every aid's entries, through the store and as files on disk.
    async fn verify(&self) {
        for (&aid, model) in &self.models {
            if !self.dirs.contains(&aid) {
                assert!(!model.dir.exists(), "{aid} has a directory");
                continue;
            }
            let all = self
                .store
                .with_aid(aid, async |c| c.load_all().await)
                .await
                .unwrap();
            assert_eq!(all, model.entries, "aid {aid}");
            // No temporary or stray file either.
            let mut names: Vec<String> = std::fs::read_dir(&model.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            let want: Vec<String> = model.entries.keys().map(|id| id.to_string()).collect();
            assert_eq!(names, want, "files of aid {aid}");
        }
    }

    /// Closes the store, checks that everything then fails with `Closed`, and opens a new one.
    async fn reopen(&mut self, unused: Aid) {
        let clone = self.store.clone();
        self.store.close().await.unwrap();
        assert!(self.store.is_closed() && clone.is_closed());
        let some = *self.models.keys().next().unwrap();
        for aid in [some, unused] {
            let r = clone.with_aid(aid, async |c| c.len().await).await;
            assert!(matches!(r, Err(Error::Closed)), "with_aid: {r:?}");
            let r = self.store.try_with_aid(aid, async |c| c.len().await).await;
            assert!(matches!(r, Err(Error::Closed)), "try_with_aid: {r:?}");
            let r = self
                .store
                .with_aid_timeout(aid, LONG, async |c| c.len().await)
                .await;
            assert!(matches!(r, Err(Error::Closed)), "with_aid_timeout: {r:?}");
            let r = clone.with_aid_shared(aid, async |c| c.len().await).await;
            assert!(matches!(r, Err(Error::Closed)), "with_aid_shared: {r:?}");
        }
        let r = self.store.aids().await;
        assert!(matches!(r, Err(Error::Closed)), "aids: {r:?}");
        let items: Vec<_> = clone.entries().collect().await;
        assert!(
            matches!(items.as_slice(), [Err(Error::Closed)]),
            "entries: {items:?}"
        );
        self.store.close().await.unwrap();
        // A closed store made nothing for the aid it was asked about.
        assert!(!self.run.join("state").join(unused.to_string()).exists());
        self.store = Store::new(&self.run);
    }
}

async fn run_case(case: Case, stats: &'static Stats) {
    let tmp = run_dir();
    let run = tmp.path().join("run");
    let aids: Vec<Aid> = case.aids.iter().map(|&n| Aid::new(n).unwrap()).collect();
    let unused = (0..=9999u16)
        .map(|n| Aid::new(n).unwrap())
        .find(|a| !aids.contains(a))
        .unwrap();
    let mut world = World {
        store: Store::new(&run),
        models: aids
            .iter()
            .map(|&aid| {
                let dir = run.join("state").join(aid.to_string());
                (
                    aid,
                    AidModel {
                        aid,
                        dir,
                        entries: Entries::new(),
                    },
                )
            })
            .collect(),
        dirs: BTreeSet::new(),
        run,
    };
    for phase in case.phases {
        match phase {
            Phase::Concurrent(lists) => {
                let mut tasks = Vec::new();
                for (aid, txns) in aids.iter().zip(lists) {
                    if !txns.is_empty() {
                        world.dirs.insert(*aid);
                    }
                    let model = world.models.remove(aid).unwrap();
                    let store = world.store.clone();
                    tasks.push(tokio::spawn(aid_task(store, model, txns, stats)));
                }
                let mut panicked = None;
                for task in tasks {
                    match task.await {
                        Ok(model) => {
                            world.models.insert(model.aid, model);
                        }
                        Err(e) => {
                            panicked.get_or_insert(e.into_panic());
                        }
                    }
                }
                if let Some(p) = panicked {
                    std::panic::resume_unwind(p);
                }
            }
            Phase::Aids => world.check_aids().await,
            Phase::StoreEntries => world.check_store_entries().await,
            Phase::Verify => world.verify().await,
            Phase::Reopen => {
                world.reopen(unused).await;
                stats.reopens.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    world.verify().await;
    world.check_aids().await;
    world.check_store_entries().await;
    world.store.close().await.unwrap();
    stats.cases.fetch_add(1, Ordering::Relaxed);
}

fn cases_from_env() -> u32 {
    match std::env::var("RUNSTATE_MODEL_CASES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("RUNSTATE_MODEL_CASES={v:?} is not a number")),
        Err(_) => 2500,
    }
}

fn run_property(name: &str, runtime: tokio::runtime::Runtime, cases: u32, max_phases: usize) {
    let stats: &'static Stats = Box::leak(Box::default());
    let config = ProptestConfig {
        cases,
        // No regression files: this file is the whole test.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let started = std::time::Instant::now();
    let result = runner.run(&case(max_phases), |case| {
        runtime.block_on(no_deadlock("a model case", run_case(case, stats)));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!(
        "{name}: {} cases, {} transactions, {} operations, {} dropped futures \
         (+{} interruptible ones that completed; a write in flight at the drop: {} happened, \
         {} did not), {} close-and-reopens, in {:.1?}",
        stats.cases.load(Ordering::Relaxed),
        stats.txns.load(Ordering::Relaxed),
        stats.ops.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
        stats.dropped_done.load(Ordering::Relaxed),
        stats.in_flight_done.load(Ordering::Relaxed),
        stats.in_flight_undone.load(Ordering::Relaxed),
        stats.reopens.load(Ordering::Relaxed),
        started.elapsed(),
    );
    // Not an empty run: the generators do produce drops and operations.
    assert!(stats.ops.load(Ordering::Relaxed) > u64::from(cases));
    if cases >= 100 {
        assert!(
            stats.dropped.load(Ordering::Relaxed) > 0,
            "nothing was dropped"
        );
    }
}

#[test]
fn model_multi_thread() {
    let runtime = common::multi_thread_runtime(4);
    run_property("model_multi_thread", runtime, cases_from_env(), 7);
}

#[test]
fn model_current_thread() {
    let runtime = common::current_thread_runtime();
    run_property(
        "model_current_thread",
        runtime,
        cases_from_env().div_ceil(4),
        5,
    );
}
