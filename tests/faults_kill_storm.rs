//! A kill storm: processes doing random work on a few aids (saves of all sizes, exclusive
//! and shared reads, tries, timeouts, listings) are SIGKILLed at random moments. After each
//! round every aid is free at once, for a long-lived handle, a fresh one and another
//! process; every entry is whole and decodes, and no leftover file stays past a sweep.
//!
//! Other processes are this very test binary, run again with only the `fault_child` test
//! selected in a role (the harness is in `tests/common/child.rs`). Outside a role
//! `fault_child` passes at once, so a plain `cargo test` is unaffected.
//!
//! `RUNSTATE_SEED=<seed>` (printed by the test) replays another run.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::checked::{Fail, Filled, read_all};
use common::child::{DEADLOCK, Flavor, Kid, child_var, role, role_command, say, spawn_kid};
use common::{Checked, XorShift, aid, foreign_names, foreign_state_names, pid};
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

/// The test that children run.
const CHILD_TEST: &str = "fault_child";

/// The environment of a child: the run directory, its runtime and its seed.
fn child_env(cmd: &mut std::process::Command, run_dir: &Path, flavor: Flavor, seed: u64) {
    cmd.env("RUNSTATE_CHILD_DIR", run_dir)
        .env("RUNSTATE_CHILD_FLAVOR", flavor.name())
        .env("RUNSTATE_CHILD_SEED", seed.to_string())
        .stdin(Stdio::null());
}

/// The command that runs `fault_child` in `role`.
fn child_command(role: &str, run_dir: &Path, flavor: Flavor, seed: u64) -> std::process::Command {
    let mut cmd = role_command(CHILD_TEST, role);
    child_env(&mut cmd, run_dir, flavor, seed);
    cmd
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
    common::child::exit_on_panic();
    let dir = PathBuf::from(child_var("RUNSTATE_CHILD_DIR"));
    let seed: u64 = child_var("RUNSTATE_CHILD_SEED").parse().unwrap();
    let flavor = Flavor::from_name(&child_var("RUNSTATE_CHILD_FLAVOR"));
    flavor.runtime().block_on(async {
        match role.as_str() {
            "storm" => child_storm(&dir, seed, flavor == Flavor::Multi).await,
            "check" => child_check(&dir).await,
            other => panic!("unknown role {other}"),
        }
    });
}

// ---------------------------------------------------------------------------------------
// A kill storm: processes doing random work, SIGKILLed at random moments.

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
