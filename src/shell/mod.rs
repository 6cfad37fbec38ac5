//! The async shell: where each piece of file work runs (in place or on the blocking pool),
//! the stepwise streams over a held aid, and the waits on the outside world (a process's
//! exit, changes in the directories).

pub(crate) mod exit;
pub(crate) mod steps;
pub(crate) mod watch;
