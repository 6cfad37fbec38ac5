//! The cross-process half of an aid's lock: `flock(2)` on the aid's lock file.
//!
//! flock locks belong to an open file description, so two holders sharing one descriptor
//! would never exclude each other. The store therefore lets only one holder at a time in
//! this process touch a given `LockFile` (see `hold.rs`); this type only talks to the kernel.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use crate::Error;

/// An open lock file. The descriptor is close-on-exec, so children never inherit the lock.
#[derive(Debug)]
pub(crate) struct LockFile {
    fd: OwnedFd,
    path: PathBuf,
}

impl LockFile {
    pub(crate) fn new(fd: OwnedFd, path: PathBuf) -> LockFile {
        LockFile { fd, path }
    }

    /// Takes the exclusive lock if no other process holds it; `Ok(false)` if one does.
    /// Never blocks, so it may run on a runtime thread.
    pub(crate) fn try_exclusive(&self) -> Result<bool, Error> {
        loop {
            return match flock(&self.fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => Ok(true),
                Err(Errno::WOULDBLOCK) => Ok(false),
                Err(Errno::INTR) => continue,
                Err(e) => Err(Error::io("lock", &self.path, e)),
            };
        }
    }

    /// Waits for the exclusive lock. Blocks: call it on the blocking pool.
    pub(crate) fn exclusive(&self) -> Result<(), Error> {
        loop {
            return match flock(&self.fd, FlockOperation::LockExclusive) {
                Ok(()) => Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => Err(Error::io("lock", &self.path, e)),
            };
        }
    }

    /// Drops the lock. Never blocks. An error here cannot leave the lock held by us
    /// (the only failures are a bad descriptor or interruption before any change), so it
    /// is retried on interruption and otherwise ignored.
    pub(crate) fn unlock(&self) {
        while let Err(Errno::INTR) = flock(&self.fd, FlockOperation::Unlock) {}
    }
}
