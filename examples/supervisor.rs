//! A tiny supervisor: it starts three programs, records each one in the store while it runs,
//! and removes its entry when it exits.
//!
//! ```text
//! cargo run --example supervisor                  # a fresh store in a temporary directory
//! cargo run --example supervisor -- --run-dir DIR # the store under DIR
//! ```
//!
//! Started on the run directory of a supervisor that was killed while its children ran, it
//! adopts them: it awaits each one's exit with `AsyncStore::wait_exit` (they are not its
//! children, so it cannot `wait` for them) and destroys its entry then, and it prunes the
//! entries whose process is already gone.
//!
//! A real launcher would start sandboxed programs; `sleep` keeps the demo short.

#[path = "shared/launch_config.rs"]
mod launch_config;

use std::collections::BTreeMap;
use std::error::Error;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::future::{FutureExt, LocalBoxFuture};
use futures::stream::FuturesUnordered;
use runstate::{Aid, AsyncStore, InstanceId, Liveness, State};
use tempfile::TempDir;
use tokio::process::Command;

use launch_config::{LaunchConfig, SandboxFlags};

const USAGE: &str = "\
usage: supervisor [--run-dir DIR] [--sleep-ms MS,MS,...]

Starts three short `sleep` processes, records each one in a runstate store while it
runs, and removes its entry when it exits, printing a ps-style table at every step.
In a store left by a supervisor that was killed, it first removes the entries whose
process is gone and adopts the others: it awaits their exit and then removes them too.

options:
  --run-dir DIR        use the store under DIR (made if missing, left in place
                       afterwards); by default a fresh temporary directory, under
                       /dev/shm if it exists
  --sleep-ms MS,...    start one `sleep` per value, of that many milliseconds,
                       instead of the default 3000,2000,1000
  -h, --help           print this help";

/// The store of this supervisor: one entry per running child, with its launch config.
type Store = AsyncStore<LaunchConfig>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let (run_dir, sleep_ms) = match parse_args(std::env::args_os().skip(1)) {
        Ok(Args::Help) => {
            println!("{USAGE}");
            return Ok(());
        }
        Ok(Args::Run { run_dir, sleep_ms }) => (run_dir, sleep_ms),
        Err(message) => {
            eprintln!("supervisor: {message}\n\n{USAGE}");
            std::process::exit(2);
        }
    };

    // `_temp` deletes the temporary directory when main returns, so keep it alive until then.
    let (_temp, run_dir) = match run_dir {
        Some(dir) => (None, dir),
        None => {
            let temp = fresh_temp_dir()?;
            let dir = temp.path().to_owned();
            (Some(temp), dir)
        }
    };
    println!("store under {}\n", run_dir.display());

    // No I/O yet: the store makes its directories on first use.
    let store = Store::new(&run_dir);

    // A supervisor killed earlier may have left entries of children that died with it.
    // Entries record each child's start time and boot, so a reused pid does not look alive.
    for (aid, ghost) in store.prune_dead().await? {
        println!(
            "removed a stale entry: pid {} (aid {aid}), `{}`",
            ghost.pid,
            ghost.config.command.join(" ")
        );
    }

    // Each instance's end, as a future; polled together, they finish in exit order. The
    // futures borrow nothing, so each carries its own state.
    let mut running = FuturesUnordered::new();

    // The children of a killed supervisor outlive it: adopt them, awaiting each one's exit
    // to destroy its entry then.
    adopt(&store, &mut running).await?;

    // Two instances of app 10 and one of app 20, started longest first so that they exit in
    // the opposite order.
    let plan = [
        (
            10,
            3,
            SandboxFlags {
                share_net: true,
                ..SandboxFlags::default()
            },
        ),
        (
            20,
            2,
            SandboxFlags {
                share_pulse: true,
                map_real_uid: true,
                ..SandboxFlags::default()
            },
        ),
        (10, 1, SandboxFlags::default()),
    ];
    let durations: Vec<String> = match &sleep_ms {
        Some(list) => list.iter().map(|&ms| seconds(ms)).collect(),
        None => plan.iter().map(|(_, secs, _)| secs.to_string()).collect(),
    };

    for (n, secs) in durations.into_iter().enumerate() {
        // More children than the plan has take its aids and flags again, in turn.
        let (aid, _, flags) = plan[n % plan.len()];
        let aid = Aid::new(aid)?;
        let config = LaunchConfig {
            command: vec!["sleep".into(), secs],
            env: BTreeMap::from([
                ("LANG".into(), "C.UTF-8".into()),
                ("DEMO_APP".into(), aid.to_string()),
            ]),
            cwd: (aid.get() == 20).then(|| PathBuf::from("/")),
            flags,
        };

        let mut command = Command::new(&config.command[0]);
        command.args(&config.command[1..]).envs(&config.env);
        if let Some(cwd) = &config.cwd {
            command.current_dir(cwd);
        }
        // If we bail out with `?` below, the child must not outlive the supervisor: an
        // unrecorded child is one nobody will ever clean up.
        let mut child = command.kill_on_drop(true).spawn()?;
        // The pid is part of the entry, so the entry can only be saved once the child runs.
        let pid = child
            .id()
            .ok_or("the child exited before its pid was read")?;

        let state = State::new(InstanceId::random(), pid, config);
        // Only this aid is locked, and only for the time of the save.
        store
            .with_aid(aid, async |cursor| cursor.save(&state).await)
            .await?;

        running.push(
            async move {
                let status = child.wait().await;
                (aid, state, Ended::Child(status))
            }
            .boxed_local(),
        );
    }

    print_table(&store).await?;

    while let Some((aid, state, ended)) = running.next().await {
        let command = state.config.command.join(" ");
        let age = uptime(state.time.elapsed().unwrap_or_default());
        match ended {
            Ended::Child(status) => {
                let status = status?;
                println!(
                    "\n`{command}` (pid {}) exited after {age}: {status}",
                    state.pid
                );
            }
            Ended::Adopted(done) => {
                done?;
                // Not our child: its parent (or init) collects the exit status.
                println!(
                    "\nadopted `{command}` (pid {}) exited after {age}",
                    state.pid
                );
            }
        }
        // Forget the instance, and learn in the same locked step how many of its app remain.
        let (existed, left) = store
            .with_aid(aid, async |cursor| {
                let existed = cursor.destroy(state.id).await?;
                Ok::<_, runstate::Error>((existed, cursor.len().await?))
            })
            .await?;
        if existed {
            println!("entry destroyed; aid {aid} has {left} left");
        } else {
            // Someone else (a `ps --prune`, say) removed it first: nothing left to do.
            println!("its entry was already gone; aid {aid} has {left} left");
        }
        print_table(&store).await?;
    }

    // An aid keeps its directory (and lock file) after its last instance is gone, so both
    // aids are still listed.
    let aids: Vec<String> = store.aids().await?.iter().map(Aid::to_string).collect();
    println!("\naids in the store: {}", aids.join(", "));

    // Optional (dropping the store closes its files too), but it waits for any work still in
    // flight and turns later use of the store or its clones into `Error::Closed`.
    store.close().await?;
    Ok(())
}

/// How an instance ended: a child of ours, with its status, or one adopted from a killed
/// supervisor, whose status only its parent can collect.
enum Ended {
    Child(std::io::Result<ExitStatus>),
    Adopted(Result<(), runstate::Error>),
}

/// The instances still running, each as the future of its end.
type Running = FuturesUnordered<LocalBoxFuture<'static, (Aid, State<LaunchConfig>, Ended)>>;

/// Adopts the instances that an earlier supervisor left in the store (run after
/// `prune_dead`, so those are the ones still running): each one's exit is awaited in
/// `running`. Entries whose liveness cannot be told are left alone, as `prune_dead` leaves
/// them.
async fn adopt(store: &Store, running: &mut Running) -> Result<(), runstate::Error> {
    let mut entries = pin!(store.entries());
    while let Some(item) = entries.next().await {
        let (aid, state) = match item {
            Ok(entry) => entry,
            Err(runstate::Error::Corrupt { path, kind }) => {
                eprintln!("skipping {}: {kind}", path.display());
                continue;
            }
            Err(e) => return Err(e),
        };
        let command = state.config.command.join(" ");
        if store.liveness(&state).await == Liveness::Unknown {
            println!(
                "left alone: pid {} (aid {aid}), `{command}`, whose liveness is unknown",
                state.pid
            );
            continue;
        }
        println!(
            "adopted: pid {} (aid {aid}), `{command}`, started by an earlier supervisor; \
             awaiting its exit",
            state.pid
        );
        // A pidfd in the reactor: no thread per instance, and no polling.
        let exit = store.wait_exit(&state);
        running.push(async move { (aid, state, Ended::Adopted(exit.await)) }.boxed_local());
    }
    Ok(())
}

/// Prints every entry of the store as a ps-style table, or "no instances running".
async fn print_table(store: &Store) -> Result<(), runstate::Error> {
    let now = SystemTime::now();
    let mut rows = Vec::new();
    // Lazy: aid by aid, each under its shared lock (readers do not block each other), files
    // read in batches off the runtime's workers and decoded one at a time as taken.
    let mut entries = pin!(store.entries());
    while let Some(item) = entries.next().await {
        match item {
            Ok((aid, state)) => rows.push(format!(
                "{:>7} {:>5} {:>7}  {}  {}",
                state.pid,
                aid,
                uptime(now.duration_since(state.time).unwrap_or_default()),
                state.id,
                state.config.command.join(" "),
            )),
            // A bad file is one error item and the listing goes on: report it, list the rest.
            Err(runstate::Error::Corrupt { path, kind }) => {
                eprintln!("skipping {}: {kind}", path.display());
            }
            Err(e) => return Err(e),
        }
    }
    if rows.is_empty() {
        println!("no instances running");
    } else {
        println!(
            "{:>7} {:>5} {:>7}  {:<32}  COMMAND",
            "PID", "AID", "UPTIME", "INSTANCE"
        );
        for row in rows {
            println!("{row}");
        }
    }
    Ok(())
}

/// `0.4s`, `59.9s`, `1m02s`, `3h05m`, `2d04h`: short, like ps.
fn uptime(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}.{}s", d.subsec_millis() / 100),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{:02}h", secs / 86400, secs / 3600 % 24),
    }
}

/// `ms` as seconds for sleep(1): `1`, `0.25`.
fn seconds(ms: u64) -> String {
    match ms % 1000 {
        0 => (ms / 1000).to_string(),
        frac => format!("{}.{frac:03}", ms / 1000)
            .trim_end_matches('0')
            .to_owned(),
    }
}

/// A new, private (0700) directory on tmpfs if there is one, like the `/run` directory a real
/// supervisor would use: the store's files never reach a disk.
fn fresh_temp_dir() -> std::io::Result<TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("runstate-supervisor-");
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder.tempdir()
}

enum Args {
    Help,
    Run {
        run_dir: Option<PathBuf>,
        sleep_ms: Option<Vec<u64>>,
    },
}

/// Parses the command line by hand; an `Err` is a message for the user.
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut args = args.into_iter();
    let mut run_dir = None;
    let mut sleep_ms = None;
    while let Some(arg) = args.next() {
        // Paths need not be UTF-8, so compare the flag and keep the value as an OsString.
        let value = match arg.to_str() {
            Some("-h" | "--help") => return Ok(Args::Help),
            Some("--run-dir") => args.next().ok_or("--run-dir needs a directory")?,
            Some("--sleep-ms") => {
                let list = args.next().ok_or("--sleep-ms needs a list")?;
                let list = parse_durations(&list)?;
                if sleep_ms.replace(list).is_some() {
                    return Err("--sleep-ms given twice".into());
                }
                continue;
            }
            Some(flag) => match flag.strip_prefix("--run-dir=") {
                Some(dir) => dir.into(),
                None => return Err(format!("unexpected argument {arg:?}")),
            },
            None => return Err(format!("unexpected argument {arg:?}")),
        };
        if value.is_empty() {
            return Err("--run-dir needs a directory".into());
        }
        if run_dir.replace(PathBuf::from(value)).is_some() {
            return Err("--run-dir given twice".into());
        }
    }
    Ok(Args::Run { run_dir, sleep_ms })
}

/// `3000,1000,2000`: one child per value, in milliseconds.
fn parse_durations(list: &std::ffi::OsStr) -> Result<Vec<u64>, String> {
    let bad = || format!("--sleep-ms takes milliseconds such as 3000,1000, not {list:?}");
    list.to_str()
        .ok_or_else(bad)?
        .split(',')
        .map(|ms| ms.trim().parse().map_err(|_| bad()))
        .collect()
}
