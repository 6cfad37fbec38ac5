//! The hostile-input suites' shared pieces (`tests/hostile_*.rs`): struct configs, the
//! check that every reader of one entry file agrees, and builders of hand-made MessagePack
//! entries.

use std::collections::BTreeMap;
use std::path::Path;

use futures::StreamExt;
use rmpv::Value;
use runstate::{Aid, AsyncStore, CorruptKind, Error, InstanceId, State};
use serde::{Deserialize, Serialize};

use super::pid;

/// A struct config, as a launcher would store it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    pub name: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub limit: Option<u64>,
    pub tags: Vec<u32>,
}

/// A recursive struct config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub children: Vec<Node>,
}

pub type ValueStore = AsyncStore<Value>;
pub type LaunchStore = AsyncStore<Launch>;

pub fn launch(n: u64) -> Launch {
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

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Makes the aid's directory and lock file, as any first use does.
pub async fn touch<C>(store: &AsyncStore<C>, a: Aid)
where
    C: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    store.with_aid(a, async |c| c.len().await).await.unwrap();
}

/// What one reader call gave for one entry file: the decoded id, or the corruption kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Ok(InstanceId),
    Corrupt(CorruptKind),
}

/// Checks that `r` is a loaded entry of `id` or a `Corrupt` naming `path`; anything else
/// (`Ok(None)` for a file that exists, another error) fails.
pub fn verdict<C: std::fmt::Debug>(
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
pub fn same(a: &Verdict, b: &Verdict) -> bool {
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
pub async fn read_every_way<C>(
    store: &AsyncStore<C>,
    a: Aid,
    id: InstanceId,
    path: &Path,
) -> Verdict
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
// Hand-built entries, and deep nesting.

pub fn mp(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut out);
    out
}

pub fn mp_str(s: &str) -> Vec<u8> {
    mp(|o| rmp::encode::write_str(o, s).unwrap())
}

pub fn mp_uint(n: u64) -> Vec<u8> {
    mp(|o| {
        rmp::encode::write_uint(o, n).unwrap();
    })
}

pub fn mp_bin(b: &[u8]) -> Vec<u8> {
    mp(|o| rmp::encode::write_bin(o, b).unwrap())
}

pub fn mp_time(secs: i64, nanos: u64) -> Vec<u8> {
    mp(|o| {
        rmp::encode::write_map_len(o, 2).unwrap();
        rmp::encode::write_str(o, "secs").unwrap();
        rmp::encode::write_sint(o, secs).unwrap();
        rmp::encode::write_str(o, "nanos").unwrap();
        rmp::encode::write_uint(o, nanos).unwrap();
    })
}

pub const NIL: u8 = 0xc0;

/// An entry's fields: names and encoded values.
pub type Fields = Vec<(&'static str, Vec<u8>)>;

/// The fields of an entry as src/format.rs writes them, each value already encoded.
pub fn fields(id: InstanceId, config: Vec<u8>) -> Fields {
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
pub fn entry(fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, fields.len() as u32).unwrap();
    for (key, value) in fields {
        rmp::encode::write_str(&mut out, key).unwrap();
        out.extend_from_slice(value);
    }
    out
}

pub fn with_field(mut fields: Fields, key: &'static str, value: Option<Vec<u8>>) -> Fields {
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
pub fn launch_with_extra(extra: &[u8]) -> Vec<u8> {
    let mut bytes = rmp_serde::to_vec_named(&launch(9)).unwrap();
    assert_eq!(bytes[0], 0x85, "a fixmap of 5 fields");
    bytes[0] = 0x86;
    bytes.extend(mp_str("zz_later"));
    bytes.extend_from_slice(extra);
    bytes
}
