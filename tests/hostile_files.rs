//! Hostile files and names where the store looks: fifos, links, sockets and directories in
//! place of the store's files are never followed and never block, and are refused as
//! `Insecure`; directories of a foreign owner or a loose mode are refused; bad run
//! directories fail cleanly; and aids and instance ids are checked from every public entry
//! point. Entry contents: tests/hostile_entries.rs.

#[macro_use]
mod common;

use std::fs::{self};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::hostile::*;
use common::{aid, aid_dir, entry_path, mkfifo, no_deadlock, pid, run_dir, state_dir};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use rmpv::Value;
use runstate::{Aid, CorruptKind, Error, InstanceId, State};

both_runtimes!(
    fifos_where_store_files_should_be_never_block,
    links_and_special_files_are_never_followed,
    foreign_owners_and_loose_modes_are_refused,
    bad_run_dirs_fail_cleanly,
    a_directory_or_socket_as_lock_file_is_insecure,
);

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
