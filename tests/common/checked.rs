//! The one config type of the suites that check what they read back: [`Filled`], whose
//! content says what it must be, so a torn, mixed or stale entry shows.

use serde::{Deserialize, Serialize};

use super::{Checked, pattern};

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
