//! Removing the entries of dead processes, a step at a time.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;

use crate::disk::aid_dir::AidDir;
use crate::disk::liveness;
use crate::disk::scan::Scan;
use crate::{Error, Liveness, State};

impl AidDir {
    /// Reads the next `max` entries of `scan` and removes those whose process is
    /// [`Liveness::Dead`], appending each removed entry to `out`. Corrupt files are not
    /// entries of dead processes, and are left alone. Stops before removing another once
    /// `gone` is raised (whoever would be told of what is removed has gone), and at the first
    /// failure to remove, appended as the last item: returns `false` then. Call it holding
    /// the lock exclusively.
    pub(crate) fn prune_dead_step<C: DeserializeOwned>(
        &self,
        scan: &mut Scan,
        max: usize,
        gone: &AtomicBool,
        out: &mut Vec<Result<State<C>, Error>>,
    ) -> bool {
        let mut buf = Vec::new();
        let proc_root = self.options().get_proc_root();
        for _ in 0..max {
            let Some(entry) = self.next_entry::<C>(scan, &mut buf) else {
                break;
            };
            let Ok(state) = entry else { continue };
            if gone.load(Ordering::Acquire) {
                break;
            }
            if liveness::check(proc_root, state.pid, state.process.as_ref()) != Liveness::Dead {
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
                    return false;
                }
            }
        }
        true
    }
}
