//! `ps` for a runstate store: every instance of every aid, with whether its process still runs.
//!
//! ```text
//! cargo run --example ps -- --run-dir DIR           # a table
//! cargo run --example ps -- --run-dir DIR --json    # one JSON array, for machines
//! cargo run --example ps -- --run-dir DIR --prune   # remove the entries of dead processes
//! ```
//!
//! It reads entries of any config type: configs are decoded as generic MessagePack values, and
//! a `command` field (an array of strings, as in the examples' `LaunchConfig`, or a string) is
//! shown when there is one.

use std::error::Error;
use std::path::PathBuf;
use std::pin::pin;
use std::time::SystemTime;

use futures::StreamExt;
use rmpv::Value;
use runstate::{Aid, AsyncStore, Liveness, State};

const USAGE: &str = "\
usage: ps --run-dir DIR [--json] [--prune]

Lists the instances recorded in the runstate store under DIR.

options:
  --run-dir DIR  the store's run directory (entries live under DIR/state)
  --json         print one JSON array of objects instead of a table
  --prune        remove the entries whose process is dead, and say how many
  -h, --help     print this help";

/// Any config: ps does not need to know the launcher's type.
type Store = AsyncStore<Value>;

struct Row {
    aid: Aid,
    state: State<Value>,
    status: Liveness,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = match Args::parse(std::env::args_os().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return Ok(());
        }
        Err(message) => {
            eprintln!("ps: {message}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    // Looking must not create: a missing store is reported, not made.
    if !args.run_dir.join("state").is_dir() {
        if args.json {
            println!("[]");
        } else {
            println!(
                "no store under {} (nothing has been saved there)",
                args.run_dir.display()
            );
        }
        return Ok(());
    }
    let store = Store::new(&args.run_dir);

    if args.prune {
        // Counted as they go, so the count is right even when some aid cannot be pruned.
        let mut pruned = 0;
        let result = store.prune_dead_with(|_, _| pruned += 1).await;
        eprintln!(
            "pruned {pruned} dead {}",
            if pruned == 1 { "entry" } else { "entries" }
        );
        if let Err(e) = result {
            eprintln!("ps: could not prune everything: {e}");
        }
    }

    let mut rows = Vec::new();
    let mut corrupt = 0;
    let mut entries = pin!(store.entries());
    while let Some(item) = entries.next().await {
        match item {
            Ok((aid, state)) => {
                let status = store.liveness(&state).await;
                rows.push(Row { aid, state, status });
            }
            // One bad file is one item: report it and list the rest.
            Err(e @ runstate::Error::Corrupt { .. }) => {
                corrupt += 1;
                eprintln!("ps: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows.iter().map(json_row).collect::<Vec<_>>())?
        );
    } else if rows.is_empty() {
        println!("no instances in {}", args.run_dir.display());
    } else {
        print_table(&rows);
    }
    if corrupt > 0 {
        eprintln!(
            "ps: {corrupt} corrupt {} skipped",
            if corrupt == 1 { "entry" } else { "entries" }
        );
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    let now = SystemTime::now();
    println!(
        "{:>7} {:>5} {:<7} {:>9}  {:<32}  COMMAND",
        "PID", "AID", "STATUS", "UPTIME", "INSTANCE"
    );
    for row in rows {
        println!(
            "{:>7} {:>5} {:<7} {:>9}  {}  {}",
            row.state.pid,
            row.aid,
            row.status,
            uptime(uptime_secs(now, &row.state)),
            row.state.id,
            command(&row.state.config).unwrap_or_else(|| "-".into()),
        );
    }
}

fn json_row(row: &Row) -> serde_json::Value {
    serde_json::json!({
        "pid": row.state.pid,
        "aid": row.aid.get(),
        "status": row.status.to_string(),
        "uptime_secs": uptime_secs(SystemTime::now(), &row.state),
        "instance": row.state.id.to_string(),
        "command": command(&row.state.config),
        "started_unix_nanos": row.state.time.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).ok(),
    })
}

/// Seconds since the instance started, rounded to the nearest second.
fn uptime_secs(now: SystemTime, state: &State<Value>) -> u64 {
    let d = now.duration_since(state.time).unwrap_or_default();
    (d.as_millis() as u64 + 500) / 1000
}

fn uptime(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m{:02}s", secs / 3600, secs / 60 % 60, secs % 60),
        _ => format!(
            "{}d{:02}h{:02}m",
            secs / 86400,
            secs / 3600 % 24,
            secs / 60 % 60
        ),
    }
}

/// The config's `command` field, when it has one: an array of strings or a string.
fn command(config: &Value) -> Option<String> {
    let Value::Map(fields) = config else {
        return None;
    };
    let (_, value) = fields.iter().find(|(k, _)| k.as_str() == Some("command"))?;
    match value {
        Value::Array(parts) => Some(
            parts
                .iter()
                .map(|p| p.as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Value::String(s) => s.as_str().map(str::to_owned),
        _ => None,
    }
}

struct Args {
    run_dir: PathBuf,
    json: bool,
    prune: bool,
}

impl Args {
    /// `Ok(None)` asks for help.
    /// Paths may be any bytes, so arguments are taken as `OsString`s.
    fn parse(mut args: impl Iterator<Item = std::ffi::OsString>) -> Result<Option<Args>, String> {
        let (mut run_dir, mut json, mut prune) = (None, false, false);
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("-h" | "--help") => return Ok(None),
                Some("--json") => json = true,
                Some("--prune") => prune = true,
                Some("--run-dir") => {
                    run_dir = Some(args.next().ok_or("--run-dir needs a directory")?.into())
                }
                _ => return Err(format!("unknown argument {arg:?}")),
            }
        }
        let run_dir = run_dir.ok_or("--run-dir is required")?;
        Ok(Some(Args {
            run_dir,
            json,
            prune,
        }))
    }
}
