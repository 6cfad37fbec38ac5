//! `ps` for a runstate store: every instance of every aid, with whether its process still runs.
//!
//! ```text
//! cargo run --example ps -- --run-dir DIR           # a table
//! cargo run --example ps -- --run-dir DIR --json    # one JSON array, for machines
//! cargo run --example ps -- --run-dir DIR --prune   # remove the entries of dead processes
//! cargo run --example ps -- --run-dir DIR --watch   # a live table, until interrupted
//! ```
//!
//! `--watch` redraws the table on every change the store reports (`AsyncStore::watch`: no
//! polling), marking the instance that changed: `+` saved, `~` replaced, `-` gone (shown
//! once). When stdout is not a terminal it prints the table once, then one line per change
//! with the same marks, for logs and pipes.
//!
//! It reads entries of any config type: configs are decoded as generic MessagePack values, and
//! a `command` field (an array of strings, as in the examples' `LaunchConfig`, or a string) is
//! shown when there is one.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::pin::pin;
use std::time::SystemTime;

use futures::StreamExt;
use rmpv::Value;
use runstate::{Aid, AsyncStore, Change, InstanceId, Liveness, State};

const USAGE: &str = "\
usage: ps --run-dir DIR [--json] [--prune] [--watch]

Lists the instances recorded in the runstate store under DIR.

options:
  --run-dir DIR  the store's run directory (entries live under DIR/state)
  --json         print one JSON array of objects instead of a table
  --prune        remove the entries whose process is dead, and say how many
  --watch        keep running: redraw on every change (one line per change when stdout
                 is not a terminal), until interrupted
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

    if args.watch {
        return watch(&store).await;
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
    println!("{}", header());
    for row in rows {
        println!("{}", table_line(now, row));
    }
}

fn header() -> String {
    format!(
        "{:>7} {:>5} {:<7} {:>9}  {:<32}  COMMAND",
        "PID", "AID", "STATUS", "UPTIME", "INSTANCE"
    )
}

fn table_line(now: SystemTime, row: &Row) -> String {
    format!(
        "{:>7} {:>5} {:<7} {:>9}  {}  {}",
        row.state.pid,
        row.aid,
        row.status,
        uptime(uptime_secs(now, &row.state)),
        row.state.id,
        command(&row.state.config).unwrap_or_else(|| "-".into()),
    )
}

/// Every entry of the store, keyed for the live table; corrupt ones are reported and left
/// out.
async fn list_all(store: &Store) -> Result<BTreeMap<(Aid, InstanceId), Row>, Box<dyn Error>> {
    let mut rows = BTreeMap::new();
    let mut entries = pin!(store.entries());
    while let Some(item) = entries.next().await {
        match item {
            Ok((aid, state)) => {
                let status = store.liveness(&state).await;
                rows.insert((aid, state.id), Row { aid, state, status });
            }
            Err(e @ runstate::Error::Corrupt { .. }) => eprintln!("ps: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(rows)
}

/// The live table: the store listed once, then kept up to date from `watch`'s changes.
async fn watch(store: &Store) -> Result<(), Box<dyn Error>> {
    // Watch first, then list: a change in between is both listed and reported, not lost.
    let mut changes = store.watch().await?;
    let mut rows = list_all(store).await?;
    let tty = std::io::stdout().is_terminal();
    // The mark of each instance that changed since the last redraw; gone ones are drawn
    // once more, from here.
    let mut marks: BTreeMap<(Aid, InstanceId), char> = BTreeMap::new();
    let mut gone: BTreeMap<(Aid, InstanceId), Row> = BTreeMap::new();
    if tty {
        redraw(&rows, &mut marks, &mut gone);
    } else {
        println!("  {}", header());
        let now = SystemTime::now();
        for row in rows.values() {
            println!("  {}", table_line(now, row));
        }
    }
    let mut interrupted = pin!(tokio::signal::ctrl_c());
    loop {
        let change = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            change = changes.next() => change,
        };
        let (key, mark) = match change {
            None => return Ok(()),
            Some(Err(e)) => {
                // Some changes may be lost: start again from a listing.
                eprintln!("ps: {e}; listing again");
                rows = list_all(store).await?;
                (None, '!')
            }
            // Changes were lost (in a new aid, or anywhere): list again. Aids are new
            // rarely, so one listing of everything keeps this simple.
            Some(Ok(Change::Resync | Change::ResyncAid { .. })) => {
                rows = list_all(store).await?;
                (None, '!')
            }
            Some(Ok(Change::Destroyed { aid, id })) => {
                let key = (aid, id);
                match rows.remove(&key) {
                    Some(row) => {
                        gone.insert(key, row);
                    }
                    // Never listed (saved and gone between two looks): nothing to show.
                    None => continue,
                }
                (Some(key), '-')
            }
            Some(Ok(change)) => {
                let (Some(aid), Some(id)) = (change.aid(), change.id()) else {
                    continue;
                };
                let mark = if matches!(change, Change::Replaced { .. }) {
                    '~'
                } else {
                    '+'
                };
                // The change names the entry; what it holds is read now. Gone again by
                // then: its removal is the next change.
                let Some(state) = store
                    .with_aid_shared(aid, async |c| c.load(id).await)
                    .await
                    .unwrap_or_else(|e| {
                        eprintln!("ps: {e}");
                        None
                    })
                else {
                    continue;
                };
                let status = store.liveness(&state).await;
                rows.insert((aid, id), Row { aid, state, status });
                ((Some((aid, id))), mark)
            }
        };
        if tty {
            if let Some(key) = key {
                marks.insert(key, mark);
            }
            redraw(&rows, &mut marks, &mut gone);
            continue;
        }
        let now = SystemTime::now();
        match key {
            None => {
                println!("! resync: {} instances", rows.len());
                for row in rows.values() {
                    println!("  {}", table_line(now, row));
                }
            }
            Some(key) => {
                let row = rows.get(&key).or_else(|| gone.get(&key));
                if let Some(row) = row {
                    println!("{mark} {}", table_line(now, row));
                }
                gone.clear();
            }
        }
    }
}

/// Clears the terminal and draws the table, with the marks of what changed since the last
/// redraw (which are then forgotten, and gone instances with them).
fn redraw(
    rows: &BTreeMap<(Aid, InstanceId), Row>,
    marks: &mut BTreeMap<(Aid, InstanceId), char>,
    gone: &mut BTreeMap<(Aid, InstanceId), Row>,
) {
    let now = SystemTime::now();
    let mut out = String::from("\x1b[H\x1b[2J");
    out += &format!("  {}\n", header());
    let mut all: Vec<(&(Aid, InstanceId), &Row)> = rows.iter().chain(gone.iter()).collect();
    all.sort_by_key(|(key, _)| **key);
    for (key, row) in all {
        let mark = marks.get(key).copied().unwrap_or(' ');
        out += &format!("{mark} {}\n", table_line(now, row));
    }
    out += &format!(
        "{} instances; + saved, ~ replaced, - gone; ctrl-c quits\n",
        rows.len()
    );
    print!("{out}");
    let _ = std::io::stdout().flush();
    marks.clear();
    gone.clear();
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
    watch: bool,
}

impl Args {
    /// `Ok(None)` asks for help.
    /// Paths may be any bytes, so arguments are taken as `OsString`s.
    fn parse(mut args: impl Iterator<Item = std::ffi::OsString>) -> Result<Option<Args>, String> {
        let (mut run_dir, mut json, mut prune, mut watch) = (None, false, false, false);
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("-h" | "--help") => return Ok(None),
                Some("--json") => json = true,
                Some("--prune") => prune = true,
                Some("--watch") => watch = true,
                Some("--run-dir") => {
                    run_dir = Some(args.next().ok_or("--run-dir needs a directory")?.into())
                }
                _ => return Err(format!("unknown argument {arg:?}")),
            }
        }
        let run_dir = run_dir.ok_or("--run-dir is required")?;
        if watch && json {
            return Err("--watch draws a table; it does not go with --json".into());
        }
        Ok(Some(Args {
            run_dir,
            json,
            prune,
            watch,
        }))
    }
}
