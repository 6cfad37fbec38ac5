//! Long operations give the runtime back: a `select!` between one of them and a shutdown
//! signal runs the signal's arm within milliseconds, and a long operation whose future is
//! dropped stops at its next step, so its aid is free again at once.
//!
//! Each test reads one aid of many small entries (20,000 on tmpfs), on both runtimes, with
//! the store on tmpfs (work in place, in small steps) and off it (work on the blocking
//! pool). The bounds count entries decoded, not time, so a busy machine cannot fail them:
//! after the signal is sent, or the operation dropped, at most a step or two of entries
//! more. Each test prints the times too. Before the work was done in steps, the signal's
//! arm ran 390 to 450 ms late on a multi-thread runtime (the whole pass), and a dropped
//! `prune_dead` kept its aid for 140 to 340 ms more.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{DEADLOCK, Place, aid, entry_path, place, run_dir};
use futures::StreamExt;
use runstate::{Aid, AsyncStore, Error, InstanceId, ProcessIdentity, State};
use serde::{Deserialize, Deserializer, Serialize};

all_places!(
    a_shutdown_signal_is_not_kept_waiting,
    a_dropped_long_operation_frees_the_aid_at_its_next_step,
);

/// Entries in the long operations' aid on tmpfs: a pass over them takes hundreds of
/// milliseconds.
const ENTRIES: usize = 20_000;

/// Entries off tmpfs, where making a file costs up to 2 ms on this shared disk: still 16
/// steps of the pool ([`POOL_STEP`]), tens of milliseconds.
const ENTRIES_ON_DISK: usize = 2_000;

/// Taken by each test once its entries are made, so that the tests of this file measure
/// one at a time rather than against each other.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Races of each operation against the signal: a stall repeats, while a thread preempted
/// at the wrong time rarely does.
const TRIES: usize = 3;

/// At most this many entries are read by a step on the pool (`Step::ON_POOL`): the work a
/// dropped operation may still finish.
const POOL_STEP: usize = 128;

/// A generous bound on the entries decoded between the signal's send and its arm's run, in
/// the best of [`TRIES`]: the step in flight and a poll's worth in place, where a pass that
/// kept its thread would decode thousands.
const SIGNAL_BOUND: usize = 2 * POOL_STEP;

/// A config that counts how often it is decoded, per test (by tag): proof that a long
/// operation had begun when it was dropped, and had stopped once its aid was free.
#[derive(Serialize)]
struct Counted {
    tag: u64,
    note: String,
}

static DECODED: Mutex<BTreeMap<u64, usize>> = Mutex::new(BTreeMap::new());

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Counted, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            tag: u64,
            note: String,
        }
        let Raw { tag, note } = Raw::deserialize(d)?;
        *DECODED.lock().unwrap().entry(tag).or_default() += 1;
        Ok(Counted { tag, note })
    }
}

fn decoded(tag: u64) -> usize {
    DECODED.lock().unwrap().get(&tag).copied().unwrap_or(0)
}

type Store = AsyncStore<Counted>;

/// A store with many entries in one aid ([`ENTRIES`], or [`ENTRIES_ON_DISK`] off tmpfs), all
/// of this (running) process, so that `prune_dead` reads each one, checks it in /proc and
/// keeps it; how many; and the tag its entries count their decoding under.
///
/// One entry is saved through the store; the others are copies of its file with the id
/// changed, written straight into the aid's directory: the same files, made faster.
async fn long_aid() -> (tempfile::TempDir, Store, Aid, usize, u64) {
    static TAGS: AtomicU64 = AtomicU64::new(0);
    let tag = TAGS.fetch_add(1, Ordering::Relaxed);
    let entries = match place() {
        Place::Tmpfs => ENTRIES,
        Place::Disk => ENTRIES_ON_DISK,
    };
    let dir = run_dir();
    let store = Store::new(dir.path());
    let aid = aid(7);
    let me = std::process::id();
    let who = ProcessIdentity::of(me);
    assert!(who.is_some());
    let started = Instant::now();
    let config = Counted {
        tag,
        note: "an instance".into(),
    };
    let first = State::unidentified(InstanceId::random(), me, config).with_process(who);
    store.save(aid, &first).await.unwrap();
    let mut bytes = std::fs::read(entry_path(dir.path(), aid, first.id)).unwrap();
    let at = bytes
        .windows(16)
        .position(|w| w == first.id.as_ref())
        .expect("the id is in its file");
    for _ in 1..entries {
        let id = InstanceId::random();
        bytes[at..at + 16].copy_from_slice(id.as_ref());
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(entry_path(dir.path(), aid, id))
            .and_then(|mut f| f.write_all(&bytes))
            .unwrap();
    }
    let n = store.with_aid(aid, async |c| c.len().await).await.unwrap();
    assert_eq!(n, entries);
    println!(
        "{}: {entries} entries made in {:?}",
        setting(),
        started.elapsed()
    );
    (dir, store, aid, entries, tag)
}

/// The runtime and the place of this test, for what it prints.
fn setting() -> String {
    let flavor = tokio::runtime::Handle::current().runtime_flavor();
    format!("{flavor:?} {:?}", place())
}

/// Races an operation (made by `make`, decoding entries counted under `tag`) against a
/// shutdown signal due 1 ms later, sent by another task, [`TRIES`] times; asserts that in the
/// best try at most [`SIGNAL_BOUND`] entries were decoded between the signal's send and its
/// arm's run. Panics if the operation finishes first: it is meant to take far longer.
async fn late_signal<F: Future>(what: &str, tag: u64, make: impl Fn() -> F) {
    let (mut lateness, mut overrun) = (Vec::new(), Vec::new());
    for _ in 0..TRIES {
        let due = tokio::time::Instant::now() + Duration::from_millis(1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let signal = tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let at_send = decoded(tag);
            let _ = tx.send(());
            at_send
        });
        let started = Instant::now();
        let (late, at_arm) = tokio::select! {
            sent = rx => {
                sent.unwrap();
                (due.elapsed(), decoded(tag))
            }
            _ = make() => panic!("{what} finished in {:?}, before the signal", started.elapsed()),
        };
        let at_send = signal.await.unwrap();
        lateness.push(late);
        overrun.push(at_arm - at_send);
    }
    println!(
        "{}: the signal's arm ran {lateness:?} after it was due, {overrun:?} entries decoded \
         after its send, racing {what}",
        setting()
    );
    let best = overrun.iter().min().unwrap();
    assert!(
        *best <= SIGNAL_BOUND,
        "{what} kept the signal's arm waiting while it decoded {overrun:?} entries \
         (bound {SIGNAL_BOUND}; {lateness:?})"
    );
}

/// A `select!` between a long operation and a shutdown signal fired 1 ms in runs the
/// signal's arm within milliseconds: `load_all`, consuming `store.entries()`, and
/// `prune_dead` of the store and of a cursor.
async fn a_shutdown_signal_is_not_kept_waiting() {
    let (_dir, store, aid, entries, tag) = long_aid().await;
    let _alone = MEASURING.lock().await;
    let s = &store;
    late_signal("load_all", tag, || {
        s.with_aid_shared(aid, async |c| c.load_all().await)
    })
    .await;
    late_signal("store.entries()", tag, || s.entries().count()).await;
    late_signal("store.prune_dead()", tag, || s.prune_dead()).await;
    late_signal("cursor.prune_dead()", tag, || {
        s.with_aid(aid, async |c| c.prune_dead().await)
    })
    .await;
    // Nothing was lost on the way.
    let n = store.with_aid(aid, async |c| c.len().await).await.unwrap();
    assert_eq!(n, entries);
}

/// Runs an operation (made by `make`) and drops it, by losing a `select!`, as soon as it has
/// decoded some entries; then waits for `try_with_aid` to get its aid (printing how soon),
/// and checks that at most one step's worth of entries is decoded after the drop, and none
/// once the aid is free.
async fn dropped_mid_way<F: Future>(
    what: &str,
    store: &Store,
    aid: Aid,
    tag: u64,
    make: impl Fn() -> F,
) {
    let before = decoded(tag);
    let begun = async {
        while decoded(tag) == before {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    };
    let started = Instant::now();
    tokio::select! {
        _ = begun => {}
        _ = make() => panic!("{what} finished in {:?}: never seen mid-way", started.elapsed()),
    }
    let dropped = Instant::now();
    let at_drop = decoded(tag);
    loop {
        match store.try_with_aid(aid, async |_| Ok::<_, Error>(())).await {
            Ok(()) => break,
            Err(Error::WouldBlock { .. }) if dropped.elapsed() < DEADLOCK => {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            Err(e) => panic!(
                "{what}, dropped, still kept its aid after {:?}: {e}",
                dropped.elapsed()
            ),
        }
    }
    let freed = dropped.elapsed();
    let after = decoded(tag);
    println!(
        "{}: {what} dropped after {:?} with {} entries decoded; aid free {freed:?} later, \
         {} decoded meanwhile",
        setting(),
        dropped - started,
        at_drop - before,
        after - at_drop,
    );
    assert!(
        after - at_drop <= POOL_STEP,
        "{what} read on for {} entries after it was dropped",
        after - at_drop
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(decoded(tag), after, "{what} read on after its aid was free");
}

/// A long operation whose future is dropped stops at its next step: its aid is free once the
/// step in flight ends, and it reads nothing more.
async fn a_dropped_long_operation_frees_the_aid_at_its_next_step() {
    let (_dir, store, aid, entries, tag) = long_aid().await;
    let _alone = MEASURING.lock().await;
    let s = &store;
    dropped_mid_way("load_all", s, aid, tag, || {
        s.with_aid_shared(aid, async |c| c.load_all().await)
    })
    .await;
    dropped_mid_way("cursor.prune_dead()", s, aid, tag, || {
        s.with_aid(aid, async |c| c.prune_dead().await)
    })
    .await;
    dropped_mid_way("store.prune_dead()", s, aid, tag, || s.prune_dead()).await;
    dropped_mid_way("store.entries()", s, aid, tag, || s.entries().count()).await;
    let n = store.with_aid(aid, async |c| c.len().await).await.unwrap();
    assert_eq!(n, entries);
}
