//! Hostile or broken things in the store's directories: corrupt entries are reported one by
//! one and never stop a listing, foreign names are ignored, special files are never followed
//! or opened for data, bad ids and aids are refused, and unsafe directories are refused.
//! Every test runs on both tokio runtimes.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::{
    AppConfig, aid, aid_dir, config, entry_path, mkfifo, names_in, no_deadlock, pid, run_dir,
    save_all, state_dir,
};
use futures::{StreamExt, TryStreamExt};
use runstate::{Aid, AsyncStore, CorruptKind, Error, InstanceId, Options, State};
use serde::{Deserialize, Deserializer, Serialize};

type Store = AsyncStore<AppConfig>;

both_runtimes!(
    corrupt_and_special_files_are_reported_one_by_one,
    entry_size_cap_is_checked_before_reading,
    junk_in_the_state_dir_is_not_an_aid,
    bad_ids_and_aids_are_refused,
    temp_files_of_a_killed_process_are_swept_and_never_listed,
    symlinks_in_place_of_store_files_are_refused,
    loose_permissions_and_foreign_owners_are_refused,
    a_config_that_panics_on_one_file_costs_that_file_alone,
    the_sweep_removes_only_our_temp_names_and_skips_what_it_cannot,
);

fn states(n: u64) -> Vec<State<AppConfig>> {
    (0..n)
        .map(|i| State::new(InstanceId::random(), pid(100 + i as u32), config(i)))
        .collect()
}

/// The path and kind of a `Corrupt` error; panics on any other result.
fn corrupt<T: std::fmt::Debug>(r: Result<T, Error>) -> (PathBuf, CorruptKind) {
    match r {
        Err(Error::Corrupt { path, kind }) => (path, kind),
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }
}

/// Whether `got` is the kind `want` stands for; `Undecodable`'s message is not compared.
fn same_kind(got: &CorruptKind, want: &CorruptKind) -> bool {
    match (got, want) {
        (CorruptKind::Undecodable(_), CorruptKind::Undecodable(_)) => true,
        _ => got == want,
    }
}

async fn corrupt_and_special_files_are_reported_one_by_one() {
    let dir = run_dir();
    let run = dir.path();
    let store = Store::new(run);
    let (a, donors) = (aid(3), aid(4));

    // Good entries in `a`; valid entries elsewhere to copy or link from.
    let good = states(4);
    save_all(&store, a, &good).await;
    let truncated_src = State::new(InstanceId::random(), pid(7), config(7));
    let mismatch_src = State::new(InstanceId::random(), pid(8), config(8));
    let linked = State::new(InstanceId::random(), pid(9), config(9));
    let donor_states = [truncated_src.clone(), mismatch_src.clone(), linked.clone()];
    save_all(&store, donors, &donor_states).await;
    let read = |s: &State<AppConfig>| fs::read(entry_path(run, donors, s.id)).unwrap();

    let adir = aid_dir(run, a);
    let bad_path = |id: InstanceId| adir.join(id.to_string());
    let mut expected: BTreeMap<PathBuf, CorruptKind> = BTreeMap::new();

    // Garbage bytes under a valid id name.
    let garbage = InstanceId::random();
    fs::write(bad_path(garbage), b"\xc1\xc1 this is not MessagePack \xff").unwrap();
    expected.insert(bad_path(garbage), CorruptKind::Undecodable(String::new()));
    // A valid entry of the right id, cut short.
    let bytes = read(&truncated_src);
    fs::write(bad_path(truncated_src.id), &bytes[..bytes.len() / 2]).unwrap();
    expected.insert(
        bad_path(truncated_src.id),
        CorruptKind::Undecodable(String::new()),
    );
    // An empty file.
    let empty = InstanceId::random();
    File::create(bad_path(empty)).unwrap();
    expected.insert(bad_path(empty), CorruptKind::Undecodable(String::new()));
    // A whole valid entry under another id's name.
    let mismatch = InstanceId::random();
    fs::write(bad_path(mismatch), read(&mismatch_src)).unwrap();
    expected.insert(
        bad_path(mismatch),
        CorruptKind::IdMismatch {
            found: mismatch_src.id,
        },
    );
    // A sparse file far over the cap: reading it would take forever.
    let huge = InstanceId::random();
    let size = 1u64 << 40;
    File::create(bad_path(huge)).unwrap().set_len(size).unwrap();
    expected.insert(
        bad_path(huge),
        CorruptKind::TooLarge {
            size,
            limit: Options::DEFAULT_MAX_ENTRY_SIZE,
        },
    );
    // A directory with a valid id name.
    let subdir = InstanceId::random();
    fs::create_dir(bad_path(subdir)).unwrap();
    expected.insert(bad_path(subdir), CorruptKind::NotAFile);
    // A symlink with a valid id name to a valid entry of that very id: following it would
    // yield a perfect entry, so only not following it gives NotAFile.
    symlink(entry_path(run, donors, linked.id), bad_path(linked.id)).unwrap();
    expected.insert(bad_path(linked.id), CorruptKind::NotAFile);
    // A fifo with a valid id name: opening it for data would block forever.
    let fifo = InstanceId::random();
    mkfifo(&bad_path(fifo));
    expected.insert(bad_path(fifo), CorruptKind::NotAFile);
    let bad_ids: BTreeSet<InstanceId> = [
        garbage,
        truncated_src.id,
        empty,
        mismatch,
        huge,
        subdir,
        linked.id,
        fifo,
    ]
    .into();

    // Foreign names: skipped by every listing.
    fs::write(adir.join("README"), "not an entry\n").unwrap();
    fs::write(adir.join("abc"), "x").unwrap();
    let upper = good[0].id.to_string().to_uppercase();
    fs::write(adir.join(&upper), fs::read(bad_path(good[0].id)).unwrap()).unwrap();
    fs::write(adir.join(format!("{}0", good[1].id)), "33 digits").unwrap();
    fs::write(adir.join(&good[2].id.to_string()[1..]), "31 digits").unwrap();
    fs::create_dir(adir.join("foreign-dir")).unwrap();
    fs::write(adir.join("foreign-dir").join(good[3].id.to_string()), "x").unwrap();
    mkfifo(&adir.join("foreign-fifo"));
    symlink("/nonexistent", adir.join("foreign-link")).unwrap();

    let good_by_id: BTreeMap<InstanceId, State<AppConfig>> =
        good.iter().map(|s| (s.id, s.clone())).collect();

    let check_errors = |errors: Vec<(PathBuf, CorruptKind)>| {
        assert_eq!(
            errors.len(),
            expected.len(),
            "one error per bad file: {errors:#?}"
        );
        let by_path: BTreeMap<_, _> = errors.into_iter().collect();
        assert_eq!(
            by_path.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (path, want) in &expected {
            assert!(
                same_kind(&by_path[path], want),
                "{path:?}: got {:?}, want {want:?}",
                by_path[path]
            );
        }
    };

    let (items, loads, load_all, len, ids) = no_deadlock("reading the corrupt aid", async {
        store
            .with_aid(a, async |c| {
                let items: Vec<Result<State<AppConfig>, Error>> = c.entries().collect().await;
                let mut loads = Vec::new();
                for &id in &bad_ids {
                    loads.push(c.load(id).await);
                }
                let load_all = c.load_all().await;
                let len = c.len().await?;
                let ids: Vec<InstanceId> = c.ids().try_collect().await?;
                Ok::<_, Error>((items, loads, load_all, len, ids))
            })
            .await
    })
    .await
    .unwrap();

    // entries(): every good entry, and one Corrupt per bad file, in one pass.
    let mut streamed_good = BTreeMap::new();
    let mut errors = Vec::new();
    let mut first_error = None;
    for item in items {
        match item {
            Ok(state) => assert!(streamed_good.insert(state.id, state).is_none()),
            Err(e) => {
                let (path, kind) = corrupt::<()>(Err(e));
                first_error.get_or_insert((path.clone(), kind.clone()));
                errors.push((path, kind));
            }
        }
    }
    assert_eq!(streamed_good, good_by_id);
    check_errors(errors);

    // load() of a bad id gives the same error.
    let load_errors: Vec<_> = loads.into_iter().map(corrupt).collect();
    check_errors(load_errors);

    // load_all() gives the first of them, as the listing meets it.
    assert_eq!(Some(corrupt(load_all)), first_error);

    // len and ids count every entry name, good or bad, and no foreign name.
    assert_eq!(len, good.len() + bad_ids.len());
    let ids: BTreeSet<InstanceId> = ids.into_iter().collect();
    let want_ids: BTreeSet<InstanceId> = good_by_id.keys().copied().chain(bad_ids).collect();
    assert_eq!(ids, want_ids);

    // The good entries are intact, and so are the donors a link pointed to.
    no_deadlock("loading the good entries", async {
        store
            .with_aid(a, async |c| {
                for s in &good {
                    assert_eq!(c.load(s.id).await?.as_ref(), Some(s));
                }
                Ok::<_, Error>(())
            })
            .await
    })
    .await
    .unwrap();
    let donor_all = store
        .with_aid(donors, async |c| c.load_all().await)
        .await
        .unwrap();
    let want_donors: BTreeMap<_, _> = donor_states.iter().map(|s| (s.id, s.clone())).collect();
    assert_eq!(donor_all, want_donors);

    // The store-wide stream reports the same errors and goes on to the next aid.
    let items: Vec<_> = no_deadlock("store.entries()", store.entries().collect::<Vec<_>>()).await;
    let mut errors = Vec::new();
    let mut listed = BTreeMap::new();
    for item in items {
        match item {
            Ok((aid, state)) => assert!(listed.insert((aid, state.id), state).is_none()),
            Err(e) => errors.push(corrupt::<()>(Err(e))),
        }
    }
    check_errors(errors);
    let mut want_listed: BTreeMap<_, _> = good.iter().map(|s| ((a, s.id), s.clone())).collect();
    want_listed.extend(donor_states.iter().map(|s| ((donors, s.id), s.clone())));
    assert_eq!(listed, want_listed);

    // Nothing foreign was touched.
    for name in [
        "README",
        "abc",
        upper.as_str(),
        "foreign-dir",
        "foreign-fifo",
        "foreign-link",
    ] {
        assert!(
            fs::symlink_metadata(adir.join(name)).is_ok(),
            "{name} is gone"
        );
    }
}

async fn entry_size_cap_is_checked_before_reading() {
    let dir = run_dir();
    let a = aid(12);
    let saved = states(1).remove(0);
    save_all(&Store::new(dir.path()), a, std::slice::from_ref(&saved)).await;
    let path = entry_path(dir.path(), a, saved.id);
    let len = fs::metadata(&path).unwrap().len();

    // A cap one byte below the entry's size refuses it; a cap of exactly its size reads it.
    let tight = Store::with_options(dir.path(), Options::new().max_entry_size(len - 1));
    assert_eq!(tight.options().get_max_entry_size(), len - 1);
    let (load, streamed, load_all) = tight
        .with_aid(a, async |c| {
            let load = c.load(saved.id).await;
            let streamed: Vec<_> = c.entries().collect().await;
            let load_all = c.load_all().await;
            Ok::<_, Error>((load, streamed, load_all))
        })
        .await
        .unwrap();
    let want = (
        path.clone(),
        CorruptKind::TooLarge {
            size: len,
            limit: len - 1,
        },
    );
    assert_eq!(corrupt(load), want);
    assert_eq!(streamed.len(), 1);
    assert_eq!(corrupt(streamed.into_iter().next().unwrap()), want);
    assert_eq!(corrupt(load_all), want);

    let exact = Store::with_options(dir.path(), Options::new().max_entry_size(len));
    let loaded = exact
        .with_aid(a, async |c| c.load(saved.id).await)
        .await
        .unwrap();
    assert_eq!(loaded, Some(saved));

    // A small cap and a sparse file just over it, with a default-cap store for contrast.
    let sparse = InstanceId::random();
    File::create(aid_dir(dir.path(), a).join(sparse.to_string()))
        .unwrap()
        .set_len(4097)
        .unwrap();
    let small = Store::with_options(dir.path(), Options::new().max_entry_size(4096));
    let r = small.with_aid(a, async |c| c.load(sparse).await).await;
    assert!(
        matches!(
            corrupt(r).1,
            CorruptKind::TooLarge {
                size: 4097,
                limit: 4096
            }
        ),
        "sparse file over a small cap"
    );
    let r = exact.with_aid(a, async |c| c.load(sparse).await).await;
    assert!(
        matches!(corrupt(r).1, CorruptKind::TooLarge { size: 4097, .. }),
        "the exact-cap store is below 4097 too"
    );
    let r = Store::new(dir.path())
        .with_aid(a, async |c| c.load(sparse).await)
        .await;
    assert!(
        matches!(corrupt(r).1, CorruptKind::Undecodable(_)),
        "4097 zero bytes are read under the default cap, and do not decode"
    );
}

async fn junk_in_the_state_dir_is_not_an_aid() {
    let dir = run_dir();
    let run = dir.path();
    let store = Store::new(run);
    let real = [aid(3), aid(40)];
    for a in real {
        save_all(&store, a, &states(1)).await;
    }
    let state = state_dir(run);
    for name in ["abc", "10000", "007", "03", "-1", "3.lock.d"] {
        fs::create_dir(state.join(name)).unwrap();
    }
    fs::write(state.join("5"), "a file, not an aid directory").unwrap();
    symlink(aid_dir(run, aid(3)), state.join("6")).unwrap();
    symlink("/nonexistent", state.join("7")).unwrap();
    mkfifo(&state.join("8"));

    assert_eq!(store.aids().await.unwrap(), real);
    assert_eq!(Store::new(run).aids().await.unwrap(), real);
    let listed: Vec<_> = store.entries().try_collect().await.unwrap();
    assert_eq!(
        listed.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        real,
        "one entry per real aid, nothing through the symlink"
    );
}

async fn bad_ids_and_aids_are_refused() {
    let good = "0123456789abcdef0123456789abcdef";
    assert!(good.parse::<InstanceId>().is_ok());
    let bad = [
        "0123456789ABCDEF0123456789ABCDEF".to_string(),
        "0123456789abcdeF0123456789abcdef".to_string(),
        good[..31].to_string(),
        format!("{good}0"),
        format!("{}:", &good[..31]),
        format!("A{}", &good[1..]),
        "g".to_string(),
        format!("g{}", &good[1..]),
        String::new(),
        format!(" {}", &good[1..]),
        format!("0x{}", &good[2..]),
        "0123456789abcdef-0123456789abcde".to_string(),
    ];
    for text in &bad {
        match text.parse::<InstanceId>() {
            Err(Error::InvalidInstanceId { input, .. }) => assert_eq!(&input, text),
            other => panic!("{text:?} gave {other:?}"),
        }
    }
    for n in [10_000u16, 10_001, u16::MAX] {
        assert!(
            matches!(Aid::new(n), Err(Error::InvalidAid { .. })),
            "Aid::new({n})"
        );
        assert!(matches!(Aid::try_from(n), Err(Error::InvalidAid { .. })));
    }
    for text in ["abc", "10000", "007", "-1", "", " 1", "1.0", "٣"] {
        assert!(
            matches!(text.parse::<Aid>(), Err(Error::InvalidAid { .. })),
            "{text:?} parsed as an aid"
        );
    }
    assert_eq!("9999".parse::<Aid>().unwrap(), Aid::MAX);
    // A store never makes a directory for anything but a real aid: nothing to test beyond
    // the types, but check that the run directory stays empty after all this.
    let dir = run_dir();
    let store = Store::new(dir.path());
    assert_eq!(store.aids().await.unwrap(), []);
    assert_eq!(names_in(dir.path()), Vec::<String>::new());
}

async fn temp_files_of_a_killed_process_are_swept_and_never_listed() {
    let dir = run_dir();
    let run = dir.path();
    let store = Store::new(run);
    let a = aid(33);
    let good = states(2);
    save_all(&store, a, &good).await;
    let adir = aid_dir(run, a);

    // As a process killed mid-save would leave them: the lock file marked (docs/format.md,
    // Publishing), then a whole entry and a partial one.
    fs::write(run.join("state").join(format!("{a}.lock")), [1u8]).unwrap();
    let whole = adir.join(format!(".tmp-{}", InstanceId::random()));
    fs::write(&whole, fs::read(entry_path(run, a, good[0].id)).unwrap()).unwrap();
    let partial = adir.join(format!(".tmp-{}", InstanceId::random()));
    fs::write(&partial, b"\x85\xa7vers").unwrap();

    let seen = store
        .with_aid(a, async |c| {
            let len = c.len().await?;
            let ids: BTreeSet<InstanceId> = c.ids().try_collect().await?;
            let entries: Vec<_> = c.entries().try_collect().await?;
            let all = c.load_all().await?;
            Ok::<_, Error>((len, ids, entries.len(), all.len()))
        })
        .await
        .unwrap();
    let good_ids: BTreeSet<_> = good.iter().map(|s| s.id).collect();
    assert_eq!(seen, (2, good_ids.clone(), 2, 2));

    // A new handle (a restarted process) sweeps them on its first with_aid.
    let restarted = Store::new(run);
    let all = restarted
        .with_aid(a, async |c| c.load_all().await)
        .await
        .unwrap();
    assert_eq!(all.keys().copied().collect::<BTreeSet<_>>(), good_ids);
    let mut want: Vec<String> = good_ids.iter().map(InstanceId::to_string).collect();
    want.sort();
    assert_eq!(names_in(&adir), want, "the temporary files were not swept");
    let mark = fs::read(run.join("state").join(format!("{a}.lock"))).unwrap();
    assert_eq!(mark, b"", "the sweep did not clear the mark");
}

async fn symlinks_in_place_of_store_files_are_refused() {
    let dir = run_dir();
    let run = dir.path().join("run");
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
    let store = Store::new(&run);
    save_all(&store, aid(1), &states(1)).await;
    let state = state_dir(&run);

    let insecure = |r: Result<usize, Error>, want: &Path| match r {
        Err(Error::Insecure { path, .. }) => assert_eq!(path, want),
        other => panic!("expected Insecure for {want:?}, got {other:?}"),
    };

    // A symlink where an unused aid's directory should be.
    symlink(&elsewhere, state.join("7")).unwrap();
    let r = store.with_aid(aid(7), async |c| c.len().await).await;
    insecure(r, &state.join("7"));
    // A plain file there.
    fs::write(state.join("17"), "").unwrap();
    let r = store.with_aid(aid(17), async |c| c.len().await).await;
    insecure(r, &state.join("17"));

    // A symlink where an unused aid's lock file should be, to a file and dangling.
    let target = elsewhere.join("target");
    fs::write(&target, "").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    symlink(&target, state.join("8.lock")).unwrap();
    let r = store.with_aid(aid(8), async |c| c.len().await).await;
    insecure(r, &state.join("8.lock"));
    symlink(elsewhere.join("missing"), state.join("9.lock")).unwrap();
    let r = store.with_aid(aid(9), async |c| c.len().await).await;
    insecure(r, &state.join("9.lock"));
    assert!(
        !elsewhere.join("missing").exists(),
        "the symlink was followed"
    );

    // A symlink in place of the state directory, for a fresh run directory.
    let run2 = dir.path().join("run2");
    fs::create_dir(&run2).unwrap();
    symlink(&state, run2.join("state")).unwrap();
    let r = Store::new(&run2)
        .with_aid(aid(1), async |c| c.len().await)
        .await;
    insecure(r, &run2.join("state"));

    // Nothing was made through the links; the real aid still works.
    assert_eq!(names_in(&elsewhere), ["target"]);
    assert_eq!(fs::read(&target).unwrap(), b"");
    // Aids 8 and 9 got their (real, private) directories before the lock files were
    // refused; the symlink and the file standing for 7 and 17 are not aids.
    let aids = store.aids().await.unwrap();
    assert!(aids.contains(&aid(1)));
    assert!(
        !aids.contains(&aid(7)) && !aids.contains(&aid(17)),
        "{aids:?}"
    );
    let n = store
        .with_aid(aid(1), async |c| c.len().await)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

async fn loose_permissions_and_foreign_owners_are_refused() {
    let dir = run_dir();
    let run = dir.path();
    let store = Store::new(run);
    for n in [1, 2, 3, 4] {
        save_all(&store, aid(n), &states(1)).await;
    }
    let state = state_dir(run);
    let insecure = |r: Result<usize, Error>, want: &Path| match r {
        Err(Error::Insecure { path, .. }) => assert_eq!(path, want),
        other => panic!("expected Insecure for {want:?}, got {other:?}"),
    };
    let chmod = |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode));

    // A world-writable aid directory, and a group-writable one, seen by a new handle.
    chmod(&aid_dir(run, aid(1)), 0o777).unwrap();
    chmod(&aid_dir(run, aid(2)), 0o770).unwrap();
    // A lock file others may write.
    chmod(&state.join("3.lock"), 0o666).unwrap();
    let fresh = Store::new(run);
    for (n, path) in [
        (1, aid_dir(run, aid(1))),
        (2, aid_dir(run, aid(2))),
        (3, state.join("3.lock")),
    ] {
        insecure(fresh.with_aid(aid(n), async |c| c.len().await).await, &path);
    }
    assert_eq!(
        fresh
            .with_aid(aid(4), async |c| c.len().await)
            .await
            .unwrap(),
        1
    );

    // A world-writable state directory: every aid is refused.
    chmod(&state, 0o777).unwrap();
    let r = Store::new(run)
        .with_aid(aid(4), async |c| c.len().await)
        .await;
    insecure(r, &state);
    chmod(&state, 0o700).unwrap();

    // Owned by another user (only root can arrange that).
    if rustix::process::geteuid().is_root() {
        let other = Some(rustix::process::Uid::from_raw(4242));
        rustix::fs::chown(aid_dir(run, aid(4)), other, None).unwrap();
        let r = Store::new(run)
            .with_aid(aid(4), async |c| c.len().await)
            .await;
        insecure(r, &aid_dir(run, aid(4)));
    }

    // Made safe again, the aids work.
    chmod(&aid_dir(run, aid(1)), 0o700).unwrap();
    let n = Store::new(run)
        .with_aid(aid(1), async |c| c.len().await)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// A config whose `Deserialize` checks an invariant with `assert!`, as `deserialize_with`
/// helpers often do.
#[derive(Debug, PartialEq, Serialize)]
struct Picky(u32);

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Picky, D::Error> {
        let n = u32::deserialize(d)?;
        assert!(n != 13, "unlucky config");
        Ok(Picky(n))
    }
}

/// The panic is caught for the one file, which becomes a `Corrupt` item naming it; the
/// stream goes on and every other entry is read, every way.
async fn a_config_that_panics_on_one_file_costs_that_file_alone() {
    let dir = run_dir();
    let store = AsyncStore::<Picky>::new(dir.path());
    let a = aid(1);
    let mut unlucky = None;
    store
        .with_aid(a, async |c| {
            for n in [1, 2, 13, 4, 5, 6] {
                let state = State::new(InstanceId::random(), pid(n), Picky(n));
                c.save(&state).await?;
                if n == 13 {
                    unlucky = Some(state.id);
                }
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let unlucky = unlucky.unwrap();
    let unlucky_path = entry_path(dir.path(), a, unlucky);
    let check = |what: &str, items: Vec<Result<State<Picky>, Error>>| {
        let (ok, bad): (Vec<_>, Vec<_>) = items.into_iter().partition(Result::is_ok);
        assert_eq!((ok.len(), bad.len()), (5, 1), "{what}: {bad:?}");
        match &bad[0] {
            Err(Error::Corrupt {
                path,
                kind: CorruptKind::DecodePanicked(message),
            }) => {
                assert_eq!(path, &unlucky_path, "{what}");
                assert_eq!(message, "unlucky config", "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
    };
    let (streamed, loaded) = store
        .with_aid_shared(a, async |c| {
            Ok::<_, Error>((c.entries().collect::<Vec<_>>().await, c.load(unlucky).await))
        })
        .await
        .unwrap();
    check("a cursor's stream", streamed);
    assert!(
        matches!(&loaded, Err(Error::Corrupt { kind: CorruptKind::DecodePanicked(_), path }) if *path == unlucky_path),
        "load: {loaded:?}"
    );
    let all: Vec<_> = store
        .entries()
        .map(|item| item.map(|(_, s)| s))
        .collect()
        .await;
    check("the store's stream", all);
    let whole = store.with_aid(a, async |c| c.load_all().await).await;
    assert!(
        matches!(&whole, Err(Error::Corrupt { kind: CorruptKind::DecodePanicked(_), path }) if *path == unlucky_path),
        "load_all fails with the first error: {whole:?}"
    );
    // The pruning pass skips it as any corrupt file, and the aid is free afterwards.
    store.prune_dead().await.unwrap();
    assert!(unlucky_path.exists());
}

/// Only names the fallback save makes (`.tmp-` and 32 lowercase hex digits) are swept;
/// what cannot be removed (here an immutable file) is left, and never fails a hold.
async fn the_sweep_removes_only_our_temp_names_and_skips_what_it_cannot() {
    let dir = run_dir();
    let run = dir.path();
    let store = Store::new(run);
    let a = aid(34);
    let good = states(1);
    save_all(&store, a, &good).await;
    let adir = aid_dir(run, a);
    let hex = InstanceId::random().to_string();
    let ours = format!(".tmp-{}", InstanceId::random());
    let foreign = [
        ".tmp-notes".to_string(),
        format!(".tmp-{}", hex.to_uppercase()),
        format!(".tmp-{hex}.bak"),
    ];
    for name in foreign.iter().chain([&ours]) {
        fs::write(adir.join(name), b"x").unwrap();
    }
    let stuck = format!(".tmp-{}", InstanceId::random());
    fs::write(adir.join(&stuck), b"x").unwrap();
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(adir.join(&stuck))
        .status()
        .is_ok_and(|s| s.success());
    if !immutable {
        fs::remove_file(adir.join(&stuck)).unwrap();
    }
    // What a fallback save killed before it removed its file leaves: the mark.
    fs::write(state_dir(run).join(format!("{}.lock", a.get())), [1u8]).unwrap();

    let restarted = Store::new(run);
    let held = restarted.with_aid(a, async |c| c.len().await).await;
    if immutable {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(adir.join(&stuck))
            .status();
    }
    assert_eq!(
        held.unwrap(),
        1,
        "a file the sweep cannot remove fails no hold"
    );
    let mut want: Vec<String> = foreign.to_vec();
    want.push(good[0].id.to_string());
    if immutable {
        want.push(stuck);
    }
    want.sort();
    assert_eq!(names_in(&adir), want, "only {ours} was swept");
}

/// `aids()` refuses a `state` directory that others may write, or a symlink in its place, as
/// holding an aid does, rather than list names from it.
#[tokio::test]
async fn aids_refuses_an_insecure_state_directory() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let store = AsyncStore::<u8>::new(dir.path());
    store
        .with_aid(Aid::new(3).unwrap(), async |c| {
            c.save(&State::new(InstanceId::random(), 1, 0)).await
        })
        .await
        .unwrap();
    let state = dir.path().join("state");
    assert_eq!(store.aids().await.unwrap(), [Aid::new(3).unwrap()]);

    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let loose = store.aids().await;
    assert!(
        matches!(&loose, Err(Error::Insecure { path, .. }) if *path == state),
        "{loose:?}"
    );
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();

    let elsewhere = tempfile::tempdir_in("/dev/shm").unwrap();
    fs::rename(&state, elsewhere.path().join("state")).unwrap();
    symlink(elsewhere.path().join("state"), &state).unwrap();
    let linked = store.aids().await;
    assert!(
        matches!(&linked, Err(Error::Insecure { path, .. }) if *path == state),
        "{linked:?}"
    );
}

/// A run directory that is a file is an I/O error about the run directory, from `aids()` as
/// from a hold, not an insecure `state` directory.
#[tokio::test]
async fn a_run_dir_that_is_a_file_is_an_io_error_about_it() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let file = dir.path().join("run");
    fs::write(&file, b"x").unwrap();
    let store = AsyncStore::<u8>::new(&file);
    let listed = store.aids().await;
    assert!(
        matches!(&listed, Err(Error::Io { path, .. }) if *path == file),
        "{listed:?}"
    );
    let held = store
        .with_aid(Aid::new(1).unwrap(), async |c| c.len().await)
        .await;
    assert!(
        matches!(&held, Err(Error::Io { path, .. }) if *path == file),
        "{held:?}"
    );
}
