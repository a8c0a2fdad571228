//! Where a callback may go, pure: the bounds of a `callback_url` (scheme, no user info, length),
//! the host rule (`callbacks.allowed_hosts`: a host named exactly, a `*.suffix` pattern, or `*`),
//! the port rule (`callbacks.allowed_ports`), and the class of an IP address with the networks
//! that admit a non-public one (`callbacks.allowed_networks`).
//!
//! A host named exactly in `allowed_hosts` is the operator's own choice: it may resolve to any
//! address and (unless `allowed_ports` is set) use any port. A host admitted only by a pattern
//! must resolve to public addresses, or to addresses inside `allowed_networks`, and use a port
//! of `allowed_ports` (default 80, 443 and 8000-8999). IP-literal hosts are checked here when
//! the URL is checked; names are checked when they are resolved, at each delivery
//! (`delivery::vet`), so that the connection uses exactly the addresses that were vetted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use ipnet::IpNet;
use reqwest::Url;

/// The longest `callback_url` accepted, in bytes.
pub const MAX_CALLBACK_URL: usize = 2048;

/// Ports a host admitted only by a pattern may use when `callbacks.allowed_ports` is not set.
pub const DEFAULT_PATTERN_PORTS: [RangeInclusive<u16>; 3] = [80..=80, 443..=443, 8000..=8999];

/// The callback destination rules of the configuration, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// Lower-case, without brackets: exact hosts, `*.suffix` patterns, or `*`.
    pub hosts: &'a [String],
    pub networks: &'a [IpNet],
    /// `None`: not configured (named hosts any port, pattern hosts [`DEFAULT_PATTERN_PORTS`]).
    pub ports: Option<&'a [RangeInclusive<u16>]>,
}

/// How `callbacks.allowed_hosts` admits a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// Named exactly: any address.
    Named,
    /// Admitted by `*` or `*.suffix`: public addresses (or `allowed_networks`) only.
    Pattern,
    /// Not admitted.
    No,
}

/// Whether and how `allowed_hosts` admits `host` (lower-case, without brackets).
pub fn host_match(host: &str, allowed: &[String]) -> HostMatch {
    if allowed.iter().any(|h| h == host) {
        return HostMatch::Named;
    }
    let is_ip = host.parse::<IpAddr>().is_ok();
    let by_pattern = allowed.iter().any(|h| {
        h == "*"
            || (!is_ip
                && h.strip_prefix("*.").is_some_and(|suffix| {
                    host.len() > suffix.len() + 1
                        && host.ends_with(suffix)
                        && host[..host.len() - suffix.len()].ends_with('.')
                }))
    });
    if by_pattern {
        HostMatch::Pattern
    } else {
        HostMatch::No
    }
}

/// Whether `port` may be used by a host admitted as `how`.
pub fn port_allowed(port: u16, how: HostMatch, ports: Option<&[RangeInclusive<u16>]>) -> bool {
    match ports {
        Some(list) => list.iter().any(|r| r.contains(&port)),
        None => how == HostMatch::Named || DEFAULT_PATTERN_PORTS.iter().any(|r| r.contains(&port)),
    }
}

/// What kind of address an IP is, for the vetting of callback destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    /// RFC 1918 and IPv6 unique local (fc00::/7).
    Private,
    /// 169.254/16 and fe80::/10.
    LinkLocal,
    Multicast,
    /// 0.0.0.0 (and 0/8), `::`.
    Unspecified,
    Broadcast,
    /// 100.64/10 (RFC 6598).
    SharedCgnat,
    /// Cloud instance metadata: 169.254.169.254, fd00:ec2::254.
    Metadata,
    /// Other special-purpose ranges: documentation, benchmarking, reserved (240/4), 192.0.0/24.
    Reserved,
}

impl AddressClass {
    /// "a private address", as a message says it.
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::SharedCgnat => "a shared (CGNAT, 100.64.0.0/10) address",
            AddressClass::Metadata => "a cloud metadata address",
            AddressClass::Reserved => "a reserved (special-purpose) address",
        }
    }
}

/// The class of `ip`. An IPv4-mapped or -compatible IPv6 address (`::ffff:10.0.0.1`) and a
/// NAT64 one (`64:ff9b::10.0.0.1`) are classed by the IPv4 address they carry.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        AddressClass::Metadata
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_private() {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if o[0] == 0 {
        AddressClass::Unspecified
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        AddressClass::SharedCgnat
    } else if ip.is_documentation()
        || o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return classify_v4(Ipv4Addr::new(a, b, c, d));
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        AddressClass::Metadata
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if (s[0] & 0xfe00) == 0xfc00 {
        AddressClass::Private
    } else if (s[0] & 0xffc0) == 0xfe80 {
        AddressClass::LinkLocal
    } else if s[..6] == [0, 0, 0, 0, 0, 0] || (s[0] == 0x2001 && s[1] == 0xdb8) {
        // IPv4-compatible (deprecated) and documentation.
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// Whether a network of `allowed_networks` admits `ip`. A cloud metadata address is admitted
/// only by a network naming exactly it (`169.254.169.254/32`), not by a wider one around it.
pub fn network_allows(ip: IpAddr, networks: &[IpNet]) -> bool {
    let exact_only = classify(ip) == AddressClass::Metadata;
    networks
        .iter()
        .any(|n| n.contains(&ip) && (!exact_only || n.prefix_len() == n.max_prefix_len()))
}

/// Vet one address `host` resolved to (or is, for an IP literal). `Err` says why it is refused
/// and which key allows it.
pub fn vet_address(
    host: &str,
    ip: IpAddr,
    how: HostMatch,
    networks: &[IpNet],
) -> Result<(), String> {
    if how == HostMatch::Named {
        return Ok(());
    }
    let class = classify(ip);
    if class == AddressClass::Public || network_allows(ip, networks) {
        return Ok(());
    }
    let net = match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    };
    let what = class.describe();
    if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        Err(format!(
            "callback host {host} is {what}; add it (e.g. \"{net}\") to \
             callbacks.allowed_networks, or name it in callbacks.allowed_hosts, to allow it"
        ))
    } else {
        Err(format!(
            "callback host {host} resolved to {ip}, {what}; add it (e.g. \"{net}\") to \
             callbacks.allowed_networks, or name {host} in callbacks.allowed_hosts, to allow it"
        ))
    }
}

/// Check a callback URL: at most [`MAX_CALLBACK_URL`] bytes, http or https, no user info, a
/// host `allowed_hosts` admits on a port the port rule allows, and an IP-literal host vetted
/// like a resolved address. The messages never repeat the URL (it may carry a password).
pub fn check_callback_url(url: &str, rules: Rules<'_>) -> Result<Url, String> {
    if url.len() > MAX_CALLBACK_URL {
        return Err(format!(
            "is {} bytes long; at most {MAX_CALLBACK_URL} are accepted",
            url.len()
        ));
    }
    let parsed = Url::parse(url).map_err(|e| format!("is not a valid URL ({e})"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(format!("must use http or https, not {:?}", parsed.scheme()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not carry a user name or password (user@host); callbacks are \
                    signed, so the receiver verifies the signature instead"
                .into(),
        );
    }
    let host = parsed
        .host_str()
        .unwrap_or("")
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    let how = host_match(&host, rules.hosts);
    if how == HostMatch::No {
        return Err(format!(
            "host {host:?} is not in callbacks.allowed_hosts ({})",
            rules.hosts.join(", ")
        ));
    }
    let port = parsed.port_or_known_default().unwrap_or(0);
    if !port_allowed(port, how, rules.ports) {
        return Err(match rules.ports {
            Some(_) => format!(
                "port {port} (host {host:?}) is not in callbacks.allowed_ports; add it there"
            ),
            None => format!(
                "port {port}: host {host:?} is admitted by a pattern of callbacks.allowed_hosts, \
                 which allows ports 80, 443 and 8000-8999; name the host there or set \
                 callbacks.allowed_ports"
            ),
        });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        vet_address(&host, ip, how, rules.networks)?;
    }
    Ok(parsed)
}

/// Parse a port rule entry: `443` or `"8000-8999"`.
pub fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("{text:?} is not a port (443) or a range of ports (\"8000-8999\")");
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_range_is_classed() {
        use AddressClass::*;
        let cases = [
            ("8.8.8.8", Public),
            ("93.184.216.34", Public),
            ("2606:4700::1111", Public),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("::1", Loopback),
            ("10.0.0.5", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("ff02::1", Multicast),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("255.255.255.255", Broadcast),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.254", SharedCgnat),
            ("169.254.169.254", Metadata),
            ("fd00:ec2::254", Metadata),
            ("192.0.2.1", Reserved),
            ("198.18.0.1", Reserved),
            ("240.0.0.1", Reserved),
            ("2001:db8::1", Reserved),
            // Carried IPv4 addresses are classed by what they carry.
            ("::ffff:10.0.0.1", Private),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", Metadata),
            ("64:ff9b::a00:1", Private),
            ("64:ff9b::808:808", Public),
        ];
        for (text, class) in cases {
            assert_eq!(classify(ip(text)), class, "{text}");
        }
        // Just outside the ranges.
        for text in [
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "11.0.0.1",
            "fec0::1",
        ] {
            assert_eq!(classify(ip(text)), Public, "{text}");
        }
    }

    #[test]
    fn networks_admit_what_they_contain_and_metadata_only_exactly() {
        let nets: Vec<IpNet> = ["127.0.0.0/8", "10.1.0.0/16", "fd00::/8", "169.254.0.0/16"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(network_allows(ip("127.0.0.1"), &nets));
        assert!(network_allows(ip("127.9.9.9"), &nets));
        assert!(network_allows(ip("10.1.255.1"), &nets));
        assert!(!network_allows(ip("10.2.0.1"), &nets));
        assert!(!network_allows(ip("::1"), &nets));
        assert!(network_allows(ip("fd12::1"), &nets));
        assert!(network_allows(ip("169.254.1.1"), &nets));
        assert!(!network_allows(ip("169.254.169.254"), &nets), "wider net");
        assert!(!network_allows(ip("fd00:ec2::254"), &nets), "wider net");
        let exact: Vec<IpNet> = vec!["169.254.169.254/32".parse().unwrap()];
        assert!(network_allows(ip("169.254.169.254"), &exact));
    }

    #[test]
    fn vetting_names_the_host_the_address_and_the_key() {
        let e = vet_address("example.com", ip("10.0.0.5"), HostMatch::Pattern, &[]).unwrap_err();
        assert_eq!(
            e,
            "callback host example.com resolved to 10.0.0.5, a private address; add it (e.g. \
             \"10.0.0.5/32\") to callbacks.allowed_networks, or name example.com in \
             callbacks.allowed_hosts, to allow it"
        );
        assert!(vet_address("example.com", ip("10.0.0.5"), HostMatch::Named, &[]).is_ok());
        assert!(vet_address("example.com", ip("8.8.8.8"), HostMatch::Pattern, &[]).is_ok());
        let nets = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(vet_address("example.com", ip("10.0.0.5"), HostMatch::Pattern, &nets).is_ok());
    }

    #[test]
    fn hosts_match_named_by_pattern_or_not() {
        let allowed: Vec<String> = ["localhost", "*.hooks.example.com", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(host_match("localhost", &allowed), HostMatch::Named);
        assert_eq!(host_match("127.0.0.1", &allowed), HostMatch::Named);
        assert_eq!(
            host_match("a.hooks.example.com", &allowed),
            HostMatch::Pattern
        );
        assert_eq!(host_match("hooks.example.com", &allowed), HostMatch::No);
        assert_eq!(host_match("evilhooks.example.com", &allowed), HostMatch::No);
        assert_eq!(host_match("a.localhost", &allowed), HostMatch::No);
        let any = vec!["*".to_string()];
        assert_eq!(host_match("example.com", &any), HostMatch::Pattern);
        assert_eq!(host_match("10.0.0.5", &any), HostMatch::Pattern);
    }

    #[test]
    fn the_port_rule() {
        use HostMatch::*;
        assert!(port_allowed(51234, Named, None), "named hosts: any port");
        assert!(port_allowed(443, Pattern, None));
        assert!(port_allowed(80, Pattern, None));
        assert!(port_allowed(8080, Pattern, None));
        assert!(!port_allowed(22, Pattern, None));
        assert!(!port_allowed(9000, Pattern, None));
        let ports = [443..=443, 9000..=9100];
        assert!(!port_allowed(51234, Named, Some(&ports)), "set: for all");
        assert!(port_allowed(9050, Named, Some(&ports)));
        assert!(port_allowed(443, Pattern, Some(&ports)));
        assert!(!port_allowed(80, Pattern, Some(&ports)));
        assert_eq!(parse_port_range("8000-8999"), Ok(8000..=8999));
        assert_eq!(parse_port_range("443"), Ok(443..=443));
        assert!(parse_port_range("9-1").is_err());
        assert!(parse_port_range("0").is_err());
        assert!(parse_port_range("http").is_err());
        assert!(parse_port_range("70000").is_err());
    }

    fn rules<'a>(hosts: &'a [String], nets: &'a [IpNet]) -> Rules<'a> {
        Rules {
            hosts,
            networks: nets,
            ports: None,
        }
    }

    #[test]
    fn callback_urls_are_bounded() {
        let hosts = vec!["localhost".to_string(), "*".to_string()];
        let r = rules(&hosts, &[]);
        assert!(check_callback_url("http://localhost:9/cb", r).is_ok());
        let e = check_callback_url("http://user:hunter2@localhost:9/cb", r).unwrap_err();
        assert!(e.contains("user name or password"), "{e}");
        assert!(!e.contains("hunter2"));
        let e = check_callback_url("http://user@localhost:9/cb", r).unwrap_err();
        assert!(e.contains("user name or password"), "{e}");
        let long = format!("http://localhost:9/{}", "a".repeat(MAX_CALLBACK_URL));
        let e = check_callback_url(&long, r).unwrap_err();
        assert!(e.contains("at most 2048"), "{e}");
        let just = format!("http://localhost:9/{}", "a".repeat(MAX_CALLBACK_URL - 19));
        assert_eq!(just.len(), MAX_CALLBACK_URL);
        assert!(check_callback_url(&just, r).is_ok());
        for url in [
            "ftp://localhost/x",
            "file:///etc/passwd",
            "javascript:alert(1)",
        ] {
            let e = check_callback_url(url, r).unwrap_err();
            assert!(e.contains("must use http or https"), "{url}: {e}");
        }
    }

    #[test]
    fn ip_literal_hosts_are_vetted_when_checked() {
        let hosts = vec!["*".to_string(), "10.9.9.9".to_string()];
        let e = check_callback_url("http://10.0.0.5/cb", rules(&hosts, &[])).unwrap_err();
        assert!(e.contains("10.0.0.5 is a private address"), "{e}");
        assert!(e.contains("callbacks.allowed_networks"), "{e}");
        let e = check_callback_url("http://[fd00:ec2::254]/", rules(&hosts, &[])).unwrap_err();
        assert!(e.contains("a cloud metadata address"), "{e}");
        assert!(check_callback_url("http://10.9.9.9:1234/cb", rules(&hosts, &[])).is_ok());
        assert!(check_callback_url("https://8.8.8.8/cb", rules(&hosts, &[])).is_ok());
        let nets = vec!["10.0.0.0/24".parse().unwrap()];
        assert!(check_callback_url("http://10.0.0.5/cb", rules(&hosts, &nets)).is_ok());
        // A port outside the pattern default.
        let e = check_callback_url("http://8.8.8.8:22/", rules(&hosts, &[])).unwrap_err();
        assert!(e.contains("port 22"), "{e}");
    }
}
