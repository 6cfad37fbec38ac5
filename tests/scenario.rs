//! The store's basic life cycle, after the Go original's own scenario, and the on-disk layout
//! and format that other tools rely on. Every test runs on both tokio runtimes, with the store
//! on tmpfs (file work in place) and off it (file work on the blocking pool).

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    AppConfig, aid, aid_dir, config, entry_path, names_in, pid, run_dir, save_all, state_dir,
};
use futures::{StreamExt, TryStreamExt};
use runstate::{Aid, AsyncStore, Error, InstanceId, State};

type Store = AsyncStore<AppConfig>;

all_places!(
    file_work_runs_where_the_place_says,
    go_scenario,
    empty_aid_has_nothing,
    saving_an_existing_id_fails_and_keeps_the_old_entry,
    time_round_trips_to_the_nanosecond,
    store_entries_cover_every_aid_in_aid_order,
    files_are_private_and_where_the_layout_says,
    entry_file_is_a_messagepack_map_with_named_keys,
    entry_with_an_unknown_key_is_still_read,
);

/// A config that records which thread decodes it, by tag: a test's own tag keeps its
/// records apart from those of the tests running beside it.
#[derive(Debug, serde::Serialize)]
struct Spot(u64);

static DECODED_ON: std::sync::Mutex<Vec<(u64, std::thread::ThreadId)>> =
    std::sync::Mutex::new(Vec::new());

impl<'de> serde::Deserialize<'de> for Spot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Spot, D::Error> {
        let tag = <u64 as serde::Deserialize>::deserialize(d)?;
        let me = std::thread::current().id();
        DECODED_ON.lock().unwrap().push((tag, me));
        Ok(Spot(tag))
    }
}

/// The runner put this store where it meant to, and its file work runs there: in place on
/// tmpfs, on the blocking pool elsewhere. `prune_dead` decodes each entry inside its step of
/// file work, so the thread that decodes is the thread that did the step.
async fn file_work_runs_where_the_place_says() {
    static TAGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = run_dir();
    let in_memory = common::on_memory(dir.path());
    assert_eq!(in_memory, common::place() == common::Place::Tmpfs);
    let store = AsyncStore::<Spot>::new(dir.path());
    let tag = TAGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Entries of processes that have come and gone, for the pass to read and remove.
    for _ in 0..3 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let state = State::new(InstanceId::random(), child.id(), Spot(tag));
        child.wait().unwrap();
        store.save(aid(1), &state).await.unwrap();
    }
    let pruned = store
        .with_aid(aid(1), async |c| c.prune_dead().await)
        .await
        .unwrap();
    assert_eq!(pruned.len(), 3);
    let me = std::thread::current().id();
    let threads: Vec<_> = DECODED_ON
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t == tag)
        .map(|(_, thread)| *thread)
        .collect();
    assert_eq!(threads.len(), 3, "{threads:?}");
    if in_memory {
        assert!(
            threads.iter().all(|t| *t == me),
            "not in place: {threads:?}"
        );
    } else {
        assert!(
            threads.iter().all(|t| *t != me),
            "not on the pool: {threads:?}"
        );
    }
}

/// The Go original's test, step by step.
async fn go_scenario() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let (a0, a1) = (aid(0), aid(1));

    // An empty store lists nothing.
    assert_eq!(store.aids().await.unwrap(), []);
    let everything: Vec<_> = store.entries().collect().await;
    assert!(everything.is_empty(), "{everything:?}");

    // Save an entry in aid 0 and check it.
    let first = State::new(InstanceId::random(), pid(1001), config(1));
    store
        .with_aid(a0, async |c| {
            assert_eq!(c.aid(), a0);
            c.save(&first).await?;
            assert_eq!(c.load(first.id).await?.as_ref(), Some(&first));
            assert_eq!(c.len().await?, 1);
            assert!(!c.is_empty().await?);
            let ids: Vec<InstanceId> = c.ids().try_collect().await?;
            assert_eq!(ids, [first.id]);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    // A second entry in aid 0.
    let second = State::new(InstanceId::random(), pid(1002), config(2));
    store
        .with_aid(a0, async |c| {
            c.save(&second).await?;
            assert_eq!(c.len().await?, 2);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    // An entry in aid 1.
    let third = State::new(InstanceId::random(), pid(1003), config(3));
    store
        .with_aid(a1, async |c| {
            c.save(&third).await?;
            assert_eq!(c.load(third.id).await?.as_ref(), Some(&third));
            assert_eq!(c.len().await?, 1);
            // Aid 1 does not see aid 0's entries.
            assert_eq!(c.load(first.id).await?, None);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    // Aid 0 still holds exactly its two entries, as saved.
    let all = store
        .with_aid(a0, async |c| c.load_all().await)
        .await
        .unwrap();
    let expected = BTreeMap::from([(first.id, first.clone()), (second.id, second.clone())]);
    assert_eq!(all, expected);

    assert_eq!(store.aids().await.unwrap(), [a0, a1]);

    // Destroy in aid 1: true once, then false.
    store
        .with_aid(a1, async |c| {
            assert!(c.destroy(third.id).await?);
            assert!(!c.destroy(third.id).await?);
            assert_eq!(c.len().await?, 0);
            assert!(c.is_empty().await?);
            assert_eq!(c.load(third.id).await?, None);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    // An aid whose entries are all gone is still listed.
    assert_eq!(store.aids().await.unwrap(), [a0, a1]);
    let listed: Vec<(Aid, InstanceId)> = store
        .entries()
        .map_ok(|(aid, s)| (aid, s.id))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        listed.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([(a0, first.id), (a0, second.id)])
    );

    // Close: every call fails with Closed, on clones too; closing again is fine.
    let clone = store.clone();
    assert!(!store.is_closed());
    store.close().await.unwrap();
    assert!(store.is_closed() && clone.is_closed());
    for s in [&store, &clone] {
        let r = s.with_aid(a0, async |c| c.len().await).await;
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
        let r = s.with_aid(aid(77), async |c| c.len().await).await;
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
        let r = s.aids().await;
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
        let items: Vec<_> = s.entries().collect().await;
        assert!(
            matches!(items.as_slice(), [Err(Error::Closed)]),
            "{items:?}"
        );
    }
    store.close().await.unwrap();
    clone.close().await.unwrap();

    // Closing lost nothing: a new store on the directory sees the same entries.
    let reopened = Store::new(dir.path());
    let all = reopened
        .with_aid(a0, async |c| c.load_all().await)
        .await
        .unwrap();
    assert_eq!(all, expected);
}

async fn empty_aid_has_nothing() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let id = InstanceId::random();
    store
        .with_aid(aid(9999), async |c| {
            assert_eq!(c.len().await?, 0);
            assert!(c.is_empty().await?);
            assert_eq!(c.load(id).await?, None);
            assert!(!c.destroy(id).await?);
            assert!(c.load_all().await?.is_empty());
            assert_eq!(c.ids().collect::<Vec<_>>().await.len(), 0);
            assert_eq!(c.entries().collect::<Vec<_>>().await.len(), 0);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    // Using an aid makes its directory, so it is listed from then on.
    assert_eq!(store.aids().await.unwrap(), [Aid::MAX]);
}

async fn saving_an_existing_id_fails_and_keeps_the_old_entry() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let a = aid(5);
    let old = State::new(InstanceId::random(), pid(10), config(10));
    store
        .with_aid(a, async |c| c.save(&old).await)
        .await
        .unwrap();
    let path = entry_path(dir.path(), a, old.id);
    let before = std::fs::read(&path).unwrap();

    let mut new = State::new(old.id, pid(20), config(20));
    new.time = UNIX_EPOCH;
    let err = store
        .with_aid(a, async |c| c.save(&new).await)
        .await
        .unwrap_err();
    match &err {
        Error::AlreadyExists { path: p } => assert_eq!(p, &path),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }

    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "old entry was changed"
    );
    assert_eq!(names_in(&aid_dir(dir.path(), a)), [old.id.to_string()]);
    let loaded = store
        .with_aid(a, async |c| c.load(old.id).await)
        .await
        .unwrap();
    assert_eq!(loaded, Some(old));
}

async fn time_round_trips_to_the_nanosecond() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let times = [
        UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        UNIX_EPOCH + Duration::new(0, 1),
        UNIX_EPOCH + Duration::new(4_102_444_800, 999_999_999),
        UNIX_EPOCH,
        UNIX_EPOCH - Duration::new(5, 1),
        UNIX_EPOCH - Duration::new(86_400, 0),
        SystemTime::now(),
    ];
    let states: Vec<State<AppConfig>> = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            State::new(InstanceId::random(), pid(i as u32), config(i as u64)).with_time(*t)
        })
        .collect();
    let loaded = store
        .with_aid(aid(3), async |c| {
            for s in &states {
                c.save(s).await?;
            }
            let mut one_by_one = Vec::new();
            for s in &states {
                one_by_one.push(c.load(s.id).await?.unwrap());
            }
            Ok::<_, Error>(one_by_one)
        })
        .await
        .unwrap();
    for (got, want) in loaded.iter().zip(&states) {
        assert_eq!(got.time, want.time);
        assert_eq!(got, want);
    }
}

async fn store_entries_cover_every_aid_in_aid_order() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    // Saved out of order, with a different number of entries per aid.
    let aids = [aid(7), aid(3), aid(1200), aid(0), Aid::MAX, aid(10)];
    let mut expected = BTreeMap::new();
    for (i, &a) in aids.iter().enumerate() {
        let states: Vec<_> = (0..=i)
            .map(|j| {
                State::new(
                    InstanceId::random(),
                    pid((i * 100 + j) as u32),
                    config(j as u64),
                )
            })
            .collect();
        save_all(&store, a, &states).await;
        for s in states {
            expected.insert((a, s.id), s);
        }
    }
    let mut sorted = aids.to_vec();
    sorted.sort();
    assert_eq!(store.aids().await.unwrap(), sorted);

    let listed: Vec<(Aid, State<AppConfig>)> = store.entries().try_collect().await.unwrap();
    let order: Vec<Aid> = listed.iter().map(|(a, _)| *a).collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "not in aid order: {order:?}"
    );
    assert_eq!(listed.len(), expected.len());
    let got: BTreeMap<_, _> = listed.into_iter().map(|(a, s)| ((a, s.id), s)).collect();
    assert_eq!(got, expected);
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
}

async fn files_are_private_and_where_the_layout_says() {
    let dir = run_dir();
    let store = Store::new(dir.path().join("run").join("launcher"));
    let run = store.run_dir().to_owned();
    assert_eq!(run, dir.path().join("run/launcher"));
    let a = aid(42);
    let states: Vec<_> = (0..3)
        .map(|i| State::new(InstanceId::random(), pid(i), config(u64::from(i))))
        .collect();
    save_all(&store, a, &states).await;

    let state = state_dir(&run);
    let adir = aid_dir(&run, a);
    assert_eq!(adir, run.join("state/42"));
    assert_eq!(mode(&state), 0o040700, "state dir mode");
    assert_eq!(mode(&adir), 0o040700, "aid dir mode");
    let lock = state.join("42.lock");
    assert_eq!(mode(&lock), 0o100600, "lock file mode");
    assert_eq!(
        std::fs::metadata(&lock).unwrap().len(),
        0,
        "lock file is empty"
    );
    assert_eq!(names_in(&state), ["42", "42.lock"]);

    let mut want: Vec<String> = states.iter().map(|s| s.id.to_string()).collect();
    want.sort();
    assert_eq!(names_in(&adir), want, "nothing but entry files");
    for s in &states {
        let name = s.id.to_string();
        assert_eq!(name.len(), 32);
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        let path = adir.join(&name);
        assert_eq!(path, entry_path(&run, a, s.id));
        assert_eq!(mode(&path), 0o100600, "entry file mode of {path:?}");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
        assert_eq!(meta.nlink(), 1, "no temporary link left to {path:?}");
    }
}

fn as_map(value: &rmpv::Value) -> BTreeMap<String, rmpv::Value> {
    value
        .as_map()
        .unwrap_or_else(|| panic!("not a map: {value}"))
        .iter()
        .map(|(k, v)| {
            let key = k
                .as_str()
                .unwrap_or_else(|| panic!("key {k} is not a string"));
            (key.to_string(), v.clone())
        })
        .collect()
}

async fn entry_file_is_a_messagepack_map_with_named_keys() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let a = aid(8);
    let time = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    let saved = State::new(InstanceId::random(), pid(31337), config(4)).with_time(time);
    store
        .with_aid(a, async |c| c.save(&saved).await)
        .await
        .unwrap();

    let bytes = std::fs::read(entry_path(dir.path(), a, saved.id)).unwrap();
    let mut rest = bytes.as_slice();
    let value = rmpv::decode::read_value(&mut rest).unwrap();
    assert!(rest.is_empty(), "{} trailing bytes", rest.len());
    let map = as_map(&value);
    assert_eq!(
        map.keys().map(String::as_str).collect::<Vec<_>>(),
        ["config", "id", "pid", "process", "time", "version"]
    );
    assert_eq!(map["version"].as_u64(), Some(1));
    // No process has this pid, so no identity was recorded.
    assert!(map["process"].is_nil(), "{}", map["process"]);
    assert_eq!(map["id"].as_slice(), Some(&saved.id.as_bytes()[..]));
    assert!(matches!(map["id"], rmpv::Value::Binary(_)), "id is bin 16");
    assert_eq!(map["pid"].as_u64(), Some(u64::from(pid(31337))));
    let t = as_map(&map["time"]);
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(t["secs"].as_i64(), Some(1_700_000_000));
    assert_eq!(t["nanos"].as_u64(), Some(123_456_789));

    // The config is the application's struct, as a map with its field names.
    let c = as_map(&map["config"]);
    assert_eq!(
        c.keys().map(String::as_str).collect::<Vec<_>>(),
        ["command", "env", "flags"]
    );
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(command, saved.config.command);
    assert_eq!(as_map(&c["flags"])["read_only_root"].as_bool(), Some(true));
    let config: AppConfig = rmpv::ext::from_value(map["config"].clone()).unwrap();
    assert_eq!(config, saved.config);

    // For a live pid (ours), State::new records who the process is, and save and load keep
    // it exactly.
    let live = State::new(InstanceId::random(), std::process::id(), config.clone());
    let loaded = store
        .with_aid(a, async |c| {
            c.save(&live).await?;
            c.load(live.id).await
        })
        .await
        .unwrap()
        .unwrap();
    let bytes = std::fs::read(entry_path(dir.path(), a, live.id)).unwrap();
    let map = as_map(&rmpv::decode::read_value(&mut bytes.as_slice()).unwrap());
    let process = as_map(&map["process"]);
    // pidfs_inode only where the kernel has pidfs (Linux 6.9 and later).
    let keys: Vec<&str> = process.keys().map(String::as_str).collect();
    let identity = loaded.process.clone().expect("no identity for a live pid");
    match identity.pidfs_inode {
        Some(inode) => {
            assert_eq!(
                keys,
                ["boot_id", "pidfs_inode", "start_exact", "start_time"]
            );
            assert_eq!(process["pidfs_inode"].as_u64(), Some(inode));
        }
        None => assert_eq!(keys, ["boot_id", "start_exact", "start_time"]),
    }
    assert_eq!(process["start_exact"].as_bool(), Some(identity.start_exact));
    assert_eq!(process["start_time"].as_u64(), Some(identity.start_time));
    assert_eq!(process["boot_id"].as_str(), Some(identity.boot_id.as_str()));
    assert_eq!(identity.boot_id.len(), 36, "a UUID: {:?}", identity.boot_id);
    assert_eq!(loaded, live, "a round trip is exact");
}

async fn entry_with_an_unknown_key_is_still_read() {
    let dir = run_dir();
    let store = Store::new(dir.path());
    let a = aid(9);
    let saved = State::new(InstanceId::random(), pid(4242), config(9));
    store
        .with_aid(a, async |c| c.save(&saved).await)
        .await
        .unwrap();
    let path = entry_path(dir.path(), a, saved.id);

    // A later version of the crate wrote this entry with more keys, here and in `time`.
    let mut value =
        rmpv::decode::read_value(&mut std::fs::read(&path).unwrap().as_slice()).unwrap();
    let rmpv::Value::Map(fields) = &mut value else {
        panic!("not a map");
    };
    for (k, v) in fields.iter_mut() {
        if k.as_str() == Some("time") {
            let rmpv::Value::Map(time) = v else {
                panic!("time is not a map")
            };
            time.push(("zone".into(), "UTC".into()));
        }
    }
    fields.insert(0, ("aaa_first".into(), rmpv::Value::Nil));
    fields.push(("zz_future".into(), rmpv::Value::from(5)));
    fields.push((
        "annotations".into(),
        rmpv::Value::Map(vec![("owner".into(), "ops".into())]),
    ));
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &value).unwrap();
    std::fs::write(&path, &bytes).unwrap();

    let (loaded, streamed) = store
        .with_aid(a, async |c| {
            let loaded = c.load(saved.id).await?;
            let streamed: Vec<_> = c.entries().try_collect().await?;
            Ok::<_, Error>((loaded, streamed))
        })
        .await
        .unwrap();
    assert_eq!(loaded.as_ref(), Some(&saved));
    assert_eq!(streamed, [saved]);
}

/// Inside a `LocalSet` on a multi-thread runtime (the usual home of `!Send` work),
/// `block_in_place` refuses to run; the store's work goes to the blocking pool instead, and
/// every operation works.
#[test]
fn the_store_works_inside_a_local_set_on_a_multi_thread_runtime() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let (count, aids) = local.block_on(&runtime, async {
        let store = AsyncStore::<String>::new(dir.path());
        let aid = Aid::new(8).unwrap();
        for _ in 0..3 {
            store
                .with_aid(aid, async |c| {
                    c.save(&State::new(InstanceId::random(), 1, "x".into()))
                        .await
                })
                .await
                .unwrap();
        }
        let count = store
            .with_aid_shared(aid, async |c| c.len().await)
            .await
            .unwrap();
        (count, store.aids().await.unwrap())
    });
    assert_eq!((count, aids), (3, vec![Aid::new(8).unwrap()]));
}

/// `AsyncStore::entries` owns what it needs: the stream outlives the handle it came from and
/// runs in a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_stream_outlives_its_handle_and_moves_into_a_task() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let id = InstanceId::random();
    let entries = {
        let store = AsyncStore::<String>::new(dir.path());
        store
            .with_aid(Aid::new(4).unwrap(), async |c| {
                c.save(&State::new(id, 1, "x".into())).await
            })
            .await
            .unwrap();
        store.entries()
    };
    let listed = tokio::spawn(
        entries
            .map_ok(|(aid, state)| (aid.get(), state.id))
            .try_collect::<Vec<_>>(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(listed, [(4, id)]);
}
