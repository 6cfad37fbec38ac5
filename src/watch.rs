//! [`Watch`]: the public stream of [`Change`]s, over the shell's inotify bookkeeping
//! (`shell/inotify.rs`).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::FusedStream;

use crate::shell::inotify::Changes;
use crate::{Change, Error};

/// The stream of [`Change`]s that [`AsyncStore::watch`](crate::AsyncStore::watch) returns.
///
/// It owns its inotify descriptor and nothing of the store: it is `Send`, `Unpin` and
/// `'static`, and dropping it closes the descriptor. It does not keep the store open, and
/// [`AsyncStore::close`](crate::AsyncStore::close) does not end it.
///
/// An `Err` item means that changes may have been missed (a new aid directory could not be
/// watched, say): list again as for [`Change::Resync`](crate::Change::Resync). The stream ends, after an error
/// item, only if reading inotify fails or the state directory itself is removed (or renamed,
/// or replaced): then watch again.
#[derive(Debug)]
#[must_use = "a watch reports nothing unless it is polled"]
pub struct Watch {
    changes: Changes,
}

impl Watch {
    pub(crate) fn new(changes: Changes) -> Watch {
        Watch { changes }
    }
}

impl Stream for Watch {
    type Item = Result<Change, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().changes).poll_next(cx)
    }
}

impl FusedStream for Watch {
    fn is_terminated(&self) -> bool {
        self.changes.is_terminated()
    }
}
