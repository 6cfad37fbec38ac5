//! Lazy streams over a held aid, read in steps: one call into the aid directory per step,
//! never per file, and at most one step's files in memory. Steps run where `exec/`
//! says: small ones in place with a pause between them, larger ones on the pool.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::disk::aid_dir::AidDir;
use crate::disk::prune::PruneStep;
use crate::disk::read;
use crate::disk::scan::Scan;
use crate::exec::{self, Step, Work};
use crate::lock::hold::Hold;
use crate::{Error, InstanceId, State};

/// The work behind one stream of a held aid, run a step at a time as one of the hold's
/// operations ([`Hold::operate`]).
pub(crate) trait Batcher: Send + 'static {
    type Item: Send + 'static;
    /// The hold the stream reads under.
    fn hold(&self) -> &Arc<Hold>;
    /// Appends the next items, as many as `step` allows; returns `false` once there are no
    /// more after these.
    fn fill(&mut self, step: Step, out: &mut Vec<Result<Self::Item, Error>>) -> bool;
    /// How large the next step is: [`Work::Large`] once it meets a file too large for a
    /// step in place.
    fn work(&self) -> Work {
        Work::Small
    }
}

/// Turns a batcher into a stream. Nothing runs until the stream is polled; dropped, it
/// stops before its next step.
pub(crate) fn stream<B: Batcher>(
    op: &'static str,
    batcher: B,
) -> impl Stream<Item = Result<B::Item, Error>> + Send + Unpin {
    stream::unfold(
        (Some(batcher), false),
        move |(batcher, started)| async move {
            let mut batcher = batcher?;
            let hold = batcher.hold().clone();
            if started {
                exec::pause().await;
            }
            let hop = hold.operate(op, batcher.work(), move |_, step| {
                let mut out = Vec::new();
                let more = batcher.fill(step, &mut out);
                Ok((batcher, out, more))
            });
            match hop.await {
                Ok((batcher, out, more)) => Some((out, (more.then_some(batcher), true))),
                Err(e) => Some((vec![Err(e)], (None, true))),
            }
        },
    )
    .flat_map(stream::iter)
    // Boxed so callers can poll it without pinning it first.
    .boxed()
}

/// Where a listing of one held aid stands.
pub(crate) struct Listing {
    hold: Arc<Hold>,
    scan: Option<Scan>,
    /// [`Work::Large`] once a file too large for a step in place has been met: the rest is
    /// read on the pool.
    work: Work,
}

impl Listing {
    pub(crate) fn new(hold: Arc<Hold>) -> Listing {
        Listing {
            hold,
            scan: None,
            work: Work::Small,
        }
    }

    /// Runs `fill` on the scan, opened on first use, and says whether more is to come. An
    /// error opening the scan is the listing's last item.
    fn fill_with<T>(
        &mut self,
        step: Step,
        out: &mut Vec<Result<T, Error>>,
        fill: impl FnOnce(&AidDir, &mut Scan, &mut Vec<Result<T, Error>>),
    ) -> bool {
        let scan = match self
            .scan
            .take()
            .map_or_else(|| self.hold.dir().scan(step.dirent_bytes), Ok)
        {
            Ok(scan) => self.scan.insert(scan),
            Err(e) => {
                out.push(Err(e));
                return false;
            }
        };
        // Set per step: a stream's steps move to the pool once a large entry shows up.
        scan.set_read_size(step.dirent_bytes);
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

    fn fill(&mut self, step: Step, out: &mut Vec<Result<InstanceId, Error>>) -> bool {
        // Names cost little to list, so a step holds more of them than of entries.
        self.0.fill_with(step, out, |dir, scan, out| {
            scan.next_ids(dir.path(), step.names, out)
        })
    }
}

/// Removes the entries of dead processes, a step at a time; its items are the entries
/// removed, or the error that ended the pass. Corrupt files are not entries of dead
/// processes, and are left alone.
pub(crate) struct Prune<C> {
    pub(crate) listing: Listing,
    /// Raised once whoever would be told of what is removed has gone: remove no more.
    pub(crate) gone: Arc<AtomicBool>,
    pub(crate) _config: std::marker::PhantomData<fn() -> C>,
}

impl<C: DeserializeOwned + Send + 'static> Batcher for Prune<C> {
    type Item = State<C>;

    fn hold(&self) -> &Arc<Hold> {
        &self.listing.hold
    }

    fn fill(&mut self, step: Step, out: &mut Vec<Result<State<C>, Error>>) -> bool {
        let gone = &self.gone;
        let mut ended = PruneStep::Done;
        let more = self.listing.fill_with(step, out, |dir, scan, out| {
            let bounds = (step.files, step.bytes, step.max_file);
            ended = dir.prune_dead_step(scan, bounds, gone, out);
        });
        if ended == PruneStep::LeftLarge {
            self.listing.work = Work::Large;
        }
        more && ended != PruneStep::Failed && !gone.load(Ordering::Acquire)
    }

    fn work(&self) -> Work {
        self.listing.work
    }
}

/// Streams the entries of one held aid, decoded. Files are read a step at a time, as one of
/// the hold's operations each, and decoded one at a time as they are taken (see
/// [`AidDir::read_raw_batch`] for why): small ones on the polling thread, large ones on the
/// blocking pool. The hold is let go with the last step.
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
        stepped: false,
        work: Work::Small,
    };
    stream::unfold(start, |mut raw| {
        async move {
            loop {
                match raw.items.next() {
                    Some(Taken::Ready(item)) => return Some((item, raw)),
                    Some(Taken::Bytes(id, at)) => {
                        // A step's entries, decoded one by one, can make a poll's worth too.
                        exec::pause().await;
                        let decoded =
                            exec::charged(|| read::decode_entry(&raw.dir, id, &raw.bytes[at]));
                        return Some((decoded, raw));
                    }
                    None => {}
                }
                let mut listing = raw.listing.take()?;
                let hold = listing.hold.clone();
                if std::mem::replace(&mut raw.stepped, true) {
                    exec::pause().await;
                }
                // The byte buffer goes to the step and comes back, to be reused.
                let mut bytes = std::mem::take(&mut raw.bytes);
                // Once a large entry has shown up, the rest is read on the pool.
                let hop = hold.operate("entries", raw.work, move |hold, step| {
                    bytes.clear();
                    let mut read = Vec::new();
                    let mut left_large = false;
                    let more = listing.fill_with(step, &mut read, |dir, scan, out| {
                        let bounds = (step.files, step.bytes, step.max_file);
                        left_large = dir.read_raw_batch(scan, bounds, &mut bytes, out);
                    });
                    let items: Vec<Taken<C>> = read
                        .into_iter()
                        .map(|item| match item {
                            Ok((id, at)) if Work::entry(at.len()) == Work::Small => {
                                Taken::Bytes(id, at)
                            }
                            // A step in place leaves larger files unread, so this one was read
                            // on the pool: decoded there, with its step.
                            Ok((id, at)) => {
                                Taken::Ready(read::decode_entry(hold.dir().path(), id, &bytes[at]))
                            }
                            Err(e) => Taken::Ready(Err(e)),
                        })
                        .collect();
                    Ok((more.then_some(listing), bytes, items, left_large))
                });
                match hop.await {
                    Ok((listing, bytes, items, left_large)) => {
                        if left_large {
                            raw.work = Work::Large;
                        }
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

/// Decodes a large entry on the blocking pool: tens of milliseconds for the largest.
pub(crate) async fn decode_on_pool<C>(
    dir: &Path,
    id: InstanceId,
    bytes: Vec<u8>,
) -> Result<State<C>, Error>
where
    C: DeserializeOwned + Send + 'static,
{
    let dir = dir.to_owned();
    exec::on_pool("decode", move || read::decode_entry(&dir, id, &bytes)).await?
}

/// Where a stream of entries stands: the listing if there is more, and what is left of the
/// step read last.
struct RawEntries<C> {
    /// The aid directory, for the paths in errors.
    dir: PathBuf,
    listing: Option<Listing>,
    bytes: Vec<u8>,
    items: std::vec::IntoIter<Taken<C>>,
    /// Whether a step has run: the next one pauses first.
    stepped: bool,
    /// [`Work::Large`] once a file too large to read in place has been met: the remaining
    /// steps go to the pool.
    work: Work,
}

/// One item of a step of entries, as the step left it.
enum Taken<C> {
    /// A small entry's bytes, at this range of the step's buffer, to decode when taken.
    Bytes(InstanceId, Range<usize>),
    /// An error, or a large entry decoded with its step on the pool.
    Ready(Result<State<C>, Error>),
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::thread::{self, ThreadId};

    use futures::TryStreamExt;
    use serde::{Deserialize, Deserializer, Serialize};

    use crate::exec::IN_PLACE_MAX_BYTES as DECODE_WHEN_TAKEN_MAX;
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

    /// A listing's steps in place read its names in buffers of `DIRENT_BUF_SMALL` (why:
    /// there).
    #[test]
    fn listings_in_place_read_names_in_small_buffers() {
        use crate::disk::scan::{DIRENT_BUF_SMALL, LARGEST_READ};
        use futures::StreamExt;
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let n = 1000;
        let read = runtime.block_on(async {
            let store = AsyncStore::<u8>::new(dir.path());
            store
                .with_aid(Aid::new(1)?, async |c| {
                    for _ in 0..n {
                        c.save(&State::new(InstanceId::random(), 1, 0)).await?;
                    }
                    LARGEST_READ.set(0);
                    let len = c.len().await?;
                    let by_len = LARGEST_READ.replace(0);
                    let mut entries = c.entries();
                    let mut streamed = 0;
                    while let Some(entry) = entries.next().await {
                        entry?;
                        streamed += 1;
                    }
                    Ok::<_, Error>((len, by_len, streamed, LARGEST_READ.get()))
                })
                .await
        });
        let (len, by_len, streamed, by_entries) = read.unwrap();
        assert_eq!((len, streamed), (n, n));
        // The runtime is this thread, and the store is on tmpfs: both listings ran here.
        assert!(by_len > 0 && by_entries > 0);
        assert!(
            by_len <= DIRENT_BUF_SMALL,
            "len read {by_len} bytes at once"
        );
        assert!(
            by_entries <= DIRENT_BUF_SMALL,
            "entries read {by_entries} bytes at once"
        );
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

    /// `prune_dead` follows the same rule: on a current-thread runtime on tmpfs, a 900 KiB
    /// entry is decoded on the pool, not on the runtime's thread.
    #[test]
    fn prune_decodes_a_large_entry_on_the_blocking_side() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let large = 900 << 10;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pruned = runtime.block_on(async {
            let store = AsyncStore::<Noted>::new(dir.path());
            // Recorded in another boot: dead.
            let ghost = crate::ProcessIdentity::new(1, "another-boot");
            let state = State::unidentified(InstanceId::random(), 1, Noted("x".repeat(large)))
                .with_process(Some(ghost));
            store
                .with_aid(Aid::new(2)?, async |c| {
                    c.save(&state).await?;
                    c.prune_dead().await
                })
                .await
        });
        assert_eq!(pruned.map(|p| p.len()).map_err(|e| e.to_string()), Ok(1));
        let decoded = DECODED_ON.lock().unwrap().clone();
        let on: Vec<ThreadId> = decoded
            .iter()
            .filter(|(l, _)| *l == large)
            .map(|(_, t)| *t)
            .collect();
        assert!(!on.is_empty(), "the entry was decoded");
        assert!(
            on.iter().all(|t| *t != thread::current().id()),
            "decoded on the runtime's thread"
        );
    }
}
