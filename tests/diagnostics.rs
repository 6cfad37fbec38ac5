//! The `tracing` events an operator sees: what the store skipped, refused, repaired or
//! removed. The common recorder (`common/events.rs`), this binary's global subscriber,
//! keeps every event with its fields.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::LazyLock;

use common::events::Recorder;
use futures::StreamExt;
use runstate::{Aid, AsyncStore, Error, InstanceId, State};
use tracing::Level;

/// The record of this binary's global subscriber.
static RECORDER: LazyLock<Recorder> = LazyLock::new(Recorder::default);

/// One test, so that the global subscriber and its record are this test's alone.
#[test]
fn operators_see_what_the_store_skipped_refused_repaired_and_removed() {
    tracing::subscriber::set_global_default(RECORDER.clone()).unwrap();
    for runtime in [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    ] {
        runtime.block_on(events());
    }
}

async fn events() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let store = AsyncStore::<String>::new(dir.path());
    let aid = Aid::new(7).unwrap();
    for _ in 0..2 {
        let state = State::new(InstanceId::random(), std::process::id(), "ok".into());
        store.save(aid, &state).await.unwrap();
    }
    let aid_dir = dir.path().join("state/7");
    let corrupt = aid_dir.join(InstanceId::random().to_string());
    std::fs::write(&corrupt, b"not an entry").unwrap();
    std::fs::write(aid_dir.join("README"), b"foreign").unwrap();
    RECORDER.clear();

    // One listing over a corrupt file: one warning naming it, and the listing goes on.
    let items: Vec<_> = store.entries().collect().await;
    assert_eq!(items.len(), 3);
    let corrupt_events = RECORDER.take("corrupt entry");
    assert_eq!(corrupt_events.len(), 1, "{corrupt_events:?}");
    assert_eq!(corrupt_events[0].level, Level::WARN);
    let path = corrupt.display().to_string();
    assert_eq!(corrupt_events[0].get("path"), Some(path.as_str()));
    assert!(
        corrupt_events[0]
            .get("kind")
            .is_some_and(|k| k.contains("cannot decode")),
        "{corrupt_events:?}"
    );
    let foreign = RECORDER.take("skipping a name that is not an entry's");
    assert!(
        foreign
            .iter()
            .any(|s| s.level == Level::DEBUG && s.get("name") == Some("README")),
        "{foreign:?}"
    );

    // A temporary file a killed save left, after marking the lock file as every such save
    // does: removed by a new store's first exclusive hold.
    let lock = aid_dir.with_file_name(format!("{aid}.lock"));
    std::fs::write(lock, [1u8]).unwrap();
    let temp = aid_dir.join(format!(".tmp-{}", InstanceId::random()));
    std::fs::write(&temp, b"half").unwrap();
    let fresh = AsyncStore::<String>::new(dir.path());
    fresh
        .with_aid(aid, async |_| Ok::<_, Error>(()))
        .await
        .unwrap();
    let swept = RECORDER.take("removed a temporary file that a killed save left");
    let temp_path = temp.display().to_string();
    assert!(
        swept
            .iter()
            .any(|s| s.level == Level::INFO && s.get("path") == Some(temp_path.as_str())),
        "{swept:?}"
    );

    // The entry of a reaped child: pruned, and said so.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = State::new(InstanceId::random(), child.id(), "gone".into());
    child.wait().unwrap();
    store.save(aid, &dead).await.unwrap();
    assert_eq!(store.prune_dead().await.unwrap().len(), 1);
    let pruned = RECORDER.take("pruned the entry of a dead process");
    assert_eq!(pruned.len(), 1, "{pruned:?}");
    assert_eq!(pruned[0].level, Level::INFO);
    assert_eq!(pruned[0].get("id"), Some(dead.id.to_string().as_str()));

    // A state directory that others may write: refused, with a warning.
    let loose = tempfile::tempdir_in("/dev/shm").unwrap();
    std::fs::create_dir(loose.path().join("state")).unwrap();
    std::fs::set_permissions(
        loose.path().join("state"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let refused = AsyncStore::<String>::new(loose.path())
        .with_aid(aid, async |_| Ok::<_, Error>(()))
        .await;
    assert!(
        matches!(refused, Err(Error::Insecure { .. })),
        "{refused:?}"
    );
    let insecure = RECORDER.take("refusing an insecure store file");
    assert!(
        insecure.iter().any(|s| s.level == Level::WARN
            && s.get("reason")
                .is_some_and(|r| r.contains("lets others write"))),
        "{insecure:?}"
    );
}
