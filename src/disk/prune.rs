//! Removing the entries of dead processes, a step at a time.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;

use crate::disk::aid_dir::AidDir;
use crate::disk::read::{self, Found};
use crate::disk::scan::Scan;
use crate::process;
use crate::{Error, Liveness, State};

/// How a step of pruning ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PruneStep {
    /// It did what its bounds allowed, or reached the end.
    Done,
    /// It stopped before a file over its `max_file` bytes, left unread for a step on the
    /// blocking pool: where entries are read and decoded is decided by the caller's bounds,
    /// the one rule of `exec/` (`Work::entry`), as for every other reader.
    LeftLarge,
    /// A removal failed, appended as the last item.
    Failed,
}

impl AidDir {
    /// Reads the next entries of `scan`, at most `max` files and no more once `max_bytes`
    /// have been read, none over `max_file` bytes, and removes those whose process is
    /// [`Liveness::Dead`], appending each removed entry to `out`. Corrupt files are not
    /// entries of dead processes, and are left alone. Stops before removing another once
    /// `gone` is raised (whoever would be told of what is removed has gone), and at the first
    /// failure to remove. Call it holding the lock exclusively.
    pub(crate) fn prune_dead_step<C: DeserializeOwned>(
        &self,
        scan: &mut Scan,
        (max, max_bytes, max_file): (usize, usize, u64),
        gone: &AtomicBool,
        out: &mut Vec<Result<State<C>, Error>>,
    ) -> PruneStep {
        let mut buf = Vec::new();
        let mut read_bytes = 0;
        let proc_root = self.options().get_proc_root();
        for _ in 0..max {
            if read_bytes >= max_bytes {
                break;
            }
            let id = match scan.next_id(self.path()) {
                None => break,
                Some(Ok(id)) => id,
                Some(Err(_)) => continue,
            };
            let state = match self.read_entry(id, &mut buf, max_file) {
                Ok(Found::Read) => {
                    read_bytes += buf.len();
                    match read::decode_entry::<C>(self.path(), id, &buf) {
                        Ok(state) => state,
                        Err(_) => continue,
                    }
                }
                Ok(Found::TooLargeHere) => {
                    scan.unget();
                    return PruneStep::LeftLarge;
                }
                // Destroyed since it was listed (by a foreign process), or unreadable.
                Ok(Found::Missing) | Err(_) => continue,
            };
            if gone.load(Ordering::Acquire) {
                break;
            }
            if process::check(proc_root, state.pid, state.process.as_ref()) != Liveness::Dead {
                continue;
            }
            match self.destroy(state.id) {
                Ok(true) => {
                    tracing::info!(
                        aid = %self.aid(),
                        id = %state.id,
                        pid = state.pid,
                        "pruned the entry of a dead process"
                    );
                    out.push(Ok(state));
                }
                Ok(false) => {}
                Err(e) => {
                    out.push(Err(e));
                    return PruneStep::Failed;
                }
            }
        }
        PruneStep::Done
    }
}
