//! Time namespaces: the boottime offset by which this process reads start times, undone so
//! that start times are recorded and compared in the host's clock.

use std::path::Path;
use std::sync::OnceLock;

use super::read_small;

/// This process's time namespace's boottime offset, in clock ticks (rounded down), by which
/// the start times it reads in `/proc/<pid>/stat` are shifted, and whether it is a whole
/// number of ticks; `None` if it cannot be read. Taken from `<proc_root>/self/timens_offsets` if there is one (a test's fake
/// `/proc`), else from this process's own `/proc`, read once: the offset of a process
/// never changes (a time namespace is entered only by new children or before any other
/// thread starts). No file means a kernel without time namespaces: no offset.
pub(super) fn boottime_offset(proc_root: &Path) -> Option<Offset> {
    static OURS: OnceLock<Offset> = OnceLock::new();
    if proc_root != Path::new("/proc") {
        match read_offset(&proc_root.join("self/timens_offsets")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => return other.ok(),
        }
    }
    if let Some(&offset) = OURS.get() {
        return Some(offset);
    }
    let offset = match read_offset(Path::new("/proc/self/timens_offsets")) {
        Ok(offset) => offset,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Offset::NONE,
        // Tried again next time: a failure may be passing (no descriptor left).
        Err(_) => return None,
    };
    Some(*OURS.get_or_init(|| offset))
}

/// A time namespace's boottime offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Offset {
    /// In clock ticks, rounded down.
    pub(super) ticks: i64,
    /// Whether it is a whole number of ticks, so that undoing it is exact.
    pub(super) exact: bool,
}

impl Offset {
    const NONE: Offset = Offset {
        ticks: 0,
        exact: true,
    };
}

/// The boottime line of a `timens_offsets` file (`boottime <secs> <nanos>`), in clock
/// ticks, rounded down as the kernel rounds the start times it shows.
pub(super) fn read_offset(path: &Path) -> std::io::Result<Offset> {
    let mut buf = [0u8; 256];
    let text = read_small(path, &mut buf)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad timens_offsets");
    let text = std::str::from_utf8(text).map_err(|_| bad())?;
    let Some(line) = text
        .lines()
        .map(|l| l.split_ascii_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"boottime"))
    else {
        return Ok(Offset::NONE);
    };
    let (secs, nanos): (i128, i128) = match line[..] {
        [_, secs, nanos] => (
            secs.parse().map_err(|_| bad())?,
            nanos.parse().map_err(|_| bad())?,
        ),
        _ => return Err(bad()),
    };
    let hz = i128::from(rustix::param::clock_ticks_per_second());
    let scaled = (secs * 1_000_000_000 + nanos).saturating_mul(hz);
    let ticks = i64::try_from(scaled.div_euclid(1_000_000_000)).map_err(|_| bad())?;
    Ok(Offset {
        ticks,
        exact: scaled.rem_euclid(1_000_000_000) == 0,
    })
}

/// A start time read through a time namespace with boottime `offset` (in ticks), in the
/// host's clock.
pub(super) fn to_host(read: u64, offset: i64) -> u64 {
    let host = i128::from(read) - i128::from(offset);
    u64::try_from(host.max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets in ticks, rounded down as the kernel rounds (clock ticks are 100 a second
    /// on Linux), negative ones too; a file without a boottime line means none.
    #[test]
    fn timens_offsets_are_read_in_ticks() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("timens_offsets");
        let offset = |text: &str| {
            std::fs::write(&path, text).unwrap();
            read_offset(&path).ok().map(|o| o.ticks)
        };
        let hz = rustix::param::clock_ticks_per_second() as i64;
        assert_eq!(
            offset("monotonic 0 0\nboottime 100000 0\n"),
            Some(100000 * hz)
        );
        assert_eq!(offset("boottime 0 0\n"), Some(0));
        assert_eq!(offset("boottime -1 500000000\n"), Some(-hz / 2));
        if hz == 100 {
            assert_eq!(offset("boottime 0 15000000\n"), Some(1));
            assert_eq!(offset("boottime -1 995000000\n"), Some(-1));
        }
        assert_eq!(offset("monotonic 5 0\n"), Some(0));
        assert_eq!(offset("boottime x 0\n"), None);
        assert_eq!(offset("boottime 1\n"), None);
        let exact = |text: &str| {
            std::fs::write(&path, text).unwrap();
            read_offset(&path).unwrap().exact
        };
        assert!(exact("boottime 100000 0\n") && exact("boottime -3 0\n"));
        assert!(exact("monotonic 5 1\n"));
        assert!(!exact("boottime 0 1\n") && !exact("boottime -1 999999999\n"));
    }
}
