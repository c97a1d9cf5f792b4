//! Destination guard against server-side request forgery: which resolved addresses an
//! upstream connection may go to. Checked on every connection, after DNS resolution, so a
//! name that re-resolves to an internal address (DNS rebinding) is still refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A cloud metadata service address: never reachable, whatever the configuration.
    Metadata,
    /// Loopback, private, link-local, shared or unspecified: only when explicitly allowed.
    Private,
    /// Multicast, broadcast, documentation or reserved: never a real upstream.
    Reserved,
}

impl Refused {
    /// A short description.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Metadata => "a cloud metadata address",
            Refused::Private => "a loopback, private or link-local address",
            Refused::Reserved => "a multicast, broadcast or reserved address",
        }
    }
}

/// Checks one resolved address.
pub fn check(ip: IpAddr, allow_private: bool) -> Result<(), Refused> {
    match classify(ip) {
        None => Ok(()),
        Some(Refused::Private) if allow_private => Ok(()),
        Some(r) => Err(r),
    }
}

fn classify(ip: IpAddr) -> Option<Refused> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Refused> {
    let [a, b, c, _] = ip.octets();
    // AWS/GCP/Azure/OCI instance metadata and ECS/EKS credential endpoints live in
    // 169.254.169.0/24 and 169.254.170.0/24; Alibaba's at 100.100.100.200.
    if (a == 169 && b == 254 && (c == 169 || c == 170)) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        return Some(Refused::Metadata);
    }
    if ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
    {
        return Some(Refused::Private);
    }
    if ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a >= 240
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
    {
        return Some(Refused::Reserved);
    }
    None
}

fn classify_v6(ip: Ipv6Addr) -> Option<Refused> {
    let seg = ip.segments();
    let first = seg.first().copied().unwrap_or(0);
    // AWS's IPv6 metadata and credential endpoints: fd00:ec2::/32.
    if first == 0xfd00 && seg.get(1) == Some(&0x0ec2) {
        return Some(Refused::Metadata);
    }
    // IPv4-compatible (deprecated) ::a.b.c.d carries an IPv4 address.
    if seg.iter().take(6).all(|s| *s == 0) && !ip.is_loopback() && !ip.is_unspecified() {
        let [.., w, x, y, z] = ip.octets();
        return classify_v4(Ipv4Addr::new(w, x, y, z)).or(Some(Refused::Reserved));
    }
    if ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
    {
        return Some(Refused::Private);
    }
    // Teredo (2001::/32) tunnels to any IPv4 address.
    if first == 0x2001 && seg.get(1) == Some(&0) {
        return Some(Refused::Reserved);
    }
    // NAT64 and 6to4 prefixes can embed any IPv4 address; documentation; multicast.
    if ip.is_multicast()
        || first == 0x2002
        || first == 0x64
        || (first == 0x2001 && seg.get(1) == Some(&0xdb8))
    {
        return Some(Refused::Reserved);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let table: &[(&str, bool, Result<(), Refused>)] = &[
            ("93.184.216.34", false, Ok(())),
            ("2606:2800:220:1:248:1893:25c8:1946", false, Ok(())),
            ("127.0.0.1", false, Err(Refused::Private)),
            ("127.0.0.1", true, Ok(())),
            ("10.1.2.3", false, Err(Refused::Private)),
            ("172.16.0.1", false, Err(Refused::Private)),
            ("192.168.1.1", false, Err(Refused::Private)),
            ("100.64.0.1", false, Err(Refused::Private)),
            ("169.254.1.1", false, Err(Refused::Private)),
            ("0.0.0.0", false, Err(Refused::Private)),
            ("169.254.169.254", true, Err(Refused::Metadata)),
            ("100.100.100.200", true, Err(Refused::Metadata)),
            ("fd00:ec2::254", true, Err(Refused::Metadata)),
            ("::ffff:169.254.169.254", true, Err(Refused::Metadata)),
            ("::ffff:127.0.0.1", false, Err(Refused::Private)),
            ("::1", false, Err(Refused::Private)),
            ("fe80::1", false, Err(Refused::Private)),
            ("fc00::1", false, Err(Refused::Private)),
            ("224.0.0.1", true, Err(Refused::Reserved)),
            ("255.255.255.255", true, Err(Refused::Reserved)),
            ("2002:7f00:1::", true, Err(Refused::Reserved)),
            ("64:ff9b::7f00:1", true, Err(Refused::Reserved)),
            ("169.254.170.23", true, Err(Refused::Metadata)),
            ("169.254.169.1", true, Err(Refused::Metadata)),
            ("fd00:ec2::23", true, Err(Refused::Metadata)),
            ("::7f00:1", false, Err(Refused::Private)),
            ("::a9fe:a9fe", true, Err(Refused::Metadata)),
            ("2001:0:4136:e378::1", true, Err(Refused::Reserved)),
            ("fec0::1", false, Err(Refused::Private)),
            ("169.254.1.1", true, Ok(())),
        ];
        for (ip, allow, want) in table {
            let parsed: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            assert_eq!(check(parsed, *allow), *want, "{ip} allow_private={allow}");
        }
    }
}
