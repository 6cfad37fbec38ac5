//! Aids held together beyond the cache's size are closed once let go: the store's open
//! descriptors come back down to the cache's size, not stay at their peak. One test in its
//! own binary, so that no other test's descriptors are counted.

use std::sync::Arc;

use runstate::{Aid, AsyncStore, Error, Options};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn aids_held_together_are_closed_once_let_go() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let store = AsyncStore::<u32>::with_options(dir.path(), Options::new().open_aids(4));
        let aid = |n: u16| Aid::new(n).unwrap();
        // The state directory and the runtime's own descriptors, before any aid.
        store
            .with_aid(aid(9999), async |c| c.len().await)
            .await
            .unwrap();
        let base = open_fds();

        // 200 aids held at once: each needs its two descriptors.
        let barrier = Arc::new(tokio::sync::Barrier::new(201));
        let (release, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = Vec::new();
        for n in 100..300 {
            let (store, barrier, mut released) =
                (store.clone(), barrier.clone(), release.subscribe());
            tasks.push(tokio::spawn(async move {
                store
                    .with_aid(aid(n), async |_| {
                        barrier.wait().await;
                        let _ = released.recv().await;
                        Ok::<_, Error>(())
                    })
                    .await
                    .unwrap();
            }));
        }
        barrier.wait().await;
        let peak = open_fds() - base;
        assert!(peak >= 300, "200 held aids keep their files open: {peak}");
        drop(release);
        for task in tasks {
            task.await.unwrap();
        }

        // Later holds, of aids whose files are open (no cache miss), bring it back down.
        for n in 100..110 {
            store
                .with_aid(aid(n), async |c| c.len().await)
                .await
                .unwrap();
        }
        let after = open_fds() - base;
        println!("open descriptors above the start: {peak} while 200 were held, {after} after");
        assert!(
            after <= 2 * 4 + 2 + 2,
            "once let go, at most the cache's 4 aids stay open: {after}"
        );
        store.close().await.unwrap();
    });
}
