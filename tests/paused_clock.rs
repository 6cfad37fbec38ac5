//! Under tokio's paused clock, a wait on another process is not skipped: the clock runs at
//! real speed while the store waits, so the wait ends when the other process lets go, and a
//! time limit fires after its duration of real time, not at once.

use std::time::{Duration, Instant};

use runstate::testing::{ForeignHold, TempStore, real_time};
use runstate::{Aid, AsyncStore, Error, InstanceId, Options, State};

/// How long the other holder keeps the aid, in real time.
const HELD: Duration = Duration::from_millis(600);
/// A limit far above `HELD`: never reached unless the clock lies.
const LIMIT: Duration = Duration::from_secs(60);

fn paused(body: impl AsyncFnOnce()) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(body());
}

fn ok() -> Result<(), Error> {
    Ok(())
}

/// Another store, on its own thread, holds `aid` (`shared` or not) and lets go after `HELD`.
fn held_elsewhere(t: &TempStore<()>, aid: Aid, shared: bool) -> Instant {
    let other: ForeignHold = t
        .hold_elsewhere(aid, shared)
        .expect("the other store holds it");
    other.release_after(HELD);
    Instant::now()
}

/// The wait lasted until the other holder let go: it was not cut short by a jumping clock.
fn waited_for_it(since: Instant) {
    let waited = since.elapsed();
    assert!(
        waited >= HELD,
        "the wait ended after {waited:?}, before the holder let go"
    );
}

#[test]
fn exclusive_wait_with_a_limit_lasts_until_the_other_lets_go() {
    paused(async || {
        let t = TempStore::<()>::new().unwrap();
        let aid = Aid::new(1).unwrap();
        let since = held_elsewhere(&t, aid, false);
        let r = t.with_aid_timeout(aid, LIMIT, async |_| ok()).await;
        assert!(r.is_ok(), "{r:?}");
        waited_for_it(since);
    });
}

#[test]
fn exclusive_wait_behind_a_shared_holder_lasts_until_it_lets_go() {
    paused(async || {
        let t = TempStore::<()>::new().unwrap();
        let aid = Aid::new(2).unwrap();
        let since = held_elsewhere(&t, aid, true);
        let r = t.with_aid_timeout(aid, LIMIT, async |_| ok()).await;
        assert!(r.is_ok(), "{r:?}");
        waited_for_it(since);
    });
}

#[test]
fn exclusive_wait_inside_tokio_timeout_lasts_until_the_other_lets_go() {
    paused(async || {
        let t = TempStore::<()>::new().unwrap();
        let aid = Aid::new(3).unwrap();
        let since = held_elsewhere(&t, aid, false);
        let r = tokio::time::timeout(LIMIT, t.with_aid(aid, async |_| ok())).await;
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
        waited_for_it(since);
    });
}

#[test]
fn shared_wait_with_a_limit_lasts_until_the_other_lets_go() {
    paused(async || {
        let t = TempStore::<()>::new().unwrap();
        let aid = Aid::new(4).unwrap();
        let since = held_elsewhere(&t, aid, false);
        let r = t.with_aid_shared_timeout(aid, LIMIT, async |_| ok()).await;
        assert!(r.is_ok(), "{r:?}");
        waited_for_it(since);
    });
}

#[test]
fn shared_wait_inside_tokio_timeout_lasts_until_the_other_lets_go() {
    paused(async || {
        let t = TempStore::<()>::new().unwrap();
        let aid = Aid::new(5).unwrap();
        let since = held_elsewhere(&t, aid, false);
        let r = tokio::time::timeout(LIMIT, t.with_aid_shared(aid, async |_| ok())).await;
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
        waited_for_it(since);
    });
}

/// A limit still fires when the other holder never lets go, after about its duration of
/// real time (the store's own limit and tokio's alike), and the paused clock has moved on
/// by about as much.
#[test]
fn a_limit_still_fires_when_the_other_never_lets_go() {
    paused(async || {
        let t = TempStore::<()>::new().unwrap();
        let aid = Aid::new(6).unwrap();
        let _other = t.hold_elsewhere(aid, false).unwrap();
        let limit = Duration::from_millis(300);

        let (real, paused) = (Instant::now(), tokio::time::Instant::now());
        let r = t.with_aid_timeout(aid, limit, async |_| ok()).await;
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert!(
            real.elapsed() >= limit,
            "fired after {:?} of real time",
            real.elapsed()
        );
        assert!(paused.elapsed() >= limit);
        assert!(
            real.elapsed() < Duration::from_secs(30),
            "{:?}",
            real.elapsed()
        );

        let real = Instant::now();
        let r = tokio::time::timeout(limit, t.with_aid_shared(aid, async |_| ok())).await;
        assert!(r.is_err(), "{r:?}");
        assert!(
            real.elapsed() >= limit,
            "fired after {:?} of real time",
            real.elapsed()
        );
        assert!(
            real.elapsed() < Duration::from_secs(30),
            "{:?}",
            real.elapsed()
        );

        // Nothing was left holding the aid or the clock: it is free again once let go.
        drop(_other);
        t.try_with_aid(aid, async |_| ok()).await.unwrap();
    });
}

/// A real process that exits after `HELD`, and its entry as `store` sees it.
fn sleeper(store: &AsyncStore<()>) -> (std::process::Child, State<()>) {
    let child = std::process::Command::new("sleep")
        .arg(format!("{}", HELD.as_secs_f64()))
        .spawn()
        .expect("sleep runs");
    let state = State::new(InstanceId::random(), child.id(), ());
    assert!(
        state.process.is_some() || store.options().get_proc_root() != std::path::Path::new("/proc")
    );
    (child, state)
}

fn wait_exit_lasts_until_the_exit(options: Options) {
    paused(async || {
        let t = TempStore::<()>::with_options(options).unwrap();
        let (mut child, state) = sleeper(&t);
        let since = Instant::now();
        let r = tokio::time::timeout(LIMIT, t.wait_exit(&state)).await;
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
        waited_for_it(since);
        child.wait().unwrap();
    });
}

#[test]
fn wait_exit_on_a_pidfd_lasts_until_the_exit() {
    wait_exit_lasts_until_the_exit(Options::new());
}

#[test]
fn wait_exit_polling_proc_lasts_until_the_exit() {
    wait_exit_lasts_until_the_exit(Options::new().use_pidfds(false));
}

/// `wait_empty` keeps no clock of its own (its changes normally come from the test's own
/// tasks); `real_time` keeps it honest for a change made by another process.
#[test]
fn wait_empty_in_real_time_lasts_until_another_store_empties_the_aid() {
    paused(async || {
        let t = TempStore::<()>::new().unwrap();
        let aid = Aid::new(7).unwrap();
        let id = InstanceId::random();
        t.save(aid, &State::new(id, 1, ())).await.unwrap();
        let other = AsyncStore::<()>::new(t.path());
        let since = Instant::now();
        let cleaner = std::thread::spawn(move || {
            std::thread::sleep(HELD);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(other.destroy(aid, id)).unwrap()
        });
        let r = tokio::time::timeout(LIMIT, real_time(t.wait_empty(aid))).await;
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
        waited_for_it(since);
        assert!(cleaner.join().unwrap());
    });
}

/// A runtime dropped while a store call waits for another process under a paused clock
/// shuts down: the blocking task that holds the clock ends with the dropped waiter.
#[test]
fn a_runtime_dropped_while_a_wait_holds_the_clock_shuts_down() {
    let t = TempStore::<()>::new().unwrap();
    let aid = Aid::new(8).unwrap();
    let other = t.hold_elsewhere(aid, false).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let store = t.store().clone();
    rt.block_on(async {
        let waiter = tokio::spawn(async move { store.with_aid(aid, async |_| ok()).await });
        // Let it reach the wait and hold the clock for a while.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
    });
    let real = Instant::now();
    drop(rt);
    assert!(
        real.elapsed() < Duration::from_secs(30),
        "{:?}",
        real.elapsed()
    );
    drop(other);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(t.try_with_aid(aid, async |_| ok())).unwrap();
}
