//! A crash-safe, async store of what is running on a host.
//!
//! Supervisors that launch sandboxed programs keep one small entry per running instance,
//! grouped by application id ([`Aid`]): the instance's [`InstanceId`], its child's pid, its
//! start time and the application's configuration. Many tasks and many processes share one
//! store, and any of them may crash at any moment without corrupting it or leaving it locked.
//!
//! ```
//! use futures::TryStreamExt;
//! use runstate::{Aid, AsyncStore, Error, InstanceId, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let run_dir = dir.path();
//! // One store per run directory (normally on tmpfs, such as /run/launcher).
//! let store = AsyncStore::<Vec<String>>::new(run_dir);
//! let aid = Aid::new(12)?;
//!
//! // A launcher started a child: record it.
//! let id = InstanceId::random();
//! let argv = vec!["sleep".to_string(), "30".to_string()];
//! store.with_aid(aid, async |c| c.save(&State::new(id, 31337, argv)).await).await?;
//!
//! // A ps-like tool lists everything, lazily.
//! let all: Vec<(Aid, State<Vec<String>>)> = store.entries().try_collect().await?;
//! assert_eq!(all.len(), 1);
//!
//! // The child exited: forget it, and learn whether it was the aid's last instance.
//! let last = store
//!     .with_aid(aid, async |c| {
//!         c.destroy(id).await?;
//!         Ok::<_, Error>(c.len().await? == 0)
//!     })
//!     .await?;
//! assert!(last);
//! # Ok(()) }
//! ```
//!
//! See the README for the on-disk layout and format and for the guarantees and what they
//! rest on.

#![cfg(target_os = "linux")]
#![deny(missing_docs)]

mod aid;
mod aid_dir;
mod batch;
mod blocking;
mod cursor;
mod error;
mod format;
mod hold;
mod instance_id;
mod layout;
mod liveness;
mod lock;
mod options;
mod state;
mod store;

pub use aid::Aid;
pub use cursor::{Cursor, ReadCursor};
pub use error::{CorruptKind, Error, Result};
pub use instance_id::InstanceId;
pub use liveness::{Liveness, ProcessIdentity};
pub use options::Options;
pub use state::State;
pub use store::AsyncStore;

/// The async streams this crate returns, re-exported so callers need not name `futures`.
pub use futures::Stream;

/// The README's code, compiled with the doctests so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
