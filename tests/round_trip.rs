//! Exact round trips (issue 9, part 1): whatever `State` a caller builds through the public
//! API, every way of reading it back returns a value `==` to it, and the file holds what was
//! given (no identity filled in by `save`).
//!
//! Each kind of state (`State::new` of this process, of a running child, of a zombie and of
//! a reaped child; `State::unidentified`; `with_time` around and far from the epoch;
//! `with_process` with made-up identities) is crossed with configs of several types, saved
//! through both `Cursor::save` and `AsyncStore::save`, and read back through
//! `Cursor::load`, `ReadCursor::load`, `AsyncStore::load`, `load_all` (both cursors),
//! `entries` (both cursors) and `AsyncStore::entries`, on both runtimes.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use proptest::prelude::*;
use runstate::{Aid, AsyncStore, Error, InstanceId, Liveness, ProcessIdentity, State};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use common::{AppConfig, aid, config, entry_path, run_dir};

// ---------------------------------------------------------------------------------------
// Configs.

/// A config with every shape serde gives a launcher: nested maps, vecs, options, enums of
/// every variant kind, tuples, chars, floats, integer-keyed maps and a struct inside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Rich {
    name: String,
    app: AppConfig,
    mounts: Vec<Mount>,
    limits: BTreeMap<String, Option<i64>>,
    layers: BTreeMap<u32, Vec<Layer>>,
    labels: HashMap<String, String>,
    tuple: (u8, i16, char, bool),
    bytes: Vec<u8>,
    ratio: f64,
    units: Vec<()>,
    wrapped: Wrapper,
    nothing: Option<Box<Rich>>,
}

/// One layer of a [`Rich`] config: mounts by path, some left empty.
type Layer = BTreeMap<String, Vec<Option<Mount>>>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Mount {
    None,
    Bind(String),
    Tmpfs { size: Option<u64>, mode: u32 },
    Overlay(Vec<String>, bool),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Wrapper(u64);

fn rich(n: u64) -> Rich {
    let mounts = vec![
        Mount::None,
        Mount::Bind(format!("/srv/{n}")),
        Mount::Tmpfs {
            size: (n % 2 == 0).then_some(n << 20),
            mode: 0o1777,
        },
        Mount::Overlay(
            vec!["lower".into(), "upper".into(), String::new()],
            n % 3 == 0,
        ),
    ];
    Rich {
        name: format!("rich-{n} ünïcødé ✓ \u{0} \"quoted\""),
        app: config(n),
        limits: BTreeMap::from([
            ("cpu".to_string(), Some(-1)),
            ("mem".to_string(), None),
            ("min".to_string(), Some(i64::MIN)),
            ("max".to_string(), Some(i64::MAX)),
        ]),
        layers: BTreeMap::from([
            (0, vec![]),
            (
                u32::MAX,
                vec![
                    BTreeMap::new(),
                    BTreeMap::from([(
                        "etc".to_string(),
                        mounts.iter().cloned().map(Some).chain([None]).collect(),
                    )]),
                ],
            ),
        ]),
        mounts,
        labels: HashMap::from([
            ("team".to_string(), "infra".to_string()),
            (String::new(), String::new()),
        ]),
        tuple: (u8::MAX, i16::MIN, '\u{10FFFF}', true),
        bytes: (0..=255u8).collect(),
        ratio: [0.1, -2.5e300, f64::INFINITY, f64::MIN_POSITIVE][n as usize % 4],
        units: vec![(), ()],
        wrapped: Wrapper(u64::MAX - n),
        nothing: None,
    }
}

// ---------------------------------------------------------------------------------------
// Processes whose pids the states name.

/// A running `sleep`, killed and reaped when dropped, however the test ends.
struct Sleeper(Child);

impl Sleeper {
    fn spawn() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("60")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `/proc` shows `pid` as a zombie.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next())
            == Some('Z')
    })
}

/// A child that has exited and that nobody has reaped yet (reaped when dropped).
fn zombie() -> Sleeper {
    let child = Command::new("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !is_zombie(child.id()) {
        assert!(start.elapsed() < common::DEADLOCK, "`true` never exited");
        std::thread::sleep(Duration::from_millis(1));
    }
    Sleeper(child)
}

/// The pid of a child that has exited and been reaped.
fn reaped_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

// ---------------------------------------------------------------------------------------
// States.

/// Times around the epoch and far from it, with odd nanoseconds.
fn times() -> Vec<SystemTime> {
    let mut times = vec![
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_nanos(1),
        UNIX_EPOCH - Duration::from_nanos(1),
        UNIX_EPOCH - Duration::new(1, 1),
        UNIX_EPOCH - Duration::new(86_400 * 365 * 300, 999_999_999),
        UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        UNIX_EPOCH + Duration::new(4_102_444_800, 999_999_999),
        SystemTime::now(),
    ];
    // The extremes the format stores: i64 seconds either side of the epoch.
    times.extend(UNIX_EPOCH.checked_add(Duration::new(i64::MAX as u64, 999_999_999)));
    times.extend(UNIX_EPOCH.checked_sub(Duration::from_secs(1 << 63)));
    times
}

/// Made-up identities: never read from `/proc`, stored as given.
fn made_up_identities() -> Vec<ProcessIdentity> {
    vec![
        ProcessIdentity::new(0, ""),
        ProcessIdentity::new(u64::MAX, "0b7e51c4-6a3f-4c1e-9d2a-3f1e5c7d9a01"),
        ProcessIdentity::new(12_345, "not a uuid: ünïcødé ✓"),
    ]
}

/// The pids the states name; their processes live as long as this does.
struct Pids {
    child: Sleeper,
    zombie: Sleeper,
    reaped: u32,
}

impl Pids {
    fn new() -> Pids {
        Pids {
            child: Sleeper::spawn(),
            zombie: zombie(),
            reaped: reaped_pid(),
        }
    }
}

/// Every kind of state the public API builds, each with one of `configs` (cycling).
fn states<C: Clone>(pids: &Pids, configs: &[C]) -> Vec<State<C>> {
    let mut n = 0;
    let mut next = || {
        n += 1;
        configs[(n - 1) % configs.len()].clone()
    };
    let me = std::process::id();
    let mut out = vec![
        State::new(InstanceId::random(), me, next()),
        State::new(InstanceId::random(), pids.child.pid(), next()),
        State::new(InstanceId::random(), pids.zombie.0.id(), next()),
        State::new(InstanceId::random(), pids.reaped, next()),
        // A live pid without its identity: save must not fill it in.
        State::unidentified(InstanceId::random(), me, next()),
        State::unidentified(InstanceId::random(), pids.child.pid(), next()),
        State::unidentified(InstanceId::from_bytes([0; 16]), 0, next()),
        State::unidentified(InstanceId::from_bytes([0xff; 16]), u32::MAX, next()),
        State::new(InstanceId::random(), me, next()).with_process(None),
    ];
    for time in times() {
        out.push(State::new(InstanceId::random(), me, next()).with_time(time));
        out.push(State::unidentified(InstanceId::random(), 1, next()).with_time(time));
    }
    for who in made_up_identities() {
        out.push(
            State::unidentified(InstanceId::random(), 4242, next()).with_process(Some(who.clone())),
        );
        // Someone else's identity on this very pid: stored as given, not as /proc says.
        out.push(
            State::new(InstanceId::random(), me, next())
                .with_process(Some(who))
                .with_time(UNIX_EPOCH - Duration::new(7, 3)),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------
// The check.

trait Config: Serialize + DeserializeOwned + Send + Sync + 'static + Clone + PartialEq + Debug {}
impl<C: Serialize + DeserializeOwned + Send + Sync + 'static + Clone + PartialEq + Debug> Config
    for C
{
}

/// Saves `states` spread over a few aids, alternating `Cursor::save` and `AsyncStore::save`,
/// then reads them back every way there is and compares with `==`.
async fn round_trips<C: Config>(states: Vec<State<C>>) {
    let tmp = run_dir();
    let store = AsyncStore::<C>::new(tmp.path());
    let aids = [aid(0), aid(17), aid(9999)];
    let mut expected: BTreeMap<Aid, BTreeMap<InstanceId, State<C>>> = BTreeMap::new();
    for (i, state) in states.into_iter().enumerate() {
        let a = aids[i % aids.len()];
        match i % 2 {
            0 => store.save(a, &state).await.unwrap(),
            _ => store
                .with_aid(a, async |c| c.save(&state).await)
                .await
                .unwrap(),
        }
        let previous = expected.entry(a).or_default().insert(state.id, state);
        assert!(previous.is_none(), "two states with one id");
    }
    check_all(&store, &expected).await;
    store.close().await.unwrap();
}

async fn check_all<C: Config>(
    store: &AsyncStore<C>,
    expected: &BTreeMap<Aid, BTreeMap<InstanceId, State<C>>>,
) {
    for (&a, states) in expected {
        for (&id, state) in states {
            let one = Some(state.clone());
            assert_eq!(store.load(a, id).await.unwrap(), one, "AsyncStore::load");
            let got = store.with_aid(a, async |c| c.load(id).await).await;
            assert_eq!(got.unwrap(), one, "Cursor::load");
            let got = store.with_aid_shared(a, async |c| c.load(id).await).await;
            assert_eq!(got.unwrap(), one, "ReadCursor::load");
        }

        let got = store.with_aid(a, async |c| c.load_all().await).await;
        assert_eq!(&got.unwrap(), states, "Cursor::load_all");
        let got = store.with_aid_shared(a, async |c| c.load_all().await).await;
        assert_eq!(&got.unwrap(), states, "ReadCursor::load_all");

        let got = store
            .with_aid(a, async |c| c.entries().try_collect::<Vec<_>>().await)
            .await;
        assert_eq!(&by_id(got.unwrap()), states, "Cursor::entries");
        let got = store
            .with_aid_shared(a, async |c| c.entries().try_collect::<Vec<_>>().await)
            .await;
        assert_eq!(&by_id(got.unwrap()), states, "ReadCursor::entries");
    }

    let listed: Vec<(Aid, State<C>)> = store.entries().try_collect().await.unwrap();
    let mut all: BTreeMap<Aid, BTreeMap<InstanceId, State<C>>> = BTreeMap::new();
    for (a, state) in listed {
        let dup = all.entry(a).or_default().insert(state.id, state);
        assert!(dup.is_none(), "AsyncStore::entries listed an entry twice");
    }
    assert_eq!(&all, expected, "AsyncStore::entries");
}

/// The states by id; panics on a duplicate.
fn by_id<C>(states: Vec<State<C>>) -> BTreeMap<InstanceId, State<C>> {
    let mut out = BTreeMap::new();
    for state in states {
        let id = state.id;
        assert!(out.insert(id, state).is_none(), "{id} listed twice");
    }
    out
}

// ---------------------------------------------------------------------------------------
// The tests.

async fn unit_config() {
    let pids = Pids::new();
    round_trips(states(&pids, &[()])).await;
}

async fn string_config() {
    let pids = Pids::new();
    let configs = [
        String::new(),
        "sleep 10".to_string(),
        "ünïcødé ✓ \u{0}\n\t\"".to_string(),
        // Over 64 KiB: decoded with its batch rather than on the polling thread.
        common::pattern(3, 100 << 10),
    ];
    round_trips(states(&pids, &configs)).await;
}

async fn u64_config() {
    let pids = Pids::new();
    let mut all = states(&pids, &[0, 1, 127, 128, u64::from(u32::MAX) + 1, u64::MAX]);
    // Enough entries in each aid for several listing batches (128 files each).
    all.extend((0..400).map(|n| {
        State::unidentified(InstanceId::random(), n as u32, n)
            .with_time(UNIX_EPOCH + Duration::new(n, (n * 7_919) as u32))
    }));
    round_trips(all).await;
}

async fn app_config() {
    let pids = Pids::new();
    let configs: Vec<AppConfig> = (0..6).map(config).collect();
    round_trips(states(&pids, &configs)).await;
}

async fn rich_config() {
    let pids = Pids::new();
    let configs: Vec<Rich> = (0..4).map(rich).collect();
    let mut all = states(&pids, &configs);
    let mut boxed = rich(9);
    boxed.nothing = Some(Box::new(rich(10)));
    all.push(State::new(InstanceId::random(), std::process::id(), boxed));
    round_trips(all).await;
}

/// What `State::new` records: the pid's identity as `/proc` shows it when the state is
/// built, and nothing for a pid `/proc` does not show. The saved file holds exactly that,
/// nil included, and the loaded entries keep their liveness.
async fn identity_as_built_is_what_is_stored() {
    let pids = Pids::new();
    let me = std::process::id();
    let mine = State::new(InstanceId::random(), me, ());
    assert!(mine.process.is_some());
    assert_eq!(mine.process, ProcessIdentity::of(me));
    let child = State::new(InstanceId::random(), pids.child.pid(), ());
    assert_eq!(child.process, ProcessIdentity::of(pids.child.pid()));
    assert!(child.process.is_some());
    assert_ne!(child.process, mine.process);
    let zombie = State::new(InstanceId::random(), pids.zombie.0.id(), ());
    assert!(zombie.process.is_some(), "a zombie has an identity");
    let unidentified = State::unidentified(InstanceId::random(), me, ());

    let tmp = run_dir();
    let store = AsyncStore::<()>::new(tmp.path());
    let a = aid(5);
    for s in [&mine, &child, &zombie, &unidentified] {
        store.save(a, s).await.unwrap();
    }
    // The file's own `process` field: nil for the unidentified state of a live pid.
    let process_field = |id: InstanceId| {
        let bytes = std::fs::read(entry_path(tmp.path(), a, id)).unwrap();
        let value: rmpv::Value = rmp_serde::from_slice(&bytes).unwrap();
        let map = value.as_map().unwrap().clone();
        map.into_iter()
            .find(|(k, _)| k.as_str() == Some("process"))
            .map(|(_, v)| v)
            .expect("an entry has a process field")
    };
    assert_eq!(process_field(unidentified.id), rmpv::Value::Nil);
    assert!(process_field(mine.id).is_map());

    let statuses = [
        (&mine, Liveness::Alive),
        (&child, Liveness::Alive),
        (&zombie, Liveness::Dead),
        (&unidentified, Liveness::Unknown),
    ];
    for (s, status) in statuses {
        let loaded = store.load(a, s.id).await.unwrap().unwrap();
        assert_eq!(&loaded, s);
        assert_eq!(store.liveness(&loaded).await, status, "pid {}", s.pid);
    }
    store.close().await.unwrap();
}

/// The snippet of issue 9, as a user's first test would have it.
async fn issue_snippet() -> Result<(), Error> {
    let child = Sleeper::spawn();
    let child_pid = child.pid();
    let config = config(1);
    let tmp = run_dir();
    let store = AsyncStore::<AppConfig>::new(tmp.path());
    let aid = Aid::new(12)?;

    let s = State::new(InstanceId::random(), child_pid, config);
    store.with_aid(aid, async |c| c.save(&s).await).await?;
    let loaded = store.with_aid(aid, async |c| c.load(s.id).await).await?;
    assert_eq!(loaded, Some(s));
    Ok(())
}

async fn issue_9_snippet() {
    issue_snippet().await.unwrap();
}

both_runtimes!(
    unit_config,
    string_config,
    u64_config,
    app_config,
    rich_config,
    identity_as_built_is_what_is_stored,
    issue_9_snippet,
);

#[tokio::test]
async fn issue_9_snippet_as_a_tokio_test() -> Result<(), Error> {
    issue_snippet().await
}

// ---------------------------------------------------------------------------------------
// Random states.

fn any_time() -> impl Strategy<Value = SystemTime> {
    (any::<i64>(), 0..1_000_000_000u32).prop_map(|(secs, nanos)| {
        let t = match secs >= 0 {
            true => UNIX_EPOCH + Duration::from_secs(secs as u64),
            false => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
        };
        t + Duration::from_nanos(u64::from(nanos))
    })
}

fn any_config() -> impl Strategy<Value = AppConfig> {
    (
        prop::collection::vec(".{0,12}", 0..4),
        prop::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
        any::<bool>(),
        any::<bool>(),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(command, env, network, read_only_root, memory_limit)| AppConfig {
                command,
                env,
                flags: common::Flags {
                    network,
                    read_only_root,
                    memory_limit,
                },
            },
        )
}

fn any_state() -> impl Strategy<Value = State<AppConfig>> {
    (
        any::<[u8; 16]>(),
        any::<u32>(),
        any_time(),
        any::<Option<(u64, String)>>(),
        any_config(),
    )
        .prop_map(|(id, pid, time, process, config)| {
            State::unidentified(InstanceId::from_bytes(id), pid, config)
                .with_time(time)
                .with_process(process.map(|(start, boot)| ProcessIdentity::new(start, boot)))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any time, pid, identity and config: `AsyncStore::load` and `ReadCursor::entries`
    /// give back what `AsyncStore::save` got.
    #[test]
    fn random_states_round_trip(state in any_state()) {
        let tmp = run_dir();
        common::run_current_thread(async {
            let store = AsyncStore::<AppConfig>::new(tmp.path());
            let a = aid((state.pid % 10_000) as u16);
            store.save(a, &state).await.unwrap();
            assert_eq!(store.load(a, state.id).await.unwrap().as_ref(), Some(&state));
            let listed: Vec<_> = store
                .with_aid_shared(a, async |c| Ok::<_, Error>(c.entries().collect::<Vec<_>>().await))
                .await
                .unwrap()
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(listed, std::slice::from_ref(&state));
        });
    }
}
