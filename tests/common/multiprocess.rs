//! The harness of the `multiprocess_*` suites: entries whose content can be checked, the
//! children they spawn and the roles those play.
//!
//! A child is the suite's test binary re-run on its `child_process` test in a
//! [`role`](super::child::role), with `RUNSTATE_CHILD_*` variables saying the rest
//! ([`spawn_kid`]); `child_process` calls [`child_main`], which does nothing outside a role,
//! so a plain `cargo test` is unaffected.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::checked::{Filled, read_all};
use super::child::{DEADLOCK, Flavor, Kid, child_var, role, role_command, say};
use super::{Checked, XorShift, foreign_names};
use futures::TryStreamExt;
use runstate::{Aid, AsyncStore, Cursor, Error, InstanceId, Options, State};
use tokio::time::timeout;

pub type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// The test that children run.
pub const CHILD_TEST: &str = "child_process";
/// Entries here are up to 500 KiB; the cap leaves room.
pub const MAX_ENTRY: u64 = 2 << 20;
/// How long the `sleep` children would run: well past [`DEADLOCK`], so that a lock kept by
/// one of them shows as a timeout, not as a slow success. They are killed at the end.
pub const SLEEP_SECS: &str = "120";
/// The counter's fixed instance id.
pub const COUNTER: InstanceId = InstanceId::from_bytes([0xc0; 16]);

pub fn open_store(run_dir: &Path) -> AsyncStore<Cfg> {
    AsyncStore::with_options(run_dir, Options::new().max_entry_size(MAX_ENTRY))
}

pub fn run_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let run = tmp.path().join("run");
    (tmp, run)
}

// ---------------------------------------------------------------------------------------
// Entries whose content can be checked.

/// The suites' checked config ([`Filled`]); owner 0, as only the content is checked here.
pub type Cfg = Filled;

impl Filled {
    pub fn counter(value: u64) -> Cfg {
        Cfg::new(0, value, 0)
    }

    /// A 200-500 KiB config.
    pub fn big(seq: u64) -> Cfg {
        Cfg::new(0, seq, (200 * 1024 + seq % (300 * 1024)) as usize)
    }

    pub fn small(seq: u64) -> Cfg {
        Cfg::new(0, seq, (seq % 2048) as usize)
    }
}

/// Takes the aid, bounded by [`DEADLOCK`], reads every entry in each way the cursor offers
/// and checks that they agree and that every config is intact.
pub async fn verify_aid(
    store: &AsyncStore<Cfg>,
    aid: Aid,
) -> Result<BTreeMap<InstanceId, State<Cfg>>, BoxErr> {
    let read = store.with_aid(aid, async |c| read_all(c).await);
    let all = timeout(DEADLOCK, read)
        .await
        .map_err(|_| format!("with_aid({aid}) not granted within {DEADLOCK:?}"))??;
    Ok(all)
}

pub fn lock_path(run_dir: &Path, aid: Aid) -> PathBuf {
    run_dir.join("state").join(format!("{aid}.lock"))
}

pub fn append_line(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

pub fn read_lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// The base seed: `RUNSTATE_SEED` if set, else a fixed one (see `common::seed`).
pub fn base_seed() -> u64 {
    super::child::base_seed(0x5eed_2024)
}

// ---------------------------------------------------------------------------------------
// Processes.

/// A child running this binary's `child_process` test in `role` on `aid`, with `extra`
/// variables; its stdin is a pipe that [`Kid::finish`] closes.
pub fn spawn_kid(
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
    super::child::spawn_kid(what, cmd)
}

/// Polls `done` every 2 ms until it is true; panics after [`DEADLOCK`].
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLOCK, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether process `pid` has `path` open (compared by device and inode).
pub fn has_open(pid: u32, path: &Path) -> bool {
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
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// Kills the `sleep` a test started, by its pid, however the test ends.
pub struct Sleeper {
    pub pid: u32,
    pub child: Option<std::process::Child>,
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

pub fn spawn_sleep() -> std::process::Child {
    // No inherited stdio: a pipe kept open by the sleep would hold up the reader.
    std::process::Command::new("sleep")
        .arg(SLEEP_SECS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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

/// The body of each `multiprocess_*` suite's `child_process` test, the entry point of the
/// children its tests spawn: plays the [`role`] this process was started in, and does
/// nothing outside one.
pub fn child_main() {
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
pub async fn increment(c: &mut Cursor<Cfg>) -> Result<(), BoxErr> {
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

pub async fn increment_loop(store: AsyncStore<Cfg>, aid: Aid, times: u64) -> Result<(), BoxErr> {
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
    let mark = lock_path(&env.dir, env.aid);
    let pid = std::process::id();
    say("READY");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        store
            .with_aid(env.aid, async |c| {
                // A named temporary file as the store's writes make one: the lock file
                // marked first, cleared once the file is gone (docs/format.md, Publishing).
                let temp = (rng.below(2) == 0).then(|| {
                    std::fs::write(&mark, [1u8]).unwrap();
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
                    std::fs::write(&mark, b"").unwrap();
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
