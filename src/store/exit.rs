//! Awaiting an instance's exit: `wait_exit`, over the shell's pidfd and `/proc` waits
//! (`shell/exit.rs`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::shell::exit;
use crate::{AsyncStore, Error, State};

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
    /// memory, as for a thread's id), where [`Options::use_pidfds`](crate::Options::use_pidfds) is off, and where
    /// [`Options::proc_root`](crate::Options::proc_root) is another pid namespace's `/proc` (whose pids are not this
    /// namespace's), it looks at `/proc` instead, once at once and then every
    /// [`Options::EXIT_POLL_INTERVAL`](crate::Options::EXIT_POLL_INTERVAL), and so learns of an exit at most that late. It then
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
    /// [`Options::EXIT_POLL_INTERVAL`](crate::Options::EXIT_POLL_INTERVAL) of real time. Processes faked with the `test-util`
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
        exit::wait_exit(self.options(), self.made_in(), state)
    }
}
