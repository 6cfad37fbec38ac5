//! `tokio-fs`: what a user would write by hand on `tokio::fs`: the same layout, one `.await`
//! per file operation, paths instead of directory descriptors, the flock taken through
//! `spawn_blocking` on a lock file opened once per aid, and a `tokio::sync::Mutex` per aid
//! for exclusion between tasks.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FlockOperation, flock};
use std::future::poll_fn;
use std::pin::Pin;

use tokio::io::AsyncWrite;
use tokio::sync::{Mutex, MutexGuard};

use std::hint::black_box;

use runstate::InstanceId;
use tokio::runtime::Runtime;

use crate::common::{self, Decoded, Entry};
use crate::measure::Timing;
use crate::workloads::{AID, Imp};

pub struct TfsAid {
    dir: PathBuf,
    turn: Mutex<()>,
    lock: Arc<File>,
}

/// An aid held: the task mutex and the flock. Unlocking never blocks, so it happens inline.
pub struct TfsHold<'a> {
    aid: &'a TfsAid,
    _turn: MutexGuard<'a, ()>,
}

impl Drop for TfsHold<'_> {
    fn drop(&mut self) {
        let _ = flock(&*self.aid.lock, FlockOperation::Unlock);
    }
}

impl TfsAid {
    /// Setup (never timed): makes the directories and opens the lock file.
    pub fn open(run_dir: &Path, aid: u16) -> io::Result<Arc<TfsAid>> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let state = run_dir.join("state");
        let dir = state.join(aid.to_string());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(state.join(format!("{aid}.lock")))?;
        Ok(Arc::new(TfsAid {
            dir,
            turn: Mutex::new(()),
            lock: Arc::new(lock),
        }))
    }

    /// Opens an aid the `tokio::fs` way, making its directory and lock file if missing.
    pub async fn open_async(run_dir: &Path, aid: u16) -> io::Result<TfsAid> {
        let state = run_dir.join("state");
        let dir = state.join(aid.to_string());
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .await?;
        let lock = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(state.join(format!("{aid}.lock")))
            .await?;
        Ok(TfsAid {
            dir,
            turn: Mutex::new(()),
            lock: Arc::new(lock.into_std().await),
        })
    }

    pub async fn hold(&self) -> TfsHold<'_> {
        let turn = self.turn.lock().await;
        let lock = self.lock.clone();
        tokio::task::spawn_blocking(move || flock(&*lock, FlockOperation::LockExclusive))
            .await
            .expect("join")
            .expect("flock");
        TfsHold {
            aid: self,
            _turn: turn,
        }
    }

    fn path(&self, id: InstanceId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Identifies the process, then: create_new a temporary file, write_all, flush, hard_link to the final name (which,
    /// unlike rename, refuses to overwrite), remove the temporary name.
    ///
    /// The process identity comes first, as two more `tokio::fs::read`s, unless the state
    /// carries it.
    pub async fn save(&self, state: &Entry) -> io::Result<()> {
        let process = match &state.process {
            Some(p) => Some(p.into()),
            None => {
                let stat = tokio::fs::read(format!("/proc/{}/stat", state.pid)).await;
                let boot = tokio::fs::read(common::BOOT_ID).await;
                match (stat, boot) {
                    (Ok(stat), Ok(boot)) => common::ident(&stat, &boot),
                    _ => None,
                }
            }
        };
        let mut bytes = Vec::new();
        common::encode(state, process.as_ref(), &mut bytes);
        let temp = self.dir.join(format!(".tmp-{}", state.id));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .await?;
        write_all(&mut file, &bytes).await?;
        drop(file);
        let linked = tokio::fs::hard_link(&temp, self.path(state.id)).await;
        tokio::fs::remove_file(&temp).await?;
        linked
    }

    pub async fn destroy(&self, id: InstanceId) -> io::Result<bool> {
        match tokio::fs::remove_file(self.path(id)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// read_dir, then tokio::fs::read and decode each entry.
    pub async fn entries(&self, mut f: impl FnMut(Decoded)) -> io::Result<usize> {
        let mut rd = tokio::fs::read_dir(&self.dir).await?;
        let mut n = 0;
        while let Some(entry) = rd.next_entry().await? {
            let name = entry.file_name();
            let Some(id) = common::parse_entry_name(name.as_encoded_bytes()) else {
                continue;
            };
            let bytes = tokio::fs::read(entry.path()).await?;
            f(common::decode(&bytes, id).map_err(io::Error::other)?);
            n += 1;
        }
        Ok(n)
    }

    pub async fn len(&self) -> io::Result<usize> {
        let mut rd = tokio::fs::read_dir(&self.dir).await?;
        let mut n = 0;
        while let Some(entry) = rd.next_entry().await? {
            if common::parse_entry_name(entry.file_name().as_encoded_bytes()).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// `AsyncWriteExt::write_all` then `flush`, spelled out: the crate's dev-dependencies do not
/// enable tokio's `io-util` feature. tokio's `File` hands each write to the blocking pool;
/// the flush waits for it to land.
async fn write_all(file: &mut tokio::fs::File, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *file).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    poll_fn(|cx| Pin::new(&mut *file).poll_flush(cx)).await
}

pub async fn aids(run_dir: &Path) -> io::Result<Vec<u16>> {
    let mut rd = tokio::fs::read_dir(run_dir.join("state")).await?;
    let mut out = Vec::new();
    while let Some(entry) = rd.next_entry().await? {
        let Some(aid) = common::parse_aid_name(entry.file_name().as_encoded_bytes()) else {
            continue;
        };
        if entry.file_type().await?.is_dir() {
            out.push(aid);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The hand-written `tokio::fs` store as an implementation.
pub struct TokioFs;

impl Imp for TokioFs {
    fn name(&self) -> &'static str {
        "tokio-fs"
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
            let a = TfsAid::open(dir, AID).expect("open");
            t.start();
            if each {
                for &id in ids {
                    st.id = id;
                    let _h = a.hold().await;
                    a.save(&st).await.expect("save");
                }
            } else {
                let _h = a.hold().await;
                for &id in ids {
                    st.id = id;
                    a.save(&st).await.expect("save");
                }
            }
            t.stop();
        });
    }

    fn read_all(&self, rt: &Runtime, t: &mut Timing, dir: &Path) -> usize {
        rt.block_on(async {
            let a = TfsAid::open(dir, AID).expect("open");
            t.start();
            let got = {
                let _h = a.hold().await;
                a.entries(|s| {
                    black_box(s);
                })
                .await
                .expect("entries")
            };
            t.stop();
            got
        })
    }

    fn len(&self, rt: &Runtime, t: &mut Timing, dir: &Path) -> usize {
        rt.block_on(async {
            let a = TfsAid::open(dir, AID).expect("open");
            t.start();
            let got = {
                let _h = a.hold().await;
                a.len().await.expect("len")
            };
            t.stop();
            got
        })
    }

    fn destroys(&self, rt: &Runtime, t: &mut Timing, dir: &Path, ids: &[InstanceId]) {
        rt.block_on(async {
            let a = TfsAid::open(dir, AID).expect("open");
            t.start();
            {
                let _h = a.hold().await;
                for &id in ids {
                    assert!(a.destroy(id).await.expect("destroy"));
                }
            }
            t.stop();
        });
    }

    fn empty_holds(&self, rt: &Runtime, t: &mut Timing, dir: &Path, holds: usize) {
        rt.block_on(async {
            let a = TfsAid::open(dir, AID).expect("open");
            t.start();
            for _ in 0..holds {
                drop(black_box(a.hold().await));
            }
            t.stop();
        });
    }

    fn aids(&self, rt: &Runtime, t: &mut Timing, dir: &Path) -> usize {
        rt.block_on(async {
            t.start();
            let got = aids(dir).await.expect("aids").len();
            t.stop();
            got
        })
    }

    /// Keeps nothing between holds (no cache to warm): open, flock, unlock, close.
    fn holds_in_turn(&self, rt: &Runtime, t: &mut Timing, dir: &Path, aids: &[u16], _warm: bool) {
        rt.block_on(async {
            t.start();
            for &a in aids {
                let aid = TfsAid::open_async(dir, a).await.expect("open");
                drop(black_box(aid.hold().await));
            }
            t.stop();
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
            let a = TfsAid::open(dir, AID).expect("open");
            t.start();
            let tasks: Vec<_> = states
                .into_iter()
                .map(|st| {
                    let a = a.clone();
                    tokio::spawn(async move {
                        for _ in 0..rounds {
                            let _h = a.hold().await;
                            a.save(&st).await.expect("save");
                            assert!(a.destroy(st.id).await.expect("destroy"));
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
