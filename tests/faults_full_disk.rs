//! A full disk: under a file size limit, saves that cannot be written fail with the OS's
//! error (EFBIG) and leave no partial entry and no temporary file; what was saved before
//! stays whole, the hold goes on or ends cleanly, and the aid is free and writable after.
//!
//! The child is this very test binary, run again with only the `fault_child` test selected
//! in a role, through a shell that ignores SIGXFSZ (the harness is in
//! `tests/common/child.rs`). Outside a role `fault_child` passes at once, so a plain
//! `cargo test` is unaffected.

// Only the helpers are used here, not the both_runtimes! macro.
#[allow(unused_macros)]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, UNIX_EPOCH};

use common::checked::{Fail, Filled, read_all};
use common::child::{Flavor, child_var, role, say, spawn_kid, wrapped_role_command};
use common::{aid, foreign_names, pid};
use futures::TryStreamExt;
use runstate::{Aid, AsyncStore, Error, InstanceId, State};

type Store = AsyncStore<Cfg>;

/// The suites' checked config: `owner` says which process or task saved it.
type Cfg = Filled;

/// The test that children run.
const CHILD_TEST: &str = "fault_child";

/// The environment of a child: the run directory and its runtime.
fn child_env(cmd: &mut std::process::Command, run_dir: &Path, flavor: Flavor) {
    cmd.env("RUNSTATE_CHILD_DIR", run_dir)
        .env("RUNSTATE_CHILD_FLAVOR", flavor.name())
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
    common::child::exit_on_panic();
    let dir = PathBuf::from(child_var("RUNSTATE_CHILD_DIR"));
    let flavor = Flavor::from_name(&child_var("RUNSTATE_CHILD_FLAVOR"));
    flavor.runtime().block_on(async {
        match role.as_str() {
            "full_disk" => child_full_disk(&dir).await,
            other => panic!("unknown role {other}"),
        }
    });
}

// ---------------------------------------------------------------------------------------
// A full disk: saves that cannot be written fail cleanly and leave nothing behind.

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
    let shell = ["sh", "-c", r#"trap '' XFSZ; exec "$0" "$@""#];
    let mut cmd = wrapped_role_command(&shell, CHILD_TEST, "full_disk");
    child_env(&mut cmd, &run_dir, flavor);
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
