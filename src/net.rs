//! Address ranges (`--trusted-proxies`).

/// An IP network, e.g. `10.0.0.0/8` or `::1/128`; a bare address is a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether every address it holds is a loopback one.
    pub fn is_loopback(&self) -> bool {
        match self.addr {
            std::net::IpAddr::V4(v4) => v4.is_loopback() && self.prefix >= 8,
            std::net::IpAddr::V6(v6) => v6.is_loopback() && self.prefix == 128,
        }
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let ip = match (self.addr, ip) {
            // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
            (V4(_), V6(v6)) => v6.to_ipv4_mapped().map_or(ip, V4),
            _ => ip,
        };
        match (self.addr, ip) {
            (V4(net), V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (V6(net), V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP network"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: prefix must be 0..={max}"))?,
    };
    Ok(Cidr { addr, prefix })
}
