//! Configuration: the value types written in several places — an address or
//! a list of them, and a duration written as `800ms`, `1s`, `1h` — with the
//! errors that name what was written.

use std::{fmt, net::SocketAddr, time::Duration};

use serde::{Deserialize, Deserializer, de};

/// One address or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addrs(pub Vec<SocketAddr>);

impl<'de> Deserialize<'de> for Addrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let list = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        list.iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .map_err(|e| de::Error::custom(format!("`{s}` is not an address:port ({e})")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Addrs)
    }
}

/// A duration written as `800ms`, `1s`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| de::Error::custom(format!("`{s}` is not a duration like 800ms, 1s, 1h ({e})")))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}
