//! Helpers shared by meshfed's tests and benchmarks. A dev-dependency only: nothing a user
//! runs links it (`cli/tests/layering.rs` checks).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::ops::Range;

/// Ports tests pick from: below the kernel's ephemeral range (Linux's default is
/// 32768–60999), so no outgoing connection of this or another test can be given one of them
/// between the check and the bind.
pub const TEST_PORTS: Range<u16> = 20_000..32_000;

/// A port on `ip` that is free for both TCP and UDP (a gateway's ingress serves QUIC on its
/// TCP port), picked at random from [`TEST_PORTS`].
///
/// `bind(0)` and then release is a race: the kernel hands the same ephemeral port to the next
/// connection anyone opens, and tests open thousands. A port outside that range is taken only
/// by another test that picks the same one at random and binds it first, which the random
/// pick over 12,000 ports per address makes rare; the check here makes sure it is free now.
///
/// # Panics
/// When no port is free after 1,000 tries (the address is not local, or the range is full).
pub fn free_addr(ip: &str) -> SocketAddr {
    for _ in 0..1_000 {
        let port = fastrand::u16(TEST_PORTS);
        let Ok(tcp) = TcpListener::bind((ip, port)) else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else {
            continue;
        };
        if UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    #[allow(clippy::panic)]
    {
        panic!("no free port on {ip} in {TEST_PORTS:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_outside_the_ephemeral_range_and_bindable() {
        for _ in 0..50 {
            let a = free_addr("127.0.0.1");
            assert!(TEST_PORTS.contains(&a.port()), "{a}");
            let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("{a}: {e}"));
            drop(l);
        }
    }
}
