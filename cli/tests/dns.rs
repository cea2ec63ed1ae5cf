//! The sidecar's DNS proxy in a network namespace the test creates (`unshare -n -m`, as
//! root), with `meshfed redirect`'s rules installed and a `resolv.conf` of its own naming a
//! stand-in cluster resolver: unmodified clients (`getent`, `curl`) running as the app
//! resolve beta's service imported into alpha — a name no cluster DNS knows — through alpha's
//! ui sidecar, and reach it through alpha's egress and beta's ingress gateway processes with
//! the ui identity; a name the mesh does not route still resolves at the cluster resolver,
//! which never sees the imported name. Every meshfed process runs as the sidecar's user
//! (1337), whose traffic the rules leave alone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::{bin, tempdir, trust_init};

/// The stand-in cluster resolver: `normal.example.test` is 10.250.0.7, everything else
/// NXDOMAIN; every name asked is logged.
const UPSTREAM: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.53", 53))
log = open(sys.argv[1], "a", buffering=1)
while True:
    q, peer = s.recvfrom(4096)
    qid, _flags, _qd = struct.unpack(">HHH", q[:6])
    i, labels = 12, []
    while q[i]:
        n = q[i]
        labels.append(q[i + 1:i + 1 + n].decode())
        i += 1 + n
    i += 1
    qtype, _qclass = struct.unpack(">HH", q[i:i + 4])
    i += 4
    name = ".".join(labels).lower()
    log.write(f"{name} {qtype}\n")
    answers, count, rcode = b"", 0, 3
    if name == "normal.example.test":
        rcode = 0
        if qtype == 1:
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([10, 250, 0, 7])
            count = 1
    header = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, count, 0, 0)
    s.sendto(header + q[12:i] + answers, peer)
"#;

const SCRIPT: &str = r#"
set -e
cd "$DIR"
pids=""
trap 'kill $pids 2>/dev/null || true' EXIT
ip link set lo up
# The pod's interface (a veth pair in the namespace): getaddrinfo with AI_ADDRCONFIG, as
# getent and many clients ask, looks up IPv4 names only when a non-loopback IPv4 address
# exists.
ip link add eth0 type veth peer name eth0-peer
ip addr add 10.250.1.2/24 dev eth0
ip link set eth0-peer up
ip link set eth0 up
# The sidecar's virtual addresses for routed names: local, so a connection is made (and
# captured by the redirect rules, like every outbound connection of the app).
ip route add local 240.240.0.0/16 dev lo
ip route add local 10.250.0.0/24 dev lo
# A pod's resolv.conf: its search list and ndots:5, so clients ask the search-list forms
# first (the sidecar answers those of a routed name too).
printf 'search web.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.53\noptions ndots:5 timeout:2 attempts:2\n' > resolv.conf
mount --bind resolv.conf /etc/resolv.conf
python3 upstream.py upstream.log &
pids="$pids $!"
chown -R 1337:1337 "$DIR"
as_proxy() {
  name=$1; shift
  setpriv --reuid 1337 --regid 1337 --clear-groups "$MESHFED" "$@" >"$name.log" 2>&1 &
  pids="$pids $!"
}
as_proxy echo echo --listen "$ECHO_APP" --mesh beta --instance echo-1
as_proxy proxy-echo proxy --mesh beta.yaml --dir b --workload echo-1
as_proxy beta-ingress gateway --mesh beta.yaml --peer alpha-mesh --dir b --ingress "$INGRESS" \
  --discovery "$DISCOVERY" --discovery-upstream "$ECHO_IN"
as_proxy alpha-egress gateway --mesh alpha.yaml --peer beta-mesh --peer-mesh beta.yaml --dir a \
  --egress "$EGRESS" --probe-interval 200ms
as_proxy ui proxy --mesh alpha.yaml --dir a --workload ui-1 --outbound 127.0.0.1:15001 \
  --peer-mesh beta.yaml --egress "$EGRESS" --dns 127.0.0.1:15053
"$MESHFED" redirect --exclude-inbound-ports 15020
NAME=echo.shop.svc.beta-mesh-imports.local
for i in $(seq 1 100); do
  if getent ahostsv4 "$NAME" >/dev/null; then break; fi
  sleep 0.3
done
echo "imported: $(getent ahostsv4 $NAME | head -1)"
echo "normal: $(getent ahostsv4 normal.example.test | head -1)"
echo "unknown: $(getent ahostsv4 nowhere.example.test || echo not-found)"
for i in $(seq 1 60); do
  if body=$(curl -sS -m 5 "http://$NAME:8080/who" 2>&1); then break; fi
  sleep 0.3
done
echo "curl: $body"
"#;

#[test]
#[allow(clippy::too_many_lines)] // the two meshes' files, then one script
fn an_unmodified_client_resolves_and_reaches_an_imported_name_through_the_sidecar() {
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!("skipped: creating a network namespace needs root (CI runs as root)");
        return;
    }
    let dir = tempdir("dns");
    trust_init(&dir, "a", "alpha-mesh.local");
    trust_init(&dir, "b", "beta-mesh.local");
    common::exchange_bundles(&dir, ("a", "alpha-mesh.local"), ("b", "beta-mesh.local"));
    // The namespace is the test's own: fixed loopback addresses cannot collide.
    let (ingress, egress, discovery) = ("127.0.9.21:15443", "127.0.9.11:15443", "127.0.9.21:8188");
    let (ui_in, ui_app) = ("127.0.9.12:15006", "127.0.9.12:8080");
    let (echo_in, echo_app) = ("127.0.9.22:15006", "127.0.9.22:8080");
    let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    common::write_gateway_meshes(
        &dir,
        addr(ui_in),
        addr(ui_app),
        addr(ingress),
        addr(echo_in),
        addr(echo_app),
    );
    std::fs::write(dir.join("upstream.py"), UPSTREAM).unwrap();
    let o = Command::new("unshare")
        .args(["-n", "-m", "sh", "-c", SCRIPT])
        .env("MESHFED", bin())
        .env("DIR", &*dir)
        .env("INGRESS", ingress)
        .env("EGRESS", egress)
        .env("DISCOVERY", discovery)
        .env("ECHO_IN", echo_in)
        .env("ECHO_APP", echo_app)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let logs: String = [
        "ui",
        "alpha-egress",
        "beta-ingress",
        "proxy-echo",
        "upstream",
    ]
    .iter()
    .map(|n| {
        format!(
            "--- {n}.log\n{}\n",
            std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default()
        )
    })
    .collect();
    let context = format!("{out}\n{}\n{logs}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{context}");
    let line = |tag: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    // The imported name resolves to the sidecar's virtual address for it...
    let imported = line("imported:");
    assert!(
        imported.starts_with("240.240.")
            && imported.contains("echo.shop.svc.beta-mesh-imports.local"),
        "{context}"
    );
    // ...other names at the cluster resolver, as before.
    assert!(line("normal:").starts_with("10.250.0.7 "), "{context}");
    assert_eq!(line("unknown:"), "not-found", "{context}");
    // curl reaches beta's echo through both gateways, as alpha's ui.
    let body = line("curl:");
    assert!(body.contains("\"mesh\":\"beta\""), "{context}");
    assert!(
        body.contains("spiffe://alpha-mesh.local/ns/web/sa/ui"),
        "{context}"
    );
    // The cluster resolver saw the other names, never the imported one — not even in a
    // search-list form.
    let asked = std::fs::read_to_string(dir.join("upstream.log")).unwrap_or_default();
    assert!(asked.contains("normal.example.test 1"), "{context}");
    assert!(!asked.contains("beta-mesh-imports"), "{context}");
}
