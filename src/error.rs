//! The one error type of the crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the store.
///
/// Each variant says what failed and, where a file is involved, on which path. The enum is
/// `#[non_exhaustive]`: match the variants you act on and keep a catch-all arm.
///
/// ```
/// use runstate::{Aid, Error};
///
/// let err = Aid::new(10_000).unwrap_err();
/// assert!(matches!(err, Error::InvalidAid { .. }));
/// assert_eq!(err.to_string(), "invalid aid 10000: an aid is a number from 0 to 9999");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An application id outside `0..=9999`, or text that is not one.
    #[error("invalid aid {input}: an aid is a number from 0 to 9999")]
    InvalidAid {
        /// The rejected value, as given.
        input: String,
    },

    /// Text that is not exactly 32 lowercase hexadecimal digits.
    #[error("invalid instance id {input:?}: {reason}")]
    InvalidInstanceId {
        /// The rejected text (cut to 64 characters).
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// `save` found an entry with the same instance id; the existing file was left untouched.
    #[error("an entry already exists at {path}")]
    AlreadyExists {
        /// The existing entry file.
        path: PathBuf,
    },

    /// A file in the store that cannot be an entry: the stream or listing goes on past it.
    #[error("corrupt entry {path}: {kind}")]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        kind: CorruptKind,
    },

    /// The store's own directory or lock file is not safe to trust (wrong type, owner or mode).
    #[error("refusing to use {path}: {reason}")]
    Insecure {
        /// The offending directory or file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// `save` could not encode the entry: the config's `Serialize` impl failed, the config
    /// nests arrays and maps more than 200 levels deep (readers refuse deeper files), or the
    /// start time is out of the format's range.
    #[error("cannot encode the entry for {path}: {reason}")]
    Encode {
        /// The entry file it was meant for.
        path: PathBuf,
        /// The encoder's message.
        reason: String,
    },

    /// [`try_with_aid`](crate::AsyncStore::try_with_aid) or
    /// [`try_with_aid_shared`](crate::AsyncStore::try_with_aid_shared) found the aid held by
    /// another task or process (for a shared try, also: an exclusive holder queued for it); the
    /// closure did not run.
    #[error("aid {aid} is held by another holder")]
    WouldBlock {
        /// The aid asked for.
        aid: crate::Aid,
    },

    /// The aid did not become free within the wait limit; nothing of the store is held (a
    /// process-wide thread may stay queued in the kernel until the lock comes, and then
    /// releases it or hands it to the next waiter).
    #[error("aid {aid} was still held after waiting {waited:?}")]
    Timeout {
        /// The aid asked for.
        aid: crate::Aid,
        /// The wait limit.
        waited: std::time::Duration,
    },

    /// `save` refused an entry larger than the store's size cap, which readers would reject.
    #[error("the entry for {path} is {size} bytes, over the {limit}-byte entry size cap")]
    TooLarge {
        /// The entry file it was meant for.
        path: PathBuf,
        /// The encoded entry's size in bytes.
        size: u64,
        /// The cap in force ([`Options::max_entry_size`](crate::Options::max_entry_size)).
        limit: u64,
    },

    /// A hold of an aid was asked for from inside a `with_aid*` closure that holds the same
    /// aid of the same store (or `close` from inside any hold of the store): the lock is not
    /// re-entrant, so it would have waited for itself forever. Use the closure's cursor
    /// instead. A nested shared hold inside a shared one is refused too: it gets in only
    /// while no exclusive holder is queued, and waits forever once one is.
    /// [`try_with_aid`](crate::AsyncStore::try_with_aid) and
    /// [`try_with_aid_shared`](crate::AsyncStore::try_with_aid_shared), which never wait,
    /// answer [`Error::WouldBlock`] there as anywhere else.
    #[error("aid {aid} is already held by the caller: the lock is not re-entrant")]
    Reentrant {
        /// The aid held.
        aid: crate::Aid,
    },

    /// The store was closed with [`AsyncStore::close`](crate::AsyncStore::close).
    #[error("the store is closed")]
    Closed,

    /// The store was made in another process and came into this one through `fork(2)`.
    /// A forked child never keeps the store's lock descriptors (they are closed in the child
    /// right after the fork, so that a child cannot keep its parent's locks), so the store
    /// refuses to work there: every operation of the store, and of its cursors, streams,
    /// watches and waits carried into the child, including [`close`]. Make a new store in the
    /// child.
    ///
    /// [`close`]: crate::AsyncStore::close
    #[error(
        "the store was made in the parent of this forked process and cannot be used here: \
         make a new store"
    )]
    Forked,

    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation that failed, such as `"save"` or `"lock"`.
        op: &'static str,
        /// The file or directory it was working on.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },

    /// The store's own blocking work panicked, or was cancelled on the blocking pool by a
    /// runtime shutdown. A panic while decoding one entry (in a config's `Deserialize` impl,
    /// say) is not this error but that entry's [`CorruptKind::DecodePanicked`].
    #[error("{op}: blocking task {}", if *.panicked { "panicked" } else { "was cancelled" })]
    Blocking {
        /// The operation that was running.
        op: &'static str,
        /// `true` for a panic, `false` for a cancellation.
        panicked: bool,
    },
}

/// Why a file in an aid directory is not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CorruptKind {
    /// Not a regular file (a directory, symlink, fifo, ...); it was not followed or opened for data.
    NotAFile,
    /// Larger than the store's entry size cap; it was not read.
    TooLarge {
        /// The file's size in bytes.
        size: u64,
        /// The cap in force ([`Options::max_entry_size`](crate::Options::max_entry_size)).
        limit: u64,
    },
    /// The bytes are not an entry in any format version this crate reads.
    Undecodable(String),
    /// The config's `Deserialize` impl (or another part of decoding) panicked on this file;
    /// the panic's message. The panic was caught for this file alone, so the other entries
    /// are still read; the panic hook has already reported it as usual.
    DecodePanicked(String),
    /// The entry decoded, but the id inside differs from the file name.
    IdMismatch {
        /// The id found inside the file.
        found: crate::InstanceId,
    },
}

impl std::fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorruptKind::NotAFile => f.write_str("not a regular file"),
            CorruptKind::TooLarge { size, limit } => {
                write!(f, "{size} bytes is over the {limit}-byte entry size cap")
            }
            CorruptKind::Undecodable(why) => write!(f, "cannot decode: {why}"),
            CorruptKind::DecodePanicked(message) => write!(f, "decoding panicked: {message}"),
            CorruptKind::IdMismatch { found } => write!(f, "holds the entry of {found}"),
        }
    }
}

impl Error {
    /// Whether this is an `Io` error for a name that is not there (`ENOENT`): the sign of a
    /// directory removed under the store, which the callers then check for.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    /// A file that cannot be an entry; said to the operator too, since a listing goes on
    /// past it and the caller may not look.
    pub(crate) fn corrupt(path: impl Into<PathBuf>, kind: CorruptKind) -> Self {
        let path = path.into();
        tracing::warn!(path = %path.display(), %kind, "corrupt entry");
        Error::Corrupt { path, kind }
    }

    /// A store directory or file refused as unsafe; said to the operator too.
    pub(crate) fn insecure(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        let (path, reason) = (path.into(), reason.into());
        tracing::warn!(path = %path.display(), %reason, "refusing an insecure store file");
        Error::Insecure { path, reason }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
