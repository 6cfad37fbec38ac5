//! Hostile input: whatever bytes, file types, owners, modes, names and nesting an attacker
//! or a broken tool puts where the store looks, readers never panic, never block, never
//! follow a link, never allocate what a file claims, and report the file as `Corrupt` or the
//! directory as `Insecure`. What a reader accepts, `save` writes back, and what `save`
//! accepts, readers read back. What tests/bad_input.rs already covers is not repeated here.
//!
//! The deep-nesting tests run in a child process (this test binary, re-run on that test
//! alone): a stack overflow aborts the whole process, and must fail only the test that
//! caused it.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{aid, aid_dir, entry_path, mkfifo, no_deadlock, pid, run_dir, state_dir};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use rmpv::Value;
use runstate::{Aid, AsyncStore, CorruptKind, Error, InstanceId, Options, State};
use serde::{Deserialize, Serialize};

both_runtimes!(
    a_huge_sparse_entry_file_is_refused_without_being_allocated,
    hand_built_entries_with_bad_fields_are_corrupt,
    what_load_accepts_save_writes_back,
    moderately_nested_configs_round_trip,
    fifos_where_store_files_should_be_never_block,
    links_and_special_files_are_never_followed,
    foreign_owners_and_loose_modes_are_refused,
    bad_run_dirs_fail_cleanly,
    bytes_after_the_entry_are_corrupt,
    a_directory_or_socket_as_lock_file_is_insecure,
);

/// A struct config, as a launcher would store it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Launch {
    name: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    limit: Option<u64>,
    tags: Vec<u32>,
}

/// A recursive struct config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Node {
    name: String,
    children: Vec<Node>,
}

type ValueStore = AsyncStore<Value>;
type LaunchStore = AsyncStore<Launch>;

fn launch(n: u64) -> Launch {
    Launch {
        name: format!("app-{n}"),
        argv: vec!["/bin/app".into(), format!("--n={n}"), "é ✓".into()],
        env: BTreeMap::from([
            ("HOME".into(), "/home/app".into()),
            ("N".into(), n.to_string()),
        ]),
        limit: (n % 2 == 0).then_some(n << 20),
        tags: vec![1, 2, n as u32],
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Makes the aid's directory and lock file, as any first use does.
async fn touch<C>(store: &AsyncStore<C>, a: Aid)
where
    C: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    store.with_aid(a, async |c| c.len().await).await.unwrap();
}

/// What one reader call gave for one entry file: the decoded id, or the corruption kind.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Ok(InstanceId),
    Corrupt(CorruptKind),
}

/// Checks that `r` is a loaded entry of `id` or a `Corrupt` naming `path`; anything else
/// (`Ok(None)` for a file that exists, another error) fails.
fn verdict<C: std::fmt::Debug>(
    what: &str,
    r: Result<Option<State<C>>, Error>,
    id: InstanceId,
    path: &Path,
) -> Verdict {
    match r {
        Ok(Some(state)) => {
            assert_eq!(
                state.id, id,
                "{what}: an Ok entry has the id of its file name"
            );
            Verdict::Ok(id)
        }
        Err(Error::Corrupt { path: p, kind }) => {
            assert_eq!(p, path, "{what}: Corrupt names the file");
            if let CorruptKind::IdMismatch { found } = &kind {
                assert_ne!(*found, id, "{what}: a mismatch with the same id");
            }
            Verdict::Corrupt(kind)
        }
        other => panic!("{what}: expected an entry or Corrupt, got {other:?}"),
    }
}

/// Undecodable's message is not compared.
fn same(a: &Verdict, b: &Verdict) -> bool {
    match (a, b) {
        (
            Verdict::Corrupt(CorruptKind::Undecodable(_)),
            Verdict::Corrupt(CorruptKind::Undecodable(_)),
        ) => true,
        _ => a == b,
    }
}

/// Reads the one file of `a` (named after `id`) every way a cursor can, checks that every
/// way agrees, and returns the verdict.
async fn read_every_way<C>(store: &AsyncStore<C>, a: Aid, id: InstanceId, path: &Path) -> Verdict
where
    C: Serialize + serde::de::DeserializeOwned + Send + Sync + std::fmt::Debug + 'static,
{
    let (load, streamed, all) = store
        .with_aid(a, async |c| {
            let load = c.load(id).await;
            let streamed: Vec<_> = c.entries().collect().await;
            let all = c.load_all().await;
            Ok::<_, Error>((load, streamed, all))
        })
        .await
        .unwrap();
    let by_load = verdict("load", load, id, path);
    assert_eq!(
        streamed.len(),
        1,
        "entries: one item per file: {streamed:?}"
    );
    let item = streamed.into_iter().next().unwrap().map(Some);
    let by_stream = verdict("entries", item, id, path);
    let by_all = match all {
        Ok(mut map) => {
            assert_eq!(map.len(), 1, "load_all: {map:?}");
            verdict("load_all", Ok(map.remove(&id)), id, path)
        }
        Err(e) => verdict::<C>("load_all", Err(e), id, path),
    };
    let shared = store.with_aid_shared(a, async |c| c.load(id).await).await;
    let by_shared = verdict("shared load", shared, id, path);
    for (what, v) in [
        ("entries", &by_stream),
        ("load_all", &by_all),
        ("shared load", &by_shared),
    ] {
        assert!(
            same(v, &by_load),
            "{what} says {v:?}, load says {by_load:?}"
        );
    }
    by_load
}

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
                let mut copy = match copy {
                    Ok(Some(copy)) => copy,
                    other => {
                        panic!("{content:?}: loaded {state:?}, saving it again gave {other:?}")
                    }
                };
                // Save fills in a missing process identity from /proc when the pid is alive (a
                // mutated key can leave it missing while the pid is this process's).
                if state.process.is_none() {
                    copy.process = None;
                }
                // Debug text, as NaN floats are not equal to themselves.
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    fuzz_entry_files(runtime, 2000);
}

#[test]
fn arbitrary_bytes_as_entry_files_current_thread() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
// Hand-built entries, and deep nesting.

fn mp(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut out);
    out
}

fn mp_str(s: &str) -> Vec<u8> {
    mp(|o| rmp::encode::write_str(o, s).unwrap())
}

fn mp_uint(n: u64) -> Vec<u8> {
    mp(|o| {
        rmp::encode::write_uint(o, n).unwrap();
    })
}

fn mp_bin(b: &[u8]) -> Vec<u8> {
    mp(|o| rmp::encode::write_bin(o, b).unwrap())
}

fn mp_time(secs: i64, nanos: u64) -> Vec<u8> {
    mp(|o| {
        rmp::encode::write_map_len(o, 2).unwrap();
        rmp::encode::write_str(o, "secs").unwrap();
        rmp::encode::write_sint(o, secs).unwrap();
        rmp::encode::write_str(o, "nanos").unwrap();
        rmp::encode::write_uint(o, nanos).unwrap();
    })
}

const NIL: u8 = 0xc0;

/// An entry's fields: names and encoded values.
type Fields = Vec<(&'static str, Vec<u8>)>;

/// The fields of an entry as src/format.rs writes them, each value already encoded.
fn fields(id: InstanceId, config: Vec<u8>) -> Fields {
    vec![
        ("version", mp_uint(1)),
        ("id", mp_bin(id.as_bytes())),
        ("pid", mp_uint(u64::from(pid(77)))),
        ("time", mp_time(1_700_000_000, 5)),
        ("process", vec![NIL]),
        ("config", config),
    ]
}

/// An entry file's bytes: a map of the named fields.
fn entry(fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, fields.len() as u32).unwrap();
    for (key, value) in fields {
        rmp::encode::write_str(&mut out, key).unwrap();
        out.extend_from_slice(value);
    }
    out
}

fn with_field(mut fields: Fields, key: &'static str, value: Option<Vec<u8>>) -> Fields {
    let at = fields.iter().position(|(k, _)| *k == key);
    match (at, value) {
        (Some(i), Some(v)) => fields[i].1 = v,
        (Some(i), None) => {
            fields.remove(i);
        }
        (None, Some(v)) => fields.push((key, v)),
        (None, None) => {}
    }
    fields
}

/// A `Launch` config encoded as a map, with one more key holding `extra`.
fn launch_with_extra(extra: &[u8]) -> Vec<u8> {
    let mut bytes = rmp_serde::to_vec_named(&launch(9)).unwrap();
    assert_eq!(bytes[0], 0x85, "a fixmap of 5 fields");
    bytes[0] = 0x86;
    bytes.extend(mp_str("zz_later"));
    bytes.extend_from_slice(extra);
    bytes
}

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

/// `depth` levels of `open` around a nil.
fn nested(depth: usize, open: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * open.len() + 1);
    for _ in 0..depth {
        out.extend_from_slice(open);
    }
    out.push(NIL);
    out
}

/// Ways of nesting one level (or two, for the mixed one).
const SHAPES: [(&str, &[u8]); 5] = [
    ("fixarray", &[0x91]),
    ("fixmap", &[0x81, 0xa1, b'k']),
    ("array16", &[0xdc, 0x00, 0x01]),
    ("map32 with nil keys", &[0xdf, 0x00, 0x00, 0x00, 0x01, NIL]),
    ("array in map", &[0x91, 0x81, 0xa1, b'k']),
];

/// Where in an entry the nesting goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Spot {
    /// As the whole config.
    Config,
    /// As an unknown key of the entry, next to a valid config (skipped via `IgnoredAny`).
    UnknownKey,
    /// As an unknown field of the struct config.
    UnknownField,
    /// As the process identity.
    Process,
}

fn deep_entry(id: InstanceId, spot: Spot, deep: Vec<u8>) -> Vec<u8> {
    let config = rmp_serde::to_vec_named(&launch(1)).unwrap();
    let fields = match spot {
        Spot::Config => fields(id, deep),
        Spot::UnknownKey => with_field(fields(id, config), "zz_later", Some(deep)),
        Spot::UnknownField => fields(id, launch_with_extra(&deep)),
        Spot::Process => with_field(fields(id, config), "process", Some(deep)),
    };
    entry(&fields)
}

const CHILD_ENV: &str = "RUNSTATE_HOSTILE_CHILD";

/// Runs `body` in a child process that runs only the test `name` of this binary, so that a
/// stack overflow, which aborts the process, fails that test alone and says so.
fn isolated(name: &str, body: impl FnOnce()) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        body();
        return;
    }
    let logs = run_dir();
    let (out, err) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{name}: the child process hung (deadlock?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = fs::read_to_string(&out).unwrap();
    let stderr = fs::read_to_string(&err).unwrap();
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    assert!(
        status.success(),
        "{name} failed in its child process ({status}):\n{}\n{}",
        tail(&stdout),
        tail(&stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "{name}: the child ran no test:\n{stdout}"
    );
    eprint!("{}", tail(&stderr));
}

#[test]
fn deeply_nested_messagepack_is_refused() {
    isolated("deeply_nested_messagepack_is_refused", || {
        common::run_current_thread(deeply_nested(100_000));
        common::run_multi_thread(deeply_nested(100_000));
    });
}

/// Entries nested `depth` deep in every shape and spot: each one `Corrupt`, read every way,
/// by a `Value` store and a struct store; the same entries 3 deep are read fine where their
/// shape fits, so the layout itself is valid.
async fn deeply_nested(depth: usize) {
    let dir = run_dir();
    let run = dir.path();
    let values = ValueStore::new(run);
    let launches = LaunchStore::new(run);
    let spots = [
        Spot::Config,
        Spot::UnknownKey,
        Spot::UnknownField,
        Spot::Process,
    ];
    let mut n = 0u16;
    let mut files = 0;
    for (shape, open) in SHAPES {
        for spot in spots {
            n += 1;
            let a = aid(n);
            touch(&values, a).await;

            // Control: 3 levels.
            let id = InstanceId::random();
            let path = entry_path(run, a, id);
            fs::write(&path, deep_entry(id, spot, nested(3, open))).unwrap();
            let v = read_every_way(&values, a, id, &path).await;
            let l = read_every_way(&launches, a, id, &path).await;
            if spot != Spot::Process {
                assert_eq!(
                    v,
                    Verdict::Ok(id),
                    "{shape} at {spot:?}, 3 deep, as a Value"
                );
            }
            if matches!(spot, Spot::UnknownKey | Spot::UnknownField) {
                assert_eq!(
                    l,
                    Verdict::Ok(id),
                    "{shape} at {spot:?}, 3 deep, as a struct"
                );
            }
            fs::remove_file(&path).unwrap();

            // The hostile one.
            let id = InstanceId::random();
            let path = entry_path(run, a, id);
            fs::write(&path, deep_entry(id, spot, nested(depth, open))).unwrap();
            files += 1;
            let started = Instant::now();
            for (what, v) in [
                ("Value", read_every_way(&values, a, id, &path).await),
                ("struct", read_every_way(&launches, a, id, &path).await),
            ] {
                assert!(
                    matches!(v, Verdict::Corrupt(CorruptKind::Undecodable(_))),
                    "{shape} at {spot:?}, {depth} deep, as a {what}: {v:?}"
                );
            }
            eprintln!("{shape} at {spot:?}: refused in {:?}", started.elapsed());
        }
    }
    // The store-wide stream reports each one and goes on.
    let items: Vec<_> = no_deadlock("store.entries()", values.entries().collect::<Vec<_>>()).await;
    assert_eq!(items.len(), files);
    for item in items {
        assert!(
            matches!(
                item,
                Err(Error::Corrupt {
                    kind: CorruptKind::Undecodable(_),
                    ..
                })
            ),
            "{item:?}"
        );
    }
}

/// `depth` nested arrays of `Value`s (with a map every tenth level) around a string.
fn deep_value(depth: usize) -> Value {
    let mut v = Value::from("leaf");
    for i in 0..depth {
        v = if i % 10 == 9 {
            Value::Map(vec![(Value::from(i as u64), v)])
        } else {
            Value::Array(vec![Value::from(i as i64 - 5), v])
        };
    }
    v
}

fn deep_node(depth: usize) -> Node {
    let mut node = Node {
        name: "leaf".into(),
        children: Vec::new(),
    };
    for i in 0..depth {
        node = Node {
            name: format!("level {i}"),
            children: vec![node.clone(), node],
        };
        if i > 12 {
            // Keep it a chain past a small tree, so the size stays small.
            node.children.pop();
        }
    }
    node
}

async fn moderately_nested_configs_round_trip() {
    let dir = run_dir();
    let run = dir.path();
    let values = ValueStore::new(run);
    let nodes = AsyncStore::<Node>::new(run);
    let value = State::new(InstanceId::random(), pid(1), deep_value(50));
    values
        .with_aid(aid(1), async |c| c.save(&value).await)
        .await
        .unwrap();
    let node = State::new(InstanceId::random(), pid(2), deep_node(50));
    nodes
        .with_aid(aid(2), async |c| c.save(&node).await)
        .await
        .unwrap();

    let loaded = values
        .with_aid_shared(aid(1), async |c| c.load(value.id).await)
        .await
        .unwrap();
    assert_eq!(loaded.as_ref(), Some(&value));
    let listed = nodes
        .with_aid(aid(2), async |c| c.load_all().await)
        .await
        .unwrap();
    assert_eq!(listed.into_values().collect::<Vec<_>>(), [node]);
}

#[test]
fn what_save_accepts_load_reads_back_at_any_depth() {
    isolated("what_save_accepts_load_reads_back_at_any_depth", || {
        common::run_current_thread(save_deep_then_load());
    });
}

/// A config that `save` accepts is one every reader can read: like the size cap, a depth
/// limit that readers enforce must be enforced (or not exceeded) when saving.
async fn save_deep_then_load() {
    let dir = run_dir();
    let store = ValueStore::new(dir.path());
    let a = aid(1);
    for depth in [100, 300, 600, 1100] {
        let state = State::new(InstanceId::random(), pid(depth as u32), deep_value(depth));
        let saved = store.with_aid(a, async |c| c.save(&state).await).await;
        match saved {
            Ok(()) => {
                let loaded = store.with_aid(a, async |c| c.load(state.id).await).await;
                match loaded {
                    Ok(Some(s)) => assert!(s == state, "depth {depth}: loaded another config"),
                    other => panic!(
                        "depth {depth}: save accepted the config, but load gives {:?}",
                        other.map(|o| o.map(|s| s.id))
                    ),
                }
            }
            Err(Error::Encode { .. } | Error::TooLarge { .. }) => {}
            Err(e) => panic!("depth {depth}: save failed with {e:?}"),
        }
        eprintln!("depth {depth}: fine");
    }
}

/// A recursive enum config, as a launcher might have for a condition or mount tree. Serde's
/// depth limit does not count enum levels, so only the reader's own walk bounds it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Expr {
    Not(Box<Expr>),
    Leaf(u32),
}

fn deep_expr(depth: usize) -> Expr {
    (0..depth).fold(Expr::Leaf(7), |e, _| Expr::Not(Box::new(e)))
}

#[test]
fn deep_enum_nesting_is_refused_not_a_stack_overflow() {
    isolated("deep_enum_nesting_is_refused_not_a_stack_overflow", || {
        common::run_current_thread(deep_enum_nesting());
        common::run_multi_thread(deep_enum_nesting());
    });
}

async fn deep_enum_nesting() {
    let dir = run_dir();
    let store = AsyncStore::<Expr>::new(dir.path());
    let a = aid(1);
    // As deep as save allows (each level is a one-key map, the leaf too): read back whole,
    // so the reader's limit costs no config that save accepted.
    let deepest = State::new(InstanceId::random(), pid(1), deep_expr(199));
    store
        .with_aid(a, async |c| c.save(&deepest).await)
        .await
        .unwrap();
    let loaded = store
        .with_aid(a, async |c| c.load(deepest.id).await)
        .await
        .unwrap();
    assert!(loaded.as_ref() == Some(&deepest), "200 levels round-trip");
    let too_deep = State::new(InstanceId::random(), pid(1), deep_expr(200));
    let saved = store.with_aid(a, async |c| c.save(&too_deep).await).await;
    assert!(matches!(saved, Err(Error::Encode { .. })), "{saved:?}");

    // A hostile file of 150,000 `{"Not": ...}` levels: 750 KB, under the 1 MiB cap.
    let mut config = Vec::new();
    for _ in 0..150_000 {
        config.extend_from_slice(&[0x81, 0xa3, b'N', b'o', b't']);
    }
    config.extend_from_slice(&[0x81, 0xa4, b'L', b'e', b'a', b'f', 0x00]);
    let (a, id) = (aid(2), InstanceId::random());
    touch(&store, a).await;
    let path = entry_path(dir.path(), a, id);
    fs::write(&path, entry(&fields(id, config))).unwrap();
    let v = read_every_way(&store, a, id, &path).await;
    assert!(
        matches!(v, Verdict::Corrupt(CorruptKind::Undecodable(_))),
        "{v:?}"
    );
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

/// The lock file's place taken by a directory (which `O_RDWR` refuses with EISDIR) or a
/// socket (ENXIO): `Insecure`, as for a symlink, and quickly.
async fn a_directory_or_socket_as_lock_file_is_insecure() {
    let dir = run_dir();
    let run = dir.path();
    let store = ValueStore::new(run);
    touch(&store, aid(1)).await;
    let lock = |n: u16| state_dir(run).join(format!("{n}.lock"));
    fs::DirBuilder::new().mode(0o700).create(lock(2)).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(lock(3)).unwrap();
    fs::set_permissions(lock(3), fs::Permissions::from_mode(0o600)).unwrap();
    for n in [2, 3] {
        let got = no_deadlock("a lock file that is not a file", async {
            store.with_aid(aid(n), async |c| c.len().await).await
        })
        .await;
        insecure(&format!("{}", lock(n).display()), got, &lock(n));
        let shared = store.with_aid_shared(aid(n), async |c| c.len().await).await;
        insecure("shared", shared, &lock(n));
    }
    assert_eq!(
        store.aids().await.unwrap(),
        [aid(1)],
        "no aid directory left behind"
    );
}

#[test]
fn a_huge_sparse_file_under_a_raised_cap_is_not_allocated() {
    isolated(
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

// ---------------------------------------------------------------------------------------
// Special files where the store's files should be.

fn insecure<T: std::fmt::Debug>(what: &str, r: Result<T, Error>, want: &Path) {
    match r {
        Err(Error::Insecure { path, .. }) => assert_eq!(path, want, "{what}"),
        other => panic!("{what}: expected Insecure for {want:?}, got {other:?}"),
    }
}

/// Every way of holding `a` is refused as insecure, naming `want`.
async fn refused_every_way(store: &ValueStore, a: Aid, want: &Path) {
    no_deadlock("holding a hostile aid", async {
        insecure(
            "with_aid",
            store.with_aid(a, async |c| c.len().await).await,
            want,
        );
        insecure(
            "with_aid_shared",
            store.with_aid_shared(a, async |c| c.len().await).await,
            want,
        );
        insecure(
            "try_with_aid",
            store.try_with_aid(a, async |c| c.len().await).await,
            want,
        );
        insecure(
            "with_aid_timeout",
            store
                .with_aid_timeout(a, Duration::from_secs(60), async |c| c.len().await)
                .await,
            want,
        );
    })
    .await;
}

fn file_type(path: &Path) -> fs::FileType {
    fs::symlink_metadata(path).unwrap().file_type()
}

async fn fifos_where_store_files_should_be_never_block() {
    use std::os::unix::fs::FileTypeExt;
    let dir = run_dir();
    let run = dir.path().join("run");
    let store = ValueStore::new(&run);
    let real = aid(1);
    let kept = State::new(InstanceId::random(), pid(1), Value::from(1));
    store
        .with_aid(real, async |c| c.save(&kept).await)
        .await
        .unwrap();
    let state = state_dir(&run);

    // A fifo as an aid's lock file: opening it for writing would block without O_NONBLOCK,
    // and flock on it must not be trusted.
    mkfifo(&state.join("21.lock"));
    refused_every_way(&store, aid(21), &state.join("21.lock")).await;
    assert!(
        file_type(&state.join("21.lock")).is_fifo(),
        "the fifo was replaced"
    );

    // A fifo as an aid's directory.
    mkfifo(&state.join("22"));
    refused_every_way(&store, aid(22), &state.join("22")).await;
    assert!(file_type(&state.join("22")).is_fifo());

    // A fifo as the state directory of another run directory.
    let run2 = dir.path().join("run2");
    fs::create_dir(&run2).unwrap();
    mkfifo(&run2.join("state"));
    let other = ValueStore::new(&run2);
    refused_every_way(&other, real, &run2.join("state")).await;
    let aids = no_deadlock("aids over a fifo", other.aids()).await;
    assert!(aids.is_err(), "aids() over a fifo state dir: {aids:?}");
    let items: Vec<_> =
        no_deadlock("entries over a fifo", other.entries().collect::<Vec<_>>()).await;
    assert!(
        matches!(items.as_slice(), [Err(_)]),
        "entries() over a fifo state dir: {items:?}"
    );

    // A fifo as the run directory itself.
    let run3 = dir.path().join("run3");
    mkfifo(&run3);
    let r = no_deadlock(
        "a fifo as the run dir",
        ValueStore::new(&run3).with_aid(real, async |c| c.len().await),
    )
    .await;
    assert!(
        matches!(r, Err(Error::Io { .. } | Error::Insecure { .. })),
        "{r:?}"
    );

    // The real aid is untouched, and the fifos are not aids: a refused lock file leaves no
    // aid directory behind.
    assert_eq!(store.aids().await.unwrap(), [real]);
    // Once someone else makes aid 21's directory, it is listed, and the store-wide stream
    // reports its lock file and goes on.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(state.join("21"))
        .unwrap();
    assert_eq!(store.aids().await.unwrap(), [real, aid(21)]);
    let all: Vec<_> = no_deadlock("entries", store.entries().collect::<Vec<_>>()).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0].as_ref().unwrap(), &(real, kept));
    match &all[1] {
        Err(Error::Insecure { path, .. }) => assert_eq!(path, &state.join("21.lock")),
        other => panic!("{other:?}"),
    }
}

async fn links_and_special_files_are_never_followed() {
    use std::os::unix::net::UnixListener;
    let dir = run_dir();
    let base = dir.path();
    let run = base.join("run");
    let store = ValueStore::new(&run);
    let state = state_dir(&run);
    let donor = aid(1);
    let kept = State::new(InstanceId::random(), pid(1), Value::from("kept"));
    store
        .with_aid(donor, async |c| c.save(&kept).await)
        .await
        .unwrap();
    let fifo = base.join("a-fifo");
    mkfifo(&fifo);
    let private = base.join("private-dir");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();

    // Lock files: a symlink to a fifo, a symlink to a directory, a directory, a socket.
    symlink(&fifo, state.join("31.lock")).unwrap();
    refused_every_way(&store, aid(31), &state.join("31.lock")).await;
    symlink(&private, state.join("32.lock")).unwrap();
    refused_every_way(&store, aid(32), &state.join("32.lock")).await;
    fs::create_dir(state.join("33.lock")).unwrap();
    fs::set_permissions(state.join("33.lock"), fs::Permissions::from_mode(0o700)).unwrap();
    let _socket = UnixListener::bind(state.join("34.lock")).unwrap();
    for n in [33, 34] {
        let r = no_deadlock(
            "a special lock file",
            store.with_aid(aid(n), async |c| c.len().await),
        )
        .await;
        assert!(
            matches!(r, Err(Error::Insecure { .. } | Error::Io { .. })),
            "lock file {n}: {r:?}"
        );
    }
    // Aid directories: a symlink to a real, private aid directory with entries, a symlink
    // to a fifo, a socket.
    symlink(aid_dir(&run, donor), state.join("35")).unwrap();
    refused_every_way(&store, aid(35), &state.join("35")).await;
    symlink(&fifo, state.join("36")).unwrap();
    refused_every_way(&store, aid(36), &state.join("36")).await;
    let _socket2 = UnixListener::bind(state.join("37")).unwrap();
    refused_every_way(&store, aid(37), &state.join("37")).await;
    // Aids whose lock file was refused left no directory behind; the others are not aids.
    let aids = store.aids().await.unwrap();
    assert_eq!(aids, [donor]);

    // Entries: a socket, a symlink to a fifo, and (as root) /dev/zero's and /dev/null's
    // device numbers, whose reads never end or are empty.
    let a = aid(38);
    touch(&store, a).await;
    let mut special = vec![InstanceId::random(), InstanceId::random()];
    let _socket3 = UnixListener::bind(entry_path(&run, a, special[0])).unwrap();
    symlink(&fifo, entry_path(&run, a, special[1])).unwrap();
    if is_root() {
        for minor in [5, 3] {
            let id = InstanceId::random();
            match rustix::fs::mknodat(
                rustix::fs::CWD,
                entry_path(&run, a, id),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o600),
                rustix::fs::makedev(1, minor),
            ) {
                Ok(()) => special.push(id),
                // A container may forbid making devices.
                Err(e) => eprintln!("mknod: {e}"),
            }
        }
    }
    for &id in &special {
        let path = entry_path(&run, a, id);
        let v = no_deadlock(
            "a special entry",
            read_all_ways_of_one(&store, a, id, &path),
        )
        .await;
        assert_eq!(v, Verdict::Corrupt(CorruptKind::NotAFile), "{path:?}");
    }
    let n = store.with_aid(a, async |c| c.len().await).await.unwrap();
    assert_eq!(n, special.len(), "every special file has an entry's name");

    // The run directory itself may be a symlink (as /var/run is to /run): only the store's
    // own files are never followed.
    let alias = base.join("run-alias");
    symlink(&run, &alias).unwrap();
    let via_alias = ValueStore::new(&alias);
    let got = via_alias
        .with_aid(donor, async |c| c.load(kept.id).await)
        .await
        .unwrap();
    assert_eq!(got, Some(kept.clone()));
    // Nothing was made or changed through any link.
    assert_eq!(fs::read_dir(&private).unwrap().count(), 0);
    let donor_all = store
        .with_aid(donor, async |c| c.load_all().await)
        .await
        .unwrap();
    assert_eq!(donor_all.into_values().collect::<Vec<_>>(), [kept]);
}

/// Like [`read_every_way`] for a directory holding other special files too: each way must
/// say the same about this one file.
async fn read_all_ways_of_one(store: &ValueStore, a: Aid, id: InstanceId, path: &Path) -> Verdict {
    let (load, streamed) = store
        .with_aid(a, async |c| {
            let load = c.load(id).await;
            let streamed: Vec<_> = c.entries().collect().await;
            Ok::<_, Error>((load, streamed))
        })
        .await
        .unwrap();
    let v = verdict("load", load, id, path);
    let mine: Vec<_> = streamed
        .into_iter()
        .filter(|item| matches!(item, Err(Error::Corrupt { path: p, .. }) if p == path))
        .collect();
    assert_eq!(mine.len(), 1, "entries reports {path:?} once");
    let s = verdict::<Value>(
        "entries",
        Err(mine.into_iter().next().unwrap().unwrap_err()),
        id,
        path,
    );
    assert_eq!(s, v);
    v
}

// ---------------------------------------------------------------------------------------
// Owners and modes.

async fn foreign_owners_and_loose_modes_are_refused() {
    let dir = run_dir();
    let run = dir.path();
    let store = ValueStore::new(run);
    let state = state_dir(run);
    for n in 1..=12 {
        touch(&store, aid(n)).await;
    }
    let chmod =
        |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    let lock = |n: u16| state.join(format!("{n}.lock"));
    let fresh = || ValueStore::new(run);

    // Write bits for the group or others, alone or with sticky and setgid bits: refused.
    chmod(&aid_dir(run, aid(1)), 0o720);
    chmod(&aid_dir(run, aid(2)), 0o702);
    chmod(&aid_dir(run, aid(3)), 0o1777);
    chmod(&aid_dir(run, aid(4)), 0o2770);
    chmod(&lock(5), 0o660);
    chmod(&lock(6), 0o620);
    chmod(&lock(7), 0o602);
    let store = fresh();
    for n in 1..=4 {
        refused_every_way(&store, aid(n), &aid_dir(run, aid(n))).await;
    }
    for n in 5..=7 {
        refused_every_way(&store, aid(n), &lock(n)).await;
    }
    // Readable by others but writable only by the owner: accepted.
    chmod(&aid_dir(run, aid(8)), 0o755);
    chmod(&lock(8), 0o644);
    let n = store
        .with_aid(aid(8), async |c| c.len().await)
        .await
        .unwrap();
    assert_eq!(n, 0);

    if is_root() {
        let other = Some(rustix::process::Uid::from_raw(12345));
        let other_group = Some(rustix::process::Gid::from_raw(12345));
        // Another user's lock file, even with a private mode.
        std::os::unix::fs::chown(lock(9), Some(12345), None).unwrap();
        refused_every_way(&fresh(), aid(9), &lock(9)).await;
        // Another group with group write: refused; another group without: accepted.
        rustix::fs::chown(aid_dir(run, aid(10)), None, other_group).unwrap();
        chmod(&aid_dir(run, aid(10)), 0o770);
        refused_every_way(&fresh(), aid(10), &aid_dir(run, aid(10))).await;
        rustix::fs::chown(aid_dir(run, aid(11)), None, other_group).unwrap();
        chmod(&aid_dir(run, aid(11)), 0o750);
        let n = fresh()
            .with_aid(aid(11), async |c| c.len().await)
            .await
            .unwrap();
        assert_eq!(n, 0);
        // Another user's state directory: every aid is refused, even one never used.
        rustix::fs::chown(&state, other, None).unwrap();
        let store = fresh();
        for n in [8, 12, 99] {
            refused_every_way(&store, aid(n), &state).await;
        }
        rustix::fs::chown(&state, Some(rustix::process::geteuid()), None).unwrap();
    }

    // A group-writable state directory: refused, for every aid.
    chmod(&state, 0o770);
    refused_every_way(&fresh(), aid(8), &state).await;
    chmod(&state, 0o750);
    let n = fresh()
        .with_aid(aid(8), async |c| c.len().await)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

async fn bad_run_dirs_fail_cleanly() {
    let dir = run_dir();
    let base = dir.path();
    let a = aid(1);
    // A NUL byte in the path, a path through a regular file, a symlink loop.
    let file = base.join("a-file");
    fs::write(&file, "").unwrap();
    let looped = base.join("loop");
    symlink(&looped, &looped).unwrap();
    for run in [
        PathBuf::from(format!("{}/with\0nul", base.display())),
        file.join("run"),
        looped.clone(),
        looped.join("run"),
    ] {
        let store = ValueStore::new(&run);
        let r = no_deadlock("a bad run dir", store.with_aid(a, async |c| c.len().await)).await;
        assert!(
            matches!(r, Err(Error::Io { .. } | Error::Insecure { .. })),
            "{run:?}: {r:?}"
        );
        let listed = no_deadlock("aids of a bad run dir", store.aids()).await;
        assert!(
            matches!(listed, Ok(ref v) if v.is_empty()) || listed.is_err(),
            "{run:?}: {listed:?}"
        );
    }
    assert_eq!(
        fs::read(&file).unwrap(),
        b"",
        "nothing was written through the file"
    );
}

// ---------------------------------------------------------------------------------------
// Bad aids and ids, from every public entry point.

fn canonical_aid(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 4
        && b.iter().all(u8::is_ascii_digit)
        && (b[0] != b'0' || b.len() == 1)
}

fn canonical_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[test]
fn every_aid_number_is_checked() {
    for n in 0..=u16::MAX {
        match (Aid::new(n), Aid::try_from(n)) {
            (Ok(a), Ok(b)) if n <= 9999 => {
                assert_eq!((a.get(), b.get(), u16::from(a)), (n, n, n));
                assert_eq!(a.to_string().parse::<Aid>().unwrap(), a);
            }
            (Err(Error::InvalidAid { input }), Err(Error::InvalidAid { .. })) if n > 9999 => {
                assert_eq!(input, n.to_string())
            }
            other => panic!("{n}: {other:?}"),
        }
        // Leading zeros are never an aid.
        assert!(format!("0{n}").parse::<Aid>().is_err(), "0{n}");
    }
}

#[test]
fn aid_and_id_text_is_parsed_strictly() {
    let config = ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let text = prop_oneof![
        any::<String>(),
        "[0-9]{0,6}",
        "[0-9a-fA-F]{30,34}",
        "[0-9a-f]{32}",
        "[0-9a-f ٣０-９:+-]{0,40}",
    ];
    let result = TestRunner::new(config).run(&text, |s| {
        match s.parse::<Aid>() {
            Ok(a) => {
                prop_assert!(canonical_aid(&s), "{s:?} parsed as an aid");
                prop_assert_eq!(a.to_string(), s.clone());
            }
            Err(Error::InvalidAid { input }) => {
                prop_assert!(!canonical_aid(&s), "{s:?} refused");
                // The message carries at most 16 characters of the input, plus an ellipsis.
                let shown: String = s.chars().take(16).collect();
                let ellipsis = if s.chars().count() > 16 { "…" } else { "" };
                prop_assert_eq!(input, format!("{shown}{ellipsis}"));
            }
            Err(e) => prop_assert!(false, "{s:?}: {e:?}"),
        }
        match s.parse::<InstanceId>() {
            Ok(id) => {
                prop_assert!(canonical_id(&s), "{s:?} parsed as an id");
                prop_assert_eq!(id.to_string(), s.clone());
            }
            Err(Error::InvalidInstanceId { input, .. }) => {
                prop_assert!(!canonical_id(&s), "{s:?}");
                prop_assert_eq!(input, s.chars().take(64).collect::<String>());
            }
            Err(e) => prop_assert!(false, "{s:?}: {e:?}"),
        }
        // serde, human-readable: the same text form, as a JSON string.
        let json = serde_json::to_string(&s).unwrap();
        match serde_json::from_str::<InstanceId>(&json) {
            Ok(id) => prop_assert_eq!(id.to_string(), s.clone()),
            Err(_) => prop_assert!(!canonical_id(&s), "{json} refused"),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn instance_ids_from_serde_are_checked() {
    let id = InstanceId::from_bytes(
        *b"\xab\xcd\xef\x01\x23\x45\x67\x89\xfe\xdc\xba\x98\x76\x54\x32\x10",
    );
    // JSON: the text form only.
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, format!("\"{id}\""));
    assert_eq!(serde_json::from_str::<InstanceId>(&json).unwrap(), id);
    let bytes_as_json = serde_json::to_string(id.as_bytes()).unwrap();
    for bad in [
        "null",
        "0",
        "12345678901234567890",
        "[]",
        bytes_as_json.as_str(),
        "{}",
        "true",
        "\"\"",
        "\"0x3031\"",
    ] {
        assert!(
            serde_json::from_str::<InstanceId>(bad).is_err(),
            "JSON {bad} gave an id"
        );
    }
    let upper = format!("\"{}\"", id.to_string().to_uppercase());
    assert!(serde_json::from_str::<InstanceId>(&upper).is_err());

    // MessagePack: 16 raw bytes. Bins and arrays of any other length are refused.
    let packed = rmp_serde::to_vec(&id).unwrap();
    assert_eq!(packed, mp_bin(id.as_bytes()));
    assert_eq!(rmp_serde::from_slice::<InstanceId>(&packed).unwrap(), id);
    for len in [0usize, 1, 15, 17, 32, 255, 256, 70_000] {
        let bin = mp_bin(&vec![7u8; len]);
        let r = rmp_serde::from_slice::<InstanceId>(&bin);
        assert!(r.is_err(), "a bin of {len} bytes gave {r:?}");
        let array = rmp_serde::to_vec(&vec![7u8; len]).unwrap();
        let r = rmp_serde::from_slice::<InstanceId>(&array);
        assert!(r.is_err(), "an array of {len} bytes gave {r:?}");
    }
    let array16 = rmp_serde::to_vec(&[7u8; 16]).unwrap();
    assert_eq!(
        rmp_serde::from_slice::<InstanceId>(&array16).unwrap(),
        InstanceId::from_bytes([7; 16])
    );
    let mut too_big = vec![7u32; 16];
    too_big[3] = 256;
    let r = rmp_serde::from_slice::<InstanceId>(&rmp_serde::to_vec(&too_big).unwrap());
    assert!(r.is_err(), "an element over 255 gave {r:?}");
    for bad in [
        vec![NIL],
        mp_uint(5),
        mp_str("not hex at all"),
        mp_str(&id.to_string().to_uppercase()),
        mp_str(&id.to_string()[1..]),
        vec![0x80],
        vec![0xc4],
        vec![0xc4, 16, 1, 2, 3],
        vec![],
    ] {
        let r = rmp_serde::from_slice::<InstanceId>(&bad);
        assert!(r.is_err(), "MessagePack {bad:x?} gave {r:?}");
    }
}
