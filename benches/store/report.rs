//! The report: the header (what was measured, and how), the table, the side measurements,
//! the targets (reported, never fatal), and the JSON of medians.

use std::fmt::Write as _;

use crate::config::{self, Ctx, Flavor};
use crate::measure::{PollStats, Stats, median_u64};
use crate::probes::{CpuView, Responsiveness, STALL_KEYS, Stall, Threads};
use crate::workloads::{COLD_AIDS, Row};

const MIB: f64 = 1024.0 * 1024.0;

/// What was measured before the workloads, for the header.
pub struct Setup {
    /// The encoded entry's size, checked equal to the crate's.
    pub entry_size: usize,
    /// Identifying the recorded process, the floor's way and with `std::fs::read`, in ns.
    pub identify: (f64, f64),
    /// One blocking-pool round trip, in ns.
    pub hop: f64,
}

/// Everything the run measured.
pub struct Results {
    pub rows: Vec<Row>,
    pub r: Responsiveness,
    pub threads: Option<Threads>,
    pub stall: Option<Stall>,
}

impl Results {
    fn row(&self, key: &str, flavor: Flavor) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.key == key && r.flavor == flavor)
    }

    /// The median and range of `imp` in workload `key` on `flavor`'s runtime, if it ran.
    fn stats(&self, key: &str, flavor: Flavor, imp: &str) -> Option<Stats> {
        self.row(key, flavor)?.stats(imp)
    }

    /// The median RSS growth of `imp` in W9.
    fn growth(&self, imp: &str) -> Option<u64> {
        median_u64(&self.row("W9", Flavor::Multi)?.series(imp)?.rss)
    }

    /// R's worst lateness under load (median over repetitions).
    fn worst(&self) -> Option<u64> {
        median_u64(&self.r.busy)
    }

    /// R's worst lateness with nothing else running (median over repetitions).
    fn idle(&self) -> Option<u64> {
        median_u64(&self.r.idle)
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

fn cell(s: Option<Stats>) -> String {
    s.map_or_else(
        || "-".into(),
        |s| format!("{} ({}-{})", fmt_ns(s.median), fmt_ns(s.min), fmt_ns(s.max)),
    )
}

/// `a / b` of two medians, when both ran.
fn ratio(a: Option<Stats>, b: Option<Stats>) -> Option<f64> {
    Some(a?.median / b?.median)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

fn list(v: impl IntoIterator<Item = f64>) -> String {
    v.into_iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn header(ctx: &Ctx, setup: &Setup) {
    let quick = ctx.quick;
    println!(
        "runstate store benchmark{}",
        if quick { " (quick mode)" } else { "" }
    );
    println!("machine: {}", config::machine());
    println!("dir:     {} ({})", ctx.scratch.root.display(), ctx.fs_kind);
    println!("load:    {} (at start)", config::loadavg());
    println!(
        "runtime: runstate and tokio-fs on a tokio multi-thread runtime, 2 workers; \
         floor on the main thread, no runtime; R on a current-thread runtime; then runstate \
         on a current-thread runtime, with the floor measured again beside it (CT)"
    );
    println!(
        "entry:   {} bytes encoded (same bytes as the crate: checked); \
         {} repetitions per figure, W9 {} with {} entries{}",
        setup.entry_size,
        ctx.reps,
        ctx.w9_reps,
        ctx.w9_n,
        if quick {
            " (quick mode: fewer than the full 100,000)"
        } else {
            ""
        }
    );
    let who = if ctx.template.process.is_some() {
        "State::new captured its identity, so saves store it as given"
    } else {
        "State::new left its identity out, so each save identifies it from /proc"
    };
    println!(
        "saves:   entries record a live `sleep` child; {who}. Identifying it (stat + boot_id) \
         costs {} ns the floor's way (openat+read+close x2), {} ns with std::fs::read x2",
        fmt_ns(setup.identify.0),
        fmt_ns(setup.identify.1)
    );
    println!(
        "hop:     one spawn_blocking round trip (empty closure) on the 2-worker runtime: {} ns",
        fmt_ns(setup.hop)
    );
    println!(
        "setup:   not timed; each repetition gets a fresh directory, and runstate a store \
         whose aid was opened by one untimed hold"
    );
}

pub fn print(ctx: &Ctx, res: &Results) {
    table(res);
    rss(ctx, res);
    responsiveness(ctx, res);
    threads(res);
    stall(res);
    targets(res);
    println!();
    println!("load:    {} (at end)", config::loadavg());
}

fn table(res: &Results) {
    println!();
    println!(
        "{:<17} {:<10} {:>26} {:>26} {:>26} {:>9} {:>9} {:>9}",
        "workload", "unit", "runstate", "floor", "tokio-fs", "rs/floor", "paired", "tfs/floor"
    );
    for row in res.rows.iter().filter(|r| r.flavor == Flavor::Multi) {
        let (rs, fl, tf) = (
            row.stats("runstate"),
            row.stats("floor"),
            row.stats("tokio-fs"),
        );
        println!(
            "{:<17} {:<10} {:>26} {:>26} {:>26} {:>9} {:>9} {:>9}",
            row.title,
            row.unit,
            cell(rs),
            cell(fl),
            cell(tf),
            fmt_ratio(ratio(rs, fl)),
            fmt_ratio(row.paired("runstate", "floor")),
            fmt_ratio(ratio(tf, fl)),
        );
        if row.key == "W9" {
            let load_all = row.stats("load_all");
            println!(
                "{:<17} {:<10} {:>26} {:>26} {:>26} {:>9}",
                "W9 load_all",
                "ns/entry",
                cell(load_all),
                "",
                "",
                fmt_ratio(ratio(load_all, fl))
            );
        }
    }
    println!(
        "(median over repetitions, min-max in parentheses; ratios of medians, and `paired`: the \
         median of each repetition's runstate/floor, the two run back to back)"
    );
    if res
        .rows
        .iter()
        .any(|r| matches!(r.key, "W10" | "W11" | "W12"))
    {
        println!(
            "(W10-W12: one empty hold of each of {COLD_AIDS} aids in turn, on a fresh store. W10: \
             each aid's directory and lock file made in the setup, so a hold opens them again; \
             W11: none made, so the hold creates them; W12: as W10 after one untimed pass, so \
             a store keeping every aid open finds it open and one with a small cache reopens \
             it. The floor and tokio-fs keep nothing: open, flock, unlock, close, every time)"
        );
    }
    current_thread_table(res);
}

/// The same workloads with runstate on a current-thread runtime; the floor, which uses no
/// runtime, measured again beside it so the ratio comes from one stretch of time.
fn current_thread_table(res: &Results) {
    let mut rows = res
        .rows
        .iter()
        .filter(|r| r.flavor == Flavor::Current)
        .peekable();
    if rows.peek().is_none() {
        return;
    }
    println!();
    println!("current-thread runtime (CT):");
    println!(
        "{:<17} {:<10} {:>26} {:>26} {:>9} {:>9} {:>9}",
        "workload", "unit", "runstate CT", "floor", "rs/floor", "paired", "CT/multi"
    );
    for row in rows {
        let (rs, fl) = (row.stats("runstate"), row.stats("floor"));
        let multi = res.stats(row.key, Flavor::Multi, "runstate");
        println!(
            "{:<17} {:<10} {:>26} {:>26} {:>9} {:>9} {:>9}",
            row.title,
            row.unit,
            cell(rs),
            cell(fl),
            fmt_ratio(ratio(rs, fl)),
            fmt_ratio(row.paired("runstate", "floor")),
            fmt_ratio(ratio(rs, multi)),
        );
    }
    println!(
        "(CT/multi: runstate's median on the current-thread runtime over its multi-thread one)"
    );
}

fn rss(ctx: &Ctx, res: &Results) {
    let Some(w9) = res.row("W9", Flavor::Multi) else {
        return;
    };
    println!();
    println!(
        "W9 peak RSS growth over {} entries (median; VmHWM after clear_refs):",
        ctx.w9_n
    );
    for (name, series) in &w9.series {
        let Some(g) = median_u64(&series.rss) else {
            continue;
        };
        let mut all = series.rss.clone();
        all.sort_unstable();
        println!(
            "  {:<9} {:>8.2} MiB   (runs: {})",
            name,
            g as f64 / MIB,
            list(all.iter().map(|b| *b as f64 / MIB))
        );
    }
}

fn responsiveness(ctx: &Ctx, res: &Results) {
    let Some(worst) = res.worst() else {
        return;
    };
    let r = &res.r;
    println!();
    println!(
        "R worst lateness of a 1 ms ticker on a current-thread runtime during W1 + W2 + \
         W9 stream ({} entries): median {:.2} ms (runs: {}); the same ticker with \
         nothing else to do: median {:.2} ms (runs: {})",
        ctx.w9_n,
        worst as f64 / 1e6,
        list(r.busy.iter().map(|n| *n as f64 / 1e6)),
        res.idle().unwrap_or(0) as f64 / 1e6,
        list(r.idle.iter().map(|n| *n as f64 / 1e6)),
    );
}

fn threads(res: &Results) {
    let Some(t) = &res.threads else {
        return;
    };
    println!();
    println!(
        "threads: peak {} in the process while 400 tasks on a fresh 2-worker multi-thread \
         runtime each made 20 holds of their own aid (save, 200 us sleep, destroy): {} before \
         that runtime was built (main, sampler, the bench's runtimes), so {} added by it; \
         the run took {:.0} ms",
        t.peak,
        t.before,
        t.added(),
        t.elapsed.as_secs_f64() * 1e3
    );
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

/// The CPU time of a set of polls beside their wall time: a long poll that was off the CPU
/// was preempted; one that was on it did work, the store's or the kernel's (without IRQ time
/// accounting, softirq work such as RCU callbacks freeing removed files counts as the
/// time of whatever thread it interrupted).
fn cpu_line(what: &str, c: &CpuView) {
    println!(
        "  {what:<15} thread CPU time of the same: worst {} us; longest poll on the CPU for at \
         least half of it {} us; {} over 1 ms, using at most {} us of CPU",
        us(c.worst_cpu),
        us(c.worst_on_cpu),
        c.over_1ms,
        us(c.over_1ms_worst_cpu)
    );
}

fn stall(res: &Results) {
    let Some(stall) = &res.stall else {
        return;
    };
    println!();
    println!(
        "stall: how long single polls of runstate's hold futures held the thread (each poll \
         includes the closure and the streams it polls), over {} once each:",
        STALL_KEYS.join(", ")
    );
    for flavor in Flavor::ALL {
        let Some(s) = stall.stats(flavor) else {
            continue;
        };
        let worst: Vec<String> = stall
            .polls
            .iter()
            .filter(|(f, _, _)| *f == flavor)
            .map(|(_, key, v)| {
                let worst = v.iter().max_by_key(|p| p.wall);
                let (wall, cpu) = worst.map_or((0, 0), |p| (p.wall, p.cpu));
                format!(
                    "{key} {} us (CPU {} us) in {} polls",
                    us(wall),
                    us(cpu),
                    v.len()
                )
            })
            .collect();
        println!(
            "  {:<15} {} polls: p99 {} us, p99.9 {} us, worst {} us (worst by workload: {})",
            flavor.name(),
            s.polls,
            us(s.p99),
            us(s.p999),
            us(s.worst),
            worst.join(", ")
        );
        cpu_line("", &stall.cpu(flavor));
    }
    if let (Some(s), c) = (
        PollStats::of(stall.control.iter().map(|p| p.wall)),
        CpuView::of(stall.control.iter().copied()),
    ) {
        println!(
            "  control: {} runs of ~35 us of plain arithmetic on the same thread (no system \
             call, no new memory): p99 {} us, p99.9 {} us, worst {} us",
            s.polls,
            us(s.p99),
            us(s.p999),
            us(s.worst)
        );
        cpu_line("control", &c);
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "-",
    }
}

/// One target's line: what, the figure, the bound, the verdict.
fn target(what: &str, got: Option<String>, bound: &str, ok: Option<bool>) {
    println!(
        "  {what:<38} {:>11}  {bound:<16} {}",
        got.unwrap_or_else(|| "-".into()),
        verdict(ok)
    );
}

/// Issue 19's targets (tmpfs, this machine, ratios from one run), and W9's memory bound.
fn targets(res: &Results) {
    println!();
    println!("targets (reported, never fatal):");
    // Issue 19's bounds, on the paired ratio (each repetition's runstate over its floor).
    for flavor in Flavor::ALL {
        for k in [
            "W1", "W2", "W3", "W4", "W5", "W7", "W8", "W9", "W10", "W11", "W12",
        ] {
            let bound = match (k, flavor) {
                ("W5", _) => 1.6,
                ("W8", Flavor::Current) => 1.25,
                ("W8", Flavor::Multi) => 1.4,
                ("W10" | "W11" | "W12", _) => 1.5,
                _ => 1.15,
            };
            let r = res
                .row(k, flavor)
                .and_then(|r| r.paired("runstate", "floor"));
            target(
                &format!("{k} runstate/floor paired, {}", flavor.name()),
                r.map(|r| format!("{r:.2}x")),
                &format!("<= {bound:.2}x"),
                r.map(|r| r <= bound),
            );
        }
    }
    let bound = config::WORKERS + 8;
    let added = res.threads.as_ref().map(Threads::added);
    target(
        "threads added by the 400-task runtime",
        added.map(|n| n.to_string()),
        &format!("<= {bound} (2+8)"),
        added.map(|n| n <= bound),
    );
    let polls = res.stall.as_ref();
    for flavor in Flavor::ALL {
        let s = polls.and_then(|p| p.stats(flavor));
        let name = flavor.name();
        target(
            &format!("stall p99.9, {name}"),
            s.as_ref().map(|s| format!("{} us", us(s.p999))),
            "< 150 us",
            s.as_ref().map(|s| s.p999 < 150_000),
        );
        target(
            &format!("stall worst (wall), {name}"),
            s.as_ref().map(|s| format!("{} us", us(s.worst))),
            "< 1000 us",
            s.as_ref().map(|s| s.worst < 1_000_000),
        );
    }
    let above = res
        .worst()
        .zip(res.idle())
        .map(|(busy, idle)| busy as f64 / 1e6 - idle as f64 / 1e6);
    target(
        "R worst lateness above idle",
        above.map(|a| format!("{a:.2} ms")),
        "<= 1.00 ms",
        above.map(|a| a <= 1.0),
    );
    for row in res.rows.iter().filter(|r| r.flavor == Flavor::Multi) {
        let speedup = ratio(row.stats("tokio-fs"), row.stats("runstate"));
        let need = if matches!(row.key, "W2" | "W9") {
            3.0
        } else {
            1.0
        };
        target(
            &format!("{} tokio-fs/runstate", row.key),
            speedup.map(|s| format!("{s:.2}x")),
            &if need > 1.0 {
                format!(">= {need:.0}x")
            } else {
                "> 1x".into()
            },
            speedup.map(|s| if need > 1.0 { s >= need } else { s > 1.0 }),
        );
    }
    let g = res.growth("runstate");
    target(
        "W9 runstate RSS growth",
        g.map(|g| format!("{:.2} MiB", g as f64 / MIB)),
        "< 16 MiB",
        g.map(|g| g < 16 << 20),
    );
}

/// Writes the medians to `target/runstate-bench.json`, unless a knob left something out.
pub fn json(ctx: &Ctx, res: &Results) {
    if ctx.filtered() {
        println!("(RUNSTATE_BENCH_ONLY / RUNSTATE_BENCH_IMPL set: no JSON written)");
        return;
    }
    let m = |s: Option<Stats>| s.map_or(0.0, |s| s.median);
    let mut json = String::from("{\n");
    for row in res.rows.iter().filter(|r| r.flavor == Flavor::Multi) {
        let _ = write!(
            json,
            "  \"{}\": {{\"runstate\": {:.1}, \"floor\": {:.1}, \"tokio-fs\": {:.1}",
            row.key,
            m(row.stats("runstate")),
            m(row.stats("floor")),
            m(row.stats("tokio-fs"))
        );
        if row.key == "W9" {
            let _ = write!(
                json,
                ", \"load_all\": {:.1}, \"runstate_rss_growth_bytes\": {}, \
                 \"load_all_rss_growth_bytes\": {}",
                m(row.stats("load_all")),
                res.growth("runstate").unwrap_or(0),
                res.growth("load_all").unwrap_or(0)
            );
        }
        json.push_str("},\n");
    }
    let ct: Vec<String> = res
        .rows
        .iter()
        .filter(|r| r.flavor == Flavor::Current)
        .map(|row| {
            format!(
                "    \"{}\": {{\"runstate\": {:.1}, \"floor\": {:.1}}}",
                row.key,
                m(row.stats("runstate")),
                m(row.stats("floor"))
            )
        })
        .collect();
    let _ = writeln!(json, "  \"CT\": {{\n{}\n  }},", ct.join(",\n"));
    if let Some(t) = &res.threads {
        let _ = writeln!(
            json,
            "  \"threads\": {{\"peak\": {}, \"before\": {}, \"added\": {}}},",
            t.peak,
            t.before,
            t.added()
        );
    }
    if let Some(stall) = &res.stall {
        // Zeros where nothing was polled, as the other keys have for what did not run.
        let fields = |s: Option<PollStats>| {
            let (p99, p999, worst, polls) =
                s.map_or((0, 0, 0, 0), |s| (s.p99, s.p999, s.worst, s.polls));
            format!(
                "\"p99_ns\": {p99}, \"p999_ns\": {p999}, \"worst_ns\": {worst}, \"polls\": {polls}"
            )
        };
        let _ = writeln!(
            json,
            "  \"stall\": {{{}, \"CT\": {{{}}}}},",
            fields(stall.stats(Flavor::Multi)),
            fields(stall.stats(Flavor::Current))
        );
    }
    let _ = writeln!(
        json,
        "  \"R\": {{\"worst_lateness_ns\": {}, \"idle_worst_lateness_ns\": {}}}\n}}",
        res.worst().unwrap_or(0),
        res.idle().unwrap_or(0)
    );
    let target = config::target_dir();
    let path = target.join("runstate-bench.json");
    match std::fs::create_dir_all(&target).and_then(|()| std::fs::write(&path, &json)) {
        Ok(()) => println!("medians written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
