//! Reading entries back: bounded reads (the size cap checked before a byte is read), and
//! decoding, where a panicking `Deserialize` costs one corrupt entry.

use std::ffi::CStr;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, fstat, openat};
use rustix::io::Errno;
use serde::de::DeserializeOwned;

use crate::disk::aid_dir::AidDir;
use crate::disk::format;
use crate::disk::layout;
use crate::disk::scan::Scan;
use crate::disk::secure::open_flags;
use crate::error::CorruptKind;
use crate::{Error, InstanceId, State};

/// What a read of one entry file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// The file's bytes, now in the buffer.
    Read,
    /// No such file: never saved, or removed since it was listed.
    Missing,
    /// A file larger than the read was allowed to take where it runs (in place); nothing
    /// was read, so that the blocking pool can read it.
    TooLargeHere,
}

impl AidDir {
    /// Reads the bytes of the entry of `id` into `buf`, undecoded, unless the file is over
    /// `max_file` bytes (see [`Found`]).
    pub(crate) fn read_entry(
        &self,
        id: InstanceId,
        buf: &mut Vec<u8>,
        max_file: u64,
    ) -> Result<Found, Error> {
        let name = layout::entry_name(id);
        buf.clear();
        self.read_file(layout::as_cstr(&name), id, buf, max_file)
    }

    /// Reads and decodes the entry of `id`, reusing `buf`: for tests, which read in place
    /// whatever the size.
    #[cfg(test)]
    pub(crate) fn load<C: DeserializeOwned>(
        &self,
        id: InstanceId,
        buf: &mut Vec<u8>,
    ) -> Result<Option<State<C>>, Error> {
        match self.read_entry(id, buf, u64::MAX)? {
            Found::Read => decode_entry(&self.path, id, buf).map(Some),
            // With no size bound here, only a missing file is not read.
            Found::Missing | Found::TooLargeHere => Ok(None),
        }
    }

    /// Reads the next entry files of `scan`, undecoded, one after another into `bytes`: at
    /// most `max` files, and no more once `max_bytes` have been read. Each file is one item
    /// of `out`: its id and where its bytes are, or the error in its place.
    ///
    /// Streams decode the entries later, one at a time as they are taken: decoded in a
    /// batch, a hundred configs would be alive at once, and the allocator's churn on them
    /// cost more than the hop the batch saves.
    ///
    /// Returns `true` if it stopped at a file over `max_file` bytes, left unread for a
    /// larger step on the blocking pool.
    pub(crate) fn read_raw_batch(
        &self,
        scan: &mut Scan,
        (max, max_bytes, max_file): (usize, usize, u64),
        bytes: &mut Vec<u8>,
        out: &mut Vec<Result<(InstanceId, Range<usize>), Error>>,
    ) -> bool {
        while out.len() < max && bytes.len() < max_bytes {
            let id = match scan.next_id(&self.path) {
                None => break,
                Some(Err(e)) => {
                    out.push(Err(e));
                    continue;
                }
                Some(Ok(id)) => id,
            };
            let start = bytes.len();
            let name = layout::entry_name(id);
            match self.read_file(layout::as_cstr(&name), id, bytes, max_file) {
                Ok(Found::Read) => out.push(Ok((id, start..bytes.len()))),
                // Destroyed since it was listed (by a foreign process): no longer an entry.
                Ok(Found::Missing) => {}
                Ok(Found::TooLargeHere) => {
                    scan.unget();
                    return true;
                }
                Err(e) => out.push(Err(e)),
            }
        }
        false
    }

    /// Reads a whole entry file into `buf`; `Ok(false)` if it does not exist. The size cap is
    /// checked on the open file before a byte is read, so a huge file costs nothing.
    fn read_file(
        &self,
        name: &CStr,
        id: InstanceId,
        buf: &mut Vec<u8>,
        max_file: u64,
    ) -> Result<Found, Error> {
        let not_a_file = || Error::corrupt(self.entry_path(id), CorruptKind::NotAFile);
        let open = || {
            openat(
                &self.dir,
                name,
                OFlags::RDONLY | open_flags(),
                Mode::empty(),
            )
        };
        // A directory removed since it was opened has no names: read the one at its path.
        let opened = match open() {
            Err(Errno::NOENT) if self.revive()? => open(),
            opened => opened,
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Found::Missing),
            Err(Errno::LOOP | Errno::NXIO | Errno::ISDIR) => return Err(not_a_file()),
            Err(e) => return Err(Error::io("read", self.entry_path(id), e)),
        };
        let st = fstat(&fd).map_err(|e| Error::io("read", self.entry_path(id), e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(not_a_file());
        }
        let size = st.st_size as u64;
        let limit = self.options().max_entry_size;
        if size > limit {
            return Err(Error::corrupt(
                self.entry_path(id),
                CorruptKind::TooLarge { size, limit },
            ));
        }
        if size > max_file {
            return Ok(Found::TooLargeHere);
        }
        let start = buf.len();
        let mut file = File::from(fd);
        let read_failed = |e| Error::io("read", self.entry_path(id), e);
        let result = if size <= PREALLOC_MAX {
            // Published entries never change, so the size from fstat is the size to read, in
            // one read(2); a foreign file that grows meanwhile is cut at that size, and one
            // that shrinks yields what it has.
            buf.resize(start + size as usize, 0);
            read_into(&mut file, &mut buf[start..])
                .map(|filled| buf.truncate(start + filled))
                .map_err(read_failed)
        } else {
            // Only under a raised cap. The size may be a sparse file's claim, so memory
            // follows the bytes that really arrive, and the file is read only while it can
            // still be an entry and is within the cap.
            buf.resize(start + PREALLOC_MAX as usize, 0);
            read_into(&mut file, &mut buf[start..])
                .map_err(read_failed)
                .and_then(|filled| {
                    buf.truncate(start + filled);
                    if !format::may_be_entry(&buf[start..]) {
                        return Ok(());
                    }
                    let more = limit.saturating_add(1).saturating_sub(filled as u64);
                    (&file).take(more).read_to_end(buf).map_err(read_failed)?;
                    let read = (buf.len() - start) as u64;
                    match read > limit {
                        true => Err(Error::corrupt(
                            self.entry_path(id),
                            CorruptKind::TooLarge {
                                size: size.max(read),
                                limit,
                            },
                        )),
                        false => Ok(()),
                    }
                })
        };
        // A failed read leaves `buf` as it found it.
        if result.is_err() {
            buf.truncate(start);
        }
        result.map(|()| Found::Read)
    }
}

/// The most of a file's claimed size that is allocated before its bytes arrive. Entries are
/// far smaller under the default cap; only a raised cap lets a larger file be read.
const PREALLOC_MAX: u64 = 4 << 20;

/// Fills `buf` from `file` up to its length or the end of the file; returns the bytes read.
fn read_into(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decodes the bytes of the entry file of `id` in the aid directory `dir`.
pub(crate) fn decode_entry<C: DeserializeOwned>(
    dir: &Path,
    id: InstanceId,
    bytes: &[u8],
) -> Result<State<C>, Error> {
    let path = || dir.join(id.to_string());
    // Caught per file, so a config whose Deserialize panics on one file costs that file
    // alone, as any other corrupt entry does.
    let state: State<C> = match catch_unwind(AssertUnwindSafe(|| format::decode(bytes))) {
        Ok(Ok(state)) => state,
        Ok(Err(why)) => return Err(Error::corrupt(path(), CorruptKind::Undecodable(why))),
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            return Err(Error::corrupt(path(), CorruptKind::DecodePanicked(message)));
        }
    };
    if state.id != id {
        return Err(Error::corrupt(
            path(),
            CorruptKind::IdMismatch { found: state.id },
        ));
    }
    Ok(state)
}

/// The text of a panic's payload, for the error that replaces it.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::disk::state_dir::StateDir;
    use crate::{Aid, Options};

    /// A read bounded to what may be read in place leaves a larger file unread, and a step
    /// of a listing stops before it, so that the pool reads it; unbounded, both read it.
    #[test]
    fn a_file_over_the_bound_is_left_unread_for_the_pool() {
        let run = tempfile::tempdir_in("/dev/shm").unwrap();
        let options = Options::new();
        let state = Arc::new(StateDir::open(run.path(), &options).unwrap());
        let dir = AidDir::open_after_lock(state, Aid::new(1).unwrap(), false, || Ok(())).unwrap();
        let (small, large) = (
            InstanceId::from_bytes([1; 16]),
            InstanceId::from_bytes([2; 16]),
        );
        std::fs::write(dir.path().join(small.to_string()), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join(large.to_string()), vec![0u8; 5000]).unwrap();

        let mut buf = Vec::new();
        assert_eq!(
            dir.read_entry(large, &mut buf, 4096).unwrap(),
            Found::TooLargeHere
        );
        assert!(buf.is_empty(), "nothing read");
        assert_eq!(
            dir.read_entry(large, &mut buf, u64::MAX).unwrap(),
            Found::Read
        );
        assert_eq!(buf.len(), 5000);
        assert_eq!(
            dir.read_entry(InstanceId::from_bytes([3; 16]), &mut buf, 4096)
                .unwrap(),
            Found::Missing
        );

        // Steps of up to 10 files: one in place stops at the large file, whichever comes
        // first in the directory, and the next step, on the pool, reads it.
        let mut scan = dir.scan(32 << 10).unwrap();
        let mut read_ids = Vec::new();
        let mut stopped = 0;
        for max_file in [4096, 4096, u64::MAX] {
            let (mut bytes, mut out) = (Vec::new(), Vec::new());
            if dir.read_raw_batch(&mut scan, (10, 1 << 20, max_file), &mut bytes, &mut out) {
                stopped += 1;
            }
            read_ids.extend(out.into_iter().map(|item| item.unwrap().0));
        }
        read_ids.sort();
        assert_eq!(read_ids, [small, large], "each file read once");
        assert!(stopped >= 1, "an in-place step stopped at the large file");
    }
}
