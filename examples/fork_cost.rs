//! What keeping the store's lock descriptors out of forked children costs a fork: the mean
//! time of `fork` + `_exit` + `waitpid`, before any store exists (no fork handler) with as
//! many plain descriptors open as the store will have (a fork copies the descriptor table),
//! then with a store that has 0, 64 and 400 aids open (two descriptors each, one of them
//! the lock file's, which the child handler points at an inert file).
//!
//! Run: `cargo run --release --example fork_cost`

use std::time::{Duration, Instant};

use runstate::{Aid, AsyncStore, Error};

const FORKS: u32 = 2_000;

/// The mean time of one fork whose child exits at once, reaped by the parent.
fn fork_time() -> Duration {
    let start = Instant::now();
    for _ in 0..FORKS {
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    }
    start.elapsed() / FORKS
}

fn main() -> Result<(), Error> {
    let dir = tempfile::tempdir_in("/dev/shm").map_err(|e| Error::Io {
        op: "tempdir",
        path: "/dev/shm".into(),
        source: e,
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            op: "runtime",
            path: dir.path().into(),
            source: e,
        })?;
    println!("fork + _exit + waitpid, mean of {FORKS}:");
    for aids in [0usize, 64, 400] {
        let plain: Vec<std::fs::File> = (0..2 * aids)
            .map(|_| std::fs::File::open("/dev/null"))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Io {
                op: "open",
                path: "/dev/null".into(),
                source: e,
            })?;
        println!(
            "  no store, {:>3} plain descriptors: {:?}",
            plain.len(),
            fork_time()
        );
    }
    let store = AsyncStore::<u8>::new(dir.path());
    let mut open = 0;
    for aids in [0u16, 64, 400] {
        rt.block_on(async {
            for n in open..aids {
                let aid = Aid::new(n)?;
                store.with_aid(aid, async |_| Ok::<_, Error>(())).await?;
            }
            Ok::<_, Error>(())
        })?;
        open = aids;
        println!("  store with {aids:>3} aids open:      {:?}", fork_time());
    }
    Ok(())
}
