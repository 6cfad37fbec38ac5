//! Hostile entry files: whatever bytes an attacker or a broken tool puts in an entry file,
//! readers never panic and never allocate what a file claims, and report the file as
//! `Corrupt`; what a reader accepts, `save` writes back. What tests/bad_input.rs already
//! covers is not repeated here. Nesting: tests/hostile_nesting.rs; special files, owners,
//! modes and names: tests/hostile_files.rs.
//!
//! The raised-cap test runs in a child process (this test binary, re-run on that test alone,
//! `common::child::isolated`): it lowers the address-space limit, which must not touch
//! the other tests.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::sync::Mutex;

use common::hostile::*;
use common::{aid, entry_path, no_deadlock, pid, run_dir};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use rmpv::Value;
use runstate::{CorruptKind, Error, InstanceId, Options, State};

both_runtimes!(
    a_huge_sparse_entry_file_is_refused_without_being_allocated,
    hand_built_entries_with_bad_fields_are_corrupt,
    what_load_accepts_save_writes_back,
    bytes_after_the_entry_are_corrupt,
);

// ---------------------------------------------------------------------------------------
// Arbitrary bytes as entry files.

/// How one case's file content is made.
#[derive(Clone, Debug)]
enum Content {
    /// A valid entry, unchanged: the control.
    Intact(usize),
    Random(Vec<u8>),
    /// Bytes drawn from MessagePack's markers, to get deeper into the decoder.
    Markers(Vec<u8>),
    Truncated(usize, usize),
    BitFlips(usize, Vec<(usize, u8)>),
    Appended(usize, Vec<u8>),
    Replaced(usize, Vec<(usize, u8)>),
    Inserted(usize, usize, Vec<u8>),
    Cut(usize, usize, usize),
}

impl Content {
    fn bytes(&self, bases: &[Vec<u8>]) -> Vec<u8> {
        let base = |i: &usize| bases[*i].clone();
        match self {
            Content::Intact(b) => base(b),
            Content::Random(bytes) | Content::Markers(bytes) => bytes.clone(),
            Content::Truncated(b, at) => {
                let mut v = base(b);
                v.truncate(at % v.len());
                v
            }
            Content::BitFlips(b, flips) => {
                let mut v = base(b);
                let n = v.len();
                for (at, bit) in flips {
                    v[at % n] ^= 1 << bit;
                }
                v
            }
            Content::Appended(b, tail) => {
                let mut v = base(b);
                v.extend_from_slice(tail);
                v
            }
            Content::Replaced(b, bytes) => {
                let mut v = base(b);
                let n = v.len();
                for (at, byte) in bytes {
                    v[at % n] = *byte;
                }
                v
            }
            Content::Inserted(b, at, bytes) => {
                let mut v = base(b);
                let at = at % (v.len() + 1);
                v.splice(at..at, bytes.iter().copied());
                v
            }
            Content::Cut(b, at, len) => {
                let mut v = base(b);
                let at = at % v.len();
                let end = (at + len % 16 + 1).min(v.len());
                v.drain(at..end);
                v
            }
        }
    }
}

fn content(bases: usize) -> impl Strategy<Value = Content> {
    let base = 0..bases;
    let markers = prop::sample::select(vec![
        0x00u8, 0x01, 0x7f, 0x80, 0x81, 0x8f, 0x90, 0x91, 0x9f, 0xa0, 0xa1, 0xbf, 0xc0, 0xc1, 0xc2,
        0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xca, 0xcb, 0xcc, 0xcf, 0xd0, 0xd3, 0xd4, 0xd8, 0xd9, 0xdb,
        0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff, b'i', b'd',
    ]);
    prop_oneof![
        1 => base.clone().prop_map(Content::Intact),
        2 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Content::Random),
        2 => prop::collection::vec(markers, 0..64).prop_map(Content::Markers),
        2 => (base.clone(), any::<usize>()).prop_map(|(b, at)| Content::Truncated(b, at)),
        3 => (base.clone(), prop::collection::vec((any::<usize>(), 0u8..8), 1..6))
            .prop_map(|(b, f)| Content::BitFlips(b, f)),
        2 => (base.clone(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(b, t)| Content::Appended(b, t)),
        2 => (base.clone(), prop::collection::vec((any::<usize>(), any::<u8>()), 1..4))
            .prop_map(|(b, r)| Content::Replaced(b, r)),
        1 => (base.clone(), any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(b, at, i)| Content::Inserted(b, at, i)),
        1 => (base, any::<usize>(), any::<usize>()).prop_map(|(b, at, n)| Content::Cut(b, at, n)),
    ]
}

/// The id every fuzzed file is named after.
const FUZZ_ID: InstanceId =
    InstanceId::from_bytes(*b"\x0f\x1e\x2d\x3c\x4b\x5a\x69\x78\x87\x96\xa5\xb4\xc3\xd2\xe1\xf0");

fn fuzz_entry_files(runtime: tokio::runtime::Runtime, cases: u32) {
    let dir = run_dir();
    let run = dir.path();
    let values = ValueStore::new(run);
    let launches = LaunchStore::new(run);
    let (donor, target, copies) = (aid(1), aid(2), aid(3));
    let other = InstanceId::random();

    // Valid entries to mutate, made by the store itself: struct and Value configs, with and
    // without a process identity, most under the fuzzed file's id, one under another id.
    let bases: Vec<Vec<u8>> = runtime.block_on(async {
        let mut bases = Vec::new();
        let states_launch = [
            State::new(FUZZ_ID, pid(1), launch(1)),
            State::new(FUZZ_ID, std::process::id(), launch(2)),
        ];
        let value = Value::Map(vec![
            (
                Value::from("argv"),
                Value::Array(vec![Value::from("a"), Value::from(-3)]),
            ),
            (Value::from("bin"), Value::Binary(vec![0, 1, 2, 0xff])),
            (Value::from(7), Value::F64(1.5)),
        ]);
        let states_value = [
            State::new(FUZZ_ID, pid(3), value.clone()),
            State::new(other, pid(4), value),
        ];
        for s in &states_launch {
            launches
                .with_aid(donor, async |c| c.save(s).await)
                .await
                .unwrap();
            bases.push(fs::read(entry_path(run, donor, s.id)).unwrap());
            launches
                .with_aid(donor, async |c| c.destroy(s.id).await)
                .await
                .unwrap();
        }
        for s in &states_value {
            values
                .with_aid(donor, async |c| c.save(s).await)
                .await
                .unwrap();
            bases.push(fs::read(entry_path(run, donor, s.id)).unwrap());
            values
                .with_aid(donor, async |c| c.destroy(s.id).await)
                .await
                .unwrap();
        }
        touch(&values, target).await;
        bases
    });
    let path = entry_path(run, target, FUZZ_ID);
    let tally = Mutex::new(BTreeMap::<&str, u64>::new());
    let count = |key: &'static str| *tally.lock().unwrap().entry(key).or_default() += 1;

    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let result = TestRunner::new(config).run(&content(bases.len()), |content| {
        let bytes = content.bytes(&bases);
        fs::write(&path, &bytes).unwrap();
        runtime.block_on(no_deadlock("reading a fuzzed entry", async {
            let as_value = read_every_way(&values, target, FUZZ_ID, &path).await;
            let as_launch = read_every_way(&launches, target, FUZZ_ID, &path).await;
            count(match &as_value {
                Verdict::Ok(_) => "Value: Ok",
                Verdict::Corrupt(CorruptKind::Undecodable(_)) => "Value: Undecodable",
                Verdict::Corrupt(CorruptKind::IdMismatch { .. }) => "Value: IdMismatch",
                Verdict::Corrupt(_) => "Value: other Corrupt",
            });
            count(match &as_launch {
                Verdict::Ok(_) => "struct: Ok",
                _ => "struct: Corrupt",
            });
            // The controls: an intact entry decodes as a Value, and as the struct when it
            // holds one; the one saved under another id is a mismatch.
            if let Content::Intact(b) = content {
                let want_value = if b == 3 {
                    Verdict::Corrupt(CorruptKind::IdMismatch { found: other })
                } else {
                    Verdict::Ok(FUZZ_ID)
                };
                assert_eq!(as_value, want_value, "intact base {b} as a Value");
                if b < 2 {
                    assert_eq!(as_launch, Verdict::Ok(FUZZ_ID), "intact base {b}");
                }
            }
            // What a reader accepts, save writes back, and it reads back the same.
            if as_value == Verdict::Ok(FUZZ_ID) {
                let state = values
                    .with_aid(target, async |c| c.load(FUZZ_ID).await)
                    .await
                    .unwrap()
                    .unwrap();
                let copy = values
                    .with_aid(copies, async |c| {
                        c.destroy(FUZZ_ID).await?;
                        c.save(&state).await?;
                        c.load(FUZZ_ID).await
                    })
                    .await;
                let copy = match copy {
                    Ok(Some(copy)) => copy,
                    other => {
                        panic!("{content:?}: loaded {state:?}, saving it again gave {other:?}")
                    }
                };
                // Exactly, process identity included: save stores a state as given, even one
                // with no identity for a pid that is alive. Debug text, as NaN floats are not
                // equal to themselves.
                assert_eq!(format!("{copy:?}"), format!("{state:?}"), "{content:?}");
            }
            // Whatever decodes as the struct decodes as a Value too.
            if as_launch == Verdict::Ok(FUZZ_ID) {
                assert_eq!(as_value, Verdict::Ok(FUZZ_ID), "{content:?}");
            }
        }));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = tally.into_inner().unwrap();
    eprintln!("fuzzed entry files, {cases} cases: {tally:?}");
    // Not vacuous: mutations both survive and break decoding.
    for key in [
        "Value: Ok",
        "Value: Undecodable",
        "struct: Ok",
        "struct: Corrupt",
    ] {
        assert!(
            tally.get(key).copied().unwrap_or(0) > 0,
            "no {key:?}: {tally:?}"
        );
    }
}

#[test]
fn arbitrary_bytes_as_entry_files_multi_thread() {
    let runtime = common::multi_thread_runtime(2);
    fuzz_entry_files(runtime, 2000);
}

#[test]
fn arbitrary_bytes_as_entry_files_current_thread() {
    let runtime = common::current_thread_runtime();
    fuzz_entry_files(runtime, 1000);
}

// ---------------------------------------------------------------------------------------
// A huge entry file.

/// Memory measurements of one test must not overlap another's.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process's peak resident set size (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib << 10
}

async fn a_huge_sparse_entry_file_is_refused_without_being_allocated() {
    let _one_at_a_time = MEMORY.lock().await;
    let dir = run_dir();
    let run = dir.path();
    let store = ValueStore::new(run);
    let a = aid(5);
    let good = State::new(InstanceId::random(), pid(5), Value::from("fine"));
    store
        .with_aid(a, async |c| c.save(&good).await)
        .await
        .unwrap();
    let huge = InstanceId::random();
    let path = entry_path(run, a, huge);
    let size = 1u64 << 30;
    File::create(&path).unwrap().set_len(size).unwrap();

    // Lower the peak to the current size where the kernel allows it ("5" resets VmHWM), so
    // that an earlier peak cannot hide this one.
    let _ = fs::write("/proc/self/clear_refs", "5");
    let before = peak_rss();
    let want = CorruptKind::TooLarge {
        size,
        limit: Options::DEFAULT_MAX_ENTRY_SIZE,
    };
    let (load, shared, streamed, all, len) = no_deadlock("reading a 1 GiB file", async {
        let (load, streamed, all, len) = store
            .with_aid(a, async |c| {
                let load = c.load(huge).await;
                let streamed: Vec<_> = c.entries().collect().await;
                let all = c.load_all().await;
                Ok::<_, Error>((load, streamed, all, c.len().await?))
            })
            .await
            .unwrap();
        let shared = store.with_aid_shared(a, async |c| c.load(huge).await).await;
        (load, shared, streamed, all, len)
    })
    .await;
    let store_wide: Vec<_> = store.entries().collect().await;
    let after = peak_rss();

    for (what, r) in [("load", load), ("shared load", shared)] {
        match r {
            Err(Error::Corrupt { path: p, kind }) => {
                assert_eq!((p, kind), (path.clone(), want.clone()), "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(
        matches!(&all, Err(Error::Corrupt { kind, .. }) if *kind == want),
        "load_all: {all:?}"
    );
    assert_eq!(len, 2);
    for items in [
        streamed.into_iter().collect::<Vec<_>>(),
        store_wide
            .into_iter()
            .map(|r| r.map(|(_, s)| s))
            .collect::<Vec<_>>(),
    ] {
        assert_eq!(items.len(), 2, "{items:?}");
        let mut saw_good = false;
        for item in items {
            match item {
                Ok(s) => {
                    assert_eq!(s, good);
                    saw_good = true;
                }
                Err(Error::Corrupt { kind, .. }) => assert_eq!(kind, want),
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(saw_good);
    }
    // A memory assertion, not a speed one: reading the file would take a gigabyte.
    let growth = after.saturating_sub(before);
    assert!(
        growth < 64 << 20,
        "peak RSS grew by {} MiB while refusing a 1 GiB entry file",
        growth >> 20
    );
    eprintln!(
        "1 GiB sparse entry refused; peak RSS {} MiB -> {} MiB",
        before >> 20,
        after >> 20
    );
}

// ---------------------------------------------------------------------------------------
// Hand-built entries.

async fn hand_built_entries_with_bad_fields_are_corrupt() {
    let dir = run_dir();
    let run = dir.path();
    let values = ValueStore::new(run);
    let launches = LaunchStore::new(run);
    let a = aid(6);
    touch(&values, a).await;
    let id = InstanceId::random();
    let path = entry_path(run, a, id);
    let config = rmp_serde::to_vec_named(&launch(3)).unwrap();
    let base = fields(id, config.clone());

    // The control: the hand-built layout is an entry both stores read.
    fs::write(&path, entry(&base)).unwrap();
    let state = launches
        .with_aid(a, async |c| c.load(id).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.id, state.pid, state.config),
        (id, pid(77), launch(3))
    );
    assert_eq!(read_every_way(&values, a, id, &path).await, Verdict::Ok(id));
    // Keys in another order, and an unknown key, are fine too.
    let mut reordered = with_field(base.clone(), "zz_later", Some(mp_str("x")));
    reordered.reverse();
    fs::write(&path, entry(&reordered)).unwrap();
    assert_eq!(
        read_every_way(&launches, a, id, &path).await,
        Verdict::Ok(id)
    );

    let other = InstanceId::random();
    let bad: Vec<(&str, Fields)> = vec![
        (
            "id of 15 bytes",
            with_field(base.clone(), "id", Some(mp_bin(&id.as_bytes()[..15]))),
        ),
        ("id of 17 bytes", {
            let mut b = id.as_bytes().to_vec();
            b.push(0);
            with_field(base.clone(), "id", Some(mp_bin(&b)))
        }),
        (
            "id of 0 bytes",
            with_field(base.clone(), "id", Some(mp_bin(&[]))),
        ),
        (
            "id as bad hex text",
            with_field(
                base.clone(),
                "id",
                Some(mp_str(&id.to_string().to_uppercase())),
            ),
        ),
        ("id nil", with_field(base.clone(), "id", Some(vec![NIL]))),
        ("id missing", with_field(base.clone(), "id", None)),
        (
            "version 0",
            with_field(base.clone(), "version", Some(mp_uint(0))),
        ),
        ("version missing", with_field(base.clone(), "version", None)),
        (
            "version as text",
            with_field(base.clone(), "version", Some(mp_str("1"))),
        ),
        (
            "pid over u32",
            with_field(base.clone(), "pid", Some(mp_uint(1 << 32))),
        ),
        (
            "pid negative",
            with_field(
                base.clone(),
                "pid",
                Some(mp(|o| {
                    rmp::encode::write_sint(o, -1).unwrap();
                })),
            ),
        ),
        (
            "time nanos 1e9",
            with_field(base.clone(), "time", Some(mp_time(5, 1_000_000_000))),
        ),
        ("time missing", with_field(base.clone(), "time", None)),
        (
            "process a number",
            with_field(base.clone(), "process", Some(mp_uint(3))),
        ),
        ("config missing", with_field(base.clone(), "config", None)),
        (
            "config a string",
            with_field(base.clone(), "config", Some(mp_str("x"))),
        ),
        ("not a map", vec![]),
    ];
    for (what, fields) in bad {
        let bytes = if fields.is_empty() {
            mp(|o| {
                rmp::encode::write_array_len(o, 0).unwrap();
            })
        } else {
            entry(&fields)
        };
        fs::write(&path, &bytes).unwrap();
        // The struct store refuses them all; the Value store accepts only a config of
        // another shape.
        let v = read_every_way(&launches, a, id, &path).await;
        assert!(
            matches!(v, Verdict::Corrupt(CorruptKind::Undecodable(_))),
            "{what}: {v:?}"
        );
        let v = read_every_way(&values, a, id, &path).await;
        if what == "config a string" {
            assert_eq!(v, Verdict::Ok(id), "{what}");
        } else {
            assert!(
                matches!(v, Verdict::Corrupt(CorruptKind::Undecodable(_))),
                "{what} as a Value: {v:?}"
            );
        }
    }
    // A whole valid entry of another id.
    fs::write(&path, entry(&fields(other, config))).unwrap();
    assert_eq!(
        read_every_way(&launches, a, id, &path).await,
        Verdict::Corrupt(CorruptKind::IdMismatch { found: other })
    );
}

/// Edge values an entry may hold: each one either loads, and then saves back and reloads
/// unchanged, or is `Corrupt`; never a panic, never another error.
async fn what_load_accepts_save_writes_back() {
    let dir = run_dir();
    let run = dir.path();
    let launches = LaunchStore::new(run);
    let (a, copies) = (aid(6), aid(7));
    touch(&launches, a).await;
    let id = InstanceId::random();
    let path = entry_path(run, a, id);
    let base = fields(id, rmp_serde::to_vec_named(&launch(3)).unwrap());
    let mut failures = Vec::new();
    for (what, fields) in [
        (
            "time secs i64::MAX",
            with_field(base.clone(), "time", Some(mp_time(i64::MAX, 999_999_999))),
        ),
        (
            "time secs i64::MIN",
            with_field(base.clone(), "time", Some(mp_time(i64::MIN, 0))),
        ),
        (
            "time secs i64::MIN, nanos",
            with_field(base.clone(), "time", Some(mp_time(i64::MIN, 1))),
        ),
        (
            "time nanos 999999999",
            with_field(base.clone(), "time", Some(mp_time(-1, 999_999_999))),
        ),
        (
            "version 2",
            with_field(base.clone(), "version", Some(mp_uint(2))),
        ),
        (
            "version u64::MAX",
            with_field(base.clone(), "version", Some(mp_uint(u64::MAX))),
        ),
        ("pid 0", with_field(base.clone(), "pid", Some(mp_uint(0)))),
        (
            "pid u32::MAX",
            with_field(base.clone(), "pid", Some(mp_uint(u64::from(u32::MAX)))),
        ),
        (
            "odd process identity",
            with_field(
                base.clone(),
                "process",
                Some(mp(|o| {
                    rmp::encode::write_map_len(o, 2).unwrap();
                    rmp::encode::write_str(o, "boot_id").unwrap();
                    rmp::encode::write_str(o, "").unwrap();
                    rmp::encode::write_str(o, "start_time").unwrap();
                    rmp::encode::write_uint(o, u64::MAX).unwrap();
                })),
            ),
        ),
    ] {
        fs::write(&path, entry(&fields)).unwrap();
        let v = read_every_way(&launches, a, id, &path).await;
        eprintln!("{what}: {v:?}");
        if v != Verdict::Ok(id) {
            continue;
        }
        // Accepted: then it can be saved again, as a tool copying or migrating entries
        // would, and reads back the same.
        let state = launches
            .with_aid(a, async |c| c.load(id).await)
            .await
            .unwrap()
            .unwrap();
        let copied = launches
            .with_aid(copies, async |c| {
                c.destroy(id).await?;
                c.save(&state).await?;
                c.load(id).await
            })
            .await;
        match copied {
            Ok(Some(copy)) if copy == state => {}
            other => failures.push(format!(
                "{what}: loaded {state:?}, but saving it again gave {other:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Bytes after the entry's map, as a broken tool that appends might leave: the file is not
/// one entry, whatever the map before them holds.
async fn bytes_after_the_entry_are_corrupt() {
    let dir = run_dir();
    let run = dir.path();
    let store = LaunchStore::new(run);
    let a = aid(1);
    for (n, tail) in [
        &b"\xc1 trailing garbage from a broken tool"[..],
        b"\x00",
        b"\x80",
    ]
    .into_iter()
    .enumerate()
    {
        let state = State::new(InstanceId::random(), pid(1), launch(n as u64));
        store
            .with_aid(a, async |c| c.save(&state).await)
            .await
            .unwrap();
        let path = entry_path(run, a, state.id);
        assert_eq!(
            read_every_way(&store, a, state.id, &path).await,
            Verdict::Ok(state.id)
        );
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(tail);
        fs::remove_file(&path).unwrap();
        fs::write(&path, bytes).unwrap();
        match read_every_way(&store, a, state.id, &path).await {
            Verdict::Corrupt(CorruptKind::Undecodable(why)) => {
                assert!(why.contains("after the entry"), "{why}")
            }
            v => panic!("{tail:?} after the entry: {v:?}"),
        }
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_huge_sparse_file_under_a_raised_cap_is_not_allocated() {
    common::child::isolated(
        "a_huge_sparse_file_under_a_raised_cap_is_not_allocated",
        || {
            // Allocating the file's claimed size would now fail and abort this child.
            let limit = rustix::process::Rlimit {
                current: Some(4 << 30),
                maximum: Some(4 << 30),
            };
            rustix::process::setrlimit(rustix::process::Resource::As, limit).unwrap();
            common::run_current_thread(sparse_under_raised_cap());
            common::run_multi_thread(sparse_under_raised_cap());
        },
    );
}

/// With no size cap at all, a sparse file that claims a terabyte is refused for what it
/// holds, without the terabyte being allocated, and an entry larger than what a reader
/// allocates up front (4 MiB) still reads back whole.
async fn sparse_under_raised_cap() {
    let dir = run_dir();
    let run = dir.path();
    let store = ValueStore::with_options(run, Options::new().max_entry_size(u64::MAX));
    let a = aid(1);
    let big = State::new(
        InstanceId::random(),
        pid(1),
        Value::from("x".repeat(9 << 20)),
    );
    store
        .with_aid(a, async |c| c.save(&big).await)
        .await
        .unwrap();
    let loaded = store
        .with_aid(a, async |c| c.load(big.id).await)
        .await
        .unwrap();
    assert!(
        loaded.as_ref() == Some(&big),
        "a 9 MiB entry reads back whole"
    );
    fs::remove_file(entry_path(run, a, big.id)).unwrap();

    let id = InstanceId::random();
    let path = entry_path(run, a, id);
    File::create(&path).unwrap().set_len(1 << 40).unwrap();
    let v = no_deadlock(
        "reading a sparse 1 TiB file",
        read_every_way(&store, a, id, &path),
    )
    .await;
    assert!(
        matches!(v, Verdict::Corrupt(CorruptKind::Undecodable(_))),
        "{v:?}"
    );
}
