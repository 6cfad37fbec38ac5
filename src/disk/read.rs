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

impl AidDir {
    /// Reads the bytes of the entry of `id` into `buf`, undecoded; `Ok(false)` if there is
    /// none.
    pub(crate) fn read_entry(&self, id: InstanceId, buf: &mut Vec<u8>) -> Result<bool, Error> {
        let name = layout::entry_name(id);
        buf.clear();
        self.read_file(layout::as_cstr(&name), id, buf)
    }

    /// Reads and decodes the entry of `id`, reusing `buf`.
    pub(crate) fn load<C: DeserializeOwned>(
        &self,
        id: InstanceId,
        buf: &mut Vec<u8>,
    ) -> Result<Option<State<C>>, Error> {
        let name = layout::entry_name(id);
        buf.clear();
        if !self.read_file(layout::as_cstr(&name), id, buf)? {
            return Ok(None);
        }
        decode_entry(&self.path, id, buf).map(Some)
    }

    /// Reads the next entry files of `scan`, undecoded, one after another into `bytes`: at
    /// most `max` files, and no more once `max_bytes` have been read. Each file is one item
    /// of `out`: its id and where its bytes are, or the error in its place.
    ///
    /// Streams decode the entries later, one at a time as they are taken: decoded in a
    /// batch, a hundred configs would be alive at once, and the allocator's churn on them
    /// cost more than the hop the batch saves.
    pub(crate) fn read_raw_batch(
        &self,
        scan: &mut Scan,
        max: usize,
        max_bytes: usize,
        bytes: &mut Vec<u8>,
        out: &mut Vec<Result<(InstanceId, Range<usize>), Error>>,
    ) {
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
            match self.read_file(layout::as_cstr(&name), id, bytes) {
                Ok(true) => out.push(Ok((id, start..bytes.len()))),
                // Destroyed since it was listed (by a foreign process): no longer an entry.
                Ok(false) => {}
                Err(e) => out.push(Err(e)),
            }
        }
    }

    /// Reads a whole entry file into `buf`; `Ok(false)` if it does not exist. The size cap is
    /// checked on the open file before a byte is read, so a huge file costs nothing.
    fn read_file(&self, name: &CStr, id: InstanceId, buf: &mut Vec<u8>) -> Result<bool, Error> {
        let not_a_file = || Error::corrupt(self.entry_path(id), CorruptKind::NotAFile);
        let fd = match openat(
            &self.dir,
            name,
            OFlags::RDONLY | open_flags(),
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(false),
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
        result.map(|()| true)
    }

    /// The next entry of `scan`, read into `buf` and decoded, or the error in its place.
    pub(crate) fn next_entry<C: DeserializeOwned>(
        &self,
        scan: &mut Scan,
        buf: &mut Vec<u8>,
    ) -> Option<Result<State<C>, Error>> {
        loop {
            return match scan.next_id(&self.path)? {
                Ok(id) => match self.load(id, buf) {
                    Ok(Some(state)) => Some(Ok(state)),
                    // Destroyed since it was listed: another holder cannot do that, but a
                    // foreign process can; it simply is no longer an entry.
                    Ok(None) => continue,
                    Err(e) => Some(Err(e)),
                },
                Err(e) => Some(Err(e)),
            };
        }
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
