//! One running instance's record.

use std::time::SystemTime;

use crate::{InstanceId, ProcessIdentity};

/// What the store keeps about one running instance.
///
/// The struct is `#[non_exhaustive]` so later versions can record more: build it with
/// [`State::new`] and read its public fields.
///
/// ```
/// use runstate::{InstanceId, State};
///
/// let state = State::new(InstanceId::random(), std::process::id(), vec!["sleep", "10"]);
/// assert_eq!(state.pid, std::process::id());
/// assert!(state.time <= std::time::SystemTime::now());
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
    /// Who `pid` was when the entry was saved, so a reused pid is not taken for it.
    ///
    /// [`Cursor::save`](crate::Cursor::save) fills it in from `/proc` when it is `None`, so
    /// a loaded entry has it unless `/proc` did not show the pid at save time.
    pub process: Option<ProcessIdentity>,
    /// The application's configuration, stored as a MessagePack map.
    pub config: C,
}

impl<C> State<C> {
    /// A state whose start time is now.
    pub fn new(id: InstanceId, pid: u32, config: C) -> State<C> {
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
}
