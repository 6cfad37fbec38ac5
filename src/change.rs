//! [`Change`]: one change to the store, as a [`Watch`](crate::Watch) reports it.

use crate::{Aid, InstanceId};

/// One change to the store, as [`AsyncStore::watch`](crate::AsyncStore::watch) reports it.
///
/// The enum is `#[non_exhaustive]`: keep a catch-all arm.
///
/// ```
/// use runstate::{Aid, Change, InstanceId};
///
/// let aid = Aid::new(3)?;
/// let change = Change::Saved { aid, id: InstanceId::from_bytes([1; 16]) };
/// assert_eq!(change.aid(), Some(aid));
/// assert_eq!(Change::Resync.id(), None);
/// # Ok::<(), runstate::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Change {
    /// A new entry was saved ([`Cursor::save`](crate::Cursor::save)).
    Saved {
        /// The aid it was saved in.
        aid: Aid,
        /// The entry's id.
        id: InstanceId,
    },
    /// An entry was removed ([`Cursor::destroy`](crate::Cursor::destroy), a prune, or a
    /// foreign process that unlinked or moved the file away).
    Destroyed {
        /// The aid it was removed from.
        aid: Aid,
        /// The entry's id.
        id: InstanceId,
    },
    /// An entry was replaced in place ([`Cursor::replace`](crate::Cursor::replace), or any
    /// rename onto an entry's name).
    Replaced {
        /// The aid of the entry.
        aid: Aid,
        /// The entry's id.
        id: InstanceId,
    },
    /// The kernel's event queue overflowed, so some changes were lost: list the whole store
    /// again, as for [`Change::ResyncAid`](crate::Change::ResyncAid) but for every aid. Changes made after this item
    /// are reported as usual.
    Resync,
    /// Changes in this aid may have been missed: its directory is new (made after the watch
    /// started, or made again after it was removed), and inotify reports what happens in a
    /// directory only once it watches it, which is after it appears. Everything that happens
    /// in it after its watch was added is reported after this item, in order.
    ///
    /// What to do: list the aid again (say `with_aid_shared(aid, async |c|
    /// c.load_all().await)`), take the listing for all you know of the aid, and go on
    /// applying the changes that follow. Those may repeat what the listing already showed,
    /// since they can have happened between this item and the listing: apply them by id,
    /// idempotently. On `Saved` or `Replaced`, load the entry (`None`: it is gone again,
    /// forget it); on `Destroyed`, forget the id if you have it. Applied that way, the
    /// listing and the changes that follow it end at what the aid holds.
    ResyncAid {
        /// The aid to list again.
        aid: Aid,
    },
}

impl Change {
    /// The aid the change is about; `None` for [`Change::Resync`](crate::Change::Resync).
    pub fn aid(&self) -> Option<Aid> {
        match *self {
            Change::Saved { aid, .. }
            | Change::Destroyed { aid, .. }
            | Change::Replaced { aid, .. }
            | Change::ResyncAid { aid } => Some(aid),
            Change::Resync => None,
        }
    }

    /// The id of the entry the change is about; `None` for [`Change::Resync`](crate::Change::Resync) and
    /// [`Change::ResyncAid`](crate::Change::ResyncAid).
    pub fn id(&self) -> Option<InstanceId> {
        match *self {
            Change::Saved { id, .. }
            | Change::Destroyed { id, .. }
            | Change::Replaced { id, .. } => Some(id),
            Change::Resync | Change::ResyncAid { .. } => None,
        }
    }
}
