//! The traffic redirection `meshfed redirect` installs in a pod's network namespace (what
//! the injected `meshfed-init` container runs, like Istio's `istio-init`): inbound TCP to the
//! sidecar's inbound mTLS listener, the app's outbound TCP to the sidecar's outbound listener,
//! as iptables `nat` rules in their own chains (`MESHFED_*`). The sidecar's own traffic (its
//! user) and loopback are never redirected, so it reaches the app and the network directly.
//!
//! The pod's DNS (UDP and TCP to port 53, but the sidecar's own) goes to the sidecar's DNS
//! proxy (`dns_port`, 15053 when injected), which answers the names the mesh routes —
//! imported ones no cluster DNS knows — and forwards the rest to the pod's resolver.
//!
//! The outbound listener routes HTTP by `Host`; outbound traffic that is not HTTP to a mesh
//! service needs its destination excluded (`--exclude-outbound-cidrs`, `--exclude-outbound-ports`).
//! Inbound ports excluded (`--exclude-inbound-ports`) bypass the sidecar — and its mTLS.

use std::fmt::Write as _;

/// What to redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// IPv4 networks, `a.b.c.d/n`.
    pub exclude_outbound_cidrs: Vec<String>,
    /// The sidecar's DNS proxy: port-53 traffic goes there (`None`: DNS is left alone).
    pub dns_port: Option<u16>,
}

/// Why a redirection cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RedirectError {
    pub field: &'static str,
    pub reason: String,
}

fn cidr(field: &'static str, v: &str) -> Result<(), RedirectError> {
    let err = |reason: String| RedirectError { field, reason };
    let (ip, len) = v
        .split_once('/')
        .ok_or_else(|| err(format!("{v:?} is not a.b.c.d/n")))?;
    ip.parse::<std::net::Ipv4Addr>()
        .map_err(|e| err(format!("{v:?}: {e}")))?;
    match len.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(()),
        _ => Err(err(format!("{v:?}: the prefix length must be 0 to 32"))),
    }
}

impl Redirect {
    /// The rules as `iptables-restore --noflush` input.
    pub fn rules(&self) -> Result<String, RedirectError> {
        let err = |field, reason: String| RedirectError { field, reason };
        if self.inbound_port == 0 || self.outbound_port == 0 || self.dns_port == Some(0) {
            return Err(err("ports", "the sidecar's ports must not be 0".into()));
        }
        for c in &self.exclude_outbound_cidrs {
            cidr("excludeOutboundCidrs", c)?;
        }
        let mut r = String::from("*nat\n");
        for chain in [
            "MESHFED_INBOUND",
            "MESHFED_IN_REDIRECT",
            "MESHFED_OUTPUT",
            "MESHFED_REDIRECT",
        ] {
            let _ = writeln!(r, ":{chain} - [0:0]");
        }
        if let Some(dns) = self.dns_port {
            // Before the TCP catch-all: a DNS query over TCP goes to the DNS proxy too.
            r.push_str(":MESHFED_DNS - [0:0]\n");
            r.push_str("-A OUTPUT -p udp --dport 53 -j MESHFED_DNS\n");
            r.push_str("-A OUTPUT -p tcp --dport 53 -j MESHFED_DNS\n");
            let _ = writeln!(
                r,
                "-A MESHFED_DNS -m owner --uid-owner {} -j RETURN",
                self.proxy_uid
            );
            for proto in ["udp", "tcp"] {
                let _ = writeln!(r, "-A MESHFED_DNS -p {proto} -j REDIRECT --to-ports {dns}");
            }
        }
        let _ = writeln!(
            r,
            "-A MESHFED_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        let _ = writeln!(
            r,
            "-A MESHFED_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        r.push_str("-A PREROUTING -p tcp -j MESHFED_INBOUND\n");
        let mut own = vec![self.inbound_port];
        own.extend(&self.exclude_inbound_ports);
        own.sort_unstable();
        own.dedup();
        for p in own {
            let _ = writeln!(r, "-A MESHFED_INBOUND -p tcp --dport {p} -j RETURN");
        }
        r.push_str("-A MESHFED_INBOUND -p tcp -j MESHFED_IN_REDIRECT\n");
        r.push_str("-A OUTPUT -p tcp -j MESHFED_OUTPUT\n");
        let _ = writeln!(
            r,
            "-A MESHFED_OUTPUT -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        r.push_str("-A MESHFED_OUTPUT -d 127.0.0.1/32 -j RETURN\n");
        for c in &self.exclude_outbound_cidrs {
            let _ = writeln!(r, "-A MESHFED_OUTPUT -d {c} -j RETURN");
        }
        for p in &self.exclude_outbound_ports {
            let _ = writeln!(r, "-A MESHFED_OUTPUT -p tcp --dport {p} -j RETURN");
        }
        r.push_str("-A MESHFED_OUTPUT -j MESHFED_REDIRECT\nCOMMIT\n");
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Redirect {
        Redirect {
            proxy_uid: 1337,
            inbound_port: 15006,
            outbound_port: 15001,
            exclude_inbound_ports: vec![15020],
            exclude_outbound_ports: vec![],
            exclude_outbound_cidrs: vec!["10.96.0.1/32".into()],
            dns_port: Some(15053),
        }
    }

    #[test]
    fn dns_goes_to_the_dns_proxy_but_the_sidecars_own() {
        let r = base().rules().unwrap();
        let lines: Vec<&str> = r.lines().collect();
        let pos = |l: &str| lines.iter().position(|x| *x == l).unwrap();
        assert!(
            pos("-A OUTPUT -p tcp --dport 53 -j MESHFED_DNS")
                < pos("-A OUTPUT -p tcp -j MESHFED_OUTPUT")
        );
        assert!(
            pos("-A MESHFED_DNS -m owner --uid-owner 1337 -j RETURN")
                < pos("-A MESHFED_DNS -p udp -j REDIRECT --to-ports 15053")
        );
        assert!(r.contains("-A OUTPUT -p udp --dport 53 -j MESHFED_DNS"));
        assert!(r.contains("-A MESHFED_DNS -p tcp -j REDIRECT --to-ports 15053"));
        let none = Redirect {
            dns_port: None,
            ..base()
        };
        assert!(!none.rules().unwrap().contains("MESHFED_DNS"));
    }

    #[test]
    fn the_sidecar_and_loopback_are_never_redirected() {
        let r = base().rules().unwrap();
        let lines: Vec<&str> = r.lines().collect();
        let pos = |l: &str| lines.iter().position(|x| *x == l).unwrap();
        // The exceptions come before the catch-all redirect of each chain.
        assert!(
            pos("-A MESHFED_OUTPUT -m owner --uid-owner 1337 -j RETURN")
                < pos("-A MESHFED_OUTPUT -j MESHFED_REDIRECT")
        );
        assert!(
            pos("-A MESHFED_OUTPUT -d 127.0.0.1/32 -j RETURN")
                < pos("-A MESHFED_OUTPUT -j MESHFED_REDIRECT")
        );
        assert!(
            pos("-A MESHFED_OUTPUT -d 10.96.0.1/32 -j RETURN")
                < pos("-A MESHFED_OUTPUT -j MESHFED_REDIRECT")
        );
        for p in [15006, 15020] {
            assert!(
                pos(&format!("-A MESHFED_INBOUND -p tcp --dport {p} -j RETURN"))
                    < pos("-A MESHFED_INBOUND -p tcp -j MESHFED_IN_REDIRECT")
            );
        }
        assert!(r.contains("-A MESHFED_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"));
        assert!(r.contains("-A MESHFED_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
    }

    #[test]
    fn bad_networks_are_refused_with_the_field() {
        let mut b = base();
        b.exclude_outbound_cidrs = vec!["10.0.0.0/40".into()];
        let e = b.rules().unwrap_err();
        assert_eq!(e.field, "excludeOutboundCidrs");
        b.exclude_outbound_cidrs = vec!["somewhere".into()];
        assert!(b.rules().is_err());
    }
}
