//! `Cursor::replace`: what it returns and stores, what a killed one leaves, and a kill storm
//! of replacing processes under readers that take the lock and readers that do not.
//!
//! The replacing processes are this test binary again, with only `child_process` selected
//! and `RUNSTATE_REPLACE_*` variables saying what to do (see `tests/common/child.rs`).

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::child::{Flavor, Kid, base_seed, child_var, role_command, say};
use common::{Checked, XorShift, aid, check_states, foreign_names, names_in, pattern, run_dir};
use runstate::{Aid, AsyncStore, Error, InstanceId, Options, State};
use serde::{Deserialize, Serialize};

const CHILD_TEST: &str = "child_process";

/// A config that can tell whether it is whole: `fill` is `len` bytes of `seq`'s pattern.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Cfg {
    seq: u64,
    len: u64,
    fill: String,
}

impl Cfg {
    fn new(seq: u64, len: u64) -> Cfg {
        Cfg {
            seq,
            len,
            fill: pattern(seq, len as usize),
        }
    }
}

impl Checked for Cfg {
    fn check(&self) -> Result<(), String> {
        if self.fill.len() as u64 != self.len || self.fill != pattern(self.seq, self.fill.len()) {
            return Err(format!("config {} is not whole", self.seq));
        }
        Ok(())
    }
}

type Store = AsyncStore<Cfg>;

fn id(n: u8) -> InstanceId {
    InstanceId::from_bytes([n; 16])
}

fn lock_file(run_dir: &Path, aid: Aid) -> PathBuf {
    run_dir.join("state").join(format!("{aid}.lock"))
}

// ---------------------------------------------------------------------------------------
// What replace does.

/// `Ok(false)` and nothing written without an entry; `Ok(true)` and exactly the given state
/// with one, whatever its `process`.
async fn replace_stores_exactly_what_it_is_given() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let one = aid(1);
    let mine = State::new(id(1), std::process::id(), Cfg::new(1, 10));
    let loaded = store
        .with_aid(one, async |c| {
            assert!(!c.replace(&mine).await?, "no entry yet");
            assert_eq!(c.len().await?, 0, "nothing was written");
            c.save(&mine).await?;
            c.load(mine.id).await
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names_in(&dir.path().join("state/1")), [id(1).to_string()]);

    // With a process identity, and without one: each is stored as given.
    let mut with_identity = loaded.clone();
    with_identity.config = Cfg::new(2, 3000);
    let without = State::new(id(1), common::pid(7), Cfg::new(3, 5));
    for new in [with_identity, without] {
        let back = store
            .with_aid(one, async |c| {
                assert!(c.replace(&new).await?);
                c.load(new.id).await
            })
            .await
            .unwrap();
        assert_eq!(back.as_ref(), Some(&new));
    }
    assert_eq!(foreign_names(dir.path(), one), Vec::<String>::new());
    assert_eq!(std::fs::read(lock_file(dir.path(), one)).unwrap(), b"");

    // Durable, the same.
    let durable = Store::with_options(dir.path(), Options::new().durable(true));
    let new = State::new(id(1), common::pid(8), Cfg::new(4, 9));
    let back = durable
        .with_aid(one, async |c| {
            assert!(c.replace(&new).await?);
            c.load(new.id).await
        })
        .await
        .unwrap();
    assert_eq!(back, Some(new));
}

/// A refused replace leaves the old entry, and no file or mark behind.
async fn a_refused_replace_changes_nothing() {
    let dir = run_dir();
    let store = Store::with_options(dir.path(), Options::new().max_entry_size(4096));
    let one = aid(1);
    let old = State::new(id(1), common::pid(1), Cfg::new(1, 10));
    let result = store
        .with_aid(one, async |c| {
            c.save(&old).await?;
            c.replace(&State::new(id(1), common::pid(1), Cfg::new(2, 8000)))
                .await
        })
        .await;
    assert!(matches!(result, Err(Error::TooLarge { .. })), "{result:?}");

    // A directory where the entry's file should be cannot be replaced.
    std::fs::create_dir(dir.path().join("state/1").join(id(2).to_string())).unwrap();
    let result = store
        .with_aid(one, async |c| {
            c.replace(&State::new(id(2), common::pid(1), Cfg::new(3, 8)))
                .await
        })
        .await;
    assert!(matches!(result, Err(Error::Io { .. })), "{result:?}");

    let all = store
        .with_aid(one, async |c| c.load(id(1)).await)
        .await
        .unwrap();
    assert_eq!(all, Some(old));
    assert_eq!(foreign_names(dir.path(), one), [id(2).to_string()]);
    assert_eq!(std::fs::read(lock_file(dir.path(), one)).unwrap(), b"");
}

/// What a replace killed between making its temporary file and renaming it leaves (the
/// file, and the lock file's mark) is removed by the next replace.
async fn the_next_replace_removes_what_a_killed_one_left() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let one = aid(1);
    let old = State::new(id(1), common::pid(1), Cfg::new(1, 10));
    store
        .with_aid(one, async |c| c.save(&old).await)
        .await
        .unwrap();
    let temp = format!(".tmp-{}", InstanceId::random());
    std::fs::write(dir.path().join("state/1").join(&temp), b"half").unwrap();
    std::fs::write(lock_file(dir.path(), one), [1]).unwrap();
    // Listings skip it meanwhile.
    let n = store
        .with_aid_shared(one, async |c| c.len().await)
        .await
        .unwrap();
    assert_eq!(n, 1);

    let new = State::new(id(1), common::pid(2), Cfg::new(2, 10));
    store
        .with_aid(one, async |c| c.replace(&new).await)
        .await
        .unwrap();
    assert_eq!(foreign_names(dir.path(), one), Vec::<String>::new());
    assert_eq!(std::fs::read(lock_file(dir.path(), one)).unwrap(), b"");
}

both_runtimes!(
    replace_stores_exactly_what_it_is_given,
    a_refused_replace_changes_nothing,
    the_next_replace_removes_what_a_killed_one_left,
);

// ---------------------------------------------------------------------------------------
// The kill storm.

/// Entries replaced over and over.
const ENTRIES: u8 = 6;
/// Processes replacing at once.
const REPLACERS: usize = 3;
const STORM: Duration = Duration::from_millis(1500);

/// Processes replace entries in a loop and are SIGKILLed at random, while one reader reads
/// the files directly, with no lock, and one reads them under the shared lock: every entry
/// is always there and whole, for both. Afterwards, the next replace leaves no temporary
/// file.
#[test]
fn kill_storm_of_replacing_processes() {
    common::run_multi_thread(kill_storm());
}

async fn kill_storm() {
    let dir = run_dir();
    let run = dir.path().to_owned();
    let store = Store::new(&run);
    let one = aid(1);
    let first: Vec<State<Cfg>> = (0..ENTRIES)
        .map(|n| State::new(id(n), common::pid(1), Cfg::new(n.into(), 100)))
        .collect();
    store
        .with_aid(one, async |c| {
            for s in &first {
                c.save(s).await?;
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let lock_free = {
        let (stop, aid_dir) = (stop.clone(), run.join("state/1"));
        std::thread::spawn(move || read_without_lock(&aid_dir, &stop))
    };
    let locked = {
        let (stop, store) = (stop.clone(), store.clone());
        tokio::spawn(async move {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let all = store
                    .with_aid_shared(one, async |c| c.load_all().await)
                    .await
                    .unwrap();
                let ids: BTreeSet<InstanceId> = all.keys().copied().collect();
                assert_eq!(ids, (0..ENTRIES).map(id).collect(), "under the lock");
                check_states(&all).unwrap();
                rounds += 1;
                tokio::task::yield_now().await;
            }
            rounds
        })
    };

    let seed = base_seed(0x5eed_1200);
    let mut rng = XorShift::new(seed);
    let spawn = |i: usize, rng: &mut XorShift| {
        let mut cmd = role_command(CHILD_TEST, "replacer");
        cmd.env("RUNSTATE_REPLACE_DIR", &run)
            .env("RUNSTATE_REPLACE_FLAVOR", Flavor::Multi.alternate(i).name())
            .env("RUNSTATE_REPLACE_SEED", rng.next_u64().to_string())
            .stdin(Stdio::null());
        common::child::spawn_kid(format!("replacer {i}"), cmd)
    };
    let mut kids: Vec<Kid> = (0..REPLACERS).map(|i| spawn(i, &mut rng)).collect();
    for kid in &mut kids {
        kid.expect("REPLACING").await;
    }
    let (start, mut kills) = (Instant::now(), 0);
    while start.elapsed() < STORM {
        tokio::time::sleep(Duration::from_millis(5 + rng.below(40))).await;
        let i = rng.below(REPLACERS as u64) as usize;
        let fresh = spawn(kills + REPLACERS, &mut rng);
        std::mem::replace(&mut kids[i], fresh).kill().await;
        kills += 1;
        kids[i].expect("REPLACING").await;
    }
    for kid in kids {
        kid.kill().await;
    }
    stop.store(true, Ordering::Relaxed);
    let unlocked_rounds = lock_free.join().unwrap();
    let locked_rounds = locked.await.unwrap();
    let left = foreign_names(&run, one);
    println!(
        "kill storm (seed {seed}): {kills} kills, {unlocked_rounds} lock-free and \
         {locked_rounds} locked reads of all {ENTRIES} entries, {} temporary files left",
        left.len()
    );
    assert!(unlocked_rounds > 0 && locked_rounds > 0);

    // The next replace removes what killed ones left.
    let last = State::new(id(0), common::pid(1), Cfg::new(99, 10));
    let all = store
        .with_aid(one, async |c| {
            assert!(c.replace(&last).await?);
            c.load_all().await
        })
        .await
        .unwrap();
    assert_eq!(all.len(), ENTRIES as usize);
    check_states(&all).unwrap();
    assert_eq!(foreign_names(&run, one), Vec::<String>::new());
}

/// Reads every entry's file by its name, and lists the directory, until `stop`; panics if
/// an entry is ever missing or not whole. Returns the rounds done.
fn read_without_lock(aid_dir: &Path, stop: &AtomicBool) -> u64 {
    let rounds = AtomicU64::new(0);
    while !stop.load(Ordering::Relaxed) {
        for n in 0..ENTRIES {
            let path = aid_dir.join(id(n).to_string());
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("lock-free read of {}: {e}", path.display()));
            check_raw(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let listed: BTreeSet<String> = names_in(aid_dir)
            .into_iter()
            .filter(|name| !name.starts_with(".tmp-"))
            .collect();
        let want: BTreeSet<String> = (0..ENTRIES).map(|n| id(n).to_string()).collect();
        if listings_see_renames(aid_dir) {
            assert_eq!(listed, want, "a lock-free listing");
        } else {
            assert!(listed.is_subset(&want), "a lock-free listing: {listed:?}");
        }
        rounds.fetch_add(1, Ordering::Relaxed);
    }
    rounds.into_inner()
}

/// Whether a directory listing in progress is sure to show a name that a rename replaces
/// meanwhile. POSIX leaves it unspecified. tmpfs since Linux 6.6 gives the renamed entry a
/// new position after every other (its offset map), so a listing reaches it; before, the
/// dentry moved to where a listing may already have passed. Where that holds, the listing
/// check is exact; elsewhere only the reads by name are.
fn listings_see_renames(dir: &Path) -> bool {
    if !common::on_tmpfs(dir) {
        return false;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

/// Checks an entry file's bytes as a reader with no access to the crate would: one whole
/// MessagePack map whose `config` holds its whole pattern.
fn check_raw(bytes: &[u8]) -> Result<(), String> {
    let mut rest = bytes;
    let value = rmpv::decode::read_value(&mut rest).map_err(|e| format!("undecodable: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the entry", rest.len()));
    }
    let field = |map: &rmpv::Value, key: &str| -> Option<rmpv::Value> {
        map.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v.clone())
    };
    let config = field(&value, "config").ok_or("no config")?;
    let seq = field(&config, "seq")
        .and_then(|v| v.as_u64())
        .ok_or("no seq")?;
    let len = field(&config, "len")
        .and_then(|v| v.as_u64())
        .ok_or("no len")?;
    let fill = field(&config, "fill").ok_or("no fill")?;
    Cfg {
        seq,
        len,
        fill: fill.as_str().ok_or("fill is not text")?.to_owned(),
    }
    .check()
}

/// A replacer: replaces random entries with configs of random sizes, forever. Every replace
/// must find its entry.
async fn child_replacer(run_dir: &Path, seed: u64) {
    let store = Store::new(run_dir);
    let mut rng = XorShift::new(seed);
    say("REPLACING");
    loop {
        let n = rng.below(ENTRIES.into()) as u8;
        let seq = rng.next_u64() >> 20;
        let new = State::new(
            id(n),
            common::pid(2),
            Cfg::new(seq, 100 + rng.below(64 << 10)),
        );
        let replaced = store
            .with_aid(aid(1), async |c| c.replace(&new).await)
            .await
            .unwrap();
        assert!(replaced, "entry {} was missing", id(n));
    }
}

/// What children run; outside a role ([`common::child::role`]), nothing.
#[test]
fn child_process() {
    if common::child::role().is_none() {
        return;
    }
    let dir = child_var("RUNSTATE_REPLACE_DIR");
    let flavor = Flavor::from_name(&child_var("RUNSTATE_REPLACE_FLAVOR"));
    let seed = child_var("RUNSTATE_REPLACE_SEED").parse().unwrap();
    flavor
        .runtime()
        .block_on(child_replacer(Path::new(&dir), seed));
}
