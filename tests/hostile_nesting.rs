//! Deep nesting in entries and configs: MessagePack nested 100,000 deep in every shape and
//! place, and a recursive enum 150,000 deep, are refused as `Corrupt` without a stack
//! overflow; what `save` accepts, readers read back at any depth.
//!
//! The deep-nesting tests run in a child process (this test binary, re-run on that test
//! alone, `common::child::isolated`): a stack overflow aborts the whole process, and must
//! fail only the test that caused it.

#[macro_use]
mod common;

use std::fs;
use std::time::Instant;

use common::hostile::*;
use common::{aid, entry_path, no_deadlock, pid, run_dir};
use futures::StreamExt;
use rmpv::Value;
use runstate::{AsyncStore, CorruptKind, Error, InstanceId, State};
use serde::{Deserialize, Serialize};

both_runtimes!(moderately_nested_configs_round_trip);

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

#[test]
fn deeply_nested_messagepack_is_refused() {
    common::child::isolated("deeply_nested_messagepack_is_refused", || {
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
    common::child::isolated("what_save_accepts_load_reads_back_at_any_depth", || {
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
    common::child::isolated("deep_enum_nesting_is_refused_not_a_stack_overflow", || {
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
