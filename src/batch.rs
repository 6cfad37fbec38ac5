//! Lazy streams that fill batches as blocking work: one call per batch, never per file,
//! and at most one batch in memory.

use std::sync::Arc;

use futures::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::aid_dir::{AidDir, Scan};
use crate::hold::Hold;
use crate::{Error, InstanceId, State};

/// Entries decoded per hop at most.
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

/// Decoded entries of one aid.
pub(crate) struct Entries<C> {
    listing: Listing,
    buf: Vec<u8>,
    _config: std::marker::PhantomData<fn() -> C>,
}

impl<C> Entries<C> {
    pub(crate) fn new(listing: Listing) -> Entries<C> {
        Entries {
            listing,
            buf: Vec::new(),
            _config: std::marker::PhantomData,
        }
    }
}

impl<C: DeserializeOwned + Send + 'static> Batcher for Entries<C> {
    type Item = State<C>;

    fn hold(&self) -> &Arc<Hold> {
        &self.listing.hold
    }

    fn fill(&mut self, out: &mut Vec<Result<State<C>, Error>>) -> bool {
        let buf = &mut self.buf;
        self.listing.fill_with(out, |dir, scan, out| {
            dir.read_batch(scan, BATCH_FILES, BATCH_BYTES, buf, out)
        })
    }
}
