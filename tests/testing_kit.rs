//! The testing kit (`runstate::testing`), as a test of code that uses the store would use it.

use std::time::{Duration, Instant};

use runstate::testing::{FakeProc, TempStore};
use runstate::{Aid, Error, Liveness};

fn paused(body: impl AsyncFnOnce()) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(body());
}

/// An instance dies an hour into the test's (paused) clock; `wait_exit` sees it at that
/// instant and `prune_dead` removes it, in a moment of real time.
#[test]
fn an_instance_dies_and_is_awaited_and_pruned_under_a_paused_clock() {
    let real = Instant::now();
    paused(async || {
        let procs = FakeProc::new().unwrap();
        let t = TempStore::<String>::with_options(procs.options()).unwrap();
        let aid = Aid::new(9).unwrap();
        let state = procs.start("web".to_string()).unwrap();
        let survivor = procs.start("db".to_string()).unwrap();
        t.save(aid, &state).await.unwrap();
        t.save(aid, &survivor).await.unwrap();
        assert_eq!(t.liveness(&state).await, Liveness::Alive);

        let exit = tokio::spawn(t.wait_exit(&state));
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!exit.is_finished());
        procs.end(state.pid).unwrap();
        exit.await.unwrap().unwrap();
        let at = start.elapsed();
        assert!(
            at >= Duration::from_secs(3600) && at < Duration::from_secs(3601),
            "{at:?}"
        );

        assert_eq!(t.liveness(&state).await, Liveness::Dead);
        let pruned = t.prune_dead().await.unwrap();
        assert_eq!(pruned.len(), 1);
        assert_eq!(pruned[0].1.id, state.id);
        assert_eq!(
            t.with_aid_shared(aid, async |c| c.len().await)
                .await
                .unwrap(),
            1
        );
    });
    let took = real.elapsed();
    eprintln!("an hour of the test's clock took {took:?} of real time");
    // Generous: only a test that followed the paused clock in real time would reach it.
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn fake_processes_exit_get_their_pid_reused_and_die_with_a_reboot() {
    paused(async || {
        let procs = FakeProc::new().unwrap();
        let t = TempStore::<()>::with_options(procs.options()).unwrap();

        let zombie = procs.start(()).unwrap();
        procs.exit(zombie.pid).unwrap();
        assert_eq!(t.liveness(&zombie).await, Liveness::Dead);
        t.wait_exit(&zombie).await.unwrap();

        let old = procs.start(()).unwrap();
        procs.reuse(old.pid).unwrap();
        assert_eq!(t.liveness(&old).await, Liveness::Dead);
        let new = procs.identity(old.pid).unwrap();
        assert_ne!(Some(&new), old.process.as_ref());
        let reused = runstate::State::new(old.id, old.pid, ()).with_process(Some(new));
        assert_eq!(t.liveness(&reused).await, Liveness::Alive);

        procs.reboot().unwrap();
        assert_eq!(t.liveness(&reused).await, Liveness::Dead);

        // An entry whose process is unknown to the tree is gone, never a real process.
        let unknown = runstate::State::unidentified(old.id, old.pid + 100, ());
        let exit = tokio::time::timeout(Duration::from_secs(1), t.wait_exit(&unknown)).await;
        assert!(matches!(exit, Ok(Ok(()))), "{exit:?}");
    });
}

#[test]
fn wait_exit_on_a_fake_process_that_lives_on_lets_the_paused_clock_run() {
    paused(async || {
        let procs = FakeProc::new().unwrap();
        let t = TempStore::<()>::with_options(procs.options()).unwrap();
        let state = procs.start(()).unwrap();
        let real = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(600), t.wait_exit(&state)).await;
        assert!(r.is_err(), "{r:?}");
        // Ten minutes of the test's clock, not of real time.
        assert!(
            real.elapsed() < Duration::from_secs(300),
            "{:?}",
            real.elapsed()
        );
    });
}

#[test]
fn a_temporary_store_leaves_nothing_behind() {
    paused(async || {
        let t = TempStore::<u8>::new().unwrap();
        let procs = FakeProc::new().unwrap();
        let (store_dir, proc_dir) = (t.path().to_owned(), procs.path().to_owned());
        let state = procs.start(1).unwrap();
        t.save(Aid::new(1).unwrap(), &state).await.unwrap();
        assert!(store_dir.join("state").is_dir());
        drop((t, procs));
        assert!(!store_dir.exists() && !proc_dir.exists());
    });
}

#[test]
fn a_temporary_store_leaves_nothing_behind_when_the_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::panic::catch_unwind(move || {
        paused(async || {
            let t = TempStore::<u8>::new().unwrap();
            let procs = FakeProc::new().unwrap();
            tx.send((t.path().to_owned(), procs.path().to_owned()))
                .unwrap();
            let state = procs.start(1).unwrap();
            // Held across the panic, as a test's store would be.
            t.with_aid(Aid::new(1).unwrap(), async |c| {
                c.save(&state).await?;
                panic!("the test fails while it holds the aid");
                #[allow(unreachable_code)]
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
        })
    });
    assert!(panicked.is_err());
    let (store_dir, proc_dir) = rx.recv().unwrap();
    assert!(!store_dir.exists(), "{store_dir:?} is left");
    assert!(!proc_dir.exists(), "{proc_dir:?} is left");
}

#[test]
fn a_foreign_hold_excludes_like_another_process() {
    paused(async || {
        let t = TempStore::<()>::new().unwrap();
        let aid = Aid::new(2).unwrap();
        let shared = t.hold_elsewhere(aid, true).unwrap();
        // Readers share with it, writers wait.
        t.try_with_aid_shared(aid, async |_| Ok::<_, Error>(()))
            .await
            .unwrap();
        let r = t.try_with_aid(aid, async |_| Ok::<_, Error>(())).await;
        assert!(matches!(r, Err(Error::WouldBlock { .. })), "{r:?}");
        drop(shared);
        t.try_with_aid(aid, async |_| Ok::<_, Error>(()))
            .await
            .unwrap();
    });
}
