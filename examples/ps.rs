//! `ps` for a runstate store: every instance of every aid, with whether its process still runs.
//!
//! ```text
//! cargo run --example ps -- --run-dir DIR             # a table
//! cargo run --example ps -- --run-dir DIR --aid 7     # aid 7's instances only
//! cargo run --example ps -- --run-dir DIR -q          # instance ids only, one a line
//! cargo run --example ps -- --run-dir DIR --no-trunc  # full 32-digit instance ids
//! cargo run --example ps -- --run-dir DIR --json      # one JSON array, for machines
//! cargo run --example ps -- --run-dir DIR --prune     # remove the entries of dead processes
//! cargo run --example ps -- --run-dir DIR --watch     # a live table, until interrupted
//! ```
//!
//! As `docker ps` and `runc list` do, the table leads with the id, shortened to its first 12
//! hex digits unless `--no-trunc` (still unique among a host's instances in practice), and
//! `-q` prints the ids alone, for `xargs`.
//!
//! `--watch` redraws the table on every change the store reports (`AsyncStore::watch`: no
//! polling), marking the instance that changed: `+` saved, `~` replaced, `-` gone (shown
//! once, with status `gone`). When stdout is not a terminal it prints the table once, then
//! one line per change with the same marks, for logs and pipes. Started before anything was
//! ever saved, it waits for the store to appear, then watches it.
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
usage: ps --run-dir DIR [--aid N] [-q | --json | --watch] [--no-trunc] [--prune]

Lists the instances recorded in the runstate store under DIR.

options:
  --run-dir DIR  the store's run directory (entries live under DIR/state)
  --aid N        only the instances of application id N
  -q, --quiet    print instance ids only, one a line
  --no-trunc     print whole 32-digit instance ids (12 by default)
  --json         print one JSON array of objects instead of a table (whole ids)
  --prune        remove the entries whose process is dead, and say how many
  --watch        keep running: redraw on every change (one line per change when stdout
                 is not a terminal), until interrupted; waits for a store that does not
                 exist yet
  -h, --help     print this help";

/// Any config: ps does not need to know the launcher's type.
type Store = AsyncStore<Value>;

struct Row {
    aid: Aid,
    state: State<Value>,
    status: Liveness,
}

/// How rows are printed.
#[derive(Clone, Copy)]
struct Style {
    /// Whole instance ids rather than their first 12 digits.
    no_trunc: bool,
}

impl Style {
    fn id(self, id: InstanceId) -> String {
        let mut id = id.to_string();
        if !self.no_trunc {
            id.truncate(SHORT_ID);
        }
        id
    }

    fn id_width(self) -> usize {
        if self.no_trunc { 32 } else { SHORT_ID }
    }
}

/// Digits of a shortened instance id, as docker shortens its ids.
const SHORT_ID: usize = 12;

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
    let style = Style {
        no_trunc: args.no_trunc,
    };
    // Looking must not create: a missing store is reported (or waited for), not made.
    if args.watch && !args.run_dir.join("state").is_dir() {
        eprintln!(
            "ps: no store under {} yet; waiting for one",
            args.run_dir.display()
        );
        let mut interrupted = pin!(tokio::signal::ctrl_c());
        while !args.run_dir.join("state").is_dir() {
            tokio::select! {
                _ = &mut interrupted => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
        }
    }
    if !args.run_dir.join("state").is_dir() {
        if args.quiet {
            // Nothing to list: no ids.
        } else if args.json {
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
        let result = match args.aid {
            Some(aid) => store
                .with_aid(aid, async |c| c.prune_dead_with(|_| pruned += 1).await)
                .await
                .map(drop),
            None => store.prune_dead_with(|_, _| pruned += 1).await.map(drop),
        };
        eprintln!(
            "pruned {pruned} dead {}",
            if pruned == 1 { "entry" } else { "entries" }
        );
        if let Err(e) = result {
            eprintln!("ps: could not prune everything: {e}");
        }
    }

    if args.watch {
        return watch(&store, args.aid, style).await;
    }

    let mut rows = Vec::new();
    let mut corrupt = 0;
    let mut entries = pin!(store.entries());
    while let Some(item) = entries.next().await {
        match item {
            Ok((aid, _)) if args.aid.is_some_and(|only| only != aid) => {}
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

    if args.quiet {
        for row in &rows {
            println!("{}", style.id(row.state.id));
        }
    } else if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows.iter().map(json_row).collect::<Vec<_>>())?
        );
    } else if rows.is_empty() {
        println!("no instances in {}", args.run_dir.display());
    } else {
        print_table(&rows, style);
    }
    if corrupt > 0 {
        eprintln!(
            "ps: {corrupt} corrupt {} skipped",
            if corrupt == 1 { "entry" } else { "entries" }
        );
    }
    Ok(())
}

fn print_table(rows: &[Row], style: Style) {
    let now = SystemTime::now();
    println!("{}", header(style));
    for row in rows {
        println!("{}", table_line(now, row, style, false));
    }
}

/// Id first, as in `docker ps` ("CONTAINER ID") and `runc list` ("ID").
fn header(style: Style) -> String {
    format!(
        "{:<w$}  {:>5} {:>7} {:<7} {:>9}  COMMAND",
        "INSTANCE ID",
        "AID",
        "PID",
        "STATUS",
        "UPTIME",
        w = style.id_width()
    )
}

/// One row; a `gone` one (destroyed while watched) says so instead of its liveness.
fn table_line(now: SystemTime, row: &Row, style: Style, gone: bool) -> String {
    let status = match gone {
        true => "gone".to_string(),
        false => row.status.to_string(),
    };
    format!(
        "{:<w$}  {:>5} {:>7} {:<7} {:>9}  {}",
        style.id(row.state.id),
        row.aid,
        row.state.pid,
        status,
        uptime(uptime_secs(now, &row.state)),
        command(&row.state.config).unwrap_or_else(|| "-".into()),
        w = style.id_width()
    )
}

/// Every entry of the store, keyed for the live table; corrupt ones are reported and left
/// out.
async fn list_all(
    store: &Store,
    only: Option<Aid>,
) -> Result<BTreeMap<(Aid, InstanceId), Row>, Box<dyn Error>> {
    let mut rows = BTreeMap::new();
    let mut entries = pin!(store.entries());
    while let Some(item) = entries.next().await {
        match item {
            Ok((aid, _)) if only.is_some_and(|only| only != aid) => {}
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
async fn watch(store: &Store, only: Option<Aid>, style: Style) -> Result<(), Box<dyn Error>> {
    // Watch first, then list: a change in between is both listed and reported, not lost.
    let mut changes = store.watch().await?;
    let mut rows = list_all(store, only).await?;
    let tty = std::io::stdout().is_terminal();
    // The mark of each instance that changed since the last redraw; gone ones are drawn
    // once more, from here.
    let mut marks: BTreeMap<(Aid, InstanceId), char> = BTreeMap::new();
    let mut gone: BTreeMap<(Aid, InstanceId), Row> = BTreeMap::new();
    if tty {
        redraw(&rows, &mut marks, &mut gone, style);
    } else {
        println!("  {}", header(style));
        let now = SystemTime::now();
        for row in rows.values() {
            println!("  {}", table_line(now, row, style, false));
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
                rows = list_all(store, only).await?;
                (None, '!')
            }
            // Changes were lost (in a new aid, or anywhere): list again. Aids are new
            // rarely, so one listing of everything keeps this simple.
            Some(Ok(Change::Resync | Change::ResyncAid { .. })) => {
                rows = list_all(store, only).await?;
                (None, '!')
            }
            Some(Ok(change)) if only.is_some_and(|only| change.aid() != Some(only)) => {
                continue;
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
            redraw(&rows, &mut marks, &mut gone, style);
            continue;
        }
        let now = SystemTime::now();
        match key {
            None => {
                println!("! resync: {} instances", rows.len());
                for row in rows.values() {
                    println!("  {}", table_line(now, row, style, false));
                }
            }
            Some(key) => {
                let line = match (rows.get(&key), gone.get(&key)) {
                    (Some(row), _) => Some(table_line(now, row, style, false)),
                    (None, Some(row)) => Some(table_line(now, row, style, true)),
                    (None, None) => None,
                };
                if let Some(line) = line {
                    println!("{mark} {line}");
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
    style: Style,
) {
    let now = SystemTime::now();
    let mut out = String::from("\x1b[H\x1b[2J");
    out += &format!("  {}\n", header(style));
    let mut all: Vec<(&(Aid, InstanceId), &Row, bool)> = rows
        .iter()
        .map(|(k, r)| (k, r, false))
        .chain(gone.iter().map(|(k, r)| (k, r, true)))
        .collect();
    all.sort_by_key(|(key, _, _)| **key);
    for (key, row, is_gone) in all {
        let mark = marks.get(key).copied().unwrap_or(' ');
        out += &format!("{mark} {}\n", table_line(now, row, style, is_gone));
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
    aid: Option<Aid>,
    quiet: bool,
    no_trunc: bool,
    json: bool,
    prune: bool,
    watch: bool,
}

impl Args {
    /// `Ok(None)` asks for help.
    /// Paths may be any bytes, so arguments are taken as `OsString`s.
    fn parse(mut args: impl Iterator<Item = std::ffi::OsString>) -> Result<Option<Args>, String> {
        let (mut run_dir, mut json, mut prune, mut watch) = (None, false, false, false);
        let (mut aid, mut quiet, mut no_trunc) = (None, false, false);
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("-h" | "--help") => return Ok(None),
                Some("--json") => json = true,
                Some("--prune") => prune = true,
                Some("--watch") => watch = true,
                Some("-q" | "--quiet") => quiet = true,
                Some("--no-trunc") => no_trunc = true,
                Some("--aid") => {
                    let n = args.next().ok_or("--aid needs an application id")?;
                    let n = n.to_str().ok_or("--aid needs an application id")?;
                    aid = Some(n.parse::<Aid>().map_err(|e| e.to_string())?);
                }
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
        if quiet && (json || watch) {
            return Err("-q prints a list of ids; it does not go with --json or --watch".into());
        }
        Ok(Some(Args {
            run_dir,
            aid,
            quiet,
            no_trunc,
            json,
            prune,
            watch,
        }))
    }
}
