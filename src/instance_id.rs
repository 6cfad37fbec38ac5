//! 128-bit instance ids and their strict text form.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::Error;

/// The 128-bit id of one running instance; an entry's file name is its text form.
///
/// The text form is exactly 32 lowercase hexadecimal digits, and [`FromStr`] accepts nothing
/// else: no uppercase, no separators, no prefix, no other length.
///
/// With serde, human-readable formats (JSON, TOML) get the text form and binary formats
/// (MessagePack) get the 16 raw bytes.
///
/// ```
/// use runstate::InstanceId;
///
/// let id = InstanceId::from_bytes([0xab; 16]);
/// assert_eq!(id.to_string(), "abababababababababababababababab");
/// assert_eq!(id.to_string().parse::<InstanceId>()?, id);
/// assert!("ABABABABABABABABABABABABABABABAB".parse::<InstanceId>().is_err());
/// assert_ne!(InstanceId::random(), InstanceId::random());
/// # Ok::<(), runstate::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId([u8; 16]);

/// The length of an id's text form.
pub(crate) const TEXT_LEN: usize = 32;

impl InstanceId {
    /// A fresh id from the operating system's secure random source: `getrandom(2)`, or
    /// `/dev/urandom` where `getrandom` fails (a seccomp filter that denies it, say).
    ///
    /// # Panics
    ///
    /// If neither `getrandom(2)` nor `/dev/urandom` yields random bytes (an old kernel in a
    /// chroot without `/dev`, say). No id could be made safely then: a guessable or repeated
    /// id would let one instance's entry be taken for another's.
    pub fn random() -> InstanceId {
        match random_bytes(|buf| {
            rustix::rand::getrandom(buf, rustix::rand::GetRandomFlags::empty())
        }) {
            Ok(bytes) => InstanceId(bytes),
            Err(why) => panic!("cannot make a random instance id: {why}"),
        }
    }

    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> InstanceId {
        InstanceId(bytes)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The text form, without allocating.
    pub(crate) fn to_hex(self) -> [u8; TEXT_LEN] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; TEXT_LEN];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        out
    }

    /// Parses a text form, or says why it is not one.
    pub(crate) fn parse_hex(text: &[u8]) -> Result<InstanceId, &'static str> {
        if text.len() != TEXT_LEN {
            return Err("an instance id is exactly 32 hexadecimal digits");
        }
        // Without a branch per digit, so that the loop is vectorized: listing a directory
        // parses every name, and digit by digit this was most of `len`'s own time.
        let mut nibbles = [0u8; TEXT_LEN];
        let mut bad = false;
        for (n, &c) in nibbles.iter_mut().zip(text) {
            let digit = c.wrapping_sub(b'0');
            let letter = c.wrapping_sub(b'a');
            *n = if digit < 10 {
                digit
            } else {
                letter.wrapping_add(10)
            };
            bad |= digit >= 10 && letter >= 6;
        }
        if bad {
            return Err("an instance id has only the digits 0-9 and a-f");
        }
        let mut bytes = [0u8; 16];
        for (b, pair) in bytes.iter_mut().zip(nibbles.chunks_exact(2)) {
            *b = (pair[0] << 4) | pair[1];
        }
        Ok(InstanceId(bytes))
    }
}

/// 16 random bytes from `getrandom`, or from `/dev/urandom` if it fails; the error says
/// what both failures were.
fn random_bytes(
    mut getrandom: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> Result<[u8; 16], String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    let denied = loop {
        if filled == bytes.len() {
            return Ok(bytes);
        }
        match getrandom(&mut bytes[filled..]) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => break e,
        }
    };
    // read_exact retries interrupted reads; urandom never blocks once the kernel is seeded.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map(|()| bytes)
        .map_err(|e| format!("getrandom(2) failed ({denied}), and so did /dev/urandom ({e})"))
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        // to_hex writes ASCII digits only; pad honours width and alignment.
        f.pad(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

impl FromStr for InstanceId {
    type Err = Error;

    fn from_str(s: &str) -> Result<InstanceId, Error> {
        InstanceId::parse_hex(s.as_bytes()).map_err(|reason| Error::InvalidInstanceId {
            input: s.chars().take(64).collect(),
            reason,
        })
    }
}

/// The same as [`str::parse`]: exactly 32 lowercase hexadecimal digits.
///
/// ```
/// use runstate::InstanceId;
///
/// let id = InstanceId::try_from("000102030405060708090a0b0c0d0eff")?;
/// assert_eq!(id.as_bytes()[15], 0xff);
/// assert!(InstanceId::try_from("0x0102").is_err());
/// # Ok::<(), runstate::Error>(())
/// ```
impl TryFrom<&str> for InstanceId {
    type Error = Error;

    fn try_from(s: &str) -> Result<InstanceId, Error> {
        s.parse()
    }
}

/// The id's 16 bytes, as [`InstanceId::as_bytes`] gives them.
///
/// ```
/// use runstate::InstanceId;
///
/// let id = InstanceId::from([7; 16]);
/// let bytes: &[u8] = id.as_ref();
/// assert_eq!(bytes, [7; 16]);
/// assert_eq!(<[u8; 16]>::from(id), [7; 16]);
/// ```
impl AsRef<[u8]> for InstanceId {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<[u8; 16]> for InstanceId {
    fn from(bytes: [u8; 16]) -> InstanceId {
        InstanceId(bytes)
    }
}

impl From<InstanceId> for [u8; 16] {
    fn from(id: InstanceId) -> [u8; 16] {
        id.0
    }
}

impl Serialize for InstanceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<InstanceId, D::Error> {
        struct IdVisitor;

        impl<'de> Visitor<'de> for IdVisitor {
            type Value = InstanceId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("16 bytes or 32 lowercase hexadecimal digits")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<InstanceId, E> {
                <[u8; 16]>::try_from(v)
                    .map(InstanceId)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<InstanceId, E> {
                InstanceId::parse_hex(v.as_bytes()).map_err(|why| E::custom(why))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<InstanceId, A::Error> {
                let mut bytes = [0u8; 16];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(17, &self));
                }
                Ok(InstanceId(bytes))
            }
        }

        if deserializer.is_human_readable() {
            deserializer.deserialize_str(IdVisitor)
        } else {
            deserializer.deserialize_bytes(IdVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let id = InstanceId::from_bytes(
            *b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\xff",
        );
        assert_eq!(id.to_string(), "000102030405060708090a0b0c0d0eff");
        assert_eq!(id.to_string().parse::<InstanceId>().unwrap(), id);
    }

    #[test]
    fn loose_forms_are_rejected() {
        let good = "000102030405060708090a0b0c0d0eff";
        for bad in [
            "",
            &good[1..],
            &format!("{good}0"),
            "000102030405060708090A0B0C0D0EFF",
            "00010203:0405060708090a0b0c0d0eff",
            "0001020304050607080g0a0b0c0d0eff",
            "A00102030405060708090a0b0c0d0ef",
            " 00102030405060708090a0b0c0d0eff",
            "+0102030405060708090a0b0c0d0eff0",
        ] {
            assert!(
                matches!(
                    bad.parse::<InstanceId>(),
                    Err(Error::InvalidInstanceId { .. })
                ),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn every_byte_is_parsed_as_the_digit_by_digit_reading_would() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let good = *b"000102030405060708090a0b0c0d0eff";
        for at in 0..TEXT_LEN {
            for c in 0..=u8::MAX {
                let mut text = good;
                text[at] = c;
                let parsed = InstanceId::parse_hex(&text).ok().map(|id| id.0[at / 2]);
                let expected = digit(c).map(|d| match at % 2 {
                    0 => (d << 4) | digit(good[at + 1]).unwrap_or(0),
                    _ => (digit(good[at - 1]).unwrap_or(0) << 4) | d,
                });
                assert_eq!(parsed, expected, "byte {c:#x} at {at}");
            }
        }
    }

    #[test]
    fn random_falls_back_to_urandom_when_getrandom_is_denied() {
        let mut calls = 0;
        let bytes = random_bytes(|_| {
            calls += 1;
            Err(rustix::io::Errno::PERM)
        })
        .unwrap();
        assert_eq!(calls, 1);
        assert_ne!(bytes, [0; 16], "the bytes came from /dev/urandom");
        let again = random_bytes(|_| Err(rustix::io::Errno::NOSYS)).unwrap();
        assert_ne!(bytes, again);
        // Interrupted and short reads are retried, not taken for failures.
        let mut calls = 0;
        let short = random_bytes(|buf| {
            calls += 1;
            match calls {
                1 => Err(rustix::io::Errno::INTR),
                _ => {
                    buf[0] = 0xaa;
                    Ok(1)
                }
            }
        })
        .unwrap();
        assert_eq!((short, calls), ([0xaa; 16], 17));
    }

    #[test]
    fn random_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| InstanceId::random()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
