//! The workloads: what each one sets up (outside the timed section), asks of an
//! implementation, and checks afterwards. The implementations fill in [`Imp`].

use std::path::Path;

use runstate::InstanceId;
use tokio::runtime::Runtime;

use crate::common::{self, Entry};
use crate::config::{Ctx, Flavor};
use crate::floor::{self, Floor, FloorAid};
use crate::measure::{Sample, Series, Stats, Timing, bench};
use crate::runstate_imp::Runstate;
use crate::tokio_fs::TokioFs;

/// The aid the single-aid workloads use.
pub const AID: u16 = 42;
/// Entries, saves, destroys or aids per run in W1 to W4, W6 and W7; holds per task in W8.
pub const N: usize = 1000;
/// Holds per run in W5.
pub const HOLDS: usize = 10_000;
/// Tasks contending for one aid in W8.
pub const TASKS: usize = 8;

/// One implementation of the store's work. Each method runs one workload's body: it does
/// its own untimed setup (a store, open descriptors), brackets exactly the measured work
/// with `t.start()` and `t.stop()`, and returns what the workload checks. `rt` is the
/// runtime the workload runs on; an implementation without one ignores it.
pub trait Imp: Sync {
    fn name(&self) -> &'static str;

    /// W1 (`each` false: one hold for all) and W7 (`each`: one hold per save): saves
    /// `template` under each of `ids` in [`AID`].
    fn saves(
        &self,
        rt: &Runtime,
        t: &mut Timing,
        dir: &Path,
        template: &Entry,
        ids: &[InstanceId],
        each: bool,
    );

    /// W2 and W9: reads and decodes every entry of [`AID`] in one hold; returns how many.
    fn read_all(&self, rt: &Runtime, t: &mut Timing, dir: &Path) -> usize;

    /// W3: counts the entries of [`AID`] by name in one hold.
    fn len(&self, rt: &Runtime, t: &mut Timing, dir: &Path) -> usize;

    /// W4: destroys each of `ids` (all present) in one hold.
    fn destroys(&self, rt: &Runtime, t: &mut Timing, dir: &Path, ids: &[InstanceId]);

    /// W5: `holds` sequential, uncontended holds of [`AID`] doing nothing.
    fn empty_holds(&self, rt: &Runtime, t: &mut Timing, dir: &Path, holds: usize);

    /// W6: lists the aids that have a directory; returns how many.
    fn aids(&self, rt: &Runtime, t: &mut Timing, dir: &Path) -> usize;

    /// W10 to W12: one empty hold of each of `aids` in turn, on a store (or whatever the
    /// implementation keeps) that has not held them yet; with `warm`, after one untimed
    /// pass through them all.
    fn holds_in_turn(&self, rt: &Runtime, t: &mut Timing, dir: &Path, aids: &[u16], warm: bool);

    /// W8: one task per state, each making `rounds` holds of [`AID`] that save its state
    /// and destroy it again (an implementation without tasks makes them in turn).
    fn contended(
        &self,
        rt: &Runtime,
        t: &mut Timing,
        dir: &Path,
        states: Vec<Entry>,
        rounds: usize,
    );
}

fn count_entries(dir: &Path, a: u16) -> usize {
    FloorAid::open(dir, a).expect("open").len().expect("len")
}

/// W1: 1000 saves in one hold. W7 (`each`): 1000 holds of one save each.
pub fn saves(ctx: &Ctx, rt: &Runtime, imp: &dyn Imp, dir: &Path, each: bool) -> Sample {
    let ids = common::ids(N);
    let mut t = Timing::new(false);
    imp.saves(rt, &mut t, dir, &ctx.template, &ids, each);
    assert_eq!(count_entries(dir, AID), N, "{} saved them all", imp.name());
    t.sample()
}

/// W2 and W9: every entry of one aid, decoded, one at a time; with `rss`, the growth of peak
/// RSS during the run.
pub fn read_all(ctx: &Ctx, rt: &Runtime, imp: &dyn Imp, dir: &Path, n: usize, rss: bool) -> Sample {
    floor::populate(dir, AID, &common::ids(n), &ctx.template).expect("populate");
    let mut t = Timing::new(rss);
    let got = imp.read_all(rt, &mut t, dir);
    assert_eq!(got, n, "{} read them all", imp.name());
    t.sample()
}

/// W3: count 1000 entries by name.
pub fn len(ctx: &Ctx, rt: &Runtime, imp: &dyn Imp, dir: &Path) -> Sample {
    floor::populate(dir, AID, &common::ids(N), &ctx.template).expect("populate");
    let mut t = Timing::new(false);
    let got = imp.len(rt, &mut t, dir);
    assert_eq!(got, N, "{} counted them all", imp.name());
    t.sample()
}

/// W4: 1000 destroys in one hold.
pub fn destroys(ctx: &Ctx, rt: &Runtime, imp: &dyn Imp, dir: &Path) -> Sample {
    let ids = common::ids(N);
    floor::populate(dir, AID, &ids, &ctx.template).expect("populate");
    let mut t = Timing::new(false);
    imp.destroys(rt, &mut t, dir, &ids);
    let left = count_entries(dir, AID);
    assert_eq!(left, 0, "{} destroyed them all", imp.name());
    t.sample()
}

/// W5: 10,000 sequential, uncontended holds doing nothing.
pub fn empty_holds(rt: &Runtime, imp: &dyn Imp, dir: &Path) -> Sample {
    let mut t = Timing::new(false);
    imp.empty_holds(rt, &mut t, dir, HOLDS);
    t.sample()
}

/// W6: list 1000 aid directories (each with its lock file beside it).
pub fn aids(rt: &Runtime, imp: &dyn Imp, dir: &Path) -> Sample {
    for a in 0..N as u16 {
        FloorAid::open(dir, a).expect("make aid");
    }
    let mut t = Timing::new(false);
    let got = imp.aids(rt, &mut t, dir);
    assert_eq!(got, N, "{} listed every aid", imp.name());
    t.sample()
}

/// W8: 8 tasks x 1000 holds on one aid, each saving then destroying its own entry
/// (floor: 8000 sequential holds doing the same).
pub fn contended(ctx: &Ctx, rt: &Runtime, imp: &dyn Imp, dir: &Path) -> Sample {
    let states = common::states(&ctx.template, TASKS);
    let mut t = Timing::new(false);
    imp.contended(rt, &mut t, dir, states, N);
    assert_eq!(count_entries(dir, AID), 0, "{} left nothing", imp.name());
    t.sample()
}

/// W10 to W12: one hold of each of this many aids in turn, far more than any small cache of
/// open aids keeps, so that with one each hold opens its aid again.
pub const COLD_AIDS: usize = 2000;

/// W10 (`made`: every aid's directory and lock file made in the setup, so the hold reopens
/// them), W11 (not `made`: the hold creates them) and W12 (`made` and `warm`: one untimed
/// pass first, so a store that keeps every aid open finds them open and one with a small
/// cache has evicted them).
pub fn holds_in_turn(rt: &Runtime, imp: &dyn Imp, dir: &Path, made: bool, warm: bool) -> Sample {
    let aids: Vec<u16> = (0..COLD_AIDS as u16).collect();
    if made {
        let state = floor::state_dir(dir).expect("state dir");
        for &a in &aids {
            FloorAid::open_in(&state, a).expect("make aid");
        }
    }
    let mut t = Timing::new(false);
    imp.holds_in_turn(rt, &mut t, dir, &aids, warm);
    let listed = floor::aids(dir).expect("aids");
    let ours = listed
        .iter()
        .filter(|&&a| usize::from(a) < COLD_AIDS)
        .count();
    assert_eq!(ours, COLD_AIDS, "{} made or kept every aid", imp.name());
    t.sample()
}

/// What a workload does; [`Workload::once`] runs it.
#[derive(Clone, Copy)]
enum Kind {
    SaveBatch,
    Stream1k,
    Len,
    DestroyBatch,
    EmptyHold,
    Aids,
    SaveEach,
    Contended,
    BigStream,
    ColdHold,
    FirstHold,
    CycledHold,
}

/// A workload as the report shows it, and how to run it once.
pub struct Workload {
    pub key: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    /// Operations per run: the figures are ns per operation.
    pub ops: usize,
    pub reps: usize,
    kind: Kind,
}

impl Workload {
    /// One run of `imp` in `dir`, on `rt`.
    pub fn once(&self, ctx: &Ctx, rt: &Runtime, imp: &dyn Imp, dir: &Path) -> Sample {
        match self.kind {
            Kind::SaveBatch => saves(ctx, rt, imp, dir, false),
            Kind::Stream1k => read_all(ctx, rt, imp, dir, N, false),
            Kind::Len => len(ctx, rt, imp, dir),
            Kind::DestroyBatch => destroys(ctx, rt, imp, dir),
            Kind::EmptyHold => empty_holds(rt, imp, dir),
            Kind::Aids => aids(rt, imp, dir),
            Kind::SaveEach => saves(ctx, rt, imp, dir, true),
            Kind::Contended => contended(ctx, rt, imp, dir),
            Kind::BigStream => read_all(ctx, rt, imp, dir, ctx.w9_n, true),
            Kind::ColdHold => holds_in_turn(rt, imp, dir, true, false),
            Kind::FirstHold => holds_in_turn(rt, imp, dir, false, false),
            Kind::CycledHold => holds_in_turn(rt, imp, dir, true, true),
        }
    }
}

/// Every workload, in the order they run and print.
pub fn all(ctx: &Ctx) -> Vec<Workload> {
    let w = |key, title, unit, ops, kind| Workload {
        key,
        title,
        unit,
        ops,
        reps: ctx.reps,
        kind,
    };
    vec![
        w("W1", "W1 save-batch", "ns/save", N, Kind::SaveBatch),
        w("W2", "W2 stream 1k", "ns/entry", N, Kind::Stream1k),
        w("W3", "W3 len", "ns/entry", N, Kind::Len),
        w(
            "W4",
            "W4 destroy-batch",
            "ns/destroy",
            N,
            Kind::DestroyBatch,
        ),
        w("W5", "W5 empty hold", "ns/hold", HOLDS, Kind::EmptyHold),
        w("W6", "W6 aids", "ns/aid", N, Kind::Aids),
        w("W7", "W7 save-each", "ns/save", N, Kind::SaveEach),
        w("W8", "W8 contended", "ns/hold", TASKS * N, Kind::Contended),
        Workload {
            reps: ctx.w9_reps,
            ..w("W9", "W9 big stream", "ns/entry", ctx.w9_n, Kind::BigStream)
        },
        w("W10", "W10 cold hold", "ns/hold", COLD_AIDS, Kind::ColdHold),
        w(
            "W11",
            "W11 first hold",
            "ns/hold",
            COLD_AIDS,
            Kind::FirstHold,
        ),
        w(
            "W12",
            "W12 cycled hold",
            "ns/hold",
            COLD_AIDS,
            Kind::CycledHold,
        ),
    ]
}

/// The implementations a workload compares on a runtime.
pub fn imps(key: &str, flavor: Flavor) -> Vec<&'static dyn Imp> {
    let mut imps: Vec<&'static dyn Imp> = vec![&Runstate::STREAM, &Floor];
    if flavor == Flavor::Multi {
        imps.push(&TokioFs);
        // W9 also reads the whole aid at once, for its memory.
        if key == "W9" {
            imps.push(&Runstate::LOAD_ALL);
        }
    }
    imps
}

/// One workload's figures on one runtime: each implementation's series.
pub struct Row {
    pub key: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub flavor: Flavor,
    pub series: Vec<(&'static str, Series)>,
}

impl Row {
    pub fn series(&self, imp: &str) -> Option<&Series> {
        self.series.iter().find(|(n, _)| *n == imp).map(|(_, s)| s)
    }

    /// The median and range of `imp`'s figures, if it ran.
    pub fn stats(&self, imp: &str) -> Option<Stats> {
        self.series(imp)?.stats()
    }

    /// The median, over repetitions, of `a`'s figure over `b`'s in the same repetition: the
    /// two ran one after the other, so a machine that slows down for a few seconds slows
    /// both, where a ratio of medians can pair a fast stretch with a slow one.
    pub fn paired(&self, a: &str, b: &str) -> Option<f64> {
        let (a, b) = (self.series(a)?, self.series(b)?);
        let ratios: Vec<f64> = a.ns.iter().zip(&b.ns).map(|(x, y)| x / y).collect();
        Some(crate::measure::stats(&ratios)?.median)
    }
}

/// Runs `w` on `flavor`'s runtime against each of its implementations.
pub fn run(ctx: &Ctx, w: &Workload, flavor: Flavor) -> Row {
    let rt = ctx.rt(flavor);
    let label = match flavor {
        Flavor::Multi => w.key.to_string(),
        Flavor::Current => format!("{}-CT", w.key),
    };
    let series = bench(
        ctx,
        &label,
        &imps(w.key, flavor),
        w.reps,
        w.ops,
        |imp, dir| w.once(ctx, rt, imp, dir),
    );
    Row {
        key: w.key,
        title: w.title,
        unit: w.unit,
        flavor,
        series,
    }
}
