//! Where a webhook may point: HTTPS to a public address; plain HTTP only
//! to loopback (tests, local use); no private, link-local, loopback (over
//! HTTPS), multicast or otherwise special address unless the operator
//! allows private targets. Judged when a subscription is made and again,
//! on the addresses actually connected to, at every delivery (a name that
//! resolved to a public address at subscribe time may resolve to a private
//! one later: DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// A URL's parts that the policy looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `true` for `https`.
    pub(crate) https: bool,
    /// The host, without brackets for an IPv6 literal.
    pub(crate) host: String,
    /// The port (the scheme's default if none was given).
    pub(crate) port: u16,
}

/// Reads a webhook URL: `https://` or `http://`, a host, no user info.
pub(crate) fn parse(url: &str) -> Result<Target, String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", url.escape_debug()))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must start with https:// (or http:// to loopback)".into()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "the URL names no host".to_owned())?;
    if authority.as_str().contains('@') {
        return Err("the URL may not hold a user name or password".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(Target { https, host, port })
}

/// Whether `ip` is loopback (IPv4-mapped IPv6 included).
fn loopback(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Why `ip` is not a public unicast address, if it is not.
pub(crate) fn special(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private (RFC 1918)")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared address space (100.64.0.0/10)")
    } else if ip.is_multicast() || a >= 240 {
        Some("multicast or reserved")
    } else if a == 192 && b == 0 && c == 0 {
        Some("IETF protocol assignments (192.0.0.0/24)")
    } else if ip.is_documentation() {
        Some("documentation")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking (198.18.0.0/15)")
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first & 0xfe00 == 0xfc00 {
        Some("unique local (fc00::/7)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local (fe80::/10)")
    } else if first & 0xffc0 == 0xfec0 {
        Some("site-local (fec0::/10)")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some("documentation (2001:db8::/32)")
    } else if first == 0x0064 && ip.segments()[1] == 0xff9b {
        // NAT64 carries an IPv4 address that could be private.
        Some("NAT64 (64:ff9b::/96)")
    } else if first == 0x2002 || ip.to_ipv4().is_some() {
        // 6to4 and IPv4-compatible addresses embed an IPv4 address.
        Some("an IPv4 address in IPv6 (6to4, IPv4-compatible)")
    } else {
        None
    }
}

/// Whether a delivery to `target` may go to `addr`: `Err` says why not.
pub(crate) fn allowed(target: &Target, addr: IpAddr, allow_private: bool) -> Result<(), String> {
    if !target.https {
        // Plain HTTP only to loopback, whatever the operator allows: a
        // signed notice must not cross a network in clear.
        return if loopback(addr) {
            Ok(())
        } else {
            Err(format!(
                "plain http:// is allowed only to a loopback address, and {} resolves to {addr}; use https://",
                target.host
            ))
        };
    }
    if allow_private {
        return Ok(());
    }
    match special(addr) {
        None => Ok(()),
        Some(why) => Err(format!(
            "{} resolves to {addr}, a {why} address; webhooks go only to public addresses \
             (the operator can allow private ones with --webhook-allow-private)",
            target.host
        )),
    }
}

/// Resolves `target` and checks every address: all must be allowed, so a
/// name cannot hide a private address behind a public one.
pub(crate) fn resolve(target: &Target, allow_private: bool) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{} resolves to no address", target.host));
    }
    for a in &addrs {
        allowed(target, a.ip(), allow_private)?;
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, allow_private: bool) -> Result<Vec<SocketAddr>, String> {
        resolve(&parse(url)?, allow_private)
    }

    #[test]
    fn https_to_public_addresses_only() {
        assert!(check("https://93.184.215.14/hook", false).is_ok());
        assert!(check("https://[2606:4700::1111]/hook", false).is_ok());
        for bad in [
            "https://10.0.0.1/hook",
            "https://172.16.5.4/",
            "https://192.168.1.1/",
            "https://127.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://224.0.0.1/",
        ] {
            assert!(check(bad, false).is_err(), "{bad}");
            assert!(check(bad, true).is_ok(), "{bad} with private allowed");
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check("http://127.0.0.1:8080/hook", false).is_ok());
        assert!(check("http://[::1]:8080/hook", false).is_ok());
        assert!(check("http://93.184.215.14/hook", false).is_err());
        assert!(check("http://10.0.0.1/hook", true).is_err());
    }

    #[test]
    fn urls_that_are_not_webhooks() {
        for bad in [
            "ftp://example.com/",
            "example.com/hook",
            "https://user:pw@93.184.215.14/",
            "https:///nohost",
            "",
        ] {
            assert!(check(bad, true).is_err(), "{bad}");
        }
    }
}
