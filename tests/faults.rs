//! Faults: a full disk, processes SIGKILLed at random moments, and tens of thousands of
//! operations dropped at random await points. After each, the store must hold only whole
//! entries that decode, no lock and no leftover file.
//!
//! Other processes are this very test binary, run again with only the `fault_child` test
//! selected in a role with `RUNSTATE_CHILD_*` variables saying what to do (the harness is in
//! `tests/common/child.rs`). Without them `fault_child` passes at once, so a plain
//! `cargo test` is unaffected.
//!
//! `RUNSTATE_SEED=<seed>` (printed by each random test) replays another run of them.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::checked::{Fail, Filled, read_all};
use common::child::{
    DEADLOCK, Flavor, Kid, ROLE, child_var, role, say, spawn_kid, test_args, test_command,
};
use common::{Checked, XorShift, aid, check_states, foreign_names, pid};
use futures::future::{Either, select};
use futures::{StreamExt, TryStreamExt};
use runstate::{Aid, AsyncStore, Cursor, Error, InstanceId, State};
use tokio::time::timeout;

/// The test that children run.
const CHILD_TEST: &str = "fault_child";

/// The base seed: `RUNSTATE_SEED` if set, else a fixed one (see `common::seed`).
fn base_seed() -> u64 {
    common::child::base_seed(0xfa17_2024)
}

type Store = AsyncStore<Cfg>;

// ---------------------------------------------------------------------------------------
// Entries whose content can be checked.

/// The suites' checked config: `owner` says which process or task saved it.
type Cfg = Filled;

/// Names under `<run_dir>/state` other than the given aids' directories and lock files.
fn foreign_state_names(run_dir: &Path, aids: &[Aid]) -> Vec<String> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(run_dir.join("state")).unwrap() {
        let name = item.unwrap().file_name().to_string_lossy().into_owned();
        let ours = aids
            .iter()
            .any(|a| name == a.to_string() || name == format!("{a}.lock"));
        if !ours {
            out.push(name);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Processes.

/// The command that runs `fault_child` in `role`.
fn child_command(role: &str, run_dir: &Path, flavor: Flavor, seed: u64) -> std::process::Command {
    let mut cmd = test_command(CHILD_TEST);
    child_env(&mut cmd, role, run_dir, flavor, seed);
    cmd
}

fn child_env(
    cmd: &mut std::process::Command,
    role: &str,
    run_dir: &Path,
    flavor: Flavor,
    seed: u64,
) {
    cmd.env(ROLE, role)
        .env("RUNSTATE_CHILD_DIR", run_dir)
        .env("RUNSTATE_CHILD_FLAVOR", flavor.name())
        .env("RUNSTATE_CHILD_SEED", seed.to_string())
        .stdin(Stdio::null());
}

// ---------------------------------------------------------------------------------------
// The child side.

/// Not a test of its own: the entry point of the child processes the other tests spawn.
/// Outside a [`role`] it does nothing.
#[test]
fn fault_child() {
    let Some(role) = role() else {
        return;
    };
    // A panic in any task or thread ends the process at once, so the parent sees a child
    // that stopped by itself instead of one it had to kill.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(101);
    }));
    let dir = PathBuf::from(child_var("RUNSTATE_CHILD_DIR"));
    let seed: u64 = child_var("RUNSTATE_CHILD_SEED").parse().unwrap();
    let flavor = Flavor::from_name(&child_var("RUNSTATE_CHILD_FLAVOR"));
    flavor.runtime().block_on(async {
        match role.as_str() {
            "full_disk" => child_full_disk(&dir).await,
            "storm" => child_storm(&dir, seed, flavor == Flavor::Multi).await,
            "check" => child_check(&dir).await,
            other => panic!("unknown role {other}"),
        }
    });
}

// ---------------------------------------------------------------------------------------
// 1. A full disk: saves that cannot be written fail cleanly and leave nothing behind.

/// The file size limit of the full-disk child.
const FSIZE_LIMIT: u64 = 64 * 1024;
/// The aid the full-disk child writes.
const FULL_AID: u16 = 5;
/// Config sizes that fit under [`FSIZE_LIMIT`], with the entry around them.
const SMALL_SIZES: [usize; 6] = [0, 100, 2000, 4096, 30_000, 60_000];
/// Config sizes that do not: just over the limit, well over it, and near the entry size cap.
const BIG_SIZES: [usize; 4] = [70 * 1024, 200 * 1024, 200 * 1024 + 17, 900 * 1024];
/// EFBIG: what write(2) fails with past RLIMIT_FSIZE when SIGXFSZ is ignored.
const EFBIG: i32 = 27;

/// The `n`th small entry of the full-disk test: the same in the child and the parent.
fn small_state(n: usize) -> State<Cfg> {
    let mut id = [0x5a; 16];
    id[15] = n as u8;
    State::new(
        InstanceId::from_bytes(id),
        pid(n as u32),
        Cfg::new(1, n as u64, SMALL_SIZES[n]),
    )
    .with_time(UNIX_EPOCH + Duration::new(1_700_000_000 + n as u64, 7 * n as u32))
}

fn big_state(n: usize) -> State<Cfg> {
    let mut id = [0xb1; 16];
    id[15] = n as u8;
    State::new(
        InstanceId::from_bytes(id),
        pid(100 + n as u32),
        Cfg::new(2, 100 + n as u64, BIG_SIZES[n]),
    )
}

/// Whether this process ignores `signal`, from the `SigIgn` mask in /proc/self/status.
fn ignores_signal(signal: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .expect("no SigIgn line in /proc/self/status");
    let mask = u64::from_str_radix(mask.trim(), 16).unwrap();
    mask & (1 << (signal - 1)) != 0
}

/// Asserts that `result` is the failed save of `id`: `Error::Io` with op "save" on the
/// entry's path and EFBIG as its source.
fn assert_efbig(result: Result<(), Error>, run_dir: &Path, id: InstanceId) {
    match result {
        Err(Error::Io { op, path, source }) => {
            assert_eq!(op, "save", "the failing operation is named");
            assert_eq!(
                path,
                run_dir
                    .join("state")
                    .join(FULL_AID.to_string())
                    .join(id.to_string()),
                "the error names the entry that could not be saved"
            );
            assert_eq!(
                source.raw_os_error(),
                Some(EFBIG),
                "source is EFBIG: {source}"
            );
        }
        other => panic!("a save over RLIMIT_FSIZE gave {other:?}, not Io(save, EFBIG)"),
    }
}

/// Checks the full-disk aid holds exactly the small entries, whole, and nothing else.
async fn check_full_disk_aid(store: &Store, run_dir: &Path, small: usize) {
    // Looked at first: a store's first exclusive hold of an aid would sweep temporary files.
    assert_eq!(
        foreign_names(run_dir, aid(FULL_AID)),
        Vec::<String>::new(),
        "no temporary file or other leftover in the aid directory"
    );
    let all = store
        .try_with_aid(aid(FULL_AID), async |c| {
            for n in 0..BIG_SIZES.len() {
                if c.load(big_state(n).id).await?.is_some() {
                    return Err(Fail::Broken(format!("refused entry {n} is visible")));
                }
            }
            read_all(c).await
        })
        .await
        .unwrap_or_else(|e| panic!("checking the full-disk aid: {e}"));
    let expected: BTreeMap<InstanceId, State<Cfg>> =
        (0..small).map(small_state).map(|s| (s.id, s)).collect();
    assert_eq!(
        all, expected,
        "exactly the small entries, as saved: no partial big entry"
    );
    let every: Vec<(Aid, State<Cfg>)> = store.entries().try_collect().await.unwrap();
    assert_eq!(
        every.len(),
        small,
        "store.entries() sees the small ones only"
    );
}

/// Under a 64 KiB file size limit, with SIGXFSZ ignored: small saves succeed, saves past the
/// limit fail with EFBIG and leave no trace, and what was saved before stays intact.
async fn child_full_disk(run_dir: &Path) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // SIGXFSZ (25) must be ignored, or the first write past the limit kills this process
    // instead of failing; the parent starts us through a shell that ignores it.
    assert!(ignores_signal(25), "SIGXFSZ is not ignored in the child");
    let old = getrlimit(Resource::Fsize);
    setrlimit(
        Resource::Fsize,
        Rlimit {
            current: Some(FSIZE_LIMIT),
            maximum: old.maximum,
        },
    )
    .unwrap();
    assert_eq!(getrlimit(Resource::Fsize).current, Some(FSIZE_LIMIT));

    let store = Store::new(run_dir);
    let a = aid(FULL_AID);
    // The first small entries, each in its own hold.
    for n in 0..3 {
        let state = small_state(n);
        store
            .with_aid(a, async |c| c.save(&state).await)
            .await
            .unwrap_or_else(|e| panic!("small save {n} under the limit failed: {e}"));
    }
    // Each big save on its own fails, and the error says why.
    for (n, size) in BIG_SIZES.iter().enumerate() {
        let state = big_state(n);
        let result = store.with_aid(a, async |c| c.save(&state).await).await;
        say(format!(
            "REFUSED {size}-byte config: {}",
            result.as_ref().unwrap_err()
        ));
        assert_efbig(result, run_dir, state.id);
    }
    // A hold that saves around a failing save keeps going: the store is still usable.
    let (before, big, after) = (small_state(3), big_state(1), small_state(4));
    store
        .with_aid(a, async |c| {
            c.save(&before).await?;
            assert_efbig(c.save(&big).await, run_dir, big.id);
            assert_eq!(c.load(big.id).await?, None, "no partial entry is visible");
            c.save(&after).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    // A failing save that ends its hold with `?` releases the aid.
    let big = big_state(3);
    let result: Result<(), Error> = store
        .with_aid(a, async |c| {
            c.save(&big).await?;
            panic!("a save past the limit succeeded")
        })
        .await;
    assert_efbig(result, run_dir, big.id);
    let last = small_state(5);
    store
        .try_with_aid(a, async |c| c.save(&last).await)
        .await
        .expect("the aid is free and writable after the failed saves");
    check_full_disk_aid(&store, run_dir, SMALL_SIZES.len()).await;
    say(format!("DONE {}", SMALL_SIZES.len()));
}

async fn full_disk(flavor: Flavor) {
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let run_dir = tmp.path().join("run");
    // A signal set to SIG_IGN stays ignored across execve, so a shell that ignores SIGXFSZ
    // and then execs the test binary gives a child that ignores it too: rustix has no
    // sigaction. The child sets RLIMIT_FSIZE on itself with setrlimit (no `ulimit -f`,
    // whose unit is 512 bytes in dash but 1024 in bash), and checks both.
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        r#"trap '' XFSZ; exec "$0" "$@""#,
        std::env::current_exe().unwrap().to_str().unwrap(),
    ]);
    cmd.args(test_args(CHILD_TEST));
    child_env(&mut cmd, "full_disk", &run_dir, flavor, 0);
    let mut kid = spawn_kid(format!("full-disk child ({flavor:?})"), cmd);
    for _ in 0..BIG_SIZES.len() {
        let refused = kid.expect("REFUSED").await;
        assert!(
            refused.contains("File too large"),
            "the message says why: {refused}"
        );
    }
    let n = kid.expect("DONE").await;
    kid.finish().await;
    assert_eq!(n, SMALL_SIZES.len().to_string());

    // This process has no size limit: it sees the same, whole entries...
    let store = Store::new(&run_dir);
    check_full_disk_aid(&store, &run_dir, SMALL_SIZES.len()).await;
    // ...and can save the entry the child could not, which shows the limit was the cause.
    let big = big_state(2);
    store
        .with_aid(aid(FULL_AID), async |c| {
            c.save(&big).await?;
            assert_eq!(c.load(big.id).await?.as_ref(), Some(&big));
            assert!(c.destroy(big.id).await?);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    check_full_disk_aid(&store, &run_dir, SMALL_SIZES.len()).await;
}

#[tokio::test(flavor = "current_thread")]
async fn full_disk_current_thread() {
    full_disk(Flavor::Current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_multi_thread() {
    full_disk(Flavor::Multi).await;
}

// ---------------------------------------------------------------------------------------
// 2. A kill storm: processes doing random work, SIGKILLed at random moments.

/// The aids the storm children work on.
const STORM_AIDS: [u16; 3] = [11, 12, 13];
/// An aid keeps at most about this many entries: the children trim it.
const STORM_MAX_ENTRIES: usize = 12;

/// The entry size of a storm save: mostly small, sometimes 100-300 KiB.
fn storm_len(rng: &mut XorShift) -> usize {
    if rng.below(6) == 0 {
        100 * 1024 + rng.below(200 * 1024) as usize
    } else {
        rng.below(3000) as usize
    }
}

/// One random operation of a storm child. Any broken invariant is an `Err(Broken)`.
async fn storm_op(store: &Store, rng: &mut XorShift, owner: u64) -> Result<(), Fail> {
    let a = aid(STORM_AIDS[rng.below(STORM_AIDS.len() as u64) as usize]);
    let seq = rng.next_u64();
    match rng.below(10) {
        // Save a few entries, read each back, trim the aid.
        0..=2 => {
            let n = 1 + rng.below(3);
            let states: Vec<State<Cfg>> = (0..n)
                .map(|i| {
                    State::new(
                        InstanceId::random(),
                        pid((seq % 1000) as u32),
                        Cfg::new(owner, seq.wrapping_add(i), storm_len(rng)),
                    )
                })
                .collect();
            let pick = rng.next_u64();
            store
                .with_aid(a, async |c| {
                    for state in &states {
                        c.save(state).await?;
                        if c.load(state.id).await?.as_ref() != Some(state) {
                            return Err(Fail::Broken(format!("{} read back changed", state.id)));
                        }
                    }
                    trim(c, pick).await
                })
                .await
        }
        // Read everything, exclusively.
        3 => {
            store
                .with_aid(a, async |c| read_all(c).await.map(drop))
                .await
        }
        // Read everything, shared, then every listed entry one by one, then part of a
        // stream that is dropped half-way.
        4 | 5 => {
            let take = rng.below(6) as usize;
            store
                .with_aid_shared(a, async |c| {
                    let all = read_all(c).await?;
                    for (id, state) in &all {
                        if c.load(*id).await?.as_ref() != Some(state) {
                            return Err(Fail::Broken(format!("{id} changed under a shared hold")));
                        }
                    }
                    let mut entries = c.entries();
                    for _ in 0..take {
                        match entries.next().await {
                            Some(state) => drop(state?),
                            None => break,
                        }
                    }
                    Ok(())
                })
                .await
        }
        // Save without waiting, if the aid is free.
        6 => {
            let state = State::new(
                InstanceId::random(),
                pid(7),
                Cfg::new(owner, seq, storm_len(rng)),
            );
            match store.try_with_aid(a, async |c| c.save(&state).await).await {
                Ok(()) | Err(Error::WouldBlock { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        // Destroy some entries, waiting a little at most.
        7 => {
            let limit = Duration::from_millis(rng.below(20));
            let pick = rng.next_u64();
            match store
                .with_aid_timeout(a, limit, async |c| trim(c, pick | 1).await)
                .await
            {
                Ok(()) | Err(Fail::Store(Error::Timeout { .. })) => Ok(()),
                Err(e) => Err(e),
            }
        }
        // The whole store, as ps would read it.
        8 => {
            let every: Vec<(Aid, State<Cfg>)> = store.entries().try_collect().await?;
            for (a, state) in &every {
                state.config.check().map_err(|e| format!("aid {a}: {e}"))?;
            }
            Ok(())
        }
        // Count without reading.
        _ => {
            store
                .with_aid_shared(a, async |c| {
                    let len = c.len().await?;
                    let ids: Vec<InstanceId> = c.ids().try_collect().await?;
                    if ids.len() != len {
                        return Err(Fail::Broken(format!("len {len} but {} ids", ids.len())));
                    }
                    Ok(())
                })
                .await
        }
    }
}

/// Destroys random entries while the aid holds more than [`STORM_MAX_ENTRIES`], or, with an
/// odd `pick`, one random entry. Every listed entry must be there to destroy.
async fn trim(c: &mut Cursor<Cfg>, pick: u64) -> Result<(), Fail> {
    let ids: Vec<InstanceId> = c.ids().try_collect().await?;
    let mut doomed: Vec<InstanceId> = Vec::new();
    if ids.len() > STORM_MAX_ENTRIES {
        doomed.extend(ids.iter().skip(pick as usize % 3).step_by(2));
    } else if pick % 2 == 1 && !ids.is_empty() {
        doomed.push(ids[(pick >> 1) as usize % ids.len()]);
    }
    for id in doomed {
        if !c.destroy(id).await? {
            return Err(Fail::Broken(format!(
                "listed entry {id} was gone before its destroy"
            )));
        }
    }
    Ok(())
}

/// Random work on the storm aids, in several tasks, until killed.
async fn child_storm(run_dir: &Path, seed: u64, multi: bool) {
    let store = Store::new(run_dir);
    let owner = u64::from(std::process::id());
    say("READY");
    let tasks: Vec<_> = (0..if multi { 3 } else { 2 })
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = XorShift::new(seed ^ (t << 32));
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(60) {
                    if let Err(e) = storm_op(&store, &mut rng, owner).await {
                        panic!("storm child {owner} task {t}: {e}");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    panic!("not killed within 60 s");
}

/// Takes every storm aid without waiting, reads it whole and says `OK <entries>`.
async fn child_check(run_dir: &Path) {
    let store = Store::new(run_dir);
    let mut total = 0;
    for n in STORM_AIDS {
        let all = store
            .try_with_aid(aid(n), async |c| read_all(c).await)
            .await
            .unwrap_or_else(|e| panic!("checker: aid {n}: {e}"));
        total += all.len();
    }
    say(format!("OK {total}"));
}

/// After a round of kills, with no child left: every aid is free for a long-lived handle
/// and a fresh one, every entry is whole and decodes, and no leftover file is visible.
/// Returns the number of aid checks done, the entries seen, and the temporary files found
/// before a sweep.
async fn check_after_kills(
    main: &Store,
    run_dir: &Path,
    round: usize,
) -> (u64, Vec<State<Cfg>>, usize) {
    let aids: Vec<Aid> = STORM_AIDS.iter().map(|&n| aid(n)).collect();
    let mut checks = 0;
    let mut seen = BTreeMap::new();
    for &a in &aids {
        // try_with_aid: a lock left held by a dead child shows as WouldBlock, not as a wait.
        let all = main
            .try_with_aid(a, async |c| read_all(c).await)
            .await
            .unwrap_or_else(|e| panic!("round {round}: aid {a} after the kills: {e}"));
        seen.insert(a, all);
        checks += 1;
    }
    // Before any sweep: a killed save may have left a temporary file (if this file system
    // made the store fall back to named ones), but nothing else.
    let mut temps = 0;
    for &a in &aids {
        let foreign = foreign_names(run_dir, a);
        temps += foreign.iter().filter(|n| n.starts_with(".tmp-")).count();
        assert!(
            foreign.iter().all(|n| n.starts_with(".tmp-")),
            "round {round}: foreign files in aid {a}: {foreign:?}"
        );
    }
    // A new handle's first exclusive hold sweeps what a killed process may have left;
    // then only entry files may remain.
    let fresh = Store::new(run_dir);
    for &a in &aids {
        let all = fresh
            .try_with_aid(a, async |c| read_all(c).await)
            .await
            .unwrap_or_else(|e| panic!("round {round}: fresh handle, aid {a}: {e}"));
        assert_eq!(
            all, seen[&a],
            "round {round}: two handles disagree on aid {a}"
        );
        assert_eq!(
            foreign_names(run_dir, a),
            Vec::<String>::new(),
            "round {round}: leftover files in aid {a}"
        );
        checks += 1;
    }
    assert_eq!(
        foreign_state_names(run_dir, &aids),
        Vec::<String>::new(),
        "round {round}: leftover files in the state directory"
    );
    let every: Vec<(Aid, State<Cfg>)> = timeout(DEADLOCK, main.entries().try_collect())
        .await
        .expect("store.entries() deadlocked")
        .unwrap_or_else(|e| panic!("round {round}: store.entries(): {e}"));
    let total: usize = seen.values().map(BTreeMap::len).sum();
    assert_eq!(every.len(), total, "round {round}");
    for (a, state) in &every {
        assert_eq!(seen[a].get(&state.id), Some(state), "round {round}");
    }
    checks += 1;
    (checks, every.into_iter().map(|(_, s)| s).collect(), temps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_storm() {
    const ROUNDS: usize = 70;
    const KIDS: usize = 4;
    let seed = base_seed();
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let run_dir = tmp.path().join("run");
    let main = Store::new(&run_dir);
    let mut rng = XorShift::new(seed);
    let started = Instant::now();
    let (mut kills, mut checks, mut child_checks) = (0u64, 0u64, 0u64);
    let (mut most, mut written, mut temps_left) = (0usize, 0usize, 0usize);
    for round in 0..ROUNDS {
        let mut kids: Vec<Kid> = (0..KIDS)
            .map(|i| {
                let flavor = Flavor::Current.alternate(round + i);
                let child_seed = rng.next_u64();
                spawn_kid(
                    format!("storm child {i} of round {round} ({flavor:?}, seed {child_seed})"),
                    child_command("storm", &run_dir, flavor, child_seed),
                )
            })
            .collect();
        for kid in &mut kids {
            kid.expect("READY").await;
        }
        let pids: Vec<u64> = kids.iter().map(|k| u64::from(k.child.id())).collect();
        // Kill them one by one, in random order, each after a random while: some while
        // they start, most in the middle of a save, a destroy, a read or a lock wait.
        while !kids.is_empty() {
            let kid = kids.swap_remove(rng.below(kids.len() as u64) as usize);
            let wait = if rng.below(3) == 0 {
                rng.below(60)
            } else {
                rng.below(12)
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            kid.kill().await;
            kills += 1;
        }
        let (n, states, temps) = check_after_kills(&main, &run_dir, round).await;
        checks += n;
        temps_left += temps;
        let entries = states.len();
        most = most.max(entries);
        // What this round's children saved and did not destroy: proof that they worked.
        written += states
            .iter()
            .filter(|s| pids.contains(&s.config.owner))
            .count();
        // Now and then another process checks too, without waiting for any aid.
        if round % 10 == 9 {
            let mut checker = spawn_kid(
                format!("checker after round {round}"),
                child_command("check", &run_dir, Flavor::Current.alternate(round), 0),
            );
            let seen = checker.expect("OK").await;
            checker.finish().await;
            assert_eq!(seen, entries.to_string(), "round {round}");
            checks += STORM_AIDS.len() as u64;
            child_checks += 1;
        }
    }
    assert!(
        written > ROUNDS,
        "the children saved almost nothing before they were killed: {written} entries"
    );
    eprintln!(
        "kill_storm (seed {seed}): {kills} SIGKILLs in {ROUNDS} rounds, {checks} aid checks \
         ({child_checks} rounds also checked by a fresh process), {written} entries found \
         from the round's children, up to {most} entries, {temps_left} temporary files \
         left by a kill (swept), in {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// 3. A cancellation storm: operations dropped at random await points.

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
