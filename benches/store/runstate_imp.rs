//! `runstate`: the crate's public API, on the runtime the workload gives it.

use std::hint::black_box;
use std::path::Path;
use std::pin::pin;

use futures::StreamExt;
use std::sync::Arc;

use runstate::{Aid, AsyncStore, Cursor, Error, InstanceId};
use tokio::runtime::Runtime;

use crate::common::{Entry, LaunchConfig};
use crate::measure::{PollLog, Timed, Timing};
use crate::workloads::{AID, Imp};

/// An aid no workload uses, held once to open a fresh store's state directory untimed.
const OUTSIDE: u16 = 9999;

pub type Store = AsyncStore<LaunchConfig>;

pub fn aid(n: u16) -> Aid {
    Aid::new(n).expect("valid aid")
}

/// A store whose aids are already open (directory made, lock file open, temporaries swept),
/// so the timed section measures steady-state holds, not the first open.
pub async fn warm_store(dir: &Path, aids: &[u16]) -> Store {
    let store = Store::new(dir);
    for &a in aids {
        store
            .with_aid(aid(a), async |_| Ok::<_, Error>(()))
            .await
            .expect("warm-up hold");
    }
    store
}

/// How [`Imp::read_all`] reads an aid.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// `Cursor::entries`, one entry at a time.
    Stream,
    /// `Cursor::load_all`, the whole aid into one map.
    LoadAll,
}

/// The crate itself.
#[derive(Clone)]
pub struct Runstate {
    read: Read,
    /// Where to log the time of each poll of each hold's future (the stall probe).
    polls: Option<Arc<PollLog>>,
}

impl Runstate {
    /// The crate, reading with a stream: "runstate" in the report.
    pub const STREAM: Runstate = Runstate {
        read: Read::Stream,
        polls: None,
    };
    /// The crate, reading with `load_all` (W9 only): "load_all" in the report.
    pub const LOAD_ALL: Runstate = Runstate {
        read: Read::LoadAll,
        polls: None,
    };

    /// The crate, reading with a stream, logging how long each poll of each hold's future
    /// takes. The closures only call the store, so a poll's time is the store's.
    pub fn logging_polls(log: Arc<PollLog>) -> Runstate {
        Runstate {
            read: Read::Stream,
            polls: Some(log),
        }
    }

    /// W2 and W9's read of [`AID`], in one hold: how many entries it read.
    async fn read_aid(&self, store: &Store) -> usize {
        let whole = self.read == Read::LoadAll;
        self.hold(store, AID, async |c| {
            if whole {
                let all = c.load_all().await?;
                return Ok::<_, Error>(black_box(all).len());
            }
            let mut entries = pin!(c.entries());
            let mut got = 0;
            while let Some(state) = entries.next().await {
                black_box(state?);
                got += 1;
            }
            Ok(got)
        })
        .await
        .expect("entries")
    }

    /// `with_aid`, its polls timed when logging.
    async fn hold<T>(
        &self,
        store: &Store,
        a: u16,
        f: impl AsyncFnOnce(&mut Cursor<LaunchConfig>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let held = store.with_aid(aid(a), f);
        match &self.polls {
            None => held.await,
            Some(log) => Timed::new(held, log.clone()).await,
        }
    }
}

impl Imp for Runstate {
    fn name(&self) -> &'static str {
        match self.read {
            Read::Stream => "runstate",
            Read::LoadAll => "load_all",
        }
    }

    fn saves(
        &self,
        rt: &Runtime,
        t: &mut Timing,
        dir: &Path,
        template: &Entry,
        ids: &[InstanceId],
        each: bool,
    ) {
        let mut st = template.clone();
        rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            t.start();
            if each {
                for &id in ids {
                    st.id = id;
                    self.hold(&store, AID, async |c| c.save(&st).await)
                        .await
                        .expect("save");
                }
            } else {
                self.hold(&store, AID, async |c| {
                    for &id in ids {
                        st.id = id;
                        c.save(&st).await?;
                    }
                    Ok::<_, Error>(())
                })
                .await
                .expect("save");
            }
            t.stop();
            store.close().await.expect("close");
        });
    }

    fn read_all(&self, rt: &Runtime, t: &mut Timing, dir: &Path) -> usize {
        rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            t.start();
            let got = if crate::config::env_on("RUNSTATE_BENCH_SPAWN") {
                // From a task of the runtime, as a server reads: on the multi-thread runtime
                // a worker runs it, where a yield can hand it to the other worker.
                let (store, me) = (store.clone(), self.clone());
                tokio::spawn(async move { me.read_aid(&store).await })
                    .await
                    .expect("task")
            } else {
                self.read_aid(&store).await
            };
            t.stop();
            store.close().await.expect("close");
            got
        })
    }

    fn len(&self, rt: &Runtime, t: &mut Timing, dir: &Path) -> usize {
        rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            t.start();
            let got = self
                .hold(&store, AID, async |c| c.len().await)
                .await
                .expect("len");
            t.stop();
            got
        })
    }

    fn destroys(&self, rt: &Runtime, t: &mut Timing, dir: &Path, ids: &[InstanceId]) {
        rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            t.start();
            self.hold(&store, AID, async |c| {
                for &id in ids {
                    assert!(c.destroy(id).await?);
                }
                Ok::<_, Error>(())
            })
            .await
            .expect("destroy");
            t.stop();
        });
    }

    fn empty_holds(&self, rt: &Runtime, t: &mut Timing, dir: &Path, holds: usize) {
        rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            t.start();
            for _ in 0..holds {
                self.hold(&store, AID, async |_| Ok::<_, Error>(()))
                    .await
                    .expect("hold");
            }
            t.stop();
        });
    }

    fn aids(&self, rt: &Runtime, t: &mut Timing, dir: &Path) -> usize {
        rt.block_on(async {
            let store = Store::new(dir);
            t.start();
            let got = store.aids().await.expect("aids").len();
            t.stop();
            got
        })
    }

    /// A fresh store, its state directory opened by one untimed hold of an aid outside
    /// `aids`; with `warm`, one untimed pass through `aids` first.
    fn holds_in_turn(&self, rt: &Runtime, t: &mut Timing, dir: &Path, aids: &[u16], warm: bool) {
        rt.block_on(async {
            let store = warm_store(dir, &[OUTSIDE]).await;
            let pass = async || {
                for &a in aids {
                    self.hold(&store, a, async |_| Ok::<_, Error>(()))
                        .await
                        .expect("hold");
                }
            };
            if warm {
                pass().await;
            }
            t.start();
            pass().await;
            t.stop();
            store.close().await.expect("close");
        });
    }

    fn contended(
        &self,
        rt: &Runtime,
        t: &mut Timing,
        dir: &Path,
        states: Vec<Entry>,
        rounds: usize,
    ) {
        rt.block_on(async {
            let store = warm_store(dir, &[AID]).await;
            t.start();
            let tasks: Vec<_> = states
                .into_iter()
                .map(|st| {
                    let (store, me) = (store.clone(), self.clone());
                    tokio::spawn(async move {
                        for _ in 0..rounds {
                            me.hold(&store, AID, async |c| {
                                c.save(&st).await?;
                                assert!(c.destroy(st.id).await?);
                                Ok::<_, Error>(())
                            })
                            .await
                            .expect("hold");
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
            t.stop();
        });
    }
}
