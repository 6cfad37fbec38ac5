//! Liveness across time namespaces: `/proc/<pid>/stat` shows start times shifted by the
//! reader's boottime offset, so an entry saved inside `unshare --time --boottime 100000`
//! must still read as alive outside, and the reverse, and `prune_dead` must keep it.
//!
//! The other side runs this binary again (selecting `child_process`) under `unshare`. The
//! tests are skipped, saying why, where the kernel has no time namespaces or none can be
//! made (neither as root nor in a user namespace).

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::child::{Kid, child_var, role, say, wrapped_role_command};
use runstate::{Aid, AsyncStore, Error, InstanceId, Liveness, State};

const CHILD_TEST: &str = "child_process";
/// The boottime offset of the namespace, in seconds, as in the issue.
const OFFSET: &str = "100000";

fn run_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let run = tmp.path().join("run");
    (tmp, run)
}

/// The `unshare` arguments that run a command in a new time namespace with a boottime
/// offset, or why there are none.
fn time_namespace() -> Result<Vec<&'static str>, String> {
    if !Path::new("/proc/self/ns/time").exists() {
        return Err("this kernel has no time namespaces (no /proc/self/ns/time)".into());
    }
    let plain = vec!["--time", "--boottime", OFFSET];
    let in_user_ns = vec!["--user", "--map-root-user", "--time", "--boottime", OFFSET];
    let mut why = Vec::new();
    for args in [plain, in_user_ns] {
        match Command::new("unshare").args(&args).arg("true").output() {
            Ok(out) if out.status.success() => return Ok(args),
            Ok(out) => why.push(format!(
                "unshare {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => why.push(format!("unshare: {e}")),
        }
    }
    Err(why.join("; "))
}

/// This binary's `child_process` in `role`, inside a new time namespace.
fn spawn_inside(unshare: &[&str], role: &str, run_dir: &Path, aid: Aid) -> Kid {
    let wrapper: Vec<&str> = std::iter::once("unshare")
        .chain(unshare.iter().copied())
        .collect();
    let mut cmd = wrapped_role_command(&wrapper, CHILD_TEST, role);
    cmd.env("RUNSTATE_TIMENS_DIR", run_dir)
        .env("RUNSTATE_TIMENS_AID", aid.to_string())
        .stdin(Stdio::piped());
    common::child::spawn_kid(format!("{role} in a time namespace"), cmd)
}

/// Field 22 of `/proc/<pid>/stat`, as this process reads it.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

async fn load(store: &AsyncStore<u8>, aid: Aid, id: InstanceId) -> Option<State<u8>> {
    store
        .with_aid_shared(aid, async |c| c.load(id).await)
        .await
        .unwrap()
}

/// A supervisor inside the namespace saves its own entry; outside, it is alive, recorded in
/// this (the host's) clock, and not pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_inside_a_time_namespace_is_alive_outside() {
    let unshare = match time_namespace() {
        Ok(args) => args,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let (_tmp, run) = run_dir();
    let aid = Aid::new(1).unwrap();
    let store = AsyncStore::<u8>::new(&run);
    let mut kid = spawn_inside(&unshare, "save", &run, aid);
    let saved = kid.expect("SAVED").await;
    let (id, pid) = saved.split_once(' ').unwrap();
    let (id, pid): (InstanceId, u32) = (id.parse().unwrap(), pid.parse().unwrap());

    let state = load(&store, aid, id).await.expect("the entry was saved");
    let pruned = store.prune_dead().await.unwrap();
    assert!(pruned.is_empty(), "a live entry was pruned: {pruned:?}");
    assert_eq!(store.liveness(&state).await, Liveness::Alive);
    assert!(load(&store, aid, id).await.is_some());
    let recorded = state.process.as_ref().map(|p| p.start_time);
    assert_eq!(
        recorded,
        Some(start_time(pid)),
        "recorded in the host's clock"
    );
    kid.finish().await;
}

/// An entry saved outside for a running process is alive inside the namespace, and a
/// supervisor there does not prune it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_outside_is_alive_inside_a_time_namespace() {
    let unshare = match time_namespace() {
        Ok(args) => args,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let (_tmp, run) = run_dir();
    let aid = Aid::new(2).unwrap();
    let store = AsyncStore::<u8>::new(&run);
    let id = InstanceId::random();
    store
        .with_aid(aid, async |c| {
            c.save(&State::new(id, std::process::id(), 2)).await
        })
        .await
        .unwrap();
    let mut kid = spawn_inside(&unshare, "check", &run, aid);
    assert_eq!(kid.expect("LIVENESS").await, format!("{id} alive"));
    assert_eq!(kid.expect("PRUNED").await, "0");
    kid.finish().await;
    assert!(
        load(&store, aid, id).await.is_some(),
        "the entry is still there"
    );
}

/// Not a test of its own: the entry point of the processes the other tests run inside a
/// time namespace. Outside a [`role`] it does nothing.
#[test]
fn child_process() {
    let Some(role) = role() else {
        return;
    };
    let dir = PathBuf::from(child_var("RUNSTATE_TIMENS_DIR"));
    let aid: Aid = child_var("RUNSTATE_TIMENS_AID").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = AsyncStore::<u8>::new(&dir);
        match role.as_str() {
            "save" => {
                let id = InstanceId::random();
                let me = std::process::id();
                store
                    .with_aid(aid, async |c| c.save(&State::new(id, me, 1)).await)
                    .await
                    .unwrap();
                say(format!("SAVED {id} {me}"));
                // Lives until the parent closes stdin.
                let mut rest = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest).unwrap();
            }
            "check" => {
                let all = store
                    .with_aid_shared(aid, async |c| c.load_all().await)
                    .await
                    .unwrap();
                for (id, state) in &all {
                    say(format!("LIVENESS {id} {}", store.liveness(state).await));
                }
                let pruned = store.prune_dead().await.unwrap();
                say(format!("PRUNED {}", pruned.len()));
            }
            other => panic!("unknown role {other}"),
        }
        store.close().await?;
        Ok::<_, Error>(())
    })
    .unwrap();
}
