//! Tests of the store across real processes: exclusion, crashes, inherited descriptors and
//! cancellation.
//!
//! Other processes are this very test binary, run again with only the `child_process` test
//! selected and `RUNSTATE_CHILD_*` variables saying what to do (the harness is in
//! `tests/common/child.rs`). Without them `child_process` passes at once, so a plain
//! `cargo test` is unaffected.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use common::checked::{Filled, read_all};
use common::child::{DEADLOCK, Flavor, Kid, child_var, role, role_command, say};
use common::{Checked, XorShift, aid, check_states, flock_waiters, foreign_names};
use futures::TryStreamExt;
use runstate::{Aid, AsyncStore, Cursor, Error, InstanceId, Options, State};
use tokio::time::timeout;

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// The test that children run.
const CHILD_TEST: &str = "child_process";
/// Entries here are up to 500 KiB; the cap leaves room.
const MAX_ENTRY: u64 = 2 << 20;
/// How long the `sleep` children would run: well past [`DEADLOCK`], so that a lock kept by
/// one of them shows as a timeout, not as a slow success. They are killed at the end.
const SLEEP_SECS: &str = "120";
/// The counter's fixed instance id.
const COUNTER: InstanceId = InstanceId::from_bytes([0xc0; 16]);

fn open_store(run_dir: &Path) -> AsyncStore<Cfg> {
    AsyncStore::with_options(run_dir, Options::new().max_entry_size(MAX_ENTRY))
}

fn run_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let run = tmp.path().join("run");
    (tmp, run)
}

// ---------------------------------------------------------------------------------------
// Entries whose content can be checked.

/// The suites' checked config ([`Filled`]); owner 0, as only the content is checked here.
type Cfg = Filled;

impl Filled {
    fn counter(value: u64) -> Cfg {
        Cfg::new(0, value, 0)
    }

    /// A 200-500 KiB config.
    fn big(seq: u64) -> Cfg {
        Cfg::new(0, seq, (200 * 1024 + seq % (300 * 1024)) as usize)
    }

    fn small(seq: u64) -> Cfg {
        Cfg::new(0, seq, (seq % 2048) as usize)
    }
}

/// Takes the aid, bounded by [`DEADLOCK`], reads every entry in each way the cursor offers
/// and checks that they agree and that every config is intact.
async fn verify_aid(
    store: &AsyncStore<Cfg>,
    aid: Aid,
) -> Result<BTreeMap<InstanceId, State<Cfg>>, BoxErr> {
    let read = store.with_aid(aid, async |c| read_all(c).await);
    let all = timeout(DEADLOCK, read)
        .await
        .map_err(|_| format!("with_aid({aid}) not granted within {DEADLOCK:?}"))??;
    Ok(all)
}

fn lock_path(run_dir: &Path, aid: Aid) -> PathBuf {
    run_dir.join("state").join(format!("{aid}.lock"))
}

fn append_line(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

fn read_lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// The base seed: `RUNSTATE_SEED` if set, else a fixed one (see `common::seed`).
fn base_seed() -> u64 {
    common::child::base_seed(0x5eed_2024)
}

// ---------------------------------------------------------------------------------------
// Processes.

/// A child running this binary's `child_process` test in `role` on `aid`, with `extra`
/// variables; its stdin is a pipe that [`Kid::finish`] closes.
fn spawn_kid(
    what: impl Into<String>,
    role: &str,
    run_dir: &Path,
    aid: Aid,
    flavor: Flavor,
    extra: &[(&str, String)],
) -> Kid {
    let mut cmd = role_command(CHILD_TEST, role);
    cmd.env("RUNSTATE_CHILD_DIR", run_dir)
        .env("RUNSTATE_CHILD_AID", aid.to_string())
        .env("RUNSTATE_CHILD_FLAVOR", flavor.name())
        .stdin(Stdio::piped());
    for (key, value) in extra {
        cmd.env(key, value);
    }
    common::child::spawn_kid(what, cmd)
}

/// Polls `done` every 2 ms until it is true; panics after [`DEADLOCK`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLOCK, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether process `pid` has `path` open (compared by device and inode).
fn has_open(pid: u32, path: &Path) -> bool {
    let target = std::fs::metadata(path).unwrap();
    let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(fds) => fds,
        Err(e) => panic!("list /proc/{pid}/fd: {e}"),
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::metadata(fd.path())
            .is_ok_and(|md| md.dev() == target.dev() && md.ino() == target.ino())
    })
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// Kills the `sleep` a test started, by its pid, however the test ends.
struct Sleeper {
    pid: u32,
    child: Option<std::process::Child>,
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait();
        }
    }
}

fn spawn_sleep() -> std::process::Child {
    // No inherited stdio: a pipe kept open by the sleep would hold up the reader.
    std::process::Command::new("sleep")
        .arg(SLEEP_SECS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `fut` `polls` times, yielding in between, then drops it if it is not done.
async fn poll_then_drop<F: Future>(fut: F, polls: u64) -> Option<F::Output> {
    let mut fut = pin!(fut);
    for _ in 0..polls {
        let step = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = step {
            return Some(out);
        }
        tokio::task::yield_now().await;
    }
    None
}

// ---------------------------------------------------------------------------------------
// The child side.

struct ChildEnv {
    role: String,
    dir: PathBuf,
    aid: Aid,
}

fn child_num(name: &str) -> u64 {
    child_var(name).parse().unwrap()
}

/// Not a test of its own: the entry point of the child processes the other tests spawn.
/// Outside a [`role`] it does nothing.
#[test]
fn child_process() {
    let Some(role) = role() else {
        return;
    };
    let env = ChildEnv {
        role,
        dir: PathBuf::from(child_var("RUNSTATE_CHILD_DIR")),
        aid: child_var("RUNSTATE_CHILD_AID").parse().unwrap(),
    };
    let flavor = Flavor::from_name(&child_var("RUNSTATE_CHILD_FLAVOR"));
    flavor.runtime().block_on(async {
        match env.role.as_str() {
            "counter" => child_counter(&env).await,
            "crash" => child_crash(&env).await,
            "verify" => child_verify(&env).await,
            "order" => child_order(&env).await,
            "hold" => child_hold(&env).await,
            "hold_spawn" => child_hold_spawn(&env).await,
            "churn" => child_churn(&env).await,
            other => panic!("unknown role {other}"),
        }
    });
}

/// One read-modify-write of the counter, with yields between the steps so that any other
/// holder that could get in would.
async fn increment(c: &mut Cursor<Cfg>) -> Result<(), BoxErr> {
    let old = c
        .load(COUNTER)
        .await?
        .ok_or("counter missing: another holder is between its destroy and its save")?;
    tokio::task::yield_now().await;
    if !c.destroy(COUNTER).await? {
        return Err("counter vanished between load and destroy".into());
    }
    tokio::task::yield_now().await;
    let new = State::new(
        COUNTER,
        std::process::id(),
        Cfg::counter(old.config.seq + 1),
    );
    c.save(&new).await?;
    tokio::task::yield_now().await;
    Ok(())
}

async fn increment_loop(store: AsyncStore<Cfg>, aid: Aid, times: u64) -> Result<(), BoxErr> {
    for _ in 0..times {
        store.with_aid(aid, async |c| increment(c).await).await?;
    }
    Ok(())
}

/// Waits for the go file, then runs TASKS tasks of COUNT increments each.
async fn child_counter(env: &ChildEnv) {
    let store = open_store(&env.dir);
    let go = PathBuf::from(child_var("RUNSTATE_CHILD_GO"));
    say("READY");
    wait_until("the go file exists", || go.exists()).await;
    let tasks: Vec<_> = (0..child_num("RUNSTATE_CHILD_TASKS"))
        .map(|_| {
            tokio::spawn(increment_loop(
                store.clone(),
                env.aid,
                child_num("RUNSTATE_CHILD_COUNT"),
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    say("DONE");
}

/// Saves and destroys large entries until killed. Each turn also keeps a `.tmp-*` file in
/// the aid directory while it holds the lock, like the fallback save path does, so that a
/// kill can leave one behind for the next holder to sweep.
async fn child_crash(env: &ChildEnv) {
    let mut rng = XorShift::new(child_num("RUNSTATE_CHILD_SEED"));
    // Half the children take the durable (fsyncing) path.
    let options = Options::new()
        .max_entry_size(MAX_ENTRY)
        .durable(rng.below(2) == 0);
    let store = AsyncStore::<Cfg>::with_options(&env.dir, options);
    let aid_dir = env.dir.join("state").join(env.aid.to_string());
    let pid = std::process::id();
    say("READY");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        store
            .with_aid(env.aid, async |c| {
                let temp = (rng.below(2) == 0).then(|| {
                    let temp = aid_dir.join(format!(".tmp-{}", InstanceId::random()));
                    std::fs::write(&temp, b"half a save").unwrap();
                    temp
                });
                let ids: Vec<InstanceId> = c.ids().try_collect().await?;
                if ids.len() > 8 {
                    for id in &ids[..ids.len() - 4] {
                        assert!(c.destroy(*id).await?, "listed entry {id} was not there");
                    }
                }
                for _ in 0..3 {
                    let state = State::new(InstanceId::random(), pid, Cfg::big(rng.next_u64()));
                    c.save(&state).await?;
                }
                if let Some(temp) = temp {
                    std::fs::remove_file(temp).unwrap();
                }
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
    }
    panic!("not killed within 30 s");
}

/// Takes the aid promptly (optionally saving one entry first), checks every entry and,
/// with RUNSTATE_CHILD_NO_FOREIGN, that no other file is in the directory. Says `OK <n>`.
async fn child_verify(env: &ChildEnv) {
    let store = open_store(&env.dir);
    if std::env::var_os("RUNSTATE_CHILD_SAVE").is_some() {
        let state = State::new(InstanceId::random(), std::process::id(), Cfg::small(77));
        timeout(
            DEADLOCK,
            store.with_aid(env.aid, async |c| c.save(&state).await),
        )
        .await
        .expect("with_aid not granted in time")
        .unwrap();
    }
    let all = verify_aid(&store, env.aid).await.unwrap();
    if std::env::var_os("RUNSTATE_CHILD_NO_FOREIGN").is_some() {
        let foreign = foreign_names(&env.dir, env.aid);
        assert!(
            foreign.is_empty(),
            "foreign files after with_aid: {foreign:?}"
        );
    }
    say(format!("OK {}", all.len()));
}

/// Says TRYING, then appends `child` to RUNSTATE_CHILD_FILE under the aid's lock.
async fn child_order(env: &ChildEnv) {
    let store = open_store(&env.dir);
    let file = PathBuf::from(child_var("RUNSTATE_CHILD_FILE"));
    say("TRYING");
    timeout(
        DEADLOCK,
        store.with_aid(env.aid, async |_c| {
            append_line(&file, "child");
            Ok::<_, Error>(())
        }),
    )
    .await
    .expect("with_aid not granted in time")
    .unwrap();
    say("GOT");
}

/// Takes the aid, says HOLDING, waits for a line (or EOF) on stdin, then appends
/// `child-release` to RUNSTATE_CHILD_FILE and releases.
async fn child_hold(env: &ChildEnv) {
    let store = open_store(&env.dir);
    let file = PathBuf::from(child_var("RUNSTATE_CHILD_FILE"));
    store
        .with_aid(env.aid, async |_c| {
            say("HOLDING");
            tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
                .await
                .unwrap()
                .unwrap();
            append_line(&file, "child-release");
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
}

/// Takes the aid, starts `sleep` inside the closure, says `HOLDING <sleep pid>` and
/// stays inside the closure until killed.
#[allow(
    clippy::zombie_processes,
    reason = "the sleep must outlive this process, which is killed while holding the aid"
)]
async fn child_hold_spawn(env: &ChildEnv) {
    let store = open_store(&env.dir);
    store
        .with_aid(env.aid, async |_c| {
            let sleep = spawn_sleep();
            say(format!("HOLDING {}", sleep.id()));
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    panic!("not killed within 60 s");
}

/// Saves small entries and destroys its own old ones, one with_aid at a time, until its
/// stdin closes.
async fn child_churn(env: &ChildEnv) {
    let store = open_store(&env.dir);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_line(&mut String::new());
        flag.store(true, Ordering::Release);
    });
    let pid = std::process::id();
    let mut rng = XorShift::new(child_num("RUNSTATE_CHILD_SEED"));
    let mut turns = 0;
    say("READY");
    let start = Instant::now();
    while !stop.load(Ordering::Acquire) {
        assert!(start.elapsed() < DEADLOCK, "stdin not closed in time");
        let op = store.with_aid(env.aid, async |c| {
            let mine: Vec<State<Cfg>> = c
                .entries()
                .try_filter(|s| std::future::ready(s.pid == pid))
                .try_collect()
                .await?;
            for state in &mine {
                state.config.check()?;
            }
            if mine.len() > 10 {
                for state in &mine[..5] {
                    c.destroy(state.id).await?;
                }
            }
            let state = State::new(InstanceId::random(), pid, Cfg::small(rng.next_u64()));
            c.save(&state).await?;
            Ok::<_, BoxErr>(())
        });
        timeout(DEADLOCK, op)
            .await
            .expect("with_aid not granted in time")
            .unwrap();
        turns += 1;
    }
    say(format!("DONE {turns}"));
}

// ---------------------------------------------------------------------------------------
// 1. Mutual exclusion across processes and tasks.

async fn mutual_exclusion(flavor: Flavor) {
    const KIDS: usize = 4;
    const TASKS: u64 = 4;
    const PER_TASK: u64 = 60;
    let (tmp, run) = run_dir();
    let go = tmp.path().join("go");
    let store = open_store(&run);
    let aid = aid(1);
    store
        .with_aid(aid, async |c| {
            c.save(&State::new(COUNTER, 0, Cfg::counter(0))).await
        })
        .await
        .unwrap();

    let started = Instant::now();
    let mut kids: Vec<Kid> = (0..KIDS)
        .map(|i| {
            spawn_kid(
                format!("counter child {i}"),
                "counter",
                &run,
                aid,
                flavor.alternate(i),
                &[
                    ("RUNSTATE_CHILD_TASKS", TASKS.to_string()),
                    ("RUNSTATE_CHILD_COUNT", PER_TASK.to_string()),
                    ("RUNSTATE_CHILD_GO", go.display().to_string()),
                ],
            )
        })
        .collect();
    for kid in &mut kids {
        kid.expect("READY").await;
    }
    // Everyone starts at once, so the processes really contend.
    std::fs::write(&go, b"").unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(increment_loop(store.clone(), aid, PER_TASK)))
        .collect();
    for task in tasks {
        timeout(DEADLOCK, task)
            .await
            .expect("a parent task deadlocked")
            .unwrap()
            .unwrap();
    }
    for kid in kids {
        kid.finish().await;
    }

    let (value, len) = store
        .with_aid(aid, async |c| {
            let counter = c.load(COUNTER).await?.expect("counter missing");
            Ok::<_, Error>((counter.config.seq, c.len().await?))
        })
        .await
        .unwrap();
    let total = (KIDS as u64 + 1) * TASKS * PER_TASK;
    assert_eq!(value, total, "lost updates: {} of {total}", total - value);
    assert_eq!(len, 1);
    eprintln!(
        "mutual_exclusion({flavor:?}): {total} increments by {} processes in {:?}",
        KIDS + 1,
        started.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn mutual_exclusion_current_thread() {
    mutual_exclusion(Flavor::Current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_multi_thread() {
    mutual_exclusion(Flavor::Multi).await;
}

// ---------------------------------------------------------------------------------------
// 2. A writer SIGKILLed at random moments.

async fn crash(flavor: Flavor, kills: usize, seed: u64) {
    let (_tmp, run) = run_dir();
    let aid = aid(42);
    let main = open_store(&run);
    let mut rng = XorShift::new(seed);
    let started = Instant::now();
    let (mut temps_left, mut most) = (0, 0);
    for round in 0..kills {
        // This process reads under the lock all along, so the child is also killed while
        // waiting for the lock, and this process waits on a lock its holder dies with.
        let stop = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn({
            let (store, stop) = (main.clone(), stop.clone());
            async move {
                let mut reads = 0u32;
                while !stop.load(Ordering::Acquire) {
                    let all = timeout(DEADLOCK, store.with_aid(aid, async |c| c.load_all().await))
                        .await
                        .map_err(|_| "reader: with_aid not granted in time".to_string())?
                        .map_err(|e| format!("reader: {e}"))?;
                    check_states(&all)?;
                    reads += 1;
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                Ok::<_, String>(reads)
            }
        });

        let mut kid = spawn_kid(
            format!("crash child {round} (seed {seed})"),
            "crash",
            &run,
            aid,
            flavor.alternate(round),
            &[("RUNSTATE_CHILD_SEED", rng.next_u64().to_string())],
        );
        kid.expect("READY").await;
        tokio::time::sleep(Duration::from_millis(1 + rng.below(30))).await;
        kid.kill().await;

        stop.store(true, Ordering::Release);
        timeout(DEADLOCK, reader)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the reader deadlocked"))
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));

        // The lock is free, for this process's long-lived store...
        let seen = verify_aid(&main, aid)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        if foreign_names(&run, aid)
            .iter()
            .any(|n| n.starts_with(".tmp-"))
        {
            temps_left += 1;
        }
        // ...and for a new one, whose first hold sweeps what the killed child left.
        let fresh = open_store(&run);
        let fresh_seen = verify_aid(&fresh, aid)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            fresh_seen.keys().collect::<Vec<_>>(),
            seen.keys().collect::<Vec<_>>(),
            "round {round}"
        );
        let foreign = foreign_names(&run, aid);
        assert!(
            foreign.is_empty(),
            "round {round}: files left after with_aid: {foreign:?}"
        );
        let every: Vec<(Aid, State<Cfg>)> = timeout(DEADLOCK, fresh.entries().try_collect())
            .await
            .expect("store.entries() deadlocked")
            .unwrap_or_else(|e| panic!("round {round}: store.entries(): {e}"));
        assert_eq!(every.len(), seen.len(), "round {round}");
        assert!(
            every
                .iter()
                .all(|(a, s)| *a == aid && seen.get(&s.id) == Some(s))
        );
        most = most.max(seen.len());

        // ...and for another process.
        let mut check = spawn_kid(
            format!("verifier after kill {round}"),
            "verify",
            &run,
            aid,
            flavor.alternate(round + 1),
            &[("RUNSTATE_CHILD_NO_FOREIGN", "1".into())],
        );
        let n = check.expect("OK").await;
        check.finish().await;
        assert_eq!(n, seen.len().to_string(), "round {round}");
    }
    eprintln!(
        "crash({flavor:?}, seed {seed}): {kills} kills, {temps_left} left a temporary file, \
         up to {most} entries, in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn crash_current_thread() {
    crash(Flavor::Current, 20, base_seed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_multi_thread() {
    crash(Flavor::Multi, 20, base_seed() + 1).await;
}

// ---------------------------------------------------------------------------------------
// 3. Children spawned while holding the lock do not inherit it.

async fn lock_not_inherited(flavor: Flavor) {
    let (_tmp, run) = run_dir();
    let aid = aid(7);
    let store = open_store(&run);

    // A child started inside the closure, which then returns.
    let sleeper = store
        .with_aid(aid, async |c| {
            c.save(&State::new(InstanceId::random(), 1, Cfg::small(3)))
                .await?;
            let sleeper = match flavor {
                Flavor::Current => {
                    let child = spawn_sleep();
                    Sleeper {
                        pid: child.id(),
                        child: Some(child),
                    }
                }
                Flavor::Multi => {
                    let child = tokio::process::Command::new("sleep")
                        .arg(SLEEP_SECS)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()?;
                    Sleeper {
                        pid: child.id().unwrap(),
                        child: None,
                    }
                }
            };
            Ok::<_, BoxErr>(sleeper)
        })
        .await
        .unwrap();
    let lock = lock_path(&run, aid);
    assert!(
        !has_open(sleeper.pid, &lock),
        "a child spawned inside with_aid inherited the lock file"
    );
    let mut other = spawn_kid("verifier", "verify", &run, aid, flavor, &[]);
    assert_eq!(other.expect("OK").await, "1");
    other.finish().await;
    assert!(is_running(sleeper.pid), "sleep ended early");

    // A process that dies holding the lock, leaving behind a child it spawned meanwhile:
    // the lock goes with the process only if the child does not share its descriptor.
    let mut holder = spawn_kid("holder", "hold_spawn", &run, aid, flavor.other(), &[]);
    let orphan = Sleeper {
        pid: holder.expect("HOLDING").await.parse().unwrap(),
        child: None,
    };
    assert!(
        !has_open(orphan.pid, &lock),
        "a child spawned inside with_aid inherited the lock file"
    );
    let early = timeout(
        Duration::from_millis(100),
        store.with_aid(aid, async |_c| Ok::<_, Error>(())),
    )
    .await;
    assert!(early.is_err(), "got the aid while another process held it");
    holder.kill().await;
    let mut other = spawn_kid(
        "verifier after the holder died",
        "verify",
        &run,
        aid,
        flavor,
        &[],
    );
    assert_eq!(other.expect("OK").await, "1");
    other.finish().await;
    verify_aid(&store, aid).await.unwrap();
    assert!(is_running(orphan.pid), "the orphaned sleep ended early");
    drop((sleeper, orphan));
}

#[tokio::test(flavor = "current_thread")]
async fn lock_not_inherited_current_thread() {
    lock_not_inherited(Flavor::Current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_not_inherited_multi_thread() {
    lock_not_inherited(Flavor::Multi).await;
}

// ---------------------------------------------------------------------------------------
// 4. The lock excludes other processes, and only on the same aid.

async fn lock_excludes_processes(flavor: Flavor) {
    let (_tmp, run) = run_dir();
    let (one, two) = (aid(1), aid(2));
    let store = open_store(&run);
    let lock = lock_path(&run, one);

    // The parent holds aid 1 while a child asks for it.
    let order = run.join("order-a.log");
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn({
        let (store, order) = (store.clone(), order.clone());
        async move {
            store
                .with_aid(one, async move |_c| {
                    held_tx.send(()).unwrap();
                    release_rx.await.unwrap();
                    append_line(&order, "parent-release");
                    Ok::<_, Error>(())
                })
                .await
        }
    });
    held_rx.await.unwrap();
    let mut kid = spawn_kid(
        "order child",
        "order",
        &run,
        one,
        flavor,
        &[("RUNSTATE_CHILD_FILE", order.display().to_string())],
    );
    kid.expect("TRYING").await;
    // Release only once the kernel shows the child blocked on the lock, or once the child
    // got in anyway, which the order check below catches.
    wait_until("the child waits for the lock", || {
        flock_waiters(&lock) > 0 || !read_lines(&order).is_empty()
    })
    .await;
    release_tx.send(()).unwrap();
    timeout(DEADLOCK, holder).await.unwrap().unwrap().unwrap();
    kid.expect("GOT").await;
    kid.finish().await;
    assert_eq!(read_lines(&order), ["parent-release", "child"]);

    // A child holds aid 1 while the parent asks for it.
    let order = run.join("order-b.log");
    let mut kid = spawn_kid(
        "holding child",
        "hold",
        &run,
        one,
        flavor.other(),
        &[("RUNSTATE_CHILD_FILE", order.display().to_string())],
    );
    kid.expect("HOLDING").await;
    let early = timeout(
        Duration::from_millis(100),
        store.with_aid(one, async |_c| {
            append_line(&order, "parent-early");
            Ok::<_, Error>(())
        }),
    )
    .await;
    assert!(early.is_err(), "got the aid while another process held it");
    let waiter = tokio::spawn({
        let (store, order) = (store.clone(), order.clone());
        async move {
            store
                .with_aid(one, async |_c| {
                    append_line(&order, "parent");
                    Ok::<_, Error>(())
                })
                .await
        }
    });
    wait_until("the parent waits for the lock", || flock_waiters(&lock) > 0).await;
    assert!(read_lines(&order).is_empty());
    kid.stdin.as_mut().unwrap().write_all(b"release\n").unwrap();
    timeout(DEADLOCK, waiter)
        .await
        .expect("the parent never got the aid back: was the abandoned wait's lock kept?")
        .unwrap()
        .unwrap();
    kid.finish().await;
    assert_eq!(read_lines(&order), ["child-release", "parent"]);

    // Different aids: a child takes aid 2, saves and exits while the parent holds aid 1.
    store
        .with_aid(one, async |_c| {
            let mut kid = spawn_kid(
                "child on aid 2",
                "verify",
                &run,
                two,
                flavor,
                &[("RUNSTATE_CHILD_SAVE", "1".into())],
            );
            assert_eq!(kid.expect("OK").await, "1");
            kid.finish().await;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(verify_aid(&store, two).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn lock_excludes_processes_current_thread() {
    lock_excludes_processes(Flavor::Current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_excludes_processes_multi_thread() {
    lock_excludes_processes(Flavor::Multi).await;
}

// ---------------------------------------------------------------------------------------
// 5. with_aid futures dropped at random points, while another process contends.

/// What the cancelled and completed calls of one task imply about the final contents.
#[derive(Default)]
struct Ledger {
    /// Saved by a call that completed, and never a destroy target since.
    present: BTreeSet<InstanceId>,
    /// Destroyed by a call that completed.
    absent: BTreeSet<InstanceId>,
    /// Every id this task tried to save and has not yet tried to destroy.
    live: Vec<InstanceId>,
    completed: u32,
    cancelled: u32,
}

async fn cancel_loop(
    store: AsyncStore<Cfg>,
    aid: Aid,
    mut rng: XorShift,
    rounds: u32,
) -> Result<Ledger, BoxErr> {
    let mut ledger = Ledger::default();
    let pid = std::process::id();
    for _ in 0..rounds {
        let x = State::new(InstanceId::random(), pid, Cfg::small(rng.next_u64()));
        let y = State::new(InstanceId::random(), pid, Cfg::small(rng.next_u64()));
        let mut victims = Vec::new();
        while ledger.live.len() > 12 && victims.len() < 3 {
            let i = rng.below(ledger.live.len() as u64) as usize;
            victims.push(ledger.live.swap_remove(i));
        }
        for v in &victims {
            ledger.present.remove(v);
        }
        let op = store.with_aid(aid, async |c| {
            c.save(&x).await?;
            tokio::task::yield_now().await;
            for v in &victims {
                c.destroy(*v).await?;
            }
            c.save(&y).await?;
            check_states(&c.load_all().await?)?;
            Ok::<_, BoxErr>(())
        });
        // A third of the calls run to the end, so that the ledger has much to check.
        let outcome = match rng.below(3) {
            0 => timeout(Duration::from_micros(rng.below(8000)), op)
                .await
                .ok(),
            1 => poll_then_drop(op, rng.below(150)).await,
            _ => Some(
                timeout(DEADLOCK, op)
                    .await
                    .map_err(|_| "with_aid not granted in time")?,
            ),
        };
        match outcome {
            Some(result) => {
                result?;
                ledger.completed += 1;
                ledger.present.extend([x.id, y.id]);
                ledger.absent.extend(victims);
            }
            None => {
                // Their destroy may not have happened: keep them as targets.
                ledger.cancelled += 1;
                ledger.live.extend(victims);
            }
        }
        ledger.live.extend([x.id, y.id]);
    }
    Ok(ledger)
}

async fn cancellation(flavor: Flavor, seed: u64) {
    let (_tmp, run) = run_dir();
    let aid = aid(9);
    let store = open_store(&run);
    let started = Instant::now();

    let mut churn = spawn_kid(
        "churning child",
        "churn",
        &run,
        aid,
        flavor.other(),
        &[("RUNSTATE_CHILD_SEED", seed.to_string())],
    );
    churn.expect("READY").await;
    let workers = match flavor {
        Flavor::Current => 2,
        Flavor::Multi => 3,
    };
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            tokio::spawn(cancel_loop(
                store.clone(),
                aid,
                XorShift::new(seed + 100 + i),
                200,
            ))
        })
        .collect();
    let mut ledgers = Vec::new();
    for task in tasks {
        let ledger = timeout(DEADLOCK, task)
            .await
            .expect("a cancelling task deadlocked")
            .unwrap()
            .unwrap();
        ledgers.push(ledger);
    }
    // The churning child kept getting the aid through all the cancellations.
    drop(churn.stdin.take());
    let churned = churn.expect("DONE").await;
    churn.finish().await;

    // Another process gets the aid promptly and reads every entry...
    let mut check = spawn_kid(
        "verifier",
        "verify",
        &run,
        aid,
        flavor,
        &[("RUNSTATE_CHILD_NO_FOREIGN", "1".into())],
    );
    let n: usize = check.expect("OK").await.parse().unwrap();
    check.finish().await;
    // ...and so does this one, finding what the completed calls did.
    let all = verify_aid(&store, aid).await.unwrap();
    assert_eq!(all.len(), n);
    let (mut completed, mut cancelled) = (0, 0);
    for ledger in &ledgers {
        for id in &ledger.present {
            assert!(all.contains_key(id), "completed save of {id} is lost");
        }
        for id in &ledger.absent {
            assert!(!all.contains_key(id), "completed destroy of {id} is undone");
        }
        completed += ledger.completed;
        cancelled += ledger.cancelled;
    }
    // Polled zero times or with a zero timeout, a call never completes: cancellation happened.
    assert!(cancelled > 0);
    eprintln!(
        "cancellation({flavor:?}, seed {seed}): {completed} completed, {cancelled} cancelled, \
         {} entries, churn turns {churned}, in {:?}",
        all.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn cancellation_current_thread() {
    cancellation(Flavor::Current, base_seed() + 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_multi_thread() {
    cancellation(Flavor::Multi, base_seed() + 3).await;
}
