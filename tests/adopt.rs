//! A supervisor started on the run directory of one that was SIGKILLed while its children
//! ran adopts them: each entry disappears within a moment of its child's exit, not before,
//! and nothing else in the store is lost.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::DEADLOCK;
use runstate::{Aid, AsyncStore, InstanceId, State};
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};

/// The supervisor's config as far as this test needs it; its other fields have defaults.
#[derive(Serialize, Deserialize)]
struct Launch {
    command: Vec<String>,
}

/// A bound on "within a moment": the adopted child's exit to its entry's removal. The wait
/// itself takes microseconds; this is for a loaded CI machine. A supervisor that awaited its
/// adopted children one after another, in listing order, would remove the 1 s child's entry
/// two seconds late.
const MOMENT: Duration = Duration::from_millis(1500);

/// The `supervisor` example, built now.
fn supervisor_binary() -> PathBuf {
    common::example_binary("supervisor")
}

/// One child of the killed supervisor, as its table showed it.
#[derive(Debug)]
struct Orphan {
    pid: u32,
    aid: String,
    id: String,
    /// Its start time (`/proc/<pid>/stat` field 22), so a reuse of its pid is not taken for it.
    start: u64,
}

/// The state letter and start time of `pid`, or `None` if it is gone.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.rsplit(')').next()?.split_whitespace().collect();
    Some((fields[0].chars().next()?, fields[19].parse().ok()?))
}

impl Orphan {
    /// Whether the child has exited: gone, a zombie, or its pid taken by another process.
    fn exited(&self) -> bool {
        match stat(self.pid) {
            Some((state, start)) => state == 'Z' || state == 'X' || start != self.start,
            None => true,
        }
    }

    fn entry(&self, run_dir: &Path) -> PathBuf {
        run_dir.join("state").join(&self.aid).join(&self.id)
    }
}

/// Kills what is left of the orphans if the test fails half-way.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
}

/// Reads the first supervisor's table: the rows after the header, until `n` rows.
fn read_table(child: &mut Child, n: usize) -> Vec<Orphan> {
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.trim_start().starts_with("PID") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let pid: u32 = cols[0].parse().unwrap();
        let start = stat(pid).expect("a child in the table runs").1;
        rows.push(Orphan {
            pid,
            aid: cols[1].to_owned(),
            id: cols[3].to_owned(),
            start,
        });
        if rows.len() == n {
            // Not read to its end: the orphans hold the pipe open as long as they run.
            return rows;
        }
    }
    panic!("the supervisor's output ended before its table");
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn a_restarted_supervisor_adopts_the_children_of_a_killed_one() {
    let binary = supervisor_binary();
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let run_dir = dir.path();

    // Aid 10 gets the 3 s and 2 s children, aid 20 the 1 s one: they exit in the reverse of
    // the order a listing finds them.
    let mut first = Command::new(&binary)
        .arg("--run-dir")
        .arg(run_dir)
        .args(["--sleep-ms", "3000,1000,2000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let orphans = read_table(&mut first, 3);
    let _cleanup = KillOnDrop(orphans.iter().map(|o| o.pid).collect());
    first.kill().unwrap();
    let status = first.wait().unwrap();
    assert!(!status.success(), "killed: {status}");
    for orphan in &orphans {
        assert!(!orphan.exited(), "{orphan:?} outlives its supervisor");
        assert!(orphan.entry(run_dir).exists(), "{orphan:?} is recorded");
    }

    // Beside them, in aid 30: the entry of a process that is gone (pruned), one whose
    // liveness is unknown (left alone), and a corrupt file (left alone).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = AsyncStore::<Launch>::new(run_dir);
    let other = Aid::new(30).unwrap();
    let mut gone = Command::new("sleep").arg("30").spawn().unwrap();
    let (gone_id, unknown_id) = (InstanceId::random(), InstanceId::random());
    // No process has this pid (pid_max is at most 2^22), so no identity is recorded for it.
    let unknown_pid = 4_194_304;
    let launch = |what: &str| Launch {
        command: vec![what.into()],
    };
    rt.block_on(store.with_aid(other, async |c| {
        c.save(&State::new(gone_id, gone.id(), launch("gone")))
            .await?;
        c.save(&State::new(unknown_id, unknown_pid, launch("unknown")))
            .await
    }))
    .unwrap();
    gone.kill().unwrap();
    gone.wait().unwrap();
    let corrupt = InstanceId::random().to_string();
    let other_dir = run_dir.join("state/30");
    std::fs::write(other_dir.join(&corrupt), b"not an entry").unwrap();

    let mut second = Command::new(&binary)
        .arg("--run-dir")
        .arg(run_dir)
        .args(["--sleep-ms", "200"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Drained on a thread, so the supervisor never blocks on a full pipe.
    let mut second_out = second.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        second_out.read_to_string(&mut text).unwrap();
        text
    });

    // Watch each orphan and its entry: the entry may go only once the orphan has exited,
    // and must go within a moment of it.
    let began = Instant::now();
    let mut exited: Vec<Option<Instant>> = vec![None; orphans.len()];
    let mut removed: Vec<Option<Instant>> = vec![None; orphans.len()];
    while removed.iter().any(Option::is_none) {
        assert!(began.elapsed() < DEADLOCK, "entries left: {removed:?}");
        for (n, orphan) in orphans.iter().enumerate() {
            if removed[n].is_some() {
                continue;
            }
            // The entry first, then the process: an entry missing while the process still
            // runs afterwards was removed while it ran.
            let entry_gone = !orphan.entry(run_dir).exists();
            let now = Instant::now();
            if orphan.exited() {
                exited[n].get_or_insert(now);
            }
            if entry_gone {
                assert!(
                    exited[n].is_some(),
                    "the entry of {orphan:?} was removed while it ran"
                );
                removed[n] = Some(now);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for (n, orphan) in orphans.iter().enumerate() {
        let late = removed[n].unwrap() - exited[n].unwrap();
        println!("pid {}: entry removed {late:?} after its exit", orphan.pid);
        assert!(
            late < MOMENT,
            "the entry of {orphan:?} was removed {late:?} after its exit"
        );
    }

    let status = second.wait().unwrap();
    let out = reader.join().unwrap();
    assert!(status.success(), "{status}\n{out}");
    for orphan in &orphans {
        assert!(
            out.contains(&format!("adopted: pid {} (aid {})", orphan.pid, orphan.aid)),
            "{out}"
        );
    }
    assert!(
        out.contains(&format!("removed a stale entry: pid {}", gone.id())),
        "{out}"
    );
    assert!(
        out.contains(&format!("left alone: pid {unknown_pid}")),
        "{out}"
    );
    // Nothing else lost: aid 30 keeps its unknown entry and the corrupt file, and the
    // supervisors' aids are empty.
    assert_eq!(
        names(&other_dir),
        BTreeSet::from([unknown_id.to_string(), corrupt]),
    );
    for aid in ["10", "20"] {
        assert_eq!(names(&run_dir.join("state").join(aid)), BTreeSet::new());
    }
}
