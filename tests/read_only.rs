//! A store on a read-only file system can still be listed and read; writes fail with a
//! typed error. Needs root, to mount a small tmpfs and remount it read-only.

use std::path::{Path, PathBuf};
use std::process::Command;

use futures::TryStreamExt;
use runstate::{Aid, AsyncStore, Error, InstanceId, State};

/// A tmpfs mounted for this test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new() -> Option<Mount> {
        let dir = tempfile::tempdir().unwrap().keep();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Mount(dir))
    }

    fn remount(&self, how: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {how}");
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn a_read_only_store_is_listed_and_refuses_writes() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a read-only tmpfs needs root");
        return;
    }
    let Some(mount) = Mount::new() else {
        eprintln!("skipped: this machine cannot mount a tmpfs");
        return;
    };
    let aid = Aid::new(3).unwrap();
    let states: Vec<State<String>> = (0..3)
        .map(|i| State::new(InstanceId::random(), std::process::id(), format!("app {i}")))
        .collect();
    {
        let store = AsyncStore::<String>::new(mount.path());
        for state in &states {
            store.save(aid, state).await.unwrap();
        }
        store.close().await.unwrap();
    }
    mount.remount("ro");

    let store = AsyncStore::<String>::new(mount.path());
    assert_eq!(store.aids().await.unwrap(), [aid]);
    let mut listed: Vec<State<String>> = store
        .entries()
        .map_ok(|(_, state)| state)
        .try_collect()
        .await
        .unwrap();
    listed.sort_by_key(|s| s.id);
    let mut want = states.clone();
    want.sort_by_key(|s| s.id);
    assert_eq!(listed, want);
    assert_eq!(
        store.load(aid, states[0].id).await.unwrap().as_ref(),
        Some(&states[0])
    );
    let n = store
        .with_aid_shared(aid, async |c| c.len().await)
        .await
        .unwrap();
    assert_eq!(n, 3);

    let refused = store
        .save(aid, &State::new(InstanceId::random(), 1, "new".into()))
        .await;
    assert!(
        matches!(&refused, Err(Error::Io { source, .. }) if source.raw_os_error() == Some(30)),
        "EROFS: {refused:?}"
    );
    let refused = store.destroy(aid, states[0].id).await;
    assert!(matches!(refused, Err(Error::Io { .. })), "{refused:?}");
    // A new aid cannot be made there either, and says why.
    let refused = store.load(Aid::new(4).unwrap(), states[0].id).await;
    assert!(matches!(refused, Err(Error::Io { .. })), "{refused:?}");
    store.close().await.unwrap();
    mount.remount("rw");
}
