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
            .find(|l| l.contains(&id.to_string()))
            .unwrap()
            .to_owned()
    };
    assert!(table.starts_with("    PID   AID STATUS"), "{table}");
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
        after.contains(&alive_id.to_string()) && !after.contains(&gone_id.to_string()),
        "{after}"
    );

    alive.kill().unwrap();
    alive.wait().unwrap();
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

    let mut ps = Command::new(ps_binary())
        .args(["--run-dir", dir.path().to_str().unwrap(), "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = ps.stdout.take().unwrap();
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
    assert!(next().await.starts_with("      PID   AID STATUS"));
    let listed = next().await;
    assert!(
        listed.starts_with("  ") && listed.contains(&old.to_string()) && listed.ends_with("listed"),
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
        saved.starts_with("+ ") && saved.contains(&new.to_string()),
        "{saved}"
    );
    let replaced = next().await;
    assert!(
        replaced.starts_with("~ ")
            && replaced.contains(&new.to_string())
            && replaced.ends_with("running"),
        "{replaced}"
    );
    let gone = next().await;
    assert!(
        gone.starts_with("- ") && gone.contains(&old.to_string()),
        "{gone}"
    );

    ps.kill().unwrap();
    ps.wait().unwrap();
}
