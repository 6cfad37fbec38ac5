//! The on-disk format of one entry file.
//!
//! An entry is one MessagePack map with named fields, so any MessagePack tool can read it:
//!
//! | key       | type                     | meaning                                     |
//! |-----------|--------------------------|---------------------------------------------|
//! | `version` | uint                     | format version, [`VERSION`] (1)             |
//! | `id`      | bin 16                   | instance id; must match the file name       |
//! | `pid`     | uint                     | child process id                            |
//! | `time`    | map `{secs: int, nanos: uint}` | start time since the Unix epoch      |
//! | `process` | map `{start_time: uint, boot_id: str, start_exact: bool, pidfs_inode: uint}` or nil | the process's identity, nil when `/proc` did not show it; `start_exact` and `pidfs_inode` may be missing (older writers; no pidfs) |
//! | `config`  | the config's own encoding (structs as maps) | the application config   |
//!
//! The writer puts the keys in this order; readers must not depend on it.
//!
//! Decoding ignores keys it does not know, so a later version can add fields that this
//! version still reads. A version 0 or a missing required key is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{InstanceId, ProcessIdentity, State};

/// The format version this crate writes.
pub(crate) const VERSION: u32 = 1;

/// How deeply a reader lets arrays and maps nest in an entry. Decoding recurses once per
/// level, so a hostile file nested a million deep must be refused before it exhausts the
/// decoding thread's stack (a runtime or pool thread: 2 MiB by default, less if the runtime
/// says so).
const MAX_DEPTH: usize = 256;

/// Levels of nesting that [`value_len`] tracks without allocating.
const SHALLOW: usize = 16;

/// How deeply `save` lets a config nest, counting its own levels only. Below [`MAX_DEPTH`]
/// with a margin for the entry's own map, so whatever is saved can be read back.
pub(crate) const MAX_CONFIG_DEPTH: usize = 200;

/// Checks, without recursion, that one encoded MessagePack value nests at most `max` deep.
pub(crate) fn check_depth(bytes: &[u8], max: usize) -> Result<(), String> {
    value_len(bytes, max).map(|_| ())
}

/// The length in bytes of the one MessagePack value at the start of `bytes`, found without
/// recursion, or why there is none: malformed, truncated, or arrays and maps nested more
/// than `max` deep (at most [`MAX_DEPTH`]). Serde's depth limit misses nesting through enum
/// variants, so this walk is what keeps a hostile file from exhausting the stack.
pub(crate) fn value_len(bytes: &[u8], max: usize) -> Result<usize, String> {
    // Hot on every read, so one pass with the current container's count in a register:
    // outer[i] is what remains of the i-th enclosing array or map once the current one ends,
    // kept in `deeper` beyond the few levels real configs use (zeroing MAX_DEPTH levels for
    // every entry cost more than the walk of a small one).
    let mut outer = [0u64; SHALLOW];
    let mut deeper = Vec::new();
    let max = max.min(MAX_DEPTH);
    let mut depth = 0;
    let mut remaining = 1u64;
    let mut pos = 0usize;
    loop {
        while remaining == 0 {
            if depth == 0 {
                return Ok(pos);
            }
            depth -= 1;
            remaining = match outer.get(depth) {
                Some(&left) => left,
                None => deeper.pop().unwrap_or(0),
            };
        }
        remaining -= 1;
        // The markers of most values (small ints, nil, booleans, short strings), read first:
        // this walk runs on every save and read, and a config is mostly such values.
        match bytes.get(pos) {
            Some(0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3) => {
                pos += 1;
                continue;
            }
            Some(&marker @ 0xa0..=0xbf) => {
                pos += 1 + usize::from(marker & 0x1f);
                if pos > bytes.len() {
                    return Err("truncated MessagePack".into());
                }
                continue;
            }
            _ => {}
        }
        let (children, next) = value_header(bytes, pos).ok_or("malformed MessagePack")?;
        if next > bytes.len() {
            return Err("truncated MessagePack".into());
        }
        pos = next;
        if children > 0 {
            if depth == max {
                return Err(format!("nested deeper than {max} levels"));
            }
            match outer.get_mut(depth) {
                Some(slot) => *slot = remaining,
                None => deeper.push(remaining),
            }
            depth += 1;
            remaining = children;
        }
    }
}

/// Reads the header of the value at `pos`: how many values nest directly in it (map keys
/// count), and where the next value starts. `None` for a reserved marker or a header cut
/// short; a payload cut short is left to the caller, which checks the end against the length.
fn value_header(bytes: &[u8], pos: usize) -> Option<(u64, usize)> {
    let be = |at: usize, n: usize| -> Option<u64> {
        let field = bytes.get(at..at.checked_add(n)?)?;
        Some(field.iter().fold(0u64, |v, &b| v << 8 | u64::from(b)))
    };
    let marker = *bytes.get(pos)?;
    let at = pos + 1;
    // A payload of `len` bytes after an `n`-byte length field.
    let sized = |n: usize, extra: usize| -> Option<(u64, usize)> {
        let len = usize::try_from(be(at, n)?).ok()?;
        Some((0, (at + n).checked_add(len)?.checked_add(extra)?))
    };
    match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some((0, at)),
        0xa0..=0xbf => Some((0, at + usize::from(marker & 0x1f))),
        0x80..=0x8f => Some((2 * u64::from(marker & 0x0f), at)),
        0x90..=0x9f => Some((u64::from(marker & 0x0f), at)),
        0xc4 | 0xd9 => sized(1, 0),
        0xc5 | 0xda => sized(2, 0),
        0xc6 | 0xdb => sized(4, 0),
        0xc7 => sized(1, 1),
        0xc8 => sized(2, 1),
        0xc9 => sized(4, 1),
        0xcc | 0xd0 => Some((0, at + 1)),
        0xcd | 0xd1 | 0xd4 => Some((0, at + 2)),
        0xd5 => Some((0, at + 3)),
        0xca | 0xce | 0xd2 => Some((0, at + 4)),
        0xd6 => Some((0, at + 5)),
        0xcb | 0xcf | 0xd3 => Some((0, at + 8)),
        0xd7 => Some((0, at + 9)),
        0xd8 => Some((0, at + 17)),
        0xdc => Some((be(at, 2)?, at + 2)),
        0xdd => Some((be(at, 4)?, at + 4)),
        0xde => Some((2 * be(at, 2)?, at + 2)),
        0xdf => Some((2 * be(at, 4)?, at + 4)),
        0xc1 => None,
    }
}

#[derive(Serialize, Deserialize)]
struct Time {
    secs: i64,
    nanos: u32,
}

#[derive(Deserialize)]
struct Record<C> {
    version: u32,
    id: InstanceId,
    pid: u32,
    time: Time,
    #[serde(default)]
    process: Option<ProcessIdentity>,
    config: C,
}

/// The wire form of a time, or `None` for one beyond `i64` seconds from the epoch.
fn to_wire(time: SystemTime) -> Option<Time> {
    // i128 so that every SystemTime this platform has maps without overflow, including
    // i64::MIN seconds, which from_wire can produce.
    let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (i128::from(d.as_secs()), d.subsec_nanos()),
        // Before the epoch: floor to whole seconds so nanos stays in 0..1e9.
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-i128::from(d.as_secs()), 0),
                n => (-i128::from(d.as_secs()) - 1, 1_000_000_000 - n),
            }
        }
    };
    Some(Time {
        secs: i64::try_from(secs).ok()?,
        nanos,
    })
}

fn from_wire(t: &Time) -> Result<SystemTime, String> {
    if t.nanos >= 1_000_000_000 {
        return Err(format!("time nanos {} is not below 1e9", t.nanos));
    }
    let out = if t.secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(t.secs as u64, t.nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.secs.unsigned_abs()))
            .and_then(|t0| t0.checked_add(Duration::from_nanos(u64::from(t.nanos))))
    };
    out.ok_or_else(|| format!("time {}s is out of range", t.secs))
}

/// Encodes a config on its own.
fn encode_config<C: Serialize>(config: &C, out: &mut Vec<u8>) -> Result<(), String> {
    config
        .serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .map_err(|e| e.to_string())
}

/// Appends the encoding of `state` to `out`, its config checked to nest at most
/// [`MAX_CONFIG_DEPTH`] deep; returns the config's encoded length. One buffer: the config
/// is encoded where the record needs it, not copied there.
pub(crate) fn encode_entry<C: Serialize>(
    state: &State<C>,
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    encode_record_head(state.id, state.pid, state.time, state.process.as_ref(), out)?;
    let start = out.len();
    encode_config(&state.config, out)?;
    check_depth(&out[start..], MAX_CONFIG_DEPTH)?;
    Ok(out.len() - start)
}

/// Appends an entry's record up to its config, which follows it.
fn encode_record_head(
    id: InstanceId,
    pid: u32,
    time: SystemTime,
    process: Option<&ProcessIdentity>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    use rmp::encode::{write_bin, write_map_len, write_nil, write_sint, write_str, write_uint};
    let time = to_wire(time).ok_or("the start time is too far from 1970 to store")?;
    // Writing into a Vec cannot fail; the results only carry the writer's error type.
    let _ = write_map_len(out, 6);
    let _ = write_str(out, "version");
    let _ = write_uint(out, u64::from(VERSION));
    let _ = write_str(out, "id");
    let _ = write_bin(out, id.as_bytes());
    let _ = write_str(out, "pid");
    let _ = write_uint(out, u64::from(pid));
    let _ = write_str(out, "time");
    let _ = write_map_len(out, 2);
    let _ = write_str(out, "secs");
    let _ = write_sint(out, time.secs);
    let _ = write_str(out, "nanos");
    let _ = write_uint(out, u64::from(time.nanos));
    let _ = write_str(out, "process");
    match process {
        Some(p) => {
            let _ = write_map_len(out, 3 + u32::from(p.pidfs_inode.is_some()));
            let _ = write_str(out, "start_time");
            let _ = write_uint(out, p.start_time);
            let _ = write_str(out, "boot_id");
            let _ = write_str(out, &p.boot_id);
            let _ = write_str(out, "start_exact");
            let _ = rmp::encode::write_bool(out, p.start_exact);
            if let Some(inode) = p.pidfs_inode {
                let _ = write_str(out, "pidfs_inode");
                let _ = write_uint(out, inode);
            }
        }
        None => {
            let _ = write_nil(out);
        }
    }
    let _ = write_str(out, "config");
    Ok(())
}

/// Appends the encoding of `state` to `out`.
#[cfg(test)]
pub(crate) fn encode<C: Serialize>(state: &State<C>, out: &mut Vec<u8>) -> Result<(), String> {
    encode_record_head(state.id, state.pid, state.time, state.process.as_ref(), out)?;
    encode_config(&state.config, out)
}

/// Whether `bytes`, the start of a file, can begin an entry: an entry is one map. Lets a
/// reader stop early on a file that claims to be huge but is not an entry, such as a
/// sparse file, whose holes read as zeros.
pub(crate) fn may_be_entry(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

/// Decodes one entry file's bytes.
pub(crate) fn decode<C: DeserializeOwned>(bytes: &[u8]) -> Result<State<C>, String> {
    if !may_be_entry(bytes) {
        return Err("not a MessagePack map".into());
    }
    let len = value_len(bytes, MAX_DEPTH)?;
    if len != bytes.len() {
        return Err(format!(
            "{} stray bytes after the entry's map",
            bytes.len() - len
        ));
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    let record = Record::<C>::deserialize(&mut de).map_err(|e| config_hint::<C>(bytes, e))?;
    if record.version == 0 {
        return Err("format version 0 does not exist".into());
    }
    Ok(State {
        id: record.id,
        pid: record.pid,
        time: from_wire(&record.time)?,
        process: record.process,
        config: record.config,
    })
}

/// The decoder's message, saying so when the entry is whole but its config is not a `C`:
/// most often a reader that names another config type than the writer did. Decoded again
/// without the config to tell, on this failure path only.
fn config_hint<C>(bytes: &[u8], e: rmp_serde::decode::Error) -> String {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    match Record::<serde::de::IgnoredAny>::deserialize(&mut de) {
        Ok(_) => format!(
            "the entry's config does not decode as {} (saved with another config type?): {e}",
            std::any::type_name::<C>()
        ),
        Err(_) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sample() -> State<BTreeMap<String, String>> {
        let config = BTreeMap::from([("cmd".to_string(), "sleep 1".to_string())]);
        State::new(InstanceId::from_bytes([7; 16]), 1234, config)
    }

    #[test]
    fn round_trips_to_the_nanosecond() {
        for time in [
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(5, 1),
            UNIX_EPOCH - Duration::new(5, 0),
            UNIX_EPOCH,
        ] {
            let state = sample().with_time(time);
            let mut bytes = Vec::new();
            encode(&state, &mut bytes).unwrap();
            assert_eq!(decode::<BTreeMap<String, String>>(&bytes).unwrap(), state);
        }
    }

    #[test]
    fn is_a_map_with_named_fields_and_ignores_unknown_ones() {
        let mut bytes = Vec::new();
        encode(&sample(), &mut bytes).unwrap();
        // A later writer adds a field: this version still reads the entry.
        let mut generic: BTreeMap<String, rmpv::Value> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            generic.keys().map(String::as_str).collect::<Vec<_>>(),
            ["config", "id", "pid", "process", "time", "version"]
        );
        generic.insert("zz_future".into(), rmpv::Value::from(5));
        let extended = rmp_serde::to_vec_named(&generic).unwrap();
        assert_eq!(
            decode::<BTreeMap<String, String>>(&extended).unwrap(),
            sample_with_time(&bytes)
        );
    }

    fn sample_with_time(bytes: &[u8]) -> State<BTreeMap<String, String>> {
        decode(bytes).unwrap()
    }

    #[test]
    fn times_far_from_the_epoch_round_trip_or_are_refused() {
        let far_past = UNIX_EPOCH - Duration::from_secs(1 << 63);
        let mut bytes = Vec::new();
        encode(&sample().with_time(far_past), &mut bytes).unwrap();
        assert_eq!(
            decode::<BTreeMap<String, String>>(&bytes).unwrap().time,
            far_past
        );
        if let Some(too_far) = UNIX_EPOCH.checked_sub(Duration::new(1 << 63, 1)) {
            assert!(encode(&sample().with_time(too_far), &mut Vec::new()).is_err());
        }
    }

    #[test]
    fn depth_is_checked_without_recursion_as_the_reader_counts_it() {
        fn nested(levels: usize) -> rmpv::Value {
            (0..levels).fold(rmpv::Value::Nil, |inner, i| {
                if i % 2 == 0 {
                    rmpv::Value::Array(vec![1.into(), inner])
                } else {
                    rmpv::Value::Map(vec![("k".into(), inner), (2.into(), "x".into())])
                }
            })
        }
        for levels in [0, 1, 5, MAX_CONFIG_DEPTH] {
            let mut config = Vec::new();
            encode_config(&nested(levels), &mut config).unwrap();
            check_depth(&config, MAX_CONFIG_DEPTH).unwrap();
            // Siblings after each nested level: every level's count survives the way down.
            assert_eq!(value_len(&config, MAX_CONFIG_DEPTH), Ok(config.len()));
            let state = State::new(InstanceId::from_bytes([1; 16]), 1, nested(levels));
            let mut bytes = Vec::new();
            encode(&state, &mut bytes).unwrap();
            assert_eq!(
                decode::<rmpv::Value>(&bytes).unwrap(),
                state,
                "{levels} levels"
            );
        }
        let mut config = Vec::new();
        encode_config(&nested(MAX_CONFIG_DEPTH + 1), &mut config).unwrap();
        assert!(check_depth(&config, MAX_CONFIG_DEPTH).is_err());
        // A million levels: refused by the reader's limit, not by the stack.
        let mut deep = vec![0x91; 1_000_000];
        deep.push(0xc0);
        assert!(check_depth(&deep, MAX_CONFIG_DEPTH).is_err());
        assert!(decode::<rmpv::Value>(&deep).is_err());
        assert!(check_depth(&[0xc1], 4).is_err());
        assert!(check_depth(&[0x92, 0x01], 4).is_err());
    }

    /// The identity's later fields round-trip, and an entry of an earlier version, without
    /// them, still reads: its start time then counts as inexact, and it has no inode.
    #[test]
    fn identities_with_and_without_the_later_fields_read() {
        for inode in [Some(1u64 << 40), None] {
            let mut state = sample();
            let mut who = ProcessIdentity::new(4242, "boot");
            who.pidfs_inode = inode;
            state.process = Some(who);
            let mut bytes = Vec::new();
            encode(&state, &mut bytes).unwrap();
            assert_eq!(decode::<BTreeMap<String, String>>(&bytes).unwrap(), state);
        }
        let mut generic: BTreeMap<String, rmpv::Value> = {
            let mut bytes = Vec::new();
            encode(&sample(), &mut bytes).unwrap();
            rmp_serde::from_slice(&bytes).unwrap()
        };
        let old = rmpv::Value::Map(vec![
            ("start_time".into(), 4242.into()),
            ("boot_id".into(), "boot".into()),
        ]);
        generic.insert("process".into(), old);
        let bytes = rmp_serde::to_vec_named(&generic).unwrap();
        let who = decode::<BTreeMap<String, String>>(&bytes)
            .unwrap()
            .process
            .unwrap();
        assert_eq!((who.start_time, who.boot_id.as_str()), (4242, "boot"));
        assert_eq!((who.start_exact, who.pidfs_inode), (false, None));
    }

    #[test]
    fn a_config_of_another_type_says_so() {
        let mut bytes = Vec::new();
        encode(&sample(), &mut bytes).unwrap();
        let why = decode::<u64>(&bytes).unwrap_err();
        assert!(
            why.starts_with(
                "the entry's config does not decode as u64 (saved with another config type?): "
            ),
            "{why}"
        );
        // A broken envelope is not blamed on the config.
        let mut generic: BTreeMap<String, rmpv::Value> = rmp_serde::from_slice(&bytes).unwrap();
        generic.insert("pid".into(), rmpv::Value::from("not a pid"));
        let bad_pid = rmp_serde::to_vec_named(&generic).unwrap();
        let why = decode::<BTreeMap<String, String>>(&bad_pid).unwrap_err();
        assert!(!why.contains("config"), "{why}");
    }

    #[test]
    fn refuses_garbage_and_version_zero() {
        assert!(decode::<()>(b"").is_err());
        assert!(decode::<()>(b"\xc1\xc1").is_err());
        let mut bytes = Vec::new();
        encode(&sample(), &mut bytes).unwrap();
        assert!(decode::<BTreeMap<String, String>>(&bytes[..bytes.len() - 1]).is_err());
        let mut generic: BTreeMap<String, rmpv::Value> = rmp_serde::from_slice(&bytes).unwrap();
        generic.insert("version".into(), rmpv::Value::from(0));
        let v0 = rmp_serde::to_vec_named(&generic).unwrap();
        assert!(decode::<BTreeMap<String, String>>(&v0).is_err());
    }
}
