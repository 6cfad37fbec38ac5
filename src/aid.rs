//! Application ids.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// An application id: a number from 0 to 9999.
///
/// Every aid has its own directory, lock and entries in the store. Its text form is plain
/// decimal with no sign and no leading zeros, which is also its directory name, so one aid
/// never has two spellings on disk. With serde it is a number, checked when deserialized.
///
/// ```
/// use runstate::Aid;
///
/// let aid = Aid::new(42)?;
/// assert_eq!(aid.get(), 42);
/// assert_eq!(aid.to_string(), "42");
/// assert_eq!("42".parse::<Aid>()?, aid);
/// assert!("042".parse::<Aid>().is_err());
/// assert!(Aid::new(10_000).is_err());
/// # Ok::<(), runstate::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Aid(u16);

impl Aid {
    /// The largest aid, 9999.
    pub const MAX: Aid = Aid(9999);

    /// Checks that `value` is in `0..=9999`.
    pub fn new(value: u16) -> Result<Aid, Error> {
        if value <= Self::MAX.0 {
            Ok(Aid(value))
        } else {
            Err(Error::InvalidAid {
                input: value.to_string(),
            })
        }
    }

    /// `value` as an aid if it is in `0..=9999`. A `const fn`, for aids known when the program
    /// is written:
    ///
    /// ```
    /// use runstate::Aid;
    ///
    /// const WEB: Aid = match Aid::checked(80) {
    ///     Some(aid) => aid,
    ///     None => panic!("not an aid"), // in a const, a compile error
    /// };
    /// assert_eq!(WEB.get(), 80);
    /// assert_eq!(Aid::checked(10_000), None);
    /// ```
    pub const fn checked(value: u16) -> Option<Aid> {
        if value <= Self::MAX.0 {
            Some(Aid(value))
        } else {
            None
        }
    }

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Debug for Aid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Aid({})", self.0)
    }
}

impl fmt::Display for Aid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Aid {
    type Err = Error;

    /// Accepts exactly the [`Display`](fmt::Display) form: 1 to 4 decimal digits, no leading zeros.
    fn from_str(s: &str) -> Result<Aid, Error> {
        let bytes = s.as_bytes();
        let canonical = !bytes.is_empty()
            && bytes.len() <= 4
            && bytes.iter().all(u8::is_ascii_digit)
            && (bytes[0] != b'0' || bytes.len() == 1);
        if !canonical {
            let mut input: String = s.chars().take(16).collect();
            if input.len() < s.len() {
                input.push('…');
            }
            return Err(Error::InvalidAid { input });
        }
        let value = bytes.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        Ok(Aid(value))
    }
}

/// An aid serializes as its number and deserializes only from a number in range.
impl serde::Serialize for Aid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Aid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Aid, D::Error> {
        let value = u16::deserialize(deserializer)?;
        Aid::new(value).map_err(serde::de::Error::custom)
    }
}

/// The same as [`Aid::new`].
///
/// ```
/// use runstate::Aid;
///
/// assert_eq!(Aid::try_from(7u16)?.get(), 7);
/// assert!(Aid::try_from(10_000u16).is_err());
/// # Ok::<(), runstate::Error>(())
/// ```
impl TryFrom<u16> for Aid {
    type Error = Error;

    fn try_from(value: u16) -> Result<Aid, Error> {
        Aid::new(value)
    }
}

/// Conversions from wider and signed integers, as a command line or a config file may hold
/// an aid: each refuses what is outside `0..=9999`.
macro_rules! aid_try_from {
    ($($int:ty),*) => {
        $(
            /// Checks that the value is in `0..=9999`; see the examples on `TryFrom<&str>`.
            impl TryFrom<$int> for Aid {
                type Error = Error;

                fn try_from(value: $int) -> Result<Aid, Error> {
                    u16::try_from(value)
                        .ok()
                        .filter(|&n| n <= Aid::MAX.0)
                        .map(Aid)
                        .ok_or_else(|| Error::InvalidAid {
                            input: value.to_string(),
                        })
                }
            }
        )*
    };
}

aid_try_from!(u32, u64, usize, i32, i64);

/// The same as [`str::parse`]: the canonical decimal form only.
///
/// ```
/// use runstate::Aid;
///
/// assert_eq!(Aid::try_from("42")?, Aid::try_from(42u32)?);
/// assert_eq!(Aid::try_from(9999usize)?, Aid::MAX);
/// assert!(Aid::try_from(-1i32).is_err());
/// assert!(Aid::try_from(70_000u32).is_err());
/// assert!(Aid::try_from("042").is_err());
/// let n: u16 = Aid::new(12)?.into();
/// assert_eq!(n, 12);
/// # Ok::<(), runstate::Error>(())
/// ```
impl TryFrom<&str> for Aid {
    type Error = Error;

    fn try_from(s: &str) -> Result<Aid, Error> {
        s.parse()
    }
}

impl From<Aid> for u16 {
    fn from(aid: Aid) -> u16 {
        aid.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_enforced() {
        assert_eq!(Aid::new(0).unwrap().get(), 0);
        assert_eq!(Aid::new(9999).unwrap(), Aid::MAX);
        assert!(matches!(Aid::new(10_000), Err(Error::InvalidAid { .. })));
        assert!(Aid::new(u16::MAX).is_err());
    }

    #[test]
    fn parse_accepts_only_the_display_form() {
        for n in [0u16, 7, 10, 999, 9999] {
            assert_eq!(n.to_string().parse::<Aid>().unwrap().get(), n);
        }
        for bad in [
            "", "-1", "+1", "01", "0000", "10000", "99999", "1a", " 1", "1 ", "٣",
        ] {
            assert!(bad.parse::<Aid>().is_err(), "{bad:?} parsed");
        }
    }
}
