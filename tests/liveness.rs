//! Liveness and pruning: real children, and a fake /proc for the cases a real one cannot
//! stage (a reused pid, a strange command name, another boot, an unreadable stat file).

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use runstate::{Aid, AsyncStore, Error, InstanceId, Liveness, Options, ProcessIdentity, State};

const BOOT: &str = "0b7e51c4-6a3f-4c1e-9d2a-3f1e5c7d9a01\n";

/// Writes `<root>/<pid>/stat` with `start` in field 22 and `comm` as the command name.
fn fake_process(root: &Path, pid: u32, comm: &str, start: u64) {
    let dir = root.join(pid.to_string());
    fs::create_dir_all(&dir).unwrap();
    let fields: Vec<String> = (3..=21).map(|n| n.to_string()).collect();
    let line = format!("{pid} ({comm}) S {} {start} 23 24\n", fields[1..].join(" "));
    fs::write(dir.join("stat"), line).unwrap();
}

/// The pid of a child that has exited and been reaped: no process has it (pids are reused
/// only after the counter wraps), so `kill(pid, 0)` fails with ESRCH.
fn gone_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A state for `pid` whose identity is read from the fake `/proc` at `root`.
fn fake_state(root: &Path, pid: u32) -> State<u8> {
    State::unidentified(InstanceId::random(), pid, 0).with_process(ProcessIdentity::read(root, pid))
}

/// Saves `state` and reads it back.
async fn save_and_load(store: &AsyncStore<u8>, aid: Aid, state: &State<u8>) -> State<u8> {
    store
        .with_aid(aid, async |c| {
            c.save(state).await?;
            c.load(state.id).await
        })
        .await
        .unwrap()
        .unwrap()
}

fn fake_proc() -> tempfile::TempDir {
    let root = tempfile::tempdir_in("/dev/shm").unwrap();
    fs::create_dir_all(root.path().join("sys/kernel/random")).unwrap();
    fs::write(root.path().join("sys/kernel/random/boot_id"), BOOT).unwrap();
    root
}

#[test]
fn a_real_child_is_alive_until_it_is_reaped() {
    for rt in common::runtimes() {
        rt.block_on(async {
            let dir = tempfile::tempdir_in("/dev/shm").unwrap();
            let store = AsyncStore::<String>::new(dir.path());
            let aid = Aid::new(3).unwrap();
            let mut child = tokio::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            let pid = child.id().unwrap();
            let id = InstanceId::random();
            store
                .with_aid(aid, async |c| {
                    c.save(&State::new(id, pid, "sleep".into())).await
                })
                .await
                .unwrap();

            let saved = store
                .with_aid(aid, async |c| c.load(id).await)
                .await
                .unwrap()
                .unwrap();
            let identity = saved
                .process
                .clone()
                .expect("save records the identity of a live pid");
            assert!(!identity.boot_id.is_empty());
            assert_eq!(store.liveness(&saved).await, Liveness::Alive);
            assert!(
                store.prune_dead().await.unwrap().is_empty(),
                "a live entry is not pruned"
            );

            child.kill().await.unwrap();
            child.wait().await.unwrap();
            assert_eq!(store.liveness(&saved).await, Liveness::Dead);
            let pruned = store.prune_dead().await.unwrap();
            assert_eq!(pruned.len(), 1);
            assert_eq!((pruned[0].0, pruned[0].1.id), (aid, id));
            assert_eq!(
                store.with_aid(aid, async |c| c.len().await).await.unwrap(),
                0
            );
        });
    }
}

#[tokio::test]
async fn an_entry_whose_pid_proc_does_not_show_is_saved_without_identity() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let proc_root = fake_proc();
    let store =
        AsyncStore::<u8>::with_options(dir.path(), Options::new().proc_root(proc_root.path()));
    let state = fake_state(proc_root.path(), 4242);
    let loaded = store
        .with_aid(Aid::new(0).unwrap(), async |c| {
            c.save(&state).await?;
            c.load(state.id).await
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.process, None);
    assert_eq!(loaded, state);
    assert_eq!(store.liveness(&loaded).await, Liveness::Unknown);
    assert!(
        store.prune_dead().await.unwrap().is_empty(),
        "unknown liveness is left alone"
    );
}

#[tokio::test]
async fn a_fake_proc_tells_reuse_reboot_and_unreadable_apart() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let proc_root = fake_proc();
    let root = proc_root.path();
    let store = AsyncStore::<u8>::with_options(dir.path(), Options::new().proc_root(root));
    let aid = Aid::new(9).unwrap();

    // Each pid is saved while its fake process is "running", with a hostile command name.
    // The one that goes away is a pid no real process has either: a gone pid is confirmed
    // with kill(pid, 0), for a /proc that merely hides it.
    let gone = gone_pid();
    let pids = [100u32, 101, gone, 103, 104];
    let mut saved = Vec::new();
    for &pid in &pids {
        fake_process(root, pid, "a) b (c", 5_000 + u64::from(pid));
        let state = fake_state(root, pid);
        let loaded = save_and_load(&store, aid, &state).await;
        let identity = loaded.process.clone().unwrap();
        assert_eq!(
            identity.start_time,
            5_000 + u64::from(pid),
            "field 22 after the last ')'"
        );
        assert_eq!(identity.boot_id, BOOT.trim());
        assert_eq!(store.liveness(&loaded).await, Liveness::Alive);
        saved.push(loaded);
    }

    // 100 keeps running. 101's pid is reused by a process with another start time.
    fake_process(root, 101, "other", 1);
    // The third is gone.
    fs::remove_dir_all(root.join(gone.to_string())).unwrap();
    // 103's stat cannot be read.
    fs::remove_file(root.join("103/stat")).unwrap();
    fs::create_dir(root.join("103/stat")).unwrap();
    // 104 still runs, but see below: after a reboot nothing from before is alive.
    let verdicts: Vec<Liveness> =
        futures::future::join_all(saved.iter().map(|s| store.liveness(s))).await;
    assert_eq!(
        verdicts,
        [
            Liveness::Alive,
            Liveness::Dead,
            Liveness::Dead,
            Liveness::Unknown,
            Liveness::Alive
        ]
    );

    let pruned = store.prune_dead().await.unwrap();
    let mut pruned_pids: Vec<u32> = pruned.iter().map(|(_, s)| s.pid).collect();
    pruned_pids.sort();
    let mut want = [101, gone];
    want.sort();
    assert_eq!(pruned_pids, want);
    let left = store
        .with_aid(aid, async |c| c.load_all().await)
        .await
        .unwrap();
    let mut left_pids: Vec<u32> = left.values().map(|s| s.pid).collect();
    left_pids.sort();
    assert_eq!(left_pids, [100, 103, 104]);

    fs::write(root.join("sys/kernel/random/boot_id"), "another-boot\n").unwrap();
    assert_eq!(store.liveness(&saved[0]).await, Liveness::Dead);
    assert_eq!(store.liveness(&saved[4]).await, Liveness::Dead);
    let pruned = store
        .with_aid(aid, async |c| c.prune_dead().await)
        .await
        .unwrap();
    let mut pruned_pids: Vec<u32> = pruned.iter().map(|s| s.pid).collect();
    pruned_pids.sort();
    assert_eq!(
        pruned_pids,
        [100, 103, 104],
        "a reboot makes every recorded identity dead"
    );
}

#[tokio::test]
async fn prune_leaves_corrupt_files_alone() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let proc_root = fake_proc();
    let store =
        AsyncStore::<u8>::with_options(dir.path(), Options::new().proc_root(proc_root.path()));
    let aid = Aid::new(1).unwrap();
    let pid = gone_pid();
    fake_process(proc_root.path(), pid, "x", 70);
    let state = fake_state(proc_root.path(), pid);
    store
        .with_aid(aid, async |c| c.save(&state).await)
        .await
        .unwrap();
    let junk = dir
        .path()
        .join("state/1")
        .join(InstanceId::random().to_string());
    fs::write(&junk, b"not msgpack").unwrap();
    fs::remove_dir_all(proc_root.path().join(pid.to_string())).unwrap();

    let pruned = store
        .with_aid(aid, async |c| c.prune_dead().await)
        .await
        .unwrap();
    assert_eq!(pruned.len(), 1);
    assert!(
        junk.exists(),
        "a corrupt file is not an entry of a dead process"
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        store.with_aid(aid, async |_| Ok::<_, Error>(())),
    )
    .await
    .expect("the aid is free after pruning")
    .unwrap();
}

/// With `hidepid=2`, /proc hides other users' processes exactly as if they were gone. A
/// fake /proc without the pid stands in for it: a process that really has the pid (this
/// test's own) is `Unknown`, not `Dead`, and pruning leaves its entry; a pid that no process
/// has is `Dead`.
#[tokio::test]
async fn a_pid_that_proc_hides_is_unknown_and_a_reaped_one_is_dead() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let proc_root = fake_proc();
    let root = proc_root.path();
    // This namespace's /proc (its `self` is us), mounted with hidepid.
    std::os::unix::fs::symlink(std::process::id().to_string(), root.join("self")).unwrap();
    let store = AsyncStore::<u8>::with_options(dir.path(), Options::new().proc_root(root));
    let aid = Aid::new(4).unwrap();
    let (me, gone) = (std::process::id(), gone_pid());
    let mut saved = Vec::new();
    for pid in [me, gone] {
        fake_process(root, pid, "app", 4_000);
        let state = fake_state(root, pid);
        let loaded = save_and_load(&store, aid, &state).await;
        assert_eq!(store.liveness(&loaded).await, Liveness::Alive);
        fs::remove_dir_all(root.join(pid.to_string())).unwrap();
        saved.push(loaded);
    }
    assert_eq!(store.liveness(&saved[0]).await, Liveness::Unknown, "hidden");
    assert_eq!(store.liveness(&saved[1]).await, Liveness::Dead, "reaped");
    let pruned = store.prune_dead().await.unwrap();
    assert_eq!(
        pruned.iter().map(|(_, s)| s.pid).collect::<Vec<_>>(),
        [gone],
        "only the entry whose process is really gone is pruned"
    );
    let left = store
        .with_aid(aid, async |c| c.load_all().await)
        .await
        .unwrap();
    assert_eq!(left.values().map(|s| s.pid).collect::<Vec<_>>(), [me]);
}

/// Through another pid namespace's /proc (its `self` is not us), a pid missing there is
/// `Dead`, even though a process of ours has the same number: that one is not the entry's.
#[tokio::test]
async fn a_pid_gone_from_a_watched_namespace_is_dead_whatever_ours_has() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let proc_root = fake_proc();
    let root = proc_root.path();
    // The watched namespace's pid 1 is its init; ours is this process's number.
    std::os::unix::fs::symlink("1", root.join("self")).unwrap();
    let store = AsyncStore::<u8>::with_options(dir.path(), Options::new().proc_root(root));
    let me = std::process::id();
    fake_process(root, me, "app", 4_000);
    let state = fake_state(root, me);
    let loaded = save_and_load(&store, Aid::new(5).unwrap(), &state).await;
    assert_eq!(store.liveness(&loaded).await, Liveness::Alive);
    fs::remove_dir_all(root.join(me.to_string())).unwrap();
    assert_eq!(store.liveness(&loaded).await, Liveness::Dead);
}

/// A child that has exited is `Dead` before its parent reaps it (a zombie's pid cannot be
/// reused until then), so killing and then pruning, before `wait`, removes its entry.
#[tokio::test]
async fn an_exited_child_is_dead_before_it_is_reaped() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let store = AsyncStore::<u8>::new(dir.path());
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let state = State::new(InstanceId::random(), child.id(), 0);
    let saved = save_and_load(&store, Aid::new(6).unwrap(), &state).await;
    assert_eq!(store.liveness(&saved).await, Liveness::Alive);

    child.kill().unwrap();
    let stat = format!("/proc/{}/stat", child.id());
    let zombie = || {
        fs::read_to_string(&stat).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    };
    for _ in 0..2000 {
        if zombie() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert!(zombie(), "the killed child is a zombie until it is reaped");
    assert_eq!(store.liveness(&saved).await, Liveness::Dead);
    let pruned = store.prune_dead().await.unwrap();
    child.wait().unwrap();
    assert_eq!(pruned.len(), 1, "pruned before the child was reaped");
}

// ---------------------------------------------------------------------------------------
// Real pid reuse, forced through `ns_last_pid` (as CRIU does) in a pid namespace of our own.

/// The role of this binary run inside a new pid namespace by [`a_reused_pid_reads_as_dead`].
const REUSE_ROLE: &str = "pid-reuse";

/// Field 22 of `/proc/<pid>/stat`: the start time, in clock ticks after boot.
fn start_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// CLOCK_BOOTTIME in clock ticks: the clock of start times.
fn boottime_ticks() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) },
        0
    );
    let hz = rustix::param::clock_ticks_per_second();
    let nanos = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    nanos / (1_000_000_000 / hz)
}

/// Runs `sleep` at exactly `pid`, through `ns_last_pid`; `None` if another process took it.
fn sleeper_at(pid: u32) -> Option<std::process::Child> {
    fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    if child.id() == pid {
        return Some(child);
    }
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

/// A pid reused by a process started one clock tick after the recorded one, or within the
/// same tick: the entry reads as dead and `prune_dead` removes it. One tick later is told by
/// the start time alone (the entry also without its pidfs inode, as on kernels before 6.9);
/// the same tick only by the pidfs inode, where the kernel has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_reads_as_dead() {
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg("echo 100 > /proc/sys/kernel/ns_last_pid")
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr);
            return eprintln!("skipped: no pid namespace with a writable ns_last_pid: {why}");
        }
        Err(e) => return eprintln!("skipped: unshare: {e}"),
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(std::env::current_exe().unwrap())
        .args(common::child::test_args("pid_reuse_child"))
        .env(common::child::ROLE, REUSE_ROLE)
        .env("RUNSTATE_REUSE_DIR", dir.path());
    let mut kid = common::child::spawn_kid("pid reuse in a pid namespace", cmd);
    let next_tick = kid.expect("NEXT_TICK").await;
    let same_tick = kid.expect("SAME_TICK").await;
    kid.finish().await;
    for (what, result) in [("one tick later", next_tick), ("same tick", same_tick)] {
        match result.strip_prefix("skipped") {
            Some(why) => eprintln!("{what}: skipped{why}"),
            None => eprintln!("{what}: {result}"),
        }
    }
}

/// Not a test of its own: the process that [`a_reused_pid_reads_as_dead`] runs as pid 1 of a
/// new pid namespace. Without its role it does nothing.
#[test]
fn pid_reuse_child() {
    if common::child::role().as_deref() != Some(REUSE_ROLE) {
        return;
    }
    let dir = common::child::child_var("RUNSTATE_REUSE_DIR");
    let rt = common::current_thread_runtime();
    rt.block_on(async {
        let store = AsyncStore::<u8>::new(&dir);
        let aid = Aid::new(7).unwrap();
        for same_tick in [false, true] {
            let tag = if same_tick { "SAME_TICK" } else { "NEXT_TICK" };
            let mut outcome = None;
            // The reuse must land in the right tick; a busy machine can make it miss.
            for _ in 0..50 {
                let mut first = std::process::Command::new("sleep")
                    .arg("1000")
                    .spawn()
                    .unwrap();
                let pid = first.id();
                let id = InstanceId::random();
                let state = State::new(id, pid, 1u8);
                store
                    .with_aid(aid, async |c| c.save(&state).await)
                    .await
                    .unwrap();
                let saved = store.load(aid, id).await.unwrap().unwrap();
                let recorded = saved.process.clone().expect("identity recorded");
                first.kill().unwrap();
                first.wait().unwrap();
                if !same_tick {
                    // Into the next tick, a little past its start.
                    while boottime_ticks() <= recorded.start_time {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
                let Some(mut second) = sleeper_at(pid) else {
                    store
                        .with_aid(aid, async |c| c.destroy(id).await)
                        .await
                        .unwrap();
                    continue;
                };
                let started = start_ticks(pid);
                let want = recorded.start_time + u64::from(!same_tick);
                if started != want || (same_tick && recorded.pidfs_inode.is_none()) {
                    second.kill().unwrap();
                    second.wait().unwrap();
                    store
                        .with_aid(aid, async |c| c.destroy(id).await)
                        .await
                        .unwrap();
                    if same_tick && recorded.pidfs_inode.is_none() {
                        outcome = Some(
                            "skipped: no pidfs on this kernel (before 6.9): a pid reused in \
                             the same tick cannot be told apart"
                                .to_string(),
                        );
                        break;
                    }
                    continue;
                }
                assert_eq!(
                    store.liveness(&saved).await,
                    Liveness::Dead,
                    "pid {pid} reused, recorded start {}, now {started}: {recorded:?}",
                    recorded.start_time
                );
                if !same_tick {
                    // As recorded where the kernel has no pidfs: the start time alone.
                    let mut no_inode = saved.clone();
                    no_inode.process.as_mut().unwrap().pidfs_inode = None;
                    assert_eq!(store.liveness(&no_inode).await, Liveness::Dead);
                }
                let pruned = store.prune_dead().await.unwrap();
                let pruned: Vec<InstanceId> = pruned.iter().map(|(_, s)| s.id).collect();
                assert_eq!(pruned, [id], "the stale entry is pruned");
                second.kill().unwrap();
                second.wait().unwrap();
                outcome = Some(format!(
                    "dead: pid {pid} reused, start {} then {started}",
                    recorded.start_time
                ));
                break;
            }
            let outcome = outcome.unwrap_or_else(|| {
                "skipped: the reuse never landed in the tick it must (a busy machine)".into()
            });
            common::child::say(format!("{tag} {outcome}"));
        }
        store.close().await
    })
    .unwrap();
}
