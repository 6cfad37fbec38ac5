//! The synchronous core: everything that touches the store's files, and nothing that waits
//! on a runtime: no async runtime, no locking layer, no async
//! shell (`.ci/run` checks). Whoever calls it holds the aid as each method's docs say.

pub(crate) mod aid_dir;
pub(crate) mod format;
pub(crate) mod layout;
pub(crate) mod prune;
pub(crate) mod publish;
pub(crate) mod read;
pub(crate) mod scan;
pub(crate) mod secure;
pub(crate) mod state_dir;
