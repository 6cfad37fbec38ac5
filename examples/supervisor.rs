//! A tiny supervisor: it starts three programs, records each one in the store while it runs,
//! and removes its entry when it exits.
//!
//! ```text
//! cargo run --example supervisor                  # a fresh store in a temporary directory
//! cargo run --example supervisor -- --run-dir DIR # the store under DIR
//! ```
//!
//! A real launcher would start sandboxed programs; `sleep` keeps the demo short.

#[path = "shared/launch_config.rs"]
mod launch_config;

use std::collections::BTreeMap;
use std::error::Error;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use runstate::{Aid, AsyncStore, InstanceId, State};
use tempfile::TempDir;
use tokio::process::Command;

use launch_config::{LaunchConfig, SandboxFlags};

const USAGE: &str = "\
usage: supervisor [--run-dir DIR]

Starts three short `sleep` processes, records each one in a runstate store while it
runs, and removes its entry when it exits, printing a ps-style table at every step.

options:
  --run-dir DIR  use the store under DIR (made if missing, left in place afterwards);
                 by default a fresh temporary directory, under /dev/shm if it exists
  -h, --help     print this help";

/// The store of this supervisor: one entry per running child, with its launch config.
type Store = AsyncStore<LaunchConfig>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let run_dir = match parse_args(std::env::args_os().skip(1)) {
        Ok(Args::Help) => {
            println!("{USAGE}");
            return Ok(());
        }
        Ok(Args::Run { run_dir }) => run_dir,
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

    // Each child's exit, as a future; polled together, they finish in exit order.
    let mut running = FuturesUnordered::new();
    for (aid, secs, flags) in plan {
        let aid = Aid::new(aid)?;
        let config = LaunchConfig {
            command: vec!["sleep".into(), secs.to_string()],
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

        running.push(async move {
            let status = child.wait().await;
            (aid, state, status)
        });
    }

    print_table(&store).await?;

    while let Some((aid, state, status)) = running.next().await {
        let status = status?;
        // Forget the instance, and learn in the same locked step how many of its app remain.
        let (existed, left) = store
            .with_aid(aid, async |cursor| {
                let existed = cursor.destroy(state.id).await?;
                Ok::<_, runstate::Error>((existed, cursor.len().await?))
            })
            .await?;
        let age = uptime(state.time.elapsed().unwrap_or_default());
        let command = state.config.command.join(" ");
        println!(
            "\n`{command}` (pid {}) exited after {age}: {status}",
            state.pid
        );
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
    Run { run_dir: Option<PathBuf> },
}

/// Parses the command line by hand; an `Err` is a message for the user.
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut args = args.into_iter();
    let mut run_dir = None;
    while let Some(arg) = args.next() {
        // Paths need not be UTF-8, so compare the flag and keep the value as an OsString.
        let value = match arg.to_str() {
            Some("-h" | "--help") => return Ok(Args::Help),
            Some("--run-dir") => args.next().ok_or("--run-dir needs a directory")?,
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
    Ok(Args::Run { run_dir })
}
