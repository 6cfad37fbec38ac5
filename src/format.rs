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
//! | `process` | map `{start_time: uint, boot_id: str}` or nil | the process's identity, nil when `/proc` did not show it |
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

fn to_wire(time: SystemTime) -> Time {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        // Before the epoch: floor to whole seconds so nanos stays in 0..1e9.
        Err(e) => {
            let d = e.duration();
            let (secs, nanos) = (d.as_secs() as i64, d.subsec_nanos());
            if nanos == 0 {
                Time {
                    secs: -secs,
                    nanos: 0,
                }
            } else {
                Time {
                    secs: -secs - 1,
                    nanos: 1_000_000_000 - nanos,
                }
            }
        }
    }
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

/// Encodes a config on its own; [`encode_record`] wraps it into an entry. The split lets
/// the typed part run where the value is, and the rest where the process is identified.
pub(crate) fn encode_config<C: Serialize>(config: &C, out: &mut Vec<u8>) -> Result<(), String> {
    config
        .serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .map_err(|e| e.to_string())
}

/// Appends an entry around an already encoded config.
pub(crate) fn encode_record(
    id: InstanceId,
    pid: u32,
    time: SystemTime,
    process: Option<&ProcessIdentity>,
    config: &[u8],
    out: &mut Vec<u8>,
) {
    use rmp::encode::{write_bin, write_map_len, write_nil, write_sint, write_str, write_uint};
    // Writing into a Vec cannot fail; the results only carry the writer's error type.
    let time = to_wire(time);
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
            let _ = write_map_len(out, 2);
            let _ = write_str(out, "start_time");
            let _ = write_uint(out, p.start_time);
            let _ = write_str(out, "boot_id");
            let _ = write_str(out, &p.boot_id);
        }
        None => {
            let _ = write_nil(out);
        }
    }
    let _ = write_str(out, "config");
    out.extend_from_slice(config);
}

/// Appends the encoding of `state` to `out`.
#[cfg(test)]
pub(crate) fn encode<C: Serialize>(state: &State<C>, out: &mut Vec<u8>) -> Result<(), String> {
    let mut config = Vec::new();
    encode_config(&state.config, &mut config)?;
    encode_record(
        state.id,
        state.pid,
        state.time,
        state.process.as_ref(),
        &config,
        out,
    );
    Ok(())
}

/// Decodes one entry file's bytes.
pub(crate) fn decode<C: DeserializeOwned>(bytes: &[u8]) -> Result<State<C>, String> {
    let record: Record<C> = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
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
