//! One running instance's record.

use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::{Error, InstanceId, ProcessIdentity};

/// What the store keeps about one running instance.
///
/// The struct is `#[non_exhaustive]` so later versions can record more: build it with
/// [`State::new`] (or [`State::unidentified`]) and read its public fields.
///
/// What is saved is loaded back equal (`==`), field for field: `save` stores the state it is
/// given and nothing else.
///
/// ```
/// use runstate::{InstanceId, State};
///
/// let state = State::new(InstanceId::random(), std::process::id(), vec!["sleep", "10"]);
/// assert_eq!(state.pid, std::process::id());
/// assert!(state.time <= std::time::SystemTime::now());
/// // This process is running, so its identity was taken.
/// assert!(state.process.is_some());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct State<C> {
    /// The instance's id; its entry file is named after it.
    pub id: InstanceId,
    /// The process id of the instance's child process.
    pub pid: u32,
    /// When the instance started; stored to the nanosecond.
    pub time: SystemTime,
    /// Who `pid` was when the state was built, so a later process that reuses the pid is not
    /// taken for it; `None` when it was not known (see [`State::new`]).
    pub process: Option<ProcessIdentity>,
    /// The application's configuration, stored as a MessagePack map.
    pub config: C,
}

impl<C> State<C> {
    /// A state whose start time is now, with the identity of `pid` read from `/proc` now.
    ///
    /// The identity is taken here, where the caller has just started the child and knows
    /// that `pid` is its own, rather than at `save`: a child that exits and whose pid is
    /// reused in between would otherwise be recorded as the newcomer. Reading it costs a
    /// read of `/proc/<pid>/stat` (procfs, not a disk; the boot id is read once per
    /// process). Where `/proc` does not show the pid, `process` is `None`, and the entry's
    /// liveness is then [`Unknown`](crate::Liveness::Unknown): it is never pruned. That is
    /// logged as a `tracing` warning; use [`State::try_new`] to get the failure instead.
    pub fn new(id: InstanceId, pid: u32, config: C) -> State<C> {
        let state = State::unidentified(id, pid, config);
        match ProcessIdentity::of(pid) {
            Some(process) => state.with_process(Some(process)),
            None => {
                tracing::warn!(
                    pid,
                    %id,
                    "cannot identify the process in /proc: its entry's liveness will be \
                     unknown and it will never be pruned"
                );
                state
            }
        }
    }

    /// Like [`State::new`], but fails where `/proc` does not show `pid` (or its start time
    /// or the boot id cannot be read), rather than build a state whose liveness is always
    /// [`Unknown`](crate::Liveness::Unknown): an [`Error::Io`] whose `op` is `"identify"`
    /// and whose path is `/proc/<pid>`.
    ///
    /// ```
    /// use runstate::{Error, InstanceId, State};
    ///
    /// let mine = State::try_new(InstanceId::random(), std::process::id(), ())?;
    /// assert!(mine.process.is_some());
    /// // Above the kernel's pid limit: no process can have it.
    /// let none = State::try_new(InstanceId::random(), 1 << 30, ());
    /// assert!(matches!(none, Err(Error::Io { op: "identify", .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn try_new(id: InstanceId, pid: u32, config: C) -> Result<State<C>, Error> {
        match ProcessIdentity::of(pid) {
            Some(process) => Ok(State::unidentified(id, pid, config).with_process(Some(process))),
            None => {
                let path = PathBuf::from(format!("/proc/{pid}"));
                // Why, read again on this failure path only: no such pid, or an unreadable
                // stat line or boot id.
                let why = match std::fs::metadata(&path) {
                    Err(e) => e,
                    Ok(_) => io::Error::other("cannot read its start time or the boot id"),
                };
                Err(Error::io("identify", path, why))
            }
        }
    }

    /// A state whose start time is now and whose process identity is not recorded: no
    /// `/proc` read. Its liveness is always [`Unknown`](crate::Liveness::Unknown), so
    /// `prune_dead` never removes it; for pids that `/proc` cannot show (another pid
    /// namespace) or for tests.
    ///
    /// ```
    /// use runstate::{InstanceId, State};
    ///
    /// let state = State::unidentified(InstanceId::random(), 4242, ());
    /// assert_eq!(state.process, None);
    /// ```
    pub fn unidentified(id: InstanceId, pid: u32, config: C) -> State<C> {
        State {
            id,
            pid,
            time: SystemTime::now(),
            process: None,
            config,
        }
    }

    /// The same state with another start time.
    pub fn with_time(mut self, time: SystemTime) -> State<C> {
        self.time = time;
        self
    }

    /// The same state with another process identity: one read elsewhere (another `/proc`,
    /// with [`ProcessIdentity::read`]), kept from an earlier record, or `None`.
    ///
    /// ```
    /// use runstate::{InstanceId, ProcessIdentity, State};
    ///
    /// let who = ProcessIdentity::new(4_200, "0b7e51c4-6a3f-4c1e-9d2a-3f1e5c7d9a01");
    /// let state = State::unidentified(InstanceId::random(), 77, ()).with_process(Some(who.clone()));
    /// assert_eq!(state.process, Some(who));
    /// ```
    pub fn with_process(mut self, process: Option<ProcessIdentity>) -> State<C> {
        self.process = process;
        self
    }
}
