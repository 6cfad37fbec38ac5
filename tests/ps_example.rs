//! Runs the `ps` example against a real store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use runstate::{Aid, AsyncStore, InstanceId, State};
use serde::Serialize;

/// A config of the launcher's own type; ps reads it without knowing it.
#[derive(Serialize, serde::Deserialize)]
struct Config {
    command: Vec<String>,
    other: u32,
}

/// The `ps` example, built now, once per run of this file.
fn ps_binary() -> &'static Path {
    static PS: OnceLock<PathBuf> = OnceLock::new();
    PS.get_or_init(|| common::example_binary("ps"))
}

fn ps(args: &[&str]) -> (String, String) {
    let out = Command::new(ps_binary())
        .args(args)
        .output()
        .expect("the ps example runs");
    assert!(
        out.status.success(),
        "ps {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn ps_lists_statuses_reports_corrupt_entries_and_prunes() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let run_dir = dir.path().to_str().unwrap();
    let (stdout, _) = ps(&["--run-dir", run_dir]);
    assert!(stdout.contains("no store"), "{stdout}");

    let store = AsyncStore::<Config>::new(dir.path());
    let mut alive = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let cfg = |cmd: &str| Config {
        command: vec![cmd.into(), "x".into()],
        other: 1,
    };
    let (alive_id, gone_id) = (InstanceId::random(), InstanceId::random());
    store
        .with_aid(Aid::new(4).unwrap(), async |c| {
            c.save(&State::new(alive_id, alive.id(), cfg("sleep")))
                .await?;
            c.save(&State::new(gone_id, gone.id(), cfg("true"))).await
        })
        .await
        .unwrap();
    gone.wait().unwrap();
    std::fs::write(
        dir.path()
            .join("state/4")
            .join(InstanceId::random().to_string()),
        b"junk",
    )
    .unwrap();

    let (table, errors) = ps(&["--run-dir", run_dir]);
    let line = |id: InstanceId| {
        table
            .lines()
            .find(|l| l.starts_with(&short(id)))
            .unwrap()
            .to_owned()
    };
    assert!(
        table.starts_with("INSTANCE ID     AID     PID STATUS"),
        "{table}"
    );
    // Short ids by default, as docker's.
    assert!(!table.contains(&alive_id.to_string()), "{table}");
    assert!(
        line(alive_id).contains(" alive ") && line(alive_id).ends_with("sleep x"),
        "{table}"
    );
    assert!(
        line(gone_id).contains(" dead ") && line(gone_id).ends_with("true x"),
        "{table}"
    );
    assert!(errors.contains("corrupt entry"), "{errors}");

    let (json, _) = ps(&["--run-dir", run_dir, "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 2);
    let alive_row = rows
        .iter()
        .find(|r| r["instance"] == alive_id.to_string())
        .unwrap();
    assert_eq!(alive_row["status"], "alive");
    assert_eq!(alive_row["aid"], 4);
    assert_eq!(alive_row["command"], "sleep x");

    let (after, errors) = ps(&["--run-dir", run_dir, "--prune"]);
    assert!(errors.contains("pruned 1 dead entry"), "{errors}");
    assert!(
        after.contains(&short(alive_id)) && !after.contains(&short(gone_id)),
        "{after}"
    );

    alive.kill().unwrap();
    alive.wait().unwrap();
}

/// A `ps --watch` process, killed and reaped however the test ends, so that a failing test
/// leaves none behind.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first 12 hex digits of `id`, as ps shows it by default.
fn short(id: InstanceId) -> String {
    id.to_string()[..12].to_owned()
}

/// `ps --watch` with stdout piped: the table once, then one marked line per change, from
/// another process's saves, replaces and destroys.
#[tokio::test]
async fn ps_watch_prints_one_line_per_change() {
    use std::io::BufRead as _;
    use std::process::Stdio;

    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let store = AsyncStore::<Config>::new(dir.path());
    let aid = Aid::new(6).unwrap();
    let cfg = |cmd: &str| Config {
        command: vec![cmd.into()],
        other: 2,
    };
    let old = InstanceId::random();
    store
        .with_aid(aid, async |c| {
            c.save(&State::new(old, std::process::id(), cfg("listed")))
                .await
        })
        .await
        .unwrap();

    let mut ps = Reap(
        Command::new(ps_binary())
            .args(["--run-dir", dir.path().to_str().unwrap(), "--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = ps.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(30), lines.recv())
            .await
            .expect("ps --watch printed nothing for 30 s")
            .expect("ps --watch ended")
    };
    assert!(next().await.starts_with("  INSTANCE ID     AID"));
    let listed = next().await;
    assert!(
        listed.starts_with("  ") && listed.contains(&short(old)) && listed.ends_with("listed"),
        "{listed}"
    );

    let new = InstanceId::random();
    store
        .with_aid(aid, async |c| {
            c.save(&State::new(new, std::process::id(), cfg("started")))
                .await?;
            c.replace(&State::new(new, std::process::id(), cfg("running")))
                .await?;
            c.destroy(old).await
        })
        .await
        .unwrap();
    let saved = next().await;
    assert!(
        saved.starts_with("+ ") && saved.contains(&short(new)),
        "{saved}"
    );
    let replaced = next().await;
    assert!(
        replaced.starts_with("~ ")
            && replaced.contains(&short(new))
            && replaced.ends_with("running"),
        "{replaced}"
    );
    let gone = next().await;
    // A destroyed instance's row says so, whatever its process is doing.
    assert!(
        gone.starts_with("- ") && gone.contains(&short(old)) && gone.contains(" gone "),
        "{gone}"
    );
    assert!(!gone.contains(" alive "), "{gone}");
}

/// Reads `ps`'s stdout lines on a thread of their own, to wait for with a time limit.
fn lines_of(stdout: std::process::ChildStdout) -> impl AsyncFnMut() -> String {
    use std::io::BufRead as _;
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    async move || {
        tokio::time::timeout(std::time::Duration::from_secs(60), lines.recv())
            .await
            .expect("ps --watch printed nothing for 60 s")
            .expect("ps --watch ended")
    }
}

/// `ps --watch` started before anything was ever saved waits for the store, then sees the
/// first save.
#[tokio::test]
async fn ps_watch_started_first_sees_the_first_save() {
    use std::process::Stdio;

    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut ps = Reap(
        Command::new(ps_binary())
            .args(["--run-dir", dir.path().to_str().unwrap(), "--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut next = lines_of(ps.0.stdout.take().unwrap());
    // Its first word on stderr: waiting, not giving up.
    let mut stderr = std::io::BufReader::new(ps.0.stderr.take().unwrap());
    let mut said = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut said).unwrap();
    assert!(said.contains("waiting"), "{said}");
    assert!(ps.0.try_wait().unwrap().is_none(), "ps --watch exited");

    let store = AsyncStore::<Config>::new(dir.path());
    let id = InstanceId::random();
    let config = Config {
        command: vec!["first".into()],
        other: 3,
    };
    store
        .save(
            Aid::new(2).unwrap(),
            &State::new(id, std::process::id(), config),
        )
        .await
        .unwrap();
    assert!(next().await.starts_with("  INSTANCE ID"));
    // Listed if the store appeared with the entry in it, else reported as saved.
    let first = next().await;
    assert!(
        (first.starts_with("+ ") || first.starts_with("  "))
            && first.contains(&short(id))
            && first.ends_with("first"),
        "{first}"
    );
}

/// `--aid`, `-q`, `--no-trunc`, and `--json` with whole ids.
#[tokio::test]
async fn ps_filters_by_aid_and_prints_short_or_whole_ids() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let run_dir = dir.path().to_str().unwrap();
    let (stdout, _) = ps(&["--run-dir", run_dir, "-q"]);
    assert_eq!(stdout, "", "no store, no ids");

    let store = AsyncStore::<Config>::new(dir.path());
    let (in_3, in_5) = (InstanceId::random(), InstanceId::random());
    let config = |n| Config {
        command: vec!["c".into()],
        other: n,
    };
    let me = std::process::id();
    store
        .save(Aid::new(3).unwrap(), &State::new(in_3, me, config(3)))
        .await
        .unwrap();
    store
        .save(Aid::new(5).unwrap(), &State::new(in_5, me, config(5)))
        .await
        .unwrap();

    let (ids, _) = ps(&["--run-dir", run_dir, "-q"]);
    assert_eq!(ids, format!("{}\n{}\n", short(in_3), short(in_5)));
    let (ids, _) = ps(&["--run-dir", run_dir, "-q", "--no-trunc"]);
    assert_eq!(ids, format!("{in_3}\n{in_5}\n"));
    let (ids, _) = ps(&["--run-dir", run_dir, "--quiet", "--aid", "5"]);
    assert_eq!(ids, format!("{}\n", short(in_5)));

    let (table, _) = ps(&["--run-dir", run_dir, "--aid", "3"]);
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("{}      3 ", short(in_3))),
        "{table}"
    );
    let (table, _) = ps(&["--run-dir", run_dir, "--no-trunc"]);
    assert!(
        table.starts_with(&format!("{:<32}    AID", "INSTANCE ID")),
        "{table}"
    );
    assert!(table.contains(&format!("{in_3}      3 ")), "{table}");
    let (empty, _) = ps(&["--run-dir", run_dir, "--aid", "9"]);
    assert!(empty.starts_with("no instances"), "{empty}");

    let (json, _) = ps(&["--run-dir", run_dir, "--json", "--aid", "5"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["instance"], in_5.to_string());
    assert_eq!(rows[0]["aid"], 5);

    let refused = Command::new(ps_binary())
        .args(["--run-dir", run_dir, "--aid", "10000"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid aid"));
}
