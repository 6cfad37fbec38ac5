//! A soak test: several processes, each with several tasks, do random store operations for a
//! while and check the store's invariants as they go and at the end.
//!
//! ```text
//! cargo run --release --example soak -- --seconds 30
//! cargo run --release --example soak -- --seconds 10 --processes 3 --tasks 4 --run-dir DIR
//! ```
//!
//! The last line is `soak: <ops> ops in <secs> s, <ops/s> ops/s, <n> violations`, and any
//! violation also makes the exit status non-zero.
//!
//! What is checked:
//! - every entry a task saved and has not destroyed is there, with equal content, whenever
//!   the task loads it or lists its aid (each task owns its ids: entries are tagged with the
//!   run, the worker and the task), and nothing of its own is there that it destroyed;
//! - a save of a fresh random id never finds an entry already there (`AlreadyExists`);
//! - a counter entry, incremented by read-modify-write under `with_aid` by every task, ends
//!   equal to the number of increments the workers report;
//! - every entry decodes, whenever anyone reads it (the parent also scans the whole store
//!   again and again while the workers run);
//! - at the end, with every worker gone, no aid is held (`try_with_aid` succeeds on each), no
//!   entry of the run is left but the counter, and no temporary file is in any aid directory.
//!
//! Workers are this program run again with the hidden `--worker` flag; each reports one line,
//! `soak-worker <i> ops <n> increments <k> violations <v>`, on its stdout.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use runstate::{Aid, AsyncStore, Error, InstanceId, State};
use serde::{Deserialize, Serialize};

const USAGE: &str = "\
usage: soak [--seconds N] [--processes P] [--tasks T] [--run-dir DIR]

Runs P processes of T tasks each doing random operations on a runstate store for N
seconds, checks the store's invariants, and prints
`soak: <ops> ops in <secs> s, <ops/s> ops/s, <n> violations`.

options:
  --seconds N    how long the workers run (default 10)
  --processes P  how many worker processes (default 3)
  --tasks T      how many tasks in each worker (default 4)
  --run-dir DIR  the store's run directory (default: a fresh temporary directory under
                 /dev/shm, removed afterwards)
  -h, --help     print this help

The exit status is 0 only if there was no violation.";

/// The aid of the shared counter.
const COUNTER_AID: u16 = 0;
/// The aids the tasks' entries go to.
const DATA_AIDS: [u16; 4] = [1, 2, 3, 4];
/// A task keeps at most this many entries; past it, it destroys.
const MAX_OWNED: usize = 16;
/// At most this many violations are described on stderr by each process.
const MAX_REPORTED: u64 = 20;

/// An entry's config: who saved it and a payload that says what it must be.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct SoakCfg {
    /// The run's nonce, so a reused run directory's older entries are told apart.
    run: u64,
    /// The worker process's index, or `u32::MAX` for the counter.
    worker: u32,
    task: u32,
    /// For the counter, its value.
    seq: u64,
    fill: String,
}

impl SoakCfg {
    fn new(run: u64, worker: u32, task: u32, seq: u64, len: usize) -> SoakCfg {
        SoakCfg {
            run,
            worker,
            task,
            seq,
            fill: pattern(seq, len),
        }
    }

    fn counter(run: u64, value: u64) -> SoakCfg {
        SoakCfg::new(run, u32::MAX, 0, value, 0)
    }

    fn is_intact(&self) -> bool {
        self.fill == pattern(self.seq, self.fill.len())
    }
}

fn pattern(seq: u64, len: usize) -> String {
    let start = (seq % 26) as u8;
    (0..len)
        .map(|i| char::from(b'a' + ((start as usize + i) % 26) as u8))
        .collect()
}

type Store = AsyncStore<SoakCfg>;

fn aid(n: u16) -> Aid {
    Aid::new(n).expect("a valid aid")
}

/// The counter's id, fixed for a run.
fn counter_id(run: u64) -> InstanceId {
    let mut bytes = [0xc0; 16];
    bytes[..8].copy_from_slice(&run.to_be_bytes());
    InstanceId::from_bytes(bytes)
}

/// A tiny seeded PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Counts violations and describes the first few on stderr.
struct Violations {
    who: String,
    count: AtomicU64,
}

impl Violations {
    fn new(who: String) -> Violations {
        Violations {
            who,
            count: AtomicU64::new(0),
        }
    }

    fn report(&self, what: impl std::fmt::Display) {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        if n < MAX_REPORTED {
            eprintln!("{}: violation: {what}", self.who);
        } else if n == MAX_REPORTED {
            eprintln!("{}: more violations, not shown", self.who);
        }
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Two states are the same entry if all that was saved is equal. The process identity is
/// left out: `save` fills it in from /proc.
fn same(a: &State<SoakCfg>, b: &State<SoakCfg>) -> bool {
    a.id == b.id && a.pid == b.pid && a.time == b.time && a.config == b.config
}

// ---------------------------------------------------------------------------------------
// Arguments.

struct Args {
    seconds: f64,
    processes: u32,
    tasks: u32,
    run_dir: Option<PathBuf>,
    /// `Some(index)` in a worker process.
    worker: Option<u32>,
    /// The run's nonce, passed to workers.
    run: Option<u64>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut out = Args {
        seconds: 10.0,
        processes: 3,
        tasks: 4,
        run_dir: None,
        worker: None,
        run: None,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--seconds" => {
                out.seconds = value("--seconds")?
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or("--seconds needs a positive number")?;
            }
            "--processes" => {
                out.processes = value("--processes")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--processes needs a positive whole number")?;
            }
            "--tasks" => {
                out.tasks = value("--tasks")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--tasks needs a positive whole number")?;
            }
            "--run-dir" => out.run_dir = Some(PathBuf::from(value("--run-dir")?)),
            // Hidden: how the parent starts its workers.
            "--worker" => {
                out.worker = Some(value("--worker")?.parse().map_err(|_| "bad --worker")?);
            }
            "--run" => out.run = Some(value("--run")?.parse().map_err(|_| "bad --run")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(out))
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(message) => {
            eprintln!("soak: {message}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let code = match args.worker {
        Some(index) => worker_main(&args, index),
        None => parent_main(&args),
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------
// The parent.

fn parent_main(args: &Args) -> i32 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(parent(args)) {
        Ok(0) => 0,
        Ok(_) => 1,
        Err(e) => {
            eprintln!("soak: {e}");
            2
        }
    }
}

/// One worker's report line.
#[derive(Default)]
struct Report {
    ops: u64,
    increments: u64,
    violations: u64,
}

fn parse_report(line: &str, index: u32) -> Option<Report> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [
            "soak-worker",
            i,
            "ops",
            ops,
            "increments",
            inc,
            "violations",
            v,
        ] if i.parse() == Ok(index) => Some(Report {
            ops: ops.parse().ok()?,
            increments: inc.parse().ok()?,
            violations: v.parse().ok()?,
        }),
        _ => None,
    }
}

async fn parent(args: &Args) -> Result<u64, Box<dyn StdError>> {
    // `_temp` removes the default run directory when the run ends.
    let (_temp, run_dir) = match &args.run_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("runstate-soak-")
                .tempdir_in("/dev/shm")
                .or_else(|_| tempfile::Builder::new().prefix("runstate-soak-").tempdir())?;
            let dir = temp.path().to_owned();
            (Some(temp), dir)
        }
    };
    let run = u64::from_be_bytes(InstanceId::random().as_bytes()[..8].try_into()?);
    let store = Store::new(&run_dir);
    let violations = Arc::new(Violations::new("soak".into()));
    eprintln!(
        "soak: {} processes x {} tasks for {} s on {}",
        args.processes,
        args.tasks,
        args.seconds,
        run_dir.display()
    );

    // The counter starts at zero.
    let counter = counter_id(run);
    store
        .with_aid(aid(COUNTER_AID), async |c| {
            c.save(&State::new(
                counter,
                std::process::id(),
                SoakCfg::counter(run, 0),
            ))
            .await
        })
        .await?;

    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for index in 0..args.processes {
        let mut child = Command::new(&exe)
            .args(["--worker", &index.to_string(), "--run", &run.to_string()])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--tasks", &args.tasks.to_string()])
            .arg("--run-dir")
            .arg(&run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        // The report is read on a thread of its own; the pipe holds one line at most.
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        workers.push((index, child, reader));
    }

    // While they run, scan the whole store again and again: every entry must decode.
    let done = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn({
        let (store, done, violations) = (store.clone(), done.clone(), violations.clone());
        async move {
            let mut scans = 0u64;
            while !done.load(Ordering::Acquire) {
                let mut entries = store.entries();
                while let Some(item) = entries.next().await {
                    match item {
                        Ok((_, state)) if !state.config.is_intact() => {
                            violations.report(format!("entry {} holds a broken config", state.id))
                        }
                        Ok(_) => {}
                        Err(e) => violations.report(format!("scanning the store: {e}")),
                    }
                }
                scans += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            scans
        }
    });

    let mut total = Report::default();
    for (index, mut child, reader) in workers {
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        let lines = tokio::task::spawn_blocking(move || reader.join())
            .await?
            .unwrap_or_default();
        let report = lines.iter().find_map(|line| parse_report(line, index));
        match report {
            Some(report) if status.success() => {
                total.ops += report.ops;
                total.increments += report.increments;
                total.violations += report.violations;
            }
            _ => violations.report(format!(
                "worker {index} ended with {status} and no report (it printed {lines:?})"
            )),
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Release);
    let scans = monitor.await?;

    // With every worker gone: the counter holds every increment...
    let value = store
        .with_aid(aid(COUNTER_AID), async |c| c.load(counter).await)
        .await?;
    match value {
        Some(state) if state.config.seq == total.increments => {}
        Some(state) => violations.report(format!(
            "the counter is {}, but the workers made {} increments",
            state.config.seq, total.increments
        )),
        None => violations.report("the counter entry is gone"),
    }
    // ...and in every aid: no temporary file, no lock held, every entry decodes, and of this
    // run only the counter is left.
    let mut left = 0;
    for a in store.aids().await? {
        // Looked at before this process holds the aid: a store's first exclusive hold of an
        // aid sweeps temporary files away.
        for name in temporary_files(&run_dir, a)? {
            violations.report(format!("aid {a}: temporary file {name} left behind"));
        }
        let checked = store
            .try_with_aid(a, async |c| {
                let all = c.load_all().await?;
                if a.get() == COUNTER_AID {
                    c.destroy(counter).await?;
                }
                Ok::<_, Error>(all)
            })
            .await;
        match checked {
            Ok(all) => {
                for (id, state) in all {
                    if state.config.run == run && id != counter {
                        left += 1;
                        violations.report(format!("aid {a}: entry {id} outlived its task"));
                    } else if !state.config.is_intact() {
                        violations.report(format!("aid {a}: entry {id} is broken"));
                    }
                }
            }
            Err(Error::WouldBlock { .. }) => {
                violations.report(format!("aid {a} is still locked after every worker exited"))
            }
            Err(e) => violations.report(format!("aid {a}: {e}")),
        }
    }
    store.close().await?;

    let violations = total.violations + violations.get();
    let secs = elapsed.as_secs_f64();
    eprintln!(
        "soak: {} increments, {scans} whole-store scans by the parent, {left} entries left",
        total.increments
    );
    println!(
        "soak: {} ops in {secs:.1} s, {:.0} ops/s, {violations} violations",
        total.ops,
        total.ops as f64 / secs
    );
    Ok(violations)
}

/// The names in an aid's directory that a save in progress would use.
fn temporary_files(run_dir: &Path, a: Aid) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(run_dir.join("state").join(a.to_string()))? {
        let name = item?.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp") {
            out.push(name);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// A worker.

fn worker_main(args: &Args, index: u32) -> i32 {
    let Some(run_dir) = args.run_dir.clone() else {
        eprintln!("soak-worker {index}: no --run-dir");
        return 2;
    };
    let Some(run) = args.run else {
        eprintln!("soak-worker {index}: no --run");
        return 2;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let store = Store::new(&run_dir);
    let violations = Arc::new(Violations::new(format!("soak-worker {index}")));
    let (ops, increments) = rt.block_on(async {
        let tasks: Vec<_> = (0..args.tasks)
            .map(|task| {
                let mut worker = Task {
                    store: store.clone(),
                    run,
                    index,
                    task,
                    rng: Rng::new(run ^ (u64::from(index) << 40) ^ (u64::from(task) << 20)),
                    owned: HashMap::new(),
                    ops: 0,
                    increments: 0,
                    violations: violations.clone(),
                };
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        worker.step().await;
                    }
                    worker.clean_up().await;
                    (worker.ops, worker.increments)
                })
            })
            .collect();
        let (mut ops, mut increments) = (0, 0);
        for task in tasks {
            match task.await {
                Ok((o, i)) => {
                    ops += o;
                    increments += i;
                }
                Err(e) => violations.report(format!("a task failed: {e}")),
            }
        }
        (ops, increments)
    });
    println!(
        "soak-worker {index} ops {ops} increments {increments} violations {}",
        violations.get()
    );
    0
}

/// One task of a worker, with the entries it owns.
struct Task {
    store: Store,
    run: u64,
    index: u32,
    task: u32,
    rng: Rng,
    /// Its entries that are saved and not destroyed.
    owned: HashMap<InstanceId, (Aid, State<SoakCfg>)>,
    ops: u64,
    increments: u64,
    violations: Arc<Violations>,
}

impl Task {
    fn violation(&self, what: impl std::fmt::Display) {
        self.violations
            .report(format!("task {}: {what}", self.task));
    }

    fn fresh_state(&mut self) -> State<SoakCfg> {
        let len = if self.rng.below(30) == 0 {
            64 * 1024 + self.rng.below(192 * 1024) as usize
        } else {
            self.rng.below(2048) as usize
        };
        let seq = self.rng.next();
        State::new(
            InstanceId::random(),
            std::process::id(),
            SoakCfg::new(self.run, self.index, self.task, seq, len),
        )
    }

    fn random_aid(&mut self) -> Aid {
        aid(DATA_AIDS[self.rng.below(DATA_AIDS.len() as u64) as usize])
    }

    fn random_owned(&mut self) -> Option<(InstanceId, Aid, State<SoakCfg>)> {
        if self.owned.is_empty() {
            return None;
        }
        let n = self.rng.below(self.owned.len() as u64) as usize;
        let (id, (a, state)) = self.owned.iter().nth(n)?;
        Some((*id, *a, state.clone()))
    }

    fn is_mine(&self, state: &State<SoakCfg>) -> bool {
        state.config.run == self.run
            && state.config.worker == self.index
            && state.config.task == self.task
    }

    /// One random operation.
    async fn step(&mut self) {
        self.ops += 1;
        let roll = match self.rng.below(100) {
            // Full: destroy.
            _ if self.owned.len() >= MAX_OWNED => 40,
            // Nothing to destroy or load: save.
            33..=64 if self.owned.is_empty() => 0,
            roll => roll,
        };
        match roll {
            0..=24 => self.save(false).await,
            25..=32 => self.save(true).await,
            33..=39 => self.destroy(false).await,
            40..=46 => self.destroy(true).await,
            47..=64 => self.load().await,
            65..=79 => self.increment().await,
            80..=94 => self.list().await,
            _ => self.scan().await,
        }
    }

    /// Saves a fresh entry, waiting for the aid, or only if it is free.
    async fn save(&mut self, without_waiting: bool) {
        let (a, state) = (self.random_aid(), self.fresh_state());
        let work = async |c: &mut runstate::Cursor<SoakCfg>| c.save(&state).await;
        let result = if without_waiting {
            self.store.try_with_aid(a, work).await
        } else {
            self.store.with_aid(a, work).await
        };
        match result {
            Ok(()) => drop(self.owned.insert(state.id, (a, state))),
            Err(Error::WouldBlock { .. }) if without_waiting => {}
            Err(e @ Error::AlreadyExists { .. }) => {
                self.violation(format!("a fresh random id was taken: {e}"))
            }
            Err(e) => self.violation(format!("save on aid {a}: {e}")),
        }
    }

    /// Destroys one of its entries, waiting for the aid, or waiting a little at most.
    async fn destroy(&mut self, time_limited: bool) {
        let Some((id, a, _)) = self.random_owned() else {
            return;
        };
        let work = async |c: &mut runstate::Cursor<SoakCfg>| c.destroy(id).await;
        let result = if time_limited {
            let limit = Duration::from_millis(1 + self.rng.below(5));
            self.store.with_aid_timeout(a, limit, work).await
        } else {
            self.store.with_aid(a, work).await
        };
        match result {
            Ok(true) => drop(self.owned.remove(&id)),
            Ok(false) => {
                self.violation(format!("its entry {id} on aid {a} was gone before destroy"));
                self.owned.remove(&id);
            }
            Err(Error::Timeout { .. }) if time_limited => {}
            Err(e) => self.violation(format!("destroy on aid {a}: {e}")),
        }
    }

    /// Loads one of its entries: it must be there, unchanged.
    async fn load(&mut self) {
        let Some((id, a, saved)) = self.random_owned() else {
            return;
        };
        match self
            .store
            .with_aid_shared(a, async |c| c.load(id).await)
            .await
        {
            Ok(Some(found)) if same(&found, &saved) => {}
            Ok(Some(found)) => self.violation(format!(
                "its entry {id} on aid {a} changed: saved {:?}, found {:?}",
                short(&saved),
                short(&found)
            )),
            Ok(None) => self.violation(format!("its entry {id} on aid {a} is missing")),
            Err(e) => self.violation(format!("load on aid {a}: {e}")),
        }
    }

    /// Adds one to the shared counter: load, destroy, save, under the aid's lock.
    async fn increment(&mut self) {
        let (counter, run) = (counter_id(self.run), self.run);
        let result = self
            .store
            .with_aid(aid(COUNTER_AID), async |c| {
                let Some(old) = c.load(counter).await? else {
                    return Ok(Err("the counter is missing".to_string()));
                };
                if !c.destroy(counter).await? {
                    return Ok(Err("the counter vanished between load and destroy".into()));
                }
                let new = SoakCfg::counter(run, old.config.seq + 1);
                c.save(&State::new(counter, old.pid, new).with_time(old.time))
                    .await?;
                Ok::<_, Error>(Ok(()))
            })
            .await;
        match result {
            Ok(Ok(())) => self.increments += 1,
            Ok(Err(why)) => self.violation(why),
            Err(e) => self.violation(format!("increment: {e}")),
        }
    }

    /// Lists an aid: every entry decodes, and its own entries there are exactly those it
    /// owns, unchanged.
    async fn list(&mut self) {
        let a = self.random_aid();
        let result = self
            .store
            .with_aid_shared(a, async |c| {
                let items: Vec<Result<State<SoakCfg>, Error>> = c.entries().collect().await;
                Ok::<_, Error>(items)
            })
            .await;
        let items = match result {
            Ok(items) => items,
            Err(e) => return self.violation(format!("list aid {a}: {e}")),
        };
        let mut seen = 0;
        for item in items {
            match item {
                Ok(state) if !state.config.is_intact() => {
                    self.violation(format!("aid {a}: entry {} is broken", state.id))
                }
                Ok(state) if self.is_mine(&state) => {
                    seen += 1;
                    match self.owned.get(&state.id) {
                        Some((_, saved)) if same(saved, &state) => {}
                        Some(_) => self.violation(format!("its entry {} changed", state.id)),
                        None => self.violation(format!(
                            "aid {a}: its destroyed entry {} is back",
                            state.id
                        )),
                    }
                }
                Ok(_) => {}
                Err(e) => self.violation(format!("aid {a}: {e}")),
            }
        }
        let expected = self.owned.values().filter(|(x, _)| *x == a).count();
        if seen != expected {
            self.violation(format!(
                "aid {a} lists {seen} of its entries, it owns {expected} there"
            ));
        }
    }

    /// Reads the whole store, as `ps` would: every entry decodes.
    async fn scan(&mut self) {
        let all: Result<Vec<(Aid, State<SoakCfg>)>, Error> =
            self.store.entries().try_collect().await;
        match all {
            Ok(all) => {
                for (a, state) in all {
                    if !state.config.is_intact() {
                        self.violation(format!("aid {a}: entry {} is broken", state.id));
                    }
                }
            }
            Err(e) => self.violation(format!("scan: {e}")),
        }
    }

    /// Destroys everything it owns, checking each entry on the way out.
    async fn clean_up(&mut self) {
        let owned: Vec<(InstanceId, (Aid, State<SoakCfg>))> = self.owned.drain().collect();
        for (id, (a, saved)) in owned {
            self.ops += 1;
            let result = self
                .store
                .with_aid(a, async |c| {
                    let found = c.load(id).await?;
                    let existed = c.destroy(id).await?;
                    Ok::<_, Error>((found, existed))
                })
                .await;
            match result {
                Ok((Some(found), true)) if same(&found, &saved) => {}
                Ok((found, _)) => self.violation(format!(
                    "at the end, its entry {id} on aid {a} was {:?}",
                    found.as_ref().map(short)
                )),
                Err(e) => self.violation(format!("clean-up on aid {a}: {e}")),
            }
        }
    }
}

/// A state without its (long) payload, for messages.
fn short(state: &State<SoakCfg>) -> String {
    format!(
        "{} pid {} worker {} task {} seq {} ({} bytes)",
        state.id,
        state.pid,
        state.config.worker,
        state.config.task,
        state.config.seq,
        state.config.fill.len()
    )
}
