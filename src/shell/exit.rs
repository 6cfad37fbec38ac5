//! Awaiting an instance's exit: a pidfd in tokio's reactor, or `/proc` looked at now and then
//! where pidfds are unavailable.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::exec::clock_hold;
use crate::process;
use crate::{AsyncStore, Error, Liveness, Options, ProcessIdentity, State};

impl<C> AsyncStore<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Completes when the process that `state` records is no longer running: it has exited
    /// (a zombie, exited but not yet reaped by its parent, counts as exited), or its pid now
    /// belongs to another process (the start time or the boot differs from
    /// [`state.process`](State::process)). For a process already gone it is ready at its
    /// first poll.
    ///
    /// It works for any process, not only children of this one, so a supervisor restarted
    /// after a crash can await the instances its predecessor started (see
    /// `examples/supervisor.rs`). It neither reaps nor signals the process, and does not touch
    /// the store's files: it answers on a closed store too. The future borrows neither the
    /// store nor `state`: it can be spawned, or kept in a `FuturesUnordered` beside the state.
    ///
    /// # How
    ///
    /// It opens a pidfd for the pid (`pidfd_open`, Linux 5.3 and later) and then checks the
    /// recorded identity in `/proc`, so a pid reused by another process is never awaited;
    /// the kernel makes the pidfd readable when the process exits, and tokio's reactor wakes
    /// the task. Each wait costs one file descriptor while it is pending, and no thread.
    ///
    /// Where pidfds are unavailable (`pidfd_open` fails with `ENOSYS` before Linux 5.3,
    /// `EPERM` under a seccomp filter, or another error than running out of descriptors or
    /// memory, as for a thread's id), where [`Options::use_pidfds`] is off, and where
    /// [`Options::proc_root`] is another pid namespace's `/proc` (whose pids are not this
    /// namespace's), it looks at `/proc` instead, once at once and then every
    /// [`Options::EXIT_POLL_INTERVAL`], and so learns of an exit at most that late. It then
    /// costs a timer and no descriptor.
    ///
    /// An entry without identity (`state.process` is `None`: its process was not visible in
    /// `/proc` when it was saved) is awaited by its pid alone: the wait ends when that pid
    /// exits, whichever process it belongs to by then. So is an entry whose identity `/proc`
    /// cannot confirm or deny while a pidfd is open (a `/proc` mounted with `hidepid=2`, say);
    /// without a pidfd, such a wait lasts until `/proc` can tell.
    ///
    /// Dropping the future at any point closes its pidfd or cancels its timer: it leaves
    /// nothing behind.
    ///
    /// # Paused clock
    ///
    /// A process exits out of tokio's sight, so under a paused clock (tokio's `test-util`)
    /// the wait keeps the clock moving at real speed while it lasts (in steps of about 20 ms
    /// of real time, with a `spawn_blocking` task that holds the clock, as tokio does for
    /// its own blocking tasks): a `tokio::time::timeout` around it fires after its duration
    /// of real time, not at once, and the `/proc` fallback looks every
    /// [`Options::EXIT_POLL_INTERVAL`] of real time. Processes faked with the `test-util`
    /// feature's `runstate::testing::FakeProc` live on the test's clock instead: the wait
    /// looks again at each change made to them, and leaves tokio free to move the clock
    /// meanwhile. With the clock not paused, none of this costs anything.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the pidfd cannot be opened for want of file descriptors or memory
    /// (`EMFILE`, `ENFILE`, `ENOMEM`), or cannot be registered with the reactor.
    /// [`Error::Forked`] if polled in a forked child of the process that made the store.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one without I/O enabled (or, for the `/proc` fallback,
    /// without the timer), as `tokio::io::unix::AsyncFd` and `tokio::time` do;
    /// `#[tokio::main]` and `#[tokio::test]` enable both.
    ///
    /// # Example
    ///
    /// ```
    /// use runstate::{Aid, AsyncStore, InstanceId, State};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let store = AsyncStore::<Vec<String>>::new(dir.path());
    /// let aid = Aid::new(3)?;
    /// let mut child = std::process::Command::new("sleep").arg("0.1").spawn()?;
    /// let id = InstanceId::random();
    /// // Await the entry as loaded: it records who the process is.
    /// let state = store
    ///     .with_aid(aid, async |c| {
    ///         c.save(&State::new(id, child.id(), vec!["sleep".into()])).await?;
    ///         c.load(id).await
    ///     })
    ///     .await?
    ///     .ok_or("just saved")?;
    ///
    /// // Any process will do, not only a child; and the future can be spawned.
    /// tokio::spawn(store.wait_exit(&state)).await??;
    /// store.with_aid(aid, async |c| c.destroy(id).await).await?;
    /// child.wait()?;
    /// # Ok(()) }
    /// ```
    pub fn wait_exit(
        &self,
        state: &State<C>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static + use<C> {
        let watch = Watch {
            proc_root: self.options().get_proc_root().to_owned(),
            pid: state.pid,
            identity: state.process.clone(),
        };
        let pidfds = self.options().get_use_pidfds();
        // Refused in a forked child, at every poll: the pidfd and its registration are the
        // parent's.
        let made_in = self.made_in();
        crate::lock::fork_guard::refuse_in_child(made_in, async move {
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
}

/// What a wait needs: everything owned, so its future borrows nothing.
struct Watch {
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

impl Watch {
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

    /// [`Watch::poll_proc`] for a fake `/proc`: looked at again at each change the kit makes
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
