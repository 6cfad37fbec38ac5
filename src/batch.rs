//! Lazy streams that fill batches as blocking work: one call per batch, never per file,
//! and at most one batch in memory.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use futures::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::aid_dir::{self, AidDir, Scan};
use crate::hold::Hold;
use crate::{Error, InstanceId, State};

/// Entry files read per hop at most.
const BATCH_FILES: usize = 128;
/// Bytes read per hop at most, so large entries make smaller batches.
const BATCH_BYTES: usize = 512 << 10;
/// The largest entry a stream decodes on the consumer's thread, in tens of microseconds at
/// most. Larger ones (up to any size, under a raised size cap) are decoded with the batch's
/// blocking work, so that decoding never stalls a runtime thread.
const DECODE_WHEN_TAKEN_MAX: usize = 64 << 10;

/// The work behind one stream of a held aid, run a batch at a time as one of the hold's
/// operations ([`Hold::run`]).
pub(crate) trait Batcher: Send + 'static {
    type Item: Send + 'static;
    /// The hold the stream reads under.
    fn hold(&self) -> &Arc<Hold>;
    /// Appends the next items; returns `false` once there are no more after these.
    fn fill(&mut self, out: &mut Vec<Result<Self::Item, Error>>) -> bool;
}

/// Turns a batcher into a stream. Nothing runs until the stream is polled.
pub(crate) fn stream<B: Batcher>(
    op: &'static str,
    batcher: B,
) -> impl Stream<Item = Result<B::Item, Error>> + Send + Unpin {
    stream::unfold(Some(batcher), move |batcher| async move {
        let mut batcher = batcher?;
        let hold = batcher.hold().clone();
        let hop = hold.run(op, move |_| {
            let mut out = Vec::new();
            let more = batcher.fill(&mut out);
            Ok((batcher, out, more))
        });
        match hop.await {
            Ok((batcher, out, more)) => Some((out, more.then_some(batcher))),
            Err(e) => Some((vec![Err(e)], None)),
        }
    })
    .flat_map(stream::iter)
    // Boxed so callers can poll it without pinning it first.
    .boxed()
}

/// Where a listing of one held aid stands.
pub(crate) struct Listing {
    hold: Arc<Hold>,
    scan: Option<Scan>,
}

impl Listing {
    pub(crate) fn new(hold: Arc<Hold>) -> Listing {
        Listing { hold, scan: None }
    }

    /// Runs `fill` on the scan, opened on first use, and says whether more is to come. An
    /// error opening the scan is the listing's last item.
    fn fill_with<T>(
        &mut self,
        out: &mut Vec<Result<T, Error>>,
        fill: impl FnOnce(&AidDir, &mut Scan, &mut Vec<Result<T, Error>>),
    ) -> bool {
        let scan = match self.scan.take().map_or_else(|| self.hold.dir().scan(), Ok) {
            Ok(scan) => self.scan.insert(scan),
            Err(e) => {
                out.push(Err(e));
                return false;
            }
        };
        fill(self.hold.dir(), scan, out);
        if let Err(e) = scan.fetch(self.hold.dir().path()) {
            out.push(Err(e));
            return false;
        }
        !scan.is_done()
    }
}

/// Entry ids of one aid.
pub(crate) struct Ids(pub(crate) Listing);

impl Batcher for Ids {
    type Item = InstanceId;

    fn hold(&self) -> &Arc<Hold> {
        &self.0.hold
    }

    fn fill(&mut self, out: &mut Vec<Result<InstanceId, Error>>) -> bool {
        // Names cost little to list, so a batch holds more of them than of entries.
        self.0.fill_with(out, |dir, scan, out| {
            while out.len() < BATCH_FILES * 8 {
                let Some(id) = scan.next_id(dir.path()) else {
                    break;
                };
                out.push(id);
            }
        })
    }
}

/// Streams the entries of one held aid, decoded. Files are read in batches, as one of the
/// hold's operations each, and decoded one at a time as they are taken (see
/// [`AidDir::read_raw_batch`] for why), but for large ones. The hold is let go with the last
/// batch.
pub(crate) fn entries<C>(
    listing: Listing,
) -> impl Stream<Item = Result<State<C>, Error>> + Send + Unpin
where
    C: DeserializeOwned + Send + 'static,
{
    let start = RawEntries {
        dir: listing.hold.dir().path().to_owned(),
        listing: Some(listing),
        bytes: Vec::new(),
        items: Vec::new().into_iter(),
    };
    stream::unfold(start, |mut raw| {
        async move {
            loop {
                match raw.items.next() {
                    Some(Taken::Ready(item)) => return Some((item, raw)),
                    Some(Taken::Bytes(id, at)) => {
                        let decoded = aid_dir::decode_entry(&raw.dir, id, &raw.bytes[at]);
                        return Some((decoded, raw));
                    }
                    None => {}
                }
                let mut listing = raw.listing.take()?;
                let hold = listing.hold.clone();
                // The byte buffer goes to the blocking work and comes back, to be reused.
                let mut bytes = std::mem::take(&mut raw.bytes);
                let hop = hold.run("entries", move |hold| {
                    bytes.clear();
                    let mut read = Vec::new();
                    let more = listing.fill_with(&mut read, |dir, scan, out| {
                        dir.read_raw_batch(scan, BATCH_FILES, BATCH_BYTES, &mut bytes, out)
                    });
                    let items: Vec<Taken<C>> = read
                        .into_iter()
                        .map(|item| match item {
                            Ok((id, at)) if at.len() > DECODE_WHEN_TAKEN_MAX => Taken::Ready(
                                aid_dir::decode_entry(hold.dir().path(), id, &bytes[at]),
                            ),
                            Ok((id, at)) => Taken::Bytes(id, at),
                            Err(e) => Taken::Ready(Err(e)),
                        })
                        .collect();
                    Ok((more.then_some(listing), bytes, items))
                });
                match hop.await {
                    Ok((listing, bytes, items)) => {
                        raw.listing = listing;
                        raw.bytes = bytes;
                        raw.items = items.into_iter();
                    }
                    Err(e) => return Some((Err(e), raw)),
                }
            }
        }
    })
    // Boxed so callers can poll it without pinning it first.
    .boxed()
}

/// Where a stream of entries stands: the listing if there is more, and what is left of the
/// batch read last.
struct RawEntries<C> {
    /// The aid directory, for the paths in errors.
    dir: PathBuf,
    listing: Option<Listing>,
    bytes: Vec<u8>,
    items: std::vec::IntoIter<Taken<C>>,
}

/// One item of a batch of entries, as the blocking side left it.
enum Taken<C> {
    /// An entry's bytes, at this range of the batch's buffer, to decode when taken.
    Bytes(InstanceId, Range<usize>),
    /// An error, or a large entry decoded on the blocking side.
    Ready(Result<State<C>, Error>),
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::thread::{self, ThreadId};

    use futures::TryStreamExt;
    use serde::{Deserialize, Deserializer, Serialize};

    use super::DECODE_WHEN_TAKEN_MAX;
    use crate::{Aid, AsyncStore, Error, InstanceId, State};

    /// Where each config of a given length was decoded.
    static DECODED_ON: Mutex<Vec<(usize, ThreadId)>> = Mutex::new(Vec::new());

    #[derive(Serialize)]
    struct Noted(String);

    impl<'de> Deserialize<'de> for Noted {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Noted, D::Error> {
            let text = String::deserialize(d)?;
            let mut decoded = DECODED_ON.lock().unwrap_or_else(|e| e.into_inner());
            decoded.push((text.len(), thread::current().id()));
            Ok(Noted(text))
        }
    }

    #[test]
    fn small_entries_decode_when_taken_and_large_ones_on_the_blocking_side() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let (small, large) = (100, DECODE_WHEN_TAKEN_MAX + 1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let read = runtime.block_on(async {
            let store = AsyncStore::<Noted>::new(dir.path());
            store
                .with_aid(Aid::new(1)?, async |c| {
                    for len in [small, large] {
                        let config = Noted("x".repeat(len));
                        c.save(&State::new(InstanceId::random(), 1, config)).await?;
                    }
                    c.entries().try_collect::<Vec<_>>().await
                })
                .await
        });
        assert_eq!(
            read.map(|all| all.len()).map_err(|e: Error| e.to_string()),
            Ok(2)
        );
        let decoded = DECODED_ON.lock().unwrap().clone();
        let on = |len| decoded.iter().find(|(l, _)| *l == len).map(|(_, t)| *t);
        // The runtime is this thread: a current-thread runtime runs the stream here.
        assert_eq!(on(small), Some(thread::current().id()));
        assert!(on(large).is_some_and(|t| t != thread::current().id()));
    }
}
