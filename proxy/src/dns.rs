//! The sidecar's DNS proxy (Istio's DNS capture is the model): `meshfed redirect` sends the
//! pod's port-53 traffic here; queries for the names the sidecar routes — imported hostnames
//! (`orders.shop.svc.beta-imports.local`), `importAsLocal` names, local services — are
//! answered here, every other query goes unchanged to the pod's own resolver and its answer
//! comes back unchanged. Without it, an app's `getaddrinfo` for an imported name fails before
//! the sidecar sees a byte: no cluster DNS knows the name.
//!
//! A routed name resolves to a stable *virtual* address in `240.240.0.0/16` (reserved,
//! never routed on the internet; Istio allocates from the same class-E space): the app's
//! connection to it is captured like every outbound connection and routed by `Host`, and
//! [`DnsTable::host_of`] maps the address back to the name for traffic that carries none.
//! AAAA and other types for a routed name answer "no data", so clients fall back to A.
//!
//! Messages are parsed and written with `hickory-proto`; a query that does not parse gets
//! FORMERR when its header can be read, and nothing otherwise. In-flight queries are bounded.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The virtual addresses' network: `240.240.0.0/16`.
pub const VIRTUAL_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(240, 240, 0, 0), 16);

/// How long clients may cache an answer (names change with the configuration).
pub const TTL_SECS: u32 = 30;

/// How long an upstream resolver has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// Queries handled at once; more wait (UDP: dropped when the socket's queue is full).
const IN_FLIGHT: usize = 256;

/// A UDP message's largest size we read (EDNS allows up to 4096 in practice).
const MAX_UDP: usize = 4096;

/// How long a TCP client may stay silent between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The names the sidecar answers, each with its virtual address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsTable {
    by_name: BTreeMap<String, Ipv4Addr>,
    by_ip: BTreeMap<Ipv4Addr, String>,
    /// The pod's search domains: a query for `<routed name>.<search domain>` (what a client
    /// with `ndots:5` asks first) is answered too, as Istio's DNS proxy does, instead of
    /// taking a round trip to the cluster resolver for each domain of the list.
    search: Vec<String>,
}

/// A name as the table keys it: lower case, without the trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// FNV-1a: a name's preferred slot, the same in every sidecar and every run.
fn slot(name: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    #[allow(clippy::cast_possible_truncation)] // folding 32 bits into 16 on purpose
    let folded = ((h >> 16) ^ h) as u16;
    folded
}

impl DnsTable {
    /// The table of `names`. Each name keeps the address its hash picks unless a name before
    /// it (in order) took it, so addresses stay put as names come and go; `.0` and `.255`
    /// endings are skipped.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut sorted: Vec<String> = names.into_iter().map(|n| key(n.as_ref())).collect();
        sorted.sort();
        sorted.dedup();
        let mut t = Self::default();
        let [a, b, ..] = VIRTUAL_NET.0.octets();
        for name in sorted {
            let mut s = slot(&name);
            let ip = loop {
                let [hi, lo] = s.to_be_bytes();
                let ip = Ipv4Addr::new(a, b, hi, lo);
                if lo != 0 && lo != 255 && !t.by_ip.contains_key(&ip) {
                    break ip;
                }
                s = s.wrapping_add(1);
            };
            t.by_ip.insert(ip, name.clone());
            t.by_name.insert(name, ip);
        }
        t
    }

    /// The same table answering search-list forms for `search` (the pod's search domains).
    #[must_use]
    pub fn with_search<I, S>(mut self, search: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.search = search
            .into_iter()
            .map(|s| key(s.as_ref()))
            .filter(|s| !s.is_empty())
            .collect();
        self
    }

    /// The virtual address of `name`, if the sidecar routes it — or routes what is left of
    /// it without one of the search domains.
    pub fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        let name = key(name);
        if let Some(ip) = self.by_name.get(&name) {
            return Some(*ip);
        }
        self.search.iter().find_map(|domain| {
            let rest = name.strip_suffix(domain.as_str())?.strip_suffix('.')?;
            self.by_name.get(rest).copied()
        })
    }

    /// The name a virtual address stands for.
    pub fn host_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Answered here: the response message.
    Local(Vec<u8>),
    /// Not a name of ours: to the upstream resolver, unchanged.
    Forward,
    /// Not even a header to answer to.
    Drop,
}

/// Answers `query` from `table`, or says where it goes.
pub fn answer(table: &DnsTable, query: &[u8]) -> Answer {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) if query.len() >= 12 => {
            let id = u16::from_be_bytes([query[0], query[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .map_or(Answer::Drop, Answer::Local);
        }
        Err(_) => return Answer::Drop,
    };
    if msg.metadata.message_type != MessageType::Query
        || msg.metadata.op_code != OpCode::Query
        || msg.queries.len() != 1
    {
        return Answer::Forward;
    }
    let q = &msg.queries[0];
    if q.query_class() != DNSClass::IN {
        return Answer::Forward;
    }
    let name = q.name().to_ascii();
    let Some(ip) = table.lookup(&name) else {
        return Answer::Forward;
    };
    let mut resp = Message::response(msg.metadata.id, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = ResponseCode::NoError;
    resp.add_query(q.clone());
    if q.query_type() == RecordType::A {
        resp.add_answer(Record::from_rdata(
            q.name().clone(),
            TTL_SECS,
            RData::A(A(ip)),
        ));
    }
    // AAAA and the rest: the name exists, with no data of that type.
    resp.to_vec().map_or(Answer::Drop, Answer::Local)
}

/// The search domains of a `resolv.conf` (its last `search` line, as the resolver reads it).
pub fn search_domains(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "search").then(|| words.map(str::to_owned).collect::<Vec<_>>())
        })
        .next_back()
        .unwrap_or_default()
}

/// The name servers of a `resolv.conf`, on port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: std::net::IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The table the DNS proxy answers from, replaced as the configuration changes.
pub type SharedTable = Arc<RwLock<Arc<DnsTable>>>;

fn current(t: &SharedTable) -> Arc<DnsTable> {
    t.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// A running DNS proxy: its address and table; its tasks stop when it is dropped.
#[derive(Debug)]
pub struct Dns {
    pub addr: SocketAddr,
    table: SharedTable,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why the DNS proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding the DNS proxy on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no upstream resolver for the DNS proxy (none given, none in /etc/resolv.conf)")]
    NoUpstream,
}

impl DnsError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Bind { .. } => "BindFailed",
            Self::NoUpstream => "NoUpstream",
        }
    }
}

impl Dns {
    /// Serves DNS on `listen` (UDP and TCP, one port) from `table`, forwarding the rest to
    /// `upstream` (in order, the next one when one does not answer).
    pub async fn start(
        listen: SocketAddr,
        upstream: Vec<SocketAddr>,
        table: DnsTable,
    ) -> Result<Self, DnsError> {
        if upstream.is_empty() {
            return Err(DnsError::NoUpstream);
        }
        let bind = |source| DnsError::Bind {
            addr: listen,
            source,
        };
        let udp = UdpSocket::bind(listen).await.map_err(bind)?;
        let addr = udp.local_addr().map_err(bind)?;
        // TCP on the same port as UDP (a port 0 request took one for UDP).
        let tcp = TcpListener::bind(addr).await.map_err(bind)?;
        let table: SharedTable = Arc::new(RwLock::new(Arc::new(table)));
        let upstream: Arc<[SocketAddr]> = upstream.into();
        let limit = Arc::new(Semaphore::new(IN_FLIGHT));
        let tasks = vec![
            tokio::spawn(serve_udp(
                Arc::new(udp),
                table.clone(),
                upstream.clone(),
                limit.clone(),
            )),
            tokio::spawn(serve_tcp(tcp, table.clone(), upstream, limit)),
        ];
        tracing::info!(
            dns = %addr,
            "DNS proxy on {addr} (UDP and TCP) for {} name(s)",
            current(&table).len()
        );
        Ok(Self { addr, table, tasks })
    }

    /// Answers from `table` from now on (with the search domains it started with).
    pub fn set_table(&self, mut table: DnsTable) {
        let mut t = self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table.search.clone_from(&t.search);
        if **t != table {
            tracing::debug!("DNS proxy: {} name(s)", table.len());
            *t = Arc::new(table);
        }
    }

    /// The table answered from now.
    pub fn table(&self) -> Arc<DnsTable> {
        current(&self.table)
    }
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    table: SharedTable,
    upstream: Arc<[SocketAddr]>,
    limit: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..n].to_vec();
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%from, "DNS proxy busy: query dropped");
            continue;
        };
        let (socket, table, upstream) = (socket.clone(), table.clone(), upstream.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let reply = match answer(&current(&table), &query) {
                Answer::Local(r) => Some(r),
                Answer::Forward => forward_udp(&upstream, &query).await,
                Answer::Drop => None,
            };
            if let Some(r) = reply {
                let _ = socket.send_to(&r, from).await;
            }
        });
    }
}

/// Sends `query` to each upstream in turn until one answers.
async fn forward_udp(upstream: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstream {
        let any: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(s) = UdpSocket::bind(any).await else {
            continue;
        };
        if s.connect(up).await.is_err() || s.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_UDP];
        // The answer must be to this query (a stray datagram is not).
        let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let n = s.recv(&mut buf).await.ok()?;
                if n >= 2 && buf[..2] == query[..2] {
                    return Some(buf[..n].to_vec());
                }
            }
        })
        .await;
        match got {
            Ok(Some(r)) => return Some(r),
            _ => tracing::debug!(upstream = %up, "upstream resolver did not answer"),
        }
    }
    None
}

async fn serve_tcp(
    listener: TcpListener,
    table: SharedTable,
    upstream: Arc<[SocketAddr]>,
    limit: Arc<Semaphore>,
) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let (table, upstream) = (table.clone(), upstream.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp_conn(conn, &table, &upstream).await;
        });
    }
}

/// One length-prefixed message from `s`.
async fn read_msg(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_msg(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let n = u16::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
    s.write_u16(n).await?;
    s.write_all(msg).await
}

async fn tcp_conn(
    mut conn: TcpStream,
    table: &SharedTable,
    upstream: &[SocketAddr],
) -> std::io::Result<()> {
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, read_msg(&mut conn)).await {
            Ok(Ok(q)) => q,
            _ => return Ok(()),
        };
        let reply = match answer(&current(table), &query) {
            Answer::Local(r) => Some(r),
            Answer::Forward => forward_tcp(upstream, &query).await,
            Answer::Drop => None,
        };
        match reply {
            Some(r) => write_msg(&mut conn, &r).await?,
            None => return Ok(()),
        }
    }
}

async fn forward_tcp(upstream: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstream {
        let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            let mut s = TcpStream::connect(up).await?;
            write_msg(&mut s, query).await?;
            read_msg(&mut s).await
        })
        .await;
        if let Ok(Ok(r)) = got {
            return Some(r);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    const ORDERS: &str = "orders.shop.svc.beta-imports.local";

    #[test]
    fn routed_names_get_stable_virtual_addresses() {
        let t = DnsTable::new([ORDERS, "echo.shop.svc.cluster.local"]);
        let ip = t.lookup(ORDERS).unwrap();
        assert_eq!(&ip.octets()[..2], &[240, 240]);
        assert_eq!(t.lookup("ORDERS.shop.svc.beta-imports.local."), Some(ip));
        assert_eq!(t.host_of(ip), Some(ORDERS));
        // Another name coming or going leaves it where it was.
        let more = DnsTable::new([ORDERS, "a.b.svc.x.local", "c.d.svc.y.local"]);
        assert_eq!(more.lookup(ORDERS), Some(ip));
        assert_eq!(t.lookup("example.com"), None);
        // Many names, no two alike, none ending in .0 or .255.
        let names: Vec<String> = (0..5000)
            .map(|i| format!("s{i}.ns.svc.p-imports.local"))
            .collect();
        let big = DnsTable::new(&names);
        let ips: std::collections::BTreeSet<Ipv4Addr> =
            names.iter().filter_map(|n| big.lookup(n)).collect();
        assert_eq!(ips.len(), 5000);
        assert!(
            ips.iter()
                .all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255)
        );
    }

    #[test]
    fn a_routed_name_is_answered_here_and_the_rest_forwarded() {
        let t = DnsTable::new([ORDERS]);
        let Answer::Local(r) = answer(&t, &query(&format!("{ORDERS}."), RecordType::A)) else {
            panic!("not answered")
        };
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert!(r.metadata.recursion_desired && r.metadata.authoritative);
        assert_eq!(r.queries.len(), 1);
        let RData::A(A(ip)) = r.answers[0].data else {
            panic!("{r:?}")
        };
        assert_eq!(Some(ip), t.lookup(ORDERS));
        assert_eq!(r.answers[0].ttl, TTL_SECS);
        // AAAA: the name exists, no IPv6 address (clients fall back to A).
        let Answer::Local(r) = answer(&t, &query(ORDERS, RecordType::AAAA)) else {
            panic!()
        };
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        // Other names, upstream.
        assert_eq!(
            answer(&t, &query("example.com.", RecordType::A)),
            Answer::Forward
        );
        // Garbage with a header: FORMERR with its id; less than a header: nothing.
        let mut junk = vec![0x12, 0x34];
        junk.extend([0xff; 20]);
        let Answer::Local(r) = answer(&t, &junk) else {
            panic!()
        };
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 1, "FORMERR");
        assert_eq!(answer(&t, &[1, 2, 3]), Answer::Drop);
    }

    #[test]
    fn search_list_forms_of_a_routed_name_are_answered_too() {
        let conf = "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\n";
        let t = DnsTable::new([ORDERS]).with_search(search_domains(conf));
        let ip = t.lookup(ORDERS).unwrap();
        let long = format!("{ORDERS}.shop.svc.cluster.local.");
        let Answer::Local(r) = answer(&t, &query(&long, RecordType::A)) else {
            panic!("not answered")
        };
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(r.answers[0].name.to_ascii(), long);
        assert!(matches!(r.answers[0].data, RData::A(A(a)) if a == ip));
        // Anything else under a search domain is the cluster's.
        assert_eq!(
            answer(&t, &query("orders.shop.svc.cluster.local.", RecordType::A)),
            Answer::Forward
        );
        assert_eq!(t.lookup(&format!("x{ORDERS}.cluster.local")), None);
        // set_table keeps the search list.
        assert_eq!(
            search_domains("search a.b\nsearch c.d e.f\n"),
            ["c.d", "e.f"]
        );
    }

    #[test]
    fn nameservers_come_from_resolv_conf() {
        let conf = "# generated\nsearch shop.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\nnameserver bogus\n";
        assert_eq!(
            nameservers(conf),
            vec![
                "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
                "[fd00::a]:53".parse().unwrap()
            ]
        );
    }
}
