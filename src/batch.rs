//! Lazy streams that fill batches as blocking work: one call per batch, never per file,
//! and at most one batch in memory.

use std::ops::Range;
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
/// hold's operations each, but decoded one at a time as they are taken (see
/// [`AidDir::read_raw_batch`] for why). The hold is let go with the last batch.
pub(crate) fn entries<C>(
    listing: Listing,
) -> impl Stream<Item = Result<State<C>, Error>> + Send + Unpin
where
    C: DeserializeOwned + Send + 'static,
{
    let dir = listing.hold.dir().path().to_owned();
    let start = RawEntries {
        listing: Some(listing),
        bytes: Vec::new(),
        items: Vec::new().into_iter(),
    };
    stream::unfold(start, move |mut raw| {
        let dir = dir.clone();
        async move {
            loop {
                if let Some(item) = raw.items.next() {
                    let decoded = item
                        .and_then(|(id, at)| aid_dir::decode_entry::<C>(&dir, id, &raw.bytes[at]));
                    return Some((decoded, raw));
                }
                let mut listing = raw.listing.take()?;
                let hold = listing.hold.clone();
                // The byte buffer goes to the blocking work and comes back, to be reused.
                let mut bytes = std::mem::take(&mut raw.bytes);
                let hop = hold.run("entries", move |_| {
                    bytes.clear();
                    let mut items = Vec::new();
                    let more = listing.fill_with(&mut items, |dir, scan, out| {
                        dir.read_raw_batch(scan, BATCH_FILES, BATCH_BYTES, &mut bytes, out)
                    });
                    Ok((more.then_some(listing), bytes, items))
                });
                match hop.await {
                    Ok((listing, bytes, items)) => {
                        raw = RawEntries {
                            listing,
                            bytes,
                            items: items.into_iter(),
                        };
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
struct RawEntries {
    listing: Option<Listing>,
    bytes: Vec<u8>,
    items: std::vec::IntoIter<Result<(InstanceId, Range<usize>), Error>>,
}
