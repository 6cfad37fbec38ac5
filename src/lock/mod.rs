//! The locking layer: the aid's lock file and its `flock`, the writers' gate, waits in the
//! kernel on threads of their own, descriptors no forked child keeps, the hold that joins
//! the in-process turn to the cross-process lock, and the store's table of aids.

pub(crate) mod file;
pub(crate) mod fork_guard;
pub(crate) mod gate;
pub(crate) mod hold;
pub(crate) mod in_flight;
pub(crate) mod kernel_wait;
pub(crate) mod open_aid;
pub(crate) mod reentry;
pub(crate) mod store_state;
pub(crate) mod turn;
