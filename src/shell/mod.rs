//! The async shell: the stepwise streams over a held aid, and the waits on the outside world
//! (a process's exit, changes in the directories). Where work runs is `exec/`'s.

pub(crate) mod exit;
pub(crate) mod inotify;
pub(crate) mod streams;
