//! Where things live under the run directory, and which names are ours.
//!
//! ```text
//! <run_dir>/state/               0700, made on first use
//! <run_dir>/state/<aid>/         0700, one per aid ("0" to "9999", no leading zeros)
//! <run_dir>/state/<aid>/<id>     0600, one entry file per instance (32 lowercase hex digits)
//! <run_dir>/state/<aid>/.tmp-<hex>  a replace in progress, or a save in progress where
//!                                   O_TMPFILE is unavailable
//! <run_dir>/state/<aid>.lock     0600; flock(2) on it excludes other processes; empty, or
//!                                one byte, 1, while a fallback save or a replace may have
//!                                left a .tmp- file
//! ```
//!
//! Every other name is foreign: listings skip it and nothing deletes it.

use std::ffi::{CStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::instance_id::TEXT_LEN;
use crate::{Aid, InstanceId};

/// The directory under the run directory that holds everything.
pub(crate) const STATE_DIR: &str = "state";

/// Prefix of the named temporary files of the fallback save path.
pub(crate) const TEMP_PREFIX: &[u8] = b".tmp-";

/// Mode of the directories the store makes.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Mode of the files the store makes.
pub(crate) const FILE_MODE: u32 = 0o600;

/// An aid's name in the state directory ([`AidName::dir`]) or its lock file's
/// ([`AidName::lock`]), made without allocating or formatting, NUL-terminated so that system
/// calls take it as it is: a cold hold builds two, and `format!` and `Path::join` were a
/// sixth of its own work.
#[derive(Clone, Copy)]
pub(crate) struct AidName {
    /// The name and its NUL; "9999.lock" is the longest.
    buf: [u8; 12],
    len: usize,
}

impl AidName {
    /// The aid's directory's name: its number, without leading zeros.
    pub(crate) fn dir(aid: Aid) -> AidName {
        let mut buf = [0u8; 12];
        let mut digits = [0u8; 5];
        let (mut n, mut i) = (aid.get(), digits.len());
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let len = digits.len() - i;
        buf[..len].copy_from_slice(&digits[i..]);
        AidName { buf, len }
    }

    /// The aid's lock file's name: its number and `.lock`.
    pub(crate) fn lock(aid: Aid) -> AidName {
        let AidName { mut buf, len } = AidName::dir(aid);
        buf[len..len + 5].copy_from_slice(b".lock");
        AidName { buf, len: len + 5 }
    }

    /// The name, for system calls.
    pub(crate) fn as_cstr(&self) -> &CStr {
        // Digits and ".lock", then at least one NUL.
        CStr::from_bytes_until_nul(&self.buf).unwrap_or(c"")
    }

    /// The name's path in `dir`, in one allocation of its size.
    pub(crate) fn path_in(&self, dir: &Path) -> PathBuf {
        let dir = dir.as_os_str().as_bytes();
        let mut path = Vec::with_capacity(dir.len() + 1 + self.len);
        path.extend_from_slice(dir);
        if !dir.ends_with(b"/") {
            path.push(b'/');
        }
        path.extend_from_slice(&self.buf[..self.len]);
        PathBuf::from(OsString::from_vec(path))
    }
}

/// The aid a state directory entry names, if it is an aid directory's name.
pub(crate) fn parse_aid_name(name: &[u8]) -> Option<Aid> {
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// The id an aid directory entry names, if it is an entry file's name.
pub(crate) fn parse_entry_name(name: &CStr) -> Option<InstanceId> {
    let bytes = name.to_bytes();
    if bytes.len() != TEXT_LEN {
        return None;
    }
    InstanceId::parse_hex(bytes).ok()
}

/// An entry file's name, NUL-terminated so system calls take it without copying.
pub(crate) fn entry_name(id: InstanceId) -> [u8; TEXT_LEN + 1] {
    let mut out = [0u8; TEXT_LEN + 1];
    out[..TEXT_LEN].copy_from_slice(&id.to_hex());
    out
}

/// Views a name made by [`entry_name`] as a C string.
pub(crate) fn as_cstr(name: &[u8; TEXT_LEN + 1]) -> &CStr {
    // entry_name writes hex digits and exactly one trailing NUL.
    CStr::from_bytes_with_nul(name).unwrap_or(c"")
}

/// Whether `name` is one that [`temp_name`] makes: the prefix, then exactly 32 lowercase
/// hexadecimal digits. Only these are swept; any other name is foreign and left alone.
pub(crate) fn is_temp_name(name: &[u8]) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .is_some_and(|hex| InstanceId::parse_hex(hex).is_ok())
}

/// A name for a fallback temporary file.
pub(crate) fn temp_name() -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(TEMP_PREFIX),
        InstanceId::random()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_not_ours() {
        let id = InstanceId::from_bytes([0x5a; 16]);
        let name = entry_name(id);
        assert_eq!(parse_entry_name(as_cstr(&name)), Some(id));
        for foreign in [
            c".tmp-5a5a",
            c"5a5a",
            c"README",
            c"5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A",
        ] {
            assert_eq!(parse_entry_name(foreign), None);
        }
        assert!(is_temp_name(temp_name().as_bytes()));
        for foreign in [
            ".tmp-",
            ".tmp-5a5a",
            ".tmp-5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A",
            ".tmp-5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a0",
            "x.tmp-5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
            "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        ] {
            assert!(!is_temp_name(foreign.as_bytes()), "{foreign}");
        }
        assert!(is_temp_name(b".tmp-5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"));
        assert_eq!(parse_aid_name(b"17"), Some(Aid::new(17).unwrap()));
        for n in [0, 7, 10, 99, 100, 1234, 9999] {
            let aid = Aid::new(n).unwrap();
            let (dir, lock) = (AidName::dir(aid), AidName::lock(aid));
            assert_eq!(dir.as_cstr().to_str().unwrap(), aid.to_string());
            let lock_name = format!("{aid}.lock");
            assert_eq!(lock.as_cstr().to_str().unwrap(), lock_name);
            assert_eq!(parse_aid_name(dir.as_cstr().to_bytes()), Some(aid));
            for base in ["/run/x/state", "/run/x/state/", "state", "/"] {
                let base = Path::new(base);
                assert_eq!(lock.path_in(base), base.join(&lock_name));
                assert_eq!(dir.path_in(base), base.join(aid.to_string()));
            }
        }
        for junk in [&b"017"[..], b"17.lock", b"10000", b"-1", b"x", b""] {
            assert_eq!(parse_aid_name(junk), None);
        }
    }
}
