//! The one config type of the suites that check what they read back: [`Filled`], whose
//! content says what it must be, so a torn, mixed or stale entry shows.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use runstate::{Error, InstanceId, ReadCursor, State};
use serde::{Deserialize, Serialize};

use super::{Checked, check_states, pattern};

/// A config that says what it must contain: `fill` is `len` bytes of the [`pattern`] set by
/// `seq`, and `owner` says which process or task saved it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Filled {
    pub owner: u64,
    pub seq: u64,
    pub len: u64,
    pub fill: String,
}

impl Filled {
    pub fn new(owner: u64, seq: u64, len: usize) -> Filled {
        Filled {
            owner,
            seq,
            len: len as u64,
            fill: pattern(seq, len),
        }
    }
}

impl Checked for Filled {
    fn check(&self) -> Result<(), String> {
        if self.fill.len() as u64 != self.len || self.fill != pattern(self.seq, self.fill.len()) {
            return Err(format!(
                "config {} of owner {} holds {} bytes that are not its {}-byte pattern",
                self.seq,
                self.owner,
                self.fill.len(),
                self.len
            ));
        }
        Ok(())
    }
}

/// What a closure can fail with: a store error, or a broken invariant.
#[derive(Debug)]
pub enum Fail {
    Store(Error),
    Broken(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Store(e) => write!(f, "store error: {e}"),
            Fail::Broken(why) => write!(f, "broken invariant: {why}"),
        }
    }
}

impl std::error::Error for Fail {}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Store(e)
    }
}

impl From<String> for Fail {
    fn from(e: String) -> Fail {
        Fail::Broken(e)
    }
}

/// Reads an aid every way a read cursor offers, checks that the ways agree and that every
/// entry is whole, and returns the entries.
pub async fn read_all(
    c: &mut ReadCursor<Filled>,
) -> Result<BTreeMap<InstanceId, State<Filled>>, Fail> {
    let all = c.load_all().await?;
    check_states(&all)?;
    let streamed: Vec<State<Filled>> = c.entries().try_collect().await?;
    let ids: Vec<InstanceId> = c.ids().try_collect().await?;
    let len = c.len().await?;
    if streamed.len() != all.len() || ids.len() != all.len() || len != all.len() {
        return Err(Fail::Broken(format!(
            "load_all found {}, entries {}, ids {}, len {}",
            all.len(),
            streamed.len(),
            ids.len(),
            len
        )));
    }
    for state in &streamed {
        if all.get(&state.id) != Some(state) {
            return Err(Fail::Broken(format!(
                "entries() and load_all() disagree on {}",
                state.id
            )));
        }
    }
    Ok(all)
}
