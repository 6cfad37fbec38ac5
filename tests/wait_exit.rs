//! `AsyncStore::wait_exit`: it ends when the recorded process is no longer running, and not
//! before; for children and others; at once for a process gone or a pid reused; with a pidfd
//! and with the `/proc` fallback; leaving nothing behind when dropped; hundreds at once for
//! one descriptor each and no thread.
//!
//! The tests that count this process's descriptors and threads each run in a child process
//! of their own (this binary again, with only that test selected), where no other test
//! starts or leaves a thread or opens a file; the others run one at a time (`SERIAL`).

#[allow(unused_macros)]
mod common;

use std::future::Future;
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use runstate::{Aid, AsyncStore, InstanceId, Options, ProcessIdentity, State};
use rustix::process::{Pid, Signal};
use tokio::time::timeout;

use common::{AppConfig, config, no_deadlock, run_dir};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a wait must stay pending while its process runs: long enough that a wait that
/// wrongly ends would have ended (the fallback looks every 40 ms), short enough for CI.
const STILL_RUNNING: Duration = Duration::from_millis(250);

/// The two ways of waiting: a store that uses pidfds and one that polls `/proc`.
fn stores(dir: &std::path::Path) -> [(&'static str, AsyncStore<AppConfig>); 2] {
    [
        ("pidfd", AsyncStore::new(dir)),
        (
            "polling",
            AsyncStore::with_options(dir, Options::new().use_pidfds(false)),
        ),
    ]
}

fn aid() -> Aid {
    Aid::new(11).unwrap()
}

/// The entry of `pid` as the store recorded it: saved, then loaded back, so it carries the
/// process identity whoever fills it in.
async fn recorded(store: &AsyncStore<AppConfig>, pid: u32) -> State<AppConfig> {
    let id = InstanceId::random();
    store
        .with_aid(aid(), async |c| {
            c.save(&State::new(id, pid, config(u64::from(pid)))).await?;
            c.load(id).await
        })
        .await
        .unwrap()
        .expect("just saved")
}

fn sleeper() -> Child {
    Command::new("sleep").arg("30").spawn().unwrap()
}

fn kill(pid: u32) {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, Signal::KILL).unwrap();
}

/// Returns once `pid` has exited and is not yet reaped.
fn until_zombie(pid: u32) {
    let start = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        if stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z')
        {
            return;
        }
        assert!(start.elapsed() < common::DEADLOCK, "{pid} did not exit");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn fds() -> usize {
    count("/proc/self/fd")
}

fn threads() -> usize {
    count("/proc/self/task")
}

/// Panics unless `wait` is still pending after [`STILL_RUNNING`].
async fn assert_pending<F: Future + Unpin>(what: &str, wait: &mut F) {
    assert!(
        timeout(STILL_RUNNING, wait).await.is_err(),
        "{what}: the wait ended while the process runs"
    );
}

/// A child: pending while it runs, done once it is killed (and not yet reaped: a zombie
/// has exited).
async fn a_child_is_awaited_until_it_exits() {
    let dir = run_dir();
    for (mode, store) in stores(dir.path()) {
        let mut child = sleeper();
        let state = recorded(&store, child.id()).await;
        assert!(
            state.process.is_some(),
            "{mode}: the entry records who runs"
        );
        let mut wait = pin!(store.wait_exit(&state));
        assert_pending(mode, &mut wait).await;
        kill(child.id());
        no_deadlock(mode, wait).await.unwrap();
        child.wait().unwrap();
    }
}

/// A process that is not a child of the test: a shell starts it in the background and exits,
/// so it is re-parented away from us and only `/proc` and a pidfd can see it end.
async fn a_process_that_is_not_a_child() {
    let dir = run_dir();
    for (mode, store) in stores(dir.path()) {
        let out = Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success());
        let pid: u32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let parent = stat.rsplit(')').next().unwrap().split_whitespace().nth(1);
        assert_ne!(
            parent,
            Some(std::process::id().to_string().as_str()),
            "{mode}: the background sleep must not be our child"
        );
        let state = recorded(&store, pid).await;
        let mut wait = pin!(store.wait_exit(&state));
        assert_pending(mode, &mut wait).await;
        kill(pid);
        no_deadlock(mode, wait).await.unwrap();
    }
}

/// A process already gone: the wait is ready at its first poll, with or without identity.
async fn a_process_already_gone_returns_at_once() {
    let dir = run_dir();
    for (mode, store) in stores(dir.path()) {
        let mut child = sleeper();
        let mut state = recorded(&store, child.id()).await;
        kill(child.id());
        until_zombie(child.id());
        // A zombie first, then reaped: both count as exited.
        for _ in 0..2 {
            let done = store.wait_exit(&state).now_or_never();
            assert!(matches!(done, Some(Ok(()))), "{mode}: {done:?}");
            child.wait().unwrap();
        }
        state.process = None;
        let done = store.wait_exit(&state).now_or_never();
        assert!(matches!(done, Some(Ok(()))), "{mode}, by pid: {done:?}");
        // No process has pid 0.
        state.pid = 0;
        let done = store.wait_exit(&state).now_or_never();
        assert!(matches!(done, Some(Ok(()))), "{mode}, pid 0: {done:?}");
    }
}

/// A pid that now belongs to another process (the recorded start time or boot differs) is
/// not awaited: the recorded process is gone.
async fn a_reused_pid_is_not_awaited() {
    let dir = run_dir();
    for (mode, store) in stores(dir.path()) {
        let mut child = sleeper();
        let state = recorded(&store, child.id()).await;
        let real = state.process.clone().expect("recorded");
        // The true identity: pending (which shows the checks below are not vacuous).
        assert!(store.wait_exit(&state).now_or_never().is_none(), "{mode}");

        // One tick earlier: outside a time namespace start times are compared exactly.
        let mut earlier: ProcessIdentity = real.clone();
        earlier.start_time -= 1;
        let mut other_boot = real.clone();
        other_boot.boot_id = "00000000-0000-0000-0000-000000000000".into();
        for fake in [earlier, other_boot] {
            let mut ghost = state.clone();
            ghost.process = Some(fake.clone());
            let done = store.wait_exit(&ghost).now_or_never();
            assert!(matches!(done, Some(Ok(()))), "{mode}, {fake:?}: {done:?}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// An entry without identity is awaited by its pid alone.
async fn an_entry_without_identity_is_awaited_by_pid() {
    let dir = run_dir();
    for (mode, store) in stores(dir.path()) {
        let mut child = sleeper();
        let mut state = State::new(InstanceId::random(), child.id(), config(1));
        state.process = None;
        let mut wait = pin!(store.wait_exit(&state));
        assert_pending(mode, &mut wait).await;
        kill(child.id());
        no_deadlock(mode, wait).await.unwrap();
        child.wait().unwrap();
    }
}

/// The future borrows nothing: it can be spawned on the runtime, and run inside a `LocalSet`.
async fn spawned_and_local_waits() {
    let dir = run_dir();
    for (mode, store) in stores(dir.path()) {
        let mut child = sleeper();
        let state = recorded(&store, child.id()).await;
        let spawned = tokio::spawn(store.wait_exit(&state));
        let local = tokio::task::LocalSet::new();
        let mut in_local = pin!(local.run_until(store.wait_exit(&state)));
        assert_pending(mode, &mut in_local).await;
        assert!(!spawned.is_finished(), "{mode}");
        kill(child.id());
        no_deadlock(mode, in_local).await.unwrap();
        no_deadlock(mode, spawned).await.unwrap().unwrap();
        child.wait().unwrap();
    }
}

/// A wait dropped while pending closes its pidfd (or cancels its timer) and leaves no thread.
async fn a_dropped_wait_leaves_nothing_behind() {
    let dir = run_dir();
    for (mode, store) in stores(dir.path()) {
        let mut child = sleeper();
        let state = recorded(&store, child.id()).await;
        let (fds_before, threads_before) = (fds(), threads());
        {
            let mut wait = pin!(store.wait_exit(&state));
            assert_pending(mode, &mut wait).await;
            let held = if mode == "pidfd" { 1 } else { 0 };
            assert_eq!(
                fds(),
                fds_before + held,
                "{mode}: descriptors while waiting"
            );
        }
        assert_eq!(fds(), fds_before, "{mode}: descriptors after the drop");
        assert!(threads() <= threads_before, "{mode}: a thread was left");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// 300 waits at once: one descriptor each with pidfds, none when polling, and no thread per
/// wait either way; all of them end when their processes are killed.
async fn hundreds_of_waits_at_once() {
    const N: usize = 300;
    let dir = run_dir();
    for (mode, store) in stores(dir.path()) {
        let mut children: Vec<Child> = (0..N).map(|_| sleeper()).collect();
        let ids: Vec<(InstanceId, u32)> = children
            .iter()
            .map(|c| (InstanceId::random(), c.id()))
            .collect();
        let states = store
            .with_aid(aid(), async |c| {
                for &(id, pid) in &ids {
                    c.save(&State::new(id, pid, config(u64::from(pid)))).await?;
                }
                let all = c.load_all().await?;
                for &(id, _) in &ids {
                    c.destroy(id).await?;
                }
                Ok::<_, runstate::Error>(all)
            })
            .await
            .unwrap();
        let states: Vec<_> = ids.iter().map(|(id, _)| states[id].clone()).collect();

        let (fds_before, threads_before) = (fds(), threads());
        let mut waits: FuturesUnordered<_> = states.iter().map(|s| store.wait_exit(s)).collect();
        assert!(
            timeout(STILL_RUNNING, waits.next()).await.is_err(),
            "{mode}: a wait ended while its process runs"
        );
        let (fds_during, threads_during) = (fds(), threads());
        let per_wait = if mode == "pidfd" { N } else { 0 };
        assert!(
            (fds_before + per_wait..=fds_before + per_wait + 4).contains(&fds_during),
            "{mode}: {fds_before} descriptors before {N} waits, {fds_during} during"
        );
        assert!(
            threads_during <= threads_before + 2,
            "{mode}: {threads_before} threads before {N} waits, {threads_during} during"
        );

        for child in &children {
            kill(child.id());
        }
        let ended = no_deadlock(mode, waits.collect::<Vec<_>>()).await;
        assert_eq!(ended.len(), N);
        assert!(ended.iter().all(Result::is_ok), "{mode}");
        for child in &mut children {
            child.wait().unwrap();
        }
        assert!(fds() <= fds_before, "{mode}: descriptors left behind");
    }
}

/// `pidfd_open` refuses a thread's id (`EINVAL`), as it refuses everything where pidfds are
/// unavailable: the wait falls back to `/proc`, with no descriptor, and still ends when the
/// thread does.
async fn a_refused_pidfd_falls_back_to_polling() {
    let dir = run_dir();
    let store = AsyncStore::<AppConfig>::new(dir.path());
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        // "<pid>/task/<tid>"
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        let tid: u32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
        tid_tx.send(tid).unwrap();
        let _ = stop_rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    assert_ne!(tid, std::process::id());
    let with_identity = recorded(&store, tid).await;
    let mut by_pid = with_identity.clone();
    by_pid.process = None;
    let fds_before = fds();
    let mut waits = pin!(futures::future::join(
        store.wait_exit(&with_identity),
        store.wait_exit(&by_pid)
    ));
    assert_pending("a thread", &mut waits).await;
    assert_eq!(fds(), fds_before, "no pidfd for a thread");
    drop(stop_tx);
    thread.join().unwrap();
    let (a, b) = no_deadlock("a thread", waits).await;
    a.unwrap();
    b.unwrap();
}

/// Out of file descriptors, a wait fails with an error naming `pidfd_open` and the process;
/// it neither panics nor waits some other way unannounced.
async fn out_of_descriptors_is_an_error() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let dir = run_dir();
    let store = AsyncStore::<AppConfig>::new(dir.path());
    let mut child = sleeper();
    let state = recorded(&store, child.id()).await;
    // The lowest free descriptor number: with the limit there, the next open fails.
    let lowest_free = {
        use std::os::fd::AsRawFd;
        std::fs::File::open("/dev/null").unwrap().as_raw_fd()
    };
    let old = getrlimit(Resource::Nofile);
    let mut low = old;
    low.current = Some(lowest_free as u64);
    setrlimit(Resource::Nofile, low).unwrap();
    let result = store.wait_exit(&state).now_or_never();
    setrlimit(Resource::Nofile, old).unwrap();
    match result {
        Some(Err(runstate::Error::Io { op, path, source })) => {
            assert_eq!(op, "pidfd_open");
            assert_eq!(
                path,
                std::path::Path::new("/proc").join(child.id().to_string())
            );
            assert_eq!(
                source.raw_os_error(),
                Some(rustix::io::Errno::MFILE.raw_os_error())
            );
        }
        other => panic!("expected EMFILE from pidfd_open, got {other:?}"),
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// With `Options::proc_root` at another pid namespace's `/proc` (a fake one here), pidfds
/// would name our namespace's pids: the wait polls the `/proc` it is given instead, even with
/// pidfds on, and ends when that `/proc` shows the process exited, its pid reused, or gone.
async fn a_foreign_proc_is_polled() {
    let dir = run_dir();
    // An identity to edit (ProcessIdentity cannot be built outside the crate): ours.
    let mine = recorded(&AsyncStore::new(dir.path()), std::process::id()).await;
    let mut identity = mine.process.clone().expect("recorded");
    identity.start_time = 424242;
    identity.boot_id = "b".into();

    let proc_root = run_dir();
    let root = proc_root.path();
    std::fs::create_dir_all(root.join("sys/kernel/random")).unwrap();
    std::fs::write(root.join("sys/kernel/random/boot_id"), "b\n").unwrap();
    // A pid that no process of ours has: a pidfd for it would fail at once.
    let pid = 4_000_000;
    let stat = |state: char, start: u64| {
        let middle: Vec<String> = (4..=19).map(|n| n.to_string()).collect();
        let proc_dir = root.join(pid.to_string());
        std::fs::create_dir_all(&proc_dir).unwrap();
        let line = format!("{pid} (app) {state} {} 1 21 {start} 23\n", middle.join(" "));
        std::fs::write(proc_dir.join("stat"), line).unwrap();
    };
    let store: AsyncStore<AppConfig> =
        AsyncStore::with_options(dir.path(), Options::new().proc_root(root));
    let mut state = State::new(InstanceId::random(), pid, config(2));
    state.process = Some(identity);

    let ends: [(&str, &dyn Fn()); 3] = [
        ("exited", &|| stat('Z', 424242)),
        ("reused", &|| stat('S', 515151)),
        ("gone", &|| {
            std::fs::remove_dir_all(root.join(pid.to_string())).unwrap()
        }),
    ];
    for (how, end) in ends {
        stat('S', 424242);
        let mut wait = pin!(store.wait_exit(&state));
        assert_pending(how, &mut wait).await;
        end();
        no_deadlock(how, wait).await.unwrap();
    }
}

/// `both_runtimes!`, but each test holds `SERIAL` from before its runtime is built until
/// after it is gone, since a runtime's own descriptors (epoll, eventfd, sockets) would
/// otherwise come and go under another test's counts.
macro_rules! serial_both_runtimes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn current_thread() {
                    let _serial = super::serial();
                    crate::common::run_current_thread(super::$name());
                }

                #[test]
                fn multi_thread() {
                    let _serial = super::serial();
                    crate::common::run_multi_thread(super::$name());
                }
            }
        )*
    };
}

/// `both_runtimes!`, but each test runs in a child process of its own
/// ([`common::child::isolated`]): it counts the process's threads and descriptors, which
/// any other thread of the process (another test, a blocking-pool thread starting or
/// lingering) would change.
macro_rules! isolated_both_runtimes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn current_thread() {
                    let name = concat!(stringify!($name), "::current_thread");
                    crate::common::child::isolated(name, || {
                        crate::common::run_current_thread(super::$name())
                    });
                }

                #[test]
                fn multi_thread() {
                    let name = concat!(stringify!($name), "::multi_thread");
                    crate::common::child::isolated(name, || {
                        crate::common::run_multi_thread(super::$name())
                    });
                }
            }
        )*
    };
}

isolated_both_runtimes!(
    a_dropped_wait_leaves_nothing_behind,
    hundreds_of_waits_at_once,
    a_refused_pidfd_falls_back_to_polling,
    out_of_descriptors_is_an_error,
);

serial_both_runtimes!(
    a_child_is_awaited_until_it_exits,
    a_process_that_is_not_a_child,
    a_process_already_gone_returns_at_once,
    a_reused_pid_is_not_awaited,
    an_entry_without_identity_is_awaited_by_pid,
    spawned_and_local_waits,
    a_foreign_proc_is_polled,
);
