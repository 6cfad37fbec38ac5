//! Awaiting an instance's exit: a pidfd in tokio's reactor, or `/proc` looked at now and then
//! where pidfds are unavailable.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::exec::clock_hold;
use crate::lock::fork_guard;
use crate::process;
use crate::{Error, Liveness, Options, ProcessIdentity, State};

/// [`AsyncStore::wait_exit`](crate::AsyncStore::wait_exit) of the process `state` records, for
/// a store with these options, made in `made_in`.
pub(crate) fn wait_exit<C>(
    options: &Options,
    made_in: fork_guard::Epoch,
    state: &State<C>,
) -> impl Future<Output = Result<(), Error>> + Send + 'static + use<C> {
    let watch = ExitWait {
        proc_root: options.get_proc_root().to_owned(),
        pid: state.pid,
        identity: state.process.clone(),
    };
    let pidfds = options.get_use_pidfds();
    // Refused in a forked child, at every poll: the pidfd and its registration are the
    // parent's.
    fork_guard::refuse_in_child(made_in, async move {
        if pidfds && process::proc_is_ours(&watch.proc_root) {
            match watch.open_pidfd()? {
                Opened::Gone => return Ok(()),
                Opened::Pidfd(fd) => return watch.await_pidfd(fd).await,
                Opened::Unsupported => {}
            }
        }
        watch.poll_proc().await;
        Ok(())
    })
}

/// What a wait needs: everything owned, so its future borrows nothing.
struct ExitWait {
    proc_root: PathBuf,
    pid: u32,
    identity: Option<ProcessIdentity>,
}

enum Opened {
    /// The recorded process is not running: return at once.
    Gone,
    /// A pidfd of the recorded process (or of the pid, for an entry without identity).
    Pidfd(OwnedFd),
    /// No pidfd here: look at `/proc` instead.
    Unsupported,
}

impl ExitWait {
    /// `/proc/<pid>`, to name the process in errors.
    fn path(&self) -> PathBuf {
        self.proc_root.join(self.pid.to_string())
    }

    fn open_pidfd(&self) -> Result<Opened, Error> {
        // No process has pid 0 or one beyond i32; pidfd_open would even read 0 as "self".
        let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) else {
            return Ok(Opened::Gone);
        };
        let fd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::SRCH) => return Ok(Opened::Gone),
            // Out of descriptors or memory: the caller should know, not get a slower wait.
            Err(e @ (Errno::MFILE | Errno::NFILE | Errno::NOMEM)) => {
                return Err(Error::io("pidfd_open", self.path(), e));
            }
            // ENOSYS: before Linux 5.3; EPERM: a seccomp filter; EINVAL (before Linux 6.9)
            // or ENOENT (since): a thread's id. /proc answers for all of these, and for
            // whatever else a kernel may refuse.
            Err(e) => {
                tracing::debug!(pid = self.pid, error = %e, "pidfd_open refused; polling /proc");
                return Ok(Opened::Unsupported);
            }
        };
        // The pidfd is of whoever has the pid now. The recorded process started before this
        // call and, if /proc still shows its identity after it, held the pid all along: the
        // pidfd is its own. Otherwise the pid was reused (or the process is a zombie).
        match &self.identity {
            Some(identity)
                if process::check(&self.proc_root, self.pid, Some(identity)) == Liveness::Dead =>
            {
                Ok(Opened::Gone)
            }
            _ => Ok(Opened::Pidfd(fd)),
        }
    }

    async fn await_pidfd(&self, fd: OwnedFd) -> Result<(), Error> {
        // A pidfd polls readable once its process has exited, zombie or reaped; it never
        // becomes unreadable again, so one readiness is the answer.
        //
        // tokio 1.51.6+ deprecates `with_interest` for types whose `as_raw_fd` may change or
        // close under the reactor; an `OwnedFd` owned by the `AsyncFd` cannot, and the
        // unsafe `register_with_interest` that replaces it would raise the tokio floor.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)
            .map_err(|e| Error::io("register pidfd", self.path(), e))?;
        // The exit is out of tokio's sight: keep a paused clock from jumping past it.
        let _ready = clock_hold::outside(fd.readable())
            .await
            .map_err(|e| Error::io("await pidfd", self.path(), e))?;
        Ok(())
    }

    /// Looks at `/proc` until it shows the process dead. A real process exits out of tokio's
    /// sight, so a paused clock is kept at real speed meanwhile; a fake one of
    /// [`crate::testing::FakeProc`] is ended by the test itself, which wakes the wait.
    async fn poll_proc(&self) {
        #[cfg(feature = "test-util")]
        if crate::testing::is_fake(&self.proc_root) {
            return self.poll_fake().await;
        }
        clock_hold::outside(async {
            while self.liveness() != Liveness::Dead {
                tokio::time::sleep(Options::EXIT_POLL_INTERVAL).await;
            }
        })
        .await
    }

    /// [`ExitWait::poll_proc`] for a fake `/proc`: looked at again at each change the kit makes
    /// to one, and never on a timer, so a paused clock runs free meanwhile.
    #[cfg(feature = "test-util")]
    async fn poll_fake(&self) {
        loop {
            let changed = crate::testing::changed();
            if self.liveness() == Liveness::Dead {
                return;
            }
            changed.await;
        }
    }

    /// One look: one or two tiny procfs reads, done in place.
    fn liveness(&self) -> Liveness {
        let root: &Path = &self.proc_root;
        match &self.identity {
            Some(identity) => process::check(root, self.pid, Some(identity)),
            None => process::check_pid(root, self.pid),
        }
    }
}
