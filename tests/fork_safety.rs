//! A process that holds an aid and dies must not leave it locked through a child it forked
//! that has not yet exec'd: a flock belongs to the open file description, which a forked
//! child shares until exec closes its close-on-exec descriptors. And a store carried into a
//! forked child refuses to work there.
//!
//! Each case runs a holder process (this binary again, selecting `child_process`) that
//! forks a child which does not exec (a long `pre_exec`, as sandbox launchers have, or a
//! stop before exec), SIGKILLs the holder, and asks for the aid while that child lives.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::child::{DEADLOCK, Flavor, Kid, child_var, role_command, say};
use common::{aid, flock_waiters};
use futures::StreamExt as _;
use runstate::{Aid, AsyncStore, Error, InstanceId, State};

/// The test that holder processes run.
const CHILD_TEST: &str = "child_process";
/// How long the parent keeps asking for the aid after the holder's death before it calls the
/// aid stuck. A lock that goes with its process is free on the first try.
const STUCK: Duration = Duration::from_secs(3);
/// The bound the first successful try must meet: far below [`STUCK`], far above a try.
const AT_ONCE: Duration = Duration::from_secs(2);

fn store(dir: &Path) -> AsyncStore<u8> {
    AsyncStore::new(dir)
}

fn run_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let run = tmp.path().join("run");
    (tmp, run)
}

fn lock_path(run_dir: &Path, aid: Aid) -> PathBuf {
    run_dir.join("state").join(format!("{aid}.lock"))
}

/// The children of `pid`, from `/proc/<pid>/task/*/children`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The state letter of `pid` (`S`, `T`, `Z`...), or `None` if it is gone.
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
}

/// Kills a grandchild by its pid, however the test ends.
struct Orphan(u32);

impl Drop for Orphan {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// A holder process in `role` on `aid`.
fn spawn_holder(role: &str, run_dir: &Path, aid: Aid, flavor: Flavor) -> Kid {
    let mut cmd = role_command(CHILD_TEST, role);
    cmd.env("RUNSTATE_FORK_DIR", run_dir)
        .env("RUNSTATE_FORK_AID", aid.to_string())
        .env("RUNSTATE_FORK_FLAVOR", flavor.name())
        .stdin(Stdio::piped());
    common::child::spawn_kid(format!("{role} holder"), cmd)
}

/// SIGKILLs the holder and reaps it: from then on, the kernel has dropped every lock that
/// went with it.
async fn kill_and_reap(kid: &mut Kid) {
    let _ = kid.child.kill();
    let pid = kid.child.id();
    let start = Instant::now();
    while kid.child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < DEADLOCK, "holder {pid} did not die");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Tries for the aid until it is had or [`STUCK`] has passed; how long it took.
async fn acquire(store: &AsyncStore<u8>, aid: Aid) -> Option<Duration> {
    let start = Instant::now();
    loop {
        match store.try_with_aid(aid, async |_| Ok::<_, Error>(())).await {
            Ok(()) => return Some(start.elapsed()),
            Err(Error::WouldBlock { .. }) if start.elapsed() < STUCK => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(Error::WouldBlock { .. }) => return None,
            Err(e) => panic!("try_with_aid({aid}): {e}"),
        }
    }
}

/// The common end of each case: the holder has the aid and a child forked that has not
/// exec'd; kill the holder, and the aid must be free at once while that child lives on.
async fn holder_dies(mut kid: Kid, store: &AsyncStore<u8>, aid: Aid, orphan: &Orphan) {
    let held = store.try_with_aid(aid, async |_| Ok::<_, Error>(())).await;
    assert!(
        matches!(held, Err(Error::WouldBlock { .. })),
        "the holder should hold the aid: {held:?}"
    );
    kill_and_reap(&mut kid).await;
    let got = acquire(store, aid).await;
    let alive = state_of(orphan.0);
    assert!(
        matches!(alive, Some(s) if s != 'Z' && s != 'X'),
        "the forked child must outlive the check, to prove anything: {alive:?}"
    );
    match got {
        Some(waited) => {
            println!("aid free {waited:?} after the holder's death (child {alive:?})");
            assert!(waited < AT_ONCE, "the aid came only after {waited:?}");
        }
        None => panic!(
            "aid {aid} still locked {STUCK:?} after its holder's death, while the holder's \
             forked child {} (state {alive:?}) lives",
            orphan.0
        ),
    }
}

/// (a) A child forked inside the hold, still in a long `pre_exec`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_forked_inside_the_hold_does_not_keep_the_aid() {
    let (_tmp, run) = run_dir();
    let aid = aid(1);
    let store = store(&run);
    let mut kid = spawn_holder("inside", &run, aid, Flavor::Current);
    let orphan = Orphan(kid.expect("HOLDING").await.parse().unwrap());
    holder_dies(kid, &store, aid, &orphan).await;
}

/// (b) A child forked before the hold, by a process that had used the store (so its lock
/// file was open), and locked by the holder afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_forked_before_the_hold_does_not_keep_the_aid() {
    let (_tmp, run) = run_dir();
    let aid = aid(2);
    let store = store(&run);
    let mut kid = spawn_holder("before", &run, aid, Flavor::Multi);
    let orphan = Orphan(kid.expect("HOLDING").await.parse().unwrap());
    holder_dies(kid, &store, aid, &orphan).await;
}

/// (c) A child stopped (SIGSTOP) before exec, which lives on as long as nobody continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_child_does_not_keep_the_aid() {
    let (_tmp, run) = run_dir();
    let aid = aid(3);
    let store = store(&run);
    let mut kid = spawn_holder("stopped", &run, aid, Flavor::Multi);
    let orphan = Orphan(kid.expect("HOLDING").await.parse().unwrap());
    assert_eq!(state_of(orphan.0), Some('T'), "the child should be stopped");
    holder_dies(kid, &store, aid, &orphan).await;
    assert_eq!(state_of(orphan.0), Some('T'), "the child stayed stopped");
}

/// (d) A child forked while the holder waited in the kernel for the aid (on the waiting
/// thread's own descriptor), which the holder then got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_forked_during_a_wait_does_not_keep_the_aid() {
    let (_tmp, run) = run_dir();
    let aid = aid(4);
    let store = store(&run);
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let ours = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .with_aid(aid, async move |_| {
                    held_tx.send(()).unwrap();
                    release_rx.await.unwrap();
                    Ok::<_, Error>(())
                })
                .await
        }
    });
    held_rx.await.unwrap();
    let mut kid = spawn_holder("waiting", &run, aid, Flavor::Current);
    let orphan = Orphan(kid.expect("FORKED").await.parse().unwrap());
    release_tx.send(()).unwrap();
    ours.await.unwrap().unwrap();
    kid.expect("HOLDING").await;
    holder_dies(kid, &store, aid, &orphan).await;
}

/// A store carried into a forked child refuses there with `Error::Forked`, touching none of
/// its descriptors; a store made in the child works, and so does the parent's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_used_in_a_forked_child_refuses() {
    let (_tmp, run) = run_dir();
    let kid = spawn_holder("forked_use", &run, aid(5), Flavor::Current);
    kid.finish().await;
}

// ---------------------------------------------------------------------------------------
// The holder side.

/// What the forked child does instead of exec'ing at once.
#[derive(Clone, Copy)]
enum Stall {
    /// Sleeps in `pre_exec`, as a slow sandbox setup would.
    Sleep,
    /// Stops itself in `pre_exec`.
    Stop,
}

/// Forks a child through `std::process::Command` (libc's `fork`, since there is a
/// `pre_exec`) that stalls before exec, on a thread, since `spawn` returns only at the exec.
/// Returns the child's pid once it is there (and stopped, for [`Stall::Stop`]).
fn fork_stalled_child(stall: Stall) -> u32 {
    let me = std::process::id();
    let before = children_of(me);
    std::thread::spawn(move || {
        let mut cmd = std::process::Command::new("true");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the forked child and makes only async-signal-safe
        // system calls (nanosleep, getpid, kill).
        unsafe {
            cmd.pre_exec(move || {
                match stall {
                    Stall::Sleep => std::thread::sleep(Duration::from_secs(120)),
                    Stall::Stop => {
                        let me = rustix::process::getpid();
                        rustix::process::kill_process(me, rustix::process::Signal::STOP)?;
                    }
                }
                Ok(())
            });
        }
        // Returns only if the child execs or fails, which the test does not wait for.
        let _ = cmd.spawn().map(|mut c| c.wait());
    });
    let start = Instant::now();
    loop {
        let new: Vec<u32> = children_of(me)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if let [pid] = new[..] {
            let ready = match stall {
                Stall::Sleep => true,
                Stall::Stop => state_of(pid) == Some('T'),
            };
            if ready {
                return pid;
            }
        }
        assert!(start.elapsed() < DEADLOCK, "no forked child appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Not a test of its own: the entry point of the holder processes the other tests spawn.
/// Outside a role ([`common::child::role`]) it does nothing.
#[test]
fn child_process() {
    let Some(role) = common::child::role() else {
        return;
    };
    let dir = PathBuf::from(child_var("RUNSTATE_FORK_DIR"));
    let aid: Aid = child_var("RUNSTATE_FORK_AID").parse().unwrap();
    let flavor = Flavor::from_name(&child_var("RUNSTATE_FORK_FLAVOR"));
    if role == "forked_use" {
        return forked_use(&dir, aid);
    }
    flavor.runtime().block_on(async {
        let store = store(&dir);
        let hold_forever = async |_: &mut runstate::Cursor<u8>| {
            std::future::pending::<()>().await;
            Ok::<_, Error>(())
        };
        match role.as_str() {
            "inside" | "stopped" => {
                let stall = match role.as_str() {
                    "inside" => Stall::Sleep,
                    _ => Stall::Stop,
                };
                store
                    .with_aid(aid, async |c| {
                        c.save(&State::new(InstanceId::random(), 1, 1)).await?;
                        say(format!("HOLDING {}", fork_stalled_child(stall)));
                        hold_forever(c).await
                    })
                    .await
                    .unwrap();
            }
            "before" => {
                store
                    .with_aid(aid, async |c| {
                        c.save(&State::new(InstanceId::random(), 1, 1)).await
                    })
                    .await
                    .unwrap();
                let pid = fork_stalled_child(Stall::Sleep);
                store
                    .with_aid(aid, async |c| {
                        say(format!("HOLDING {pid}"));
                        hold_forever(c).await
                    })
                    .await
                    .unwrap();
            }
            "waiting" => {
                let waiter = tokio::spawn({
                    let store = store.clone();
                    async move {
                        store
                            .with_aid(aid, async |c| {
                                say("HOLDING");
                                hold_forever(c).await
                            })
                            .await
                    }
                });
                // Fork only once this process's waiting thread is queued in the kernel.
                let lock = lock_path(&dir, aid);
                let start = Instant::now();
                while flock_waiters(&lock) == 0 {
                    assert!(start.elapsed() < DEADLOCK, "the holder never waited");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                say(format!("FORKED {}", fork_stalled_child(Stall::Sleep)));
                waiter.await.unwrap().unwrap();
            }
            other => panic!("unknown role {other}"),
        }
    });
}

/// Uses a store, forks (libc's `fork`, as `Command` does), and checks in the child that the
/// store refuses with `Error::Forked` while a new one works; then that the parent's still
/// works.
fn forked_use(dir: &Path, aid: Aid) {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let store = store(dir);
    let id = InstanceId::random();
    runtime().block_on(async {
        store
            .with_aid(aid, async |c| c.save(&State::new(id, 1, 7)).await)
            .await
            .unwrap();
    });
    // SAFETY: the child runs only this function's code and leaves with _exit; this process's
    // other threads (the test harness's) hold no lock the child needs.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let check = std::panic::AssertUnwindSafe(|| in_forked_child(dir, aid, id, store.clone()));
        let code = std::panic::catch_unwind(check).unwrap_or(100);
        // SAFETY: ends the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child failed check {} (status {status:#x})",
        libc::WEXITSTATUS(status)
    );
    let loaded = runtime().block_on(async {
        store
            .with_aid(aid, async |c| c.load(id).await)
            .await
            .unwrap()
    });
    assert_eq!(
        loaded.map(|s| s.config),
        Some(7),
        "the parent's store still works"
    );
    say("OK");
}

/// The forked child's checks; 0 if all pass, else the number of the first that failed.
fn in_forked_child(dir: &Path, aid: Aid, id: InstanceId, store: AsyncStore<u8>) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        fn forked<T>(r: Result<T, Error>) -> bool {
            matches!(r, Err(Error::Forked))
        }
        if !forked(store.try_with_aid(aid, async |_| Ok::<_, Error>(())).await) {
            return 1;
        }
        if !forked(store.with_aid(aid, async |_| Ok::<_, Error>(())).await) {
            return 2;
        }
        if !forked(store.with_aid_shared(aid, async |c| c.len().await).await) {
            return 3;
        }
        if !forked(store.aids().await) {
            return 4;
        }
        match store.entries().next().await {
            Some(Err(Error::Forked)) => {}
            _ => return 5,
        }
        if !Error::Forked.to_string().contains("fork") {
            return 6;
        }
        // Dropping the inherited store is harmless, and a new one works.
        drop(store);
        let fresh = AsyncStore::<u8>::new(dir);
        match fresh.try_with_aid(aid, async |c| c.load(id).await).await {
            Ok(Some(state)) if state.config == 7 => {}
            _ => return 7,
        }
        0
    })
}
