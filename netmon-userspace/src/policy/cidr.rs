//! IPv4 and IPv6 prefixes.

use crate::policy::PolicyError;
use std::{fmt, net::IpAddr, str::FromStr};

/// A prefix such as `142.250.0.0/16` or `fd00:200::/64`; host bits are zero.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The prefix `addr/len`; `len` must fit the family and host bits must be zero.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, PolicyError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!(
                "/{len} is longer than an {} address ({max} bits)",
                family(addr)
            )
            .into());
        }
        let cidr = Cidr { addr, len };
        if cidr.masked() != addr {
            return Err(format!(
                "{addr}/{len} has host bits set; did you mean {}/{len}?",
                Cidr {
                    addr: cidr.masked(),
                    len
                }
                .addr
            )
            .into());
        }
        Ok(cidr)
    }

    /// Everything of one family: `0.0.0.0/0` or `::/0`.
    pub fn any(ipv6: bool) -> Cidr {
        let addr = if ipv6 {
            IpAddr::from([0u16; 8])
        } else {
            IpAddr::from([0u8; 4])
        };
        Cidr { addr, len: 0 }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True for an IPv6 prefix.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// True when every address of `other` is in `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.len <= other.len
            && other.truncate(self.len) == *self
    }

    /// The enclosing prefix of length `len` (≤ this one's).
    pub fn truncate(&self, len: u8) -> Cidr {
        let c = Cidr {
            addr: self.addr,
            len,
        };
        Cidr {
            addr: c.masked(),
            len,
        }
    }

    fn masked(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - self.len as u32).unwrap_or(0);
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        }
    }
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

impl FromStr for Cidr {
    type Err = PolicyError;

    /// `addr/len`, or a bare address for a single host.
    fn from_str(text: &str) -> Result<Cidr, PolicyError> {
        let t = text.trim();
        let (addr, len) = match t.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (t, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{text}' is not a CIDR: '{addr}' is not an IP address"))?;
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .map_err(|_| format!("'{text}' is not a CIDR: '/{l}' is not a prefix length"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, len).map_err(|e| format!("'{text}' is not a valid CIDR: {e}").into())
    }
}

impl TryFrom<String> for Cidr {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, PolicyError> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            "142.250.0.0/16".parse::<Cidr>().unwrap().to_string(),
            "142.250.0.0/16"
        );
        assert_eq!(
            "10.0.0.1".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert_eq!(
            "fd00:200::/64".parse::<Cidr>().unwrap().to_string(),
            "fd00:200::/64"
        );
        assert!("1.2.3.0/33"
            .parse::<Cidr>()
            .unwrap_err()
            .to_string()
            .contains("/33 is longer than an IPv4"));
        assert!("10.1.2.3/8"
            .parse::<Cidr>()
            .unwrap_err()
            .to_string()
            .contains("did you mean 10.0.0.0/8"));
        assert!("300.1.1.1/8"
            .parse::<Cidr>()
            .unwrap_err()
            .to_string()
            .contains("not an IP address"));
        assert!("::/129".parse::<Cidr>().is_err());
        assert_eq!(
            "10.1.2.0/24"
                .parse::<Cidr>()
                .unwrap()
                .truncate(8)
                .to_string(),
            "10.0.0.0/8"
        );
    }
}
