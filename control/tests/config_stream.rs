//! The control plane's config and certificate service over real mTLS on loopback: who may get
//! which certificate, who may subscribe as which workload, ACK/NACK with the last good
//! snapshot kept, and a client that outlives its control plane and rejoins a new one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshfed_api::config::{self as pb, ProxyMessage};
use meshfed_control::client::{Client, ClientError, ClientState, Update};
use meshfed_control::rotation::MeshCa;
use meshfed_control::server::{
    self, ControlPlane, ControlStatus, Enrolment, ReviewedToken, StatusCell, TokenReviewer,
};
use meshfed_control::source::{Trust, next_snapshot};
use meshfed_control::{Snapshot, control_plane_id};
use meshfed_core::{SpiffeId, TrustDomain};
use meshfed_peering::tls;
use meshfed_trust::CertificateAuthority;
use meshfed_trust::bootstrap::Bootstrap;
use meshfed_trust::ca::DEFAULT_SVID_TTL;
use meshfed_trust::join::JoinStore;
use meshfed_trust::verify::{self, SvidResolver};
use tokio::sync::{mpsc, watch};

/// A made-up credential: the form of a join secret, but none that was minted.
const MADE_UP: &str = "0123456789abcdef0123456789abcdef";

fn mesh_yaml(extra: &str) -> String {
    format!(
        "apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {{name: alpha, namespace: alpha-system}}
spec:
  trustDomain: alpha-mesh.local
  services:
  - {{name: echo, namespace: shop, ports: [{{name: http, port: 8080}}]}}
  - {{name: ui, namespace: web, ports: [{{name: http, port: 8080}}]}}
  workloads:
  - {{name: echo-1, namespace: shop, service: echo, inbound: \"127.0.9.1:15006\", app: \"127.0.9.1:8080\"}}
  - {{name: ui-1, namespace: web, service: ui, inbound: \"127.0.9.2:15006\", app: \"127.0.9.2:8080\"}}
{extra}"
    )
}

struct Cp {
    /// The join credentials of `start`'s control planes (embedded mode), in a folder of
    /// their own that lives as long as the control plane.
    joins: JoinStore,
    _joins_dir: tempfile::TempDir,
    addr: SocketAddr,
    ca: Arc<MeshCa>,
    tx: watch::Sender<Arc<Snapshot>>,
    status: StatusCell,
    task: tokio::task::JoinHandle<()>,
}

impl Cp {
    fn td() -> TrustDomain {
        "alpha-mesh.local".parse().unwrap()
    }

    fn bundles(ca: &MeshCa) -> Trust {
        Trust {
            bundles: vec![(
                Self::td(),
                ca.trusted().current_bundle().unwrap().to_json().to_string(),
            )],
            signing_root: ca.signing_root(),
        }
    }

    /// A control plane serving `mesh_yaml("")` on `addr` (port 0: any), enrolling with join
    /// credentials (embedded mode's way; [`Cp::client`] mints them).
    async fn start(ca: Arc<CertificateAuthority>, addr: SocketAddr) -> Self {
        Self::start_with(ca, addr, |joins| Enrolment::Join(joins.clone())).await
    }

    /// [`Cp::start`], enrolling first certificates by what `enrolment` makes of its join
    /// store.
    async fn start_with(
        ca: Arc<CertificateAuthority>,
        addr: SocketAddr,
        enrolment: impl FnOnce(&JoinStore) -> Enrolment,
    ) -> Self {
        let joins_dir = tempfile::tempdir().unwrap();
        let joins = JoinStore::new(joins_dir.path());
        let enrolment = enrolment(&joins);
        let ca = MeshCa::new(ca).unwrap();
        let snap = next_snapshot(
            None,
            "mesh.yaml",
            &mesh_yaml(""),
            &Self::td(),
            Self::bundles(&ca),
        )
        .unwrap()
        .unwrap();
        let id = control_plane_id(&snap.mesh).unwrap();
        let svid = ca
            .signing()
            .issue(&id, DEFAULT_SVID_TTL, SystemTime::now())
            .unwrap();
        let resolver = Arc::new(SvidResolver::new(&svid, verify::provider()).unwrap());
        let config = Arc::new(server::tls_config(&Self::td(), ca.own_bundles(), resolver).unwrap());
        // A stopped control plane releases its port a moment after it stops.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("binding {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (fail_tx, _fail_rx) = mpsc::channel(16);
        let incoming = tls::incoming(listener, config, fail_tx);
        let (tx, rx) = watch::channel(Arc::new(snap));
        let status = StatusCell::default();
        let cp = ControlPlane::new(rx, ca.clone(), enrolment, status.clone());
        let task = tokio::spawn(async move {
            let _ = cp.serve(incoming, std::future::pending()).await;
        });
        Self {
            joins,
            _joins_dir: joins_dir,
            addr,
            ca,
            tx,
            status,
            task,
        }
    }

    fn boot(&self, token: &str) -> Bootstrap {
        Bootstrap {
            control_plane: self.addr,
            control_plane_id: "spiffe://alpha-mesh.local/ns/alpha-system/sa/meshfed-control"
                .parse()
                .unwrap(),
            trust_domain: Self::td(),
            bundle: self.ca.trusted().current_bundle().unwrap().to_json(),
            token: token.into(),
            token_file: None,
        }
    }

    /// A join credential of `ns/workload`, reusable for a day.
    fn credential(&self, ns: &str, workload: &str) -> String {
        let day = Duration::from_secs(24 * 3600);
        self.joins
            .mint(ns, &[workload], day, false, SystemTime::now())
            .unwrap()
            .secret
    }

    /// A client of `ns/workload` joining with its own credential.
    fn client(&self, ns: &str, workload: &str) -> Client {
        Client::new(self.boot(&self.credential(ns, workload)), ns, workload).unwrap()
    }

    fn status(&self) -> ControlStatus {
        (*self.status.get()).clone()
    }

    /// Publishes `mesh_yaml(extra)` as the next version.
    fn publish(&self, extra: &str) -> u64 {
        let prev = self.tx.borrow().clone();
        let next = next_snapshot(
            Some(&prev),
            "mesh.yaml",
            &mesh_yaml(extra),
            &Self::td(),
            Self::bundles(&self.ca),
        )
        .unwrap()
        .expect("a change");
        let v = next.version;
        self.tx.send_replace(Arc::new(next));
        v
    }
}

fn ca() -> Arc<CertificateAuthority> {
    Arc::new(CertificateAuthority::new(Cp::td(), SystemTime::now()).unwrap())
}

async fn resolver(c: &Client) -> Arc<SvidResolver> {
    let svid = c.certify(None).await.unwrap();
    Arc::new(SvidResolver::new(&svid, verify::provider()).unwrap())
}

/// An embedded-mode control plane: first certificates need join credentials, recorded in
/// the returned store (its folder lives as long as the returned guard); the mesh has the
/// gateway `egress-beta`.
async fn joined_control_plane() -> (JoinStore, Cp) {
    let cp = Cp::start(ca(), "127.0.9.10:0".parse().unwrap()).await;
    cp.publish("  gateways:\n  - {name: egress-beta, address: \"127.0.9.3:15443\"}\n");
    (cp.joins.clone(), cp)
}

/// The attack of the security review: in embedded mode one leaked credential (or one
/// compromised workload) must not become any other identity — least of all the egress
/// gateway's, which peers trust.
#[tokio::test]
async fn a_join_credential_yields_only_its_own_workload_and_anonymous_callers_learn_nothing() {
    let (joins, cp) = joined_control_plane().await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let echo = joins.mint("shop", &["echo-1"], hour, false, now).unwrap();
    let client = |token: &str, ns: &str, w: &str| Client::new(cp.boot(token), ns, w).unwrap();

    // Its own workload: yes, and again after a restart (the credential is reusable until it
    // expires).
    for _ in 0..2 {
        let svid = client(&echo.secret, "shop", "echo-1")
            .certify(None)
            .await
            .unwrap();
        assert_eq!(
            svid.id.to_string(),
            "spiffe://alpha-mesh.local/ns/shop/sa/echo"
        );
    }
    // Anything else: the same answer, whether the workload exists, is a gateway, or is not
    // there at all; and a credential nobody minted is nothing.
    let mut answers = std::collections::BTreeSet::new();
    for (token, ns, w) in [
        (echo.secret.as_str(), "alpha-system", "egress-beta"),
        (echo.secret.as_str(), "web", "ui-1"),
        (echo.secret.as_str(), "shop", "nope"),
        (MADE_UP, "shop", "echo-1"),
        ("", "shop", "echo-1"),
        (
            "ffffffffffffffffffffffffffffffff",
            "alpha-system",
            "egress-beta",
        ),
    ] {
        let mut raw = client(&echo.secret, "shop", "echo-1")
            .raw(None)
            .await
            .unwrap();
        let refused = raw
            .certify(pb::CertifyRequest {
                namespace: ns.into(),
                workload: w.into(),
                csr_der: Vec::new(),
                token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{ns}/{w}");
        answers.insert(refused.message().to_owned());
    }
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a.starts_with("NotEnrolled: ") && !a.contains("egress")),
        "{answers:?}"
    );
    // Only a gateway credential yields the gateway's identity.
    let gw = joins
        .mint("alpha-system", &["egress-beta"], hour, false, now)
        .unwrap();
    let svid = client(&gw.secret, "alpha-system", "egress-beta")
        .certify(None)
        .await
        .unwrap();
    assert_eq!(
        svid.id.to_string(),
        "spiffe://alpha-mesh.local/ns/alpha-system/sa/egress-beta-service-account"
    );
    // A once-only credential yields one certificate (asking who one is uses nothing up).
    let once = joins.mint("web", &["ui-1"], hour, true, now).unwrap();
    client(&once.secret, "web", "ui-1")
        .certify(None)
        .await
        .unwrap();
    let e = client(&once.secret, "web", "ui-1")
        .certify(None)
        .await
        .unwrap_err();
    assert_eq!(e.reason, "NotEnrolled", "{e}");
    // Revoked: nothing more.
    joins.revoke("shop", "echo-1").unwrap();
    let e = client(&echo.secret, "shop", "echo-1")
        .certify(None)
        .await
        .unwrap_err();
    assert_eq!(e.reason, "NotEnrolled", "{e}");
    // A credential for a workload the mesh does not have proves that much: it is told.
    let ghost = joins.mint("shop", &["ghost"], hour, false, now).unwrap();
    let e = client(&ghost.secret, "shop", "ghost")
        .certify(None)
        .await
        .unwrap_err();
    assert_eq!(e.reason, "UnknownWorkload", "{e}");
    let st = cp.status();
    assert_eq!(st.certificates_issued, 4, "{st:?}");
    assert!(
        st.last_refusal
            .as_deref()
            .is_some_and(|r| r.contains("ghost")),
        "{st:?}"
    );
    cp.task.abort();
}

/// A reviewer that knows a few tokens (what the cluster's TokenReview says of them).
struct Reviewer(std::collections::BTreeMap<&'static str, ReviewedToken>);

impl TokenReviewer for Reviewer {
    fn review<'a>(&'a self, token: &'a str) -> server::Review<'a> {
        let found = self
            .0
            .get(token)
            .cloned()
            .ok_or_else(|| server::ReviewError::NotAuthenticated("unknown token".into()));
        Box::pin(async move { found })
    }
}

fn reviewed(ns: &str, sa: &str, pod: Option<&str>) -> ReviewedToken {
    ReviewedToken {
        namespace: ns.into(),
        service_account: sa.into(),
        pod: pod.map(Into::into),
    }
}

/// Kubernetes mode: a pod's ServiceAccount token, as the cluster reviews it, yields that
/// account's identity in that namespace and nothing else; a gateway pod's account also the
/// other gateway of its peer (one process serves both).
#[tokio::test]
async fn a_service_account_token_yields_only_its_own_accounts_identity() {
    let tokens = [
        ("echo-pod", reviewed("shop", "echo", Some("echo-1"))),
        ("echo-unbound", reviewed("shop", "echo", None)),
        ("other-sa", reviewed("shop", "orders", Some("orders-1"))),
        (
            "gateway-pod",
            reviewed("alpha-system", "ingress-beta-service-account", Some("gw-1")),
        ),
    ];
    let cp = Cp::start_with(ca(), "127.0.9.10:0".parse().unwrap(), |_| {
        Enrolment::ServiceAccount(Arc::new(Reviewer(tokens.into())))
    })
    .await;
    cp.publish(
        "  gateways:
  - {name: ingress-beta, address: \"127.0.9.3:15443\"}
  - {name: egress-beta, address: \"127.0.9.4:15443\"}
---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {name: beta, namespace: alpha-system}
spec:
  remote: {addresses: [127.0.9.9]}
  security: {trustDomain: beta.local, clientID: beta.local/ns/beta-system/sa/egress-alpha-service-account}
",
    );
    let certify = |token: &str, ns: &str, w: &str| {
        let c = Client::new(cp.boot(token), ns, w).unwrap();
        async move { c.certify(None).await }
    };
    let svid = certify("echo-pod", "shop", "echo-1").await.unwrap();
    assert_eq!(
        svid.id.to_string(),
        "spiffe://alpha-mesh.local/ns/shop/sa/echo"
    );
    for (token, ns, w) in [
        ("echo-pod", "web", "ui-1"),                 // another namespace
        ("echo-pod", "alpha-system", "egress-beta"), // a gateway
        ("other-sa", "shop", "echo-1"),              // another account's workload
        ("echo-unbound", "shop", "echo-1"),          // a token bound to no pod
        ("nobody", "shop", "echo-1"),                // a token the cluster does not know
        ("gateway-pod", "shop", "echo-1"),           // a gateway asking for a workload
    ] {
        let e = certify(token, ns, w).await.unwrap_err();
        assert_eq!(e.reason, "NotEnrolled", "{token} as {ns}/{w}: {e}");
    }
    for g in ["ingress-beta", "egress-beta"] {
        let svid = certify("gateway-pod", "alpha-system", g).await.unwrap();
        assert_eq!(
            svid.id.to_string(),
            format!("spiffe://alpha-mesh.local/ns/alpha-system/sa/{g}-service-account")
        );
    }
    assert_eq!(cp.status().certificates_issued, 3);
    cp.task.abort();
}

/// Hostile first-certificate requests, generated: every combination of odd namespaces and
/// workload names (empty, long, path-like, control characters, another namespace's names, the
/// gateways), tokens (empty, short, huge, made-up, another workload's, one character off) and
/// CSRs (none, garbage, for another identity). Every one is refused with its reason, nothing
/// is issued, and a real workload still joins afterwards.
#[tokio::test]
async fn hostile_first_certificate_requests_are_refused_with_their_reason() {
    let (joins, cp) = joined_control_plane().await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let echo = joins.mint("shop", &["echo-1"], hour, false, now).unwrap();
    let ui = joins.mint("web", &["ui-1"], hour, false, now).unwrap();
    let long = "a".repeat(10_000);
    let names = [
        "",
        "shop",
        "web",
        "alpha-system",
        "echo-1",
        "ui-1",
        "egress-beta",
        "../shop",
        "shop/echo-1",
        "SHOP",
        "sh\0op",
        "é",
        &long,
    ];
    let mut flipped = echo.secret.clone();
    flipped.replace_range(0..1, if flipped.starts_with('0') { "1" } else { "0" });
    let tokens = [
        String::new(),
        "x".into(),
        "0".repeat(64),
        "g".repeat(64),
        "0".repeat(256 * 1024),
        flipped,
        ui.secret.clone(),
        MADE_UP.into(),
    ];
    let other: SpiffeId = "spiffe://alpha-mesh.local/ns/shop/sa/echo".parse().unwrap();
    let (_, other_csr) = meshfed_trust::ca::workload_csr(&other).unwrap();
    let csrs = [
        Vec::new(),
        vec![0x30, 0x03, 0x02, 0x01, 0x00],
        other_csr.to_vec(),
    ];
    let mut raw = Client::new(cp.boot(&echo.secret), "shop", "echo-1")
        .unwrap()
        .raw(None)
        .await
        .unwrap();
    let mut t = meshfed_test_support::hostile::Tally::new("certify requests (join credentials)");
    for ns in names {
        for w in names {
            for token in &tokens {
                // The only proofs that hold: ui's own credential for web/ui-1.
                let proves = *token == ui.secret && ns == "web" && w == "ui-1";
                for csr in &csrs {
                    let r = raw
                        .certify(pb::CertifyRequest {
                            namespace: ns.into(),
                            workload: w.into(),
                            csr_der: csr.clone(),
                            token: token.clone(),
                        })
                        .await;
                    let what = format!(
                        "{:.20?}/{:.20?} with a {}-byte token and a {}-byte CSR",
                        ns,
                        w,
                        token.len(),
                        csr.len()
                    );
                    match r {
                        // Asking who web/ui-1 is, with its own credential.
                        Ok(who) if proves && csr.is_empty() => {
                            assert!(who.get_ref().chain_der.is_empty());
                        }
                        Ok(_) => t.record(what, "NotEnrolled", Some("issued")),
                        Err(status) => {
                            let reason = status.message().split(':').next().unwrap_or("");
                            let expected = if proves { "InvalidCsr" } else { "NotEnrolled" };
                            t.record(what, expected, Some(reason));
                        }
                    }
                }
            }
        }
    }
    assert!(t.tried() >= 1_000, "{} vectors", t.tried());
    t.finish(env!("CARGO_TARGET_TMPDIR"));
    assert_eq!(cp.status().certificates_issued, 0);
    // The real workloads still join.
    let svid = Client::new(cp.boot(&echo.secret), "shop", "echo-1")
        .unwrap()
        .certify(None)
        .await
        .unwrap();
    assert_eq!(
        svid.id.to_string(),
        "spiffe://alpha-mesh.local/ns/shop/sa/echo"
    );
    cp.task.abort();
}

#[tokio::test]
async fn first_certificates_need_a_credential_and_name_the_workloads_service_account() {
    let cp = Cp::start(ca(), "127.0.9.10:0".parse().unwrap()).await;
    let svid = cp.client("shop", "echo-1").certify(None).await.unwrap();
    assert_eq!(
        svid.id.to_string(),
        "spiffe://alpha-mesh.local/ns/shop/sa/echo"
    );
    assert!(svid.not_after > SystemTime::now() + Duration::from_secs(3600));

    let wrong = Client::new(
        cp.boot("ffffffffffffffffffffffffffffffff"),
        "shop",
        "echo-1",
    )
    .unwrap();
    let e = wrong.certify(None).await.unwrap_err();
    assert_eq!(e.reason, "NotEnrolled", "{e}");

    let e = cp.client("shop", "nope").certify(None).await.unwrap_err();
    assert_eq!(e.reason, "UnknownWorkload", "{e}");
    assert!(e.detail.contains("nope"), "{e}");

    // A CSR that is not one, and one for another identity, are refused.
    let echo = cp.credential("shop", "echo-1");
    let mut raw = cp.client("shop", "echo-1").raw(None).await.unwrap();
    let bad = raw
        .certify(pb::CertifyRequest {
            namespace: "shop".into(),
            workload: "echo-1".into(),
            csr_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
            token: echo.clone(),
        })
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("InvalidCsr: "), "{bad:?}");
    let other: SpiffeId = "spiffe://alpha-mesh.local/ns/web/sa/ui".parse().unwrap();
    let (_, csr) = meshfed_trust::ca::workload_csr(&other).unwrap();
    let bad = raw
        .certify(pb::CertifyRequest {
            namespace: "shop".into(),
            workload: "echo-1".into(),
            csr_der: csr.to_vec(),
            token: echo.clone(),
        })
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("InvalidCsr: "), "{bad:?}");
    let st = cp.status();
    assert_eq!(
        (st.certificates_issued, st.certificates_refused),
        (1, 4),
        "{st:?}"
    );
    cp.task.abort();
}

#[tokio::test]
async fn a_workload_renews_and_subscribes_only_as_itself() {
    let cp = Cp::start(ca(), "127.0.9.11:0".parse().unwrap()).await;
    let echo = cp.client("shop", "echo-1");
    let echo_svid = resolver(&echo).await;
    // Renewal over mTLS needs no token and keeps the identity.
    let renewed = echo.certify(Some(&echo_svid)).await.unwrap();
    assert_eq!(
        renewed.id.to_string(),
        "spiffe://alpha-mesh.local/ns/shop/sa/echo"
    );
    // echo's certificate cannot obtain ui's, nor subscribe as ui.
    let ui = cp.client("web", "ui-1");
    let e = ui.certify(Some(&echo_svid)).await.unwrap_err();
    assert_eq!(e.reason, "IdentityMismatch", "{e}");
    let (updates, _rx) = mpsc::channel::<Update>(1);
    let (state, mut watch_state) = watch::channel(ClientState::default());
    let sub = tokio::spawn({
        let ui = ui.clone();
        async move { ui.subscribe(echo_svid, updates, state).await }
    });
    let refused = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            watch_state.changed().await.unwrap();
            if let Some(e) = watch_state.borrow().last_error.clone() {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert!(refused.starts_with("IdentityMismatch: "), "{refused}");
    sub.abort();
    // Without a certificate there is no stream at all.
    let mut raw = ui.raw(None).await.unwrap();
    let (_tx, rx) = mpsc::channel::<ProxyMessage>(1);
    let e = raw
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert!(e.message().starts_with("NoIdentity: "), "{e:?}");
    // A workload of another mesh (another CA) is refused at the handshake.
    let beta =
        CertificateAuthority::new("beta-mesh.local".parse().unwrap(), SystemTime::now()).unwrap();
    let foreign = beta
        .issue(
            &"spiffe://beta-mesh.local/ns/shop/sa/echo".parse().unwrap(),
            DEFAULT_SVID_TTL,
            SystemTime::now(),
        )
        .unwrap();
    let foreign = Arc::new(SvidResolver::new(&foreign, verify::provider()).unwrap());
    let outcome = match echo.raw(Some(&foreign)).await {
        Err(e) => Err(e),
        Ok(mut c) => c
            .certify(pb::CertifyRequest {
                namespace: "shop".into(),
                workload: "echo-1".into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|s| ClientError {
                reason: "Refused".into(),
                detail: s.to_string(),
            }),
    };
    assert!(
        outcome.is_err(),
        "a foreign workload reached the control plane"
    );
    assert_eq!(cp.status().certificates_issued, 2);
    cp.task.abort();
}

/// Runs a subscription whose apply step answers with `verdict(version)`; returns the applied
/// versions, the state, and the task.
fn subscribe(
    client: &Client,
    svid: Arc<SvidResolver>,
    verdict: fn(&str) -> Result<(), String>,
) -> (
    Arc<Mutex<Vec<u64>>>,
    watch::Receiver<ClientState>,
    tokio::task::JoinHandle<()>,
) {
    let (updates, mut rx) = mpsc::channel::<Update>(1);
    let (state, state_rx) = watch::channel(ClientState::default());
    let applied = Arc::new(Mutex::new(Vec::new()));
    let log = applied.clone();
    let client = client.clone();
    let task = tokio::spawn(async move {
        let consumer = async move {
            while let Some(u) = rx.recv().await {
                let r = verdict(&u.received.mesh.mesh_json);
                if r.is_ok() {
                    log.lock().unwrap().push(u.received.version);
                }
                let _ = u
                    .done
                    .send(r.map_err(meshfed_control::client::SnapshotRefused::apply_failed));
            }
        };
        tokio::join!(client.subscribe(svid, updates, state), consumer);
    });
    (applied, state_rx, task)
}

async fn until(
    state: &mut watch::Receiver<ClientState>,
    f: impl Fn(&ClientState) -> bool,
) -> ClientState {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if f(&state.borrow_and_update()) {
                return state.borrow().clone();
            }
            state.changed().await.unwrap();
        }
    })
    .await
    .expect("state reached in time")
}

#[tokio::test]
async fn snapshots_are_acked_refused_ones_nacked_and_the_last_good_one_stays() {
    let cp = Cp::start(ca(), "127.0.9.12:0".parse().unwrap()).await;
    let client = cp.client("shop", "echo-1");
    let svid = resolver(&client).await;
    // The proxy refuses any configuration that mentions a service called `refuse-me`.
    let (applied, mut state, task) = subscribe(&client, svid, |json| {
        if json.contains("refuse-me") {
            Err("refused by the proxy".into())
        } else {
            Ok(())
        }
    });
    let v1 = cp.tx.borrow().version;
    until(&mut state, |s| s.running == Some(v1)).await;

    let v2 = cp.publish("  traffic:\n  - {service: echo, namespace: shop, timeout: 2s}\n");
    until(&mut state, |s| s.running == Some(v2)).await;

    // A snapshot that does not validate (unknown field) is NACKed with the field's path and
    // never reaches the proxy.
    let mut bad = (**cp.tx.borrow()).clone();
    bad.version = v2 + 1;
    bad.mesh_json = bad
        .mesh_json
        .replacen("\"spec\":{", "\"spec\":{\"bogus\":1,", 1)
        .into();
    assert!(bad.mesh_json.contains("bogus"));
    cp.tx.send_replace(Arc::new(bad));
    let s = until(&mut state, |s| {
        s.nacked.as_ref().is_some_and(|n| n.0 == v2 + 1)
    })
    .await;
    assert!(s.nacked.as_ref().unwrap().1.contains("spec.bogus"), "{s:?}");
    assert_eq!(s.running, Some(v2));

    // A snapshot the proxy itself refuses is NACKed with its reason.
    let refused = {
        let prev = cp.tx.borrow().clone();
        let text = mesh_yaml("")
            .replace(
                "name: ui, namespace: web, ports",
                "name: refuse-me, namespace: web, ports",
            )
            .replace("service: ui,", "service: refuse-me,");
        next_snapshot(
            Some(&prev),
            "mesh.yaml",
            &text,
            &Cp::td(),
            Cp::bundles(&cp.ca),
        )
        .unwrap()
        .unwrap()
    };
    let vr = refused.version;
    cp.tx.send_replace(Arc::new(refused));
    let s = until(&mut state, |s| s.nacked.as_ref().is_some_and(|n| n.0 == vr)).await;
    assert_eq!(s.nacked.unwrap().1, "refused by the proxy");
    // The control plane's status shows both the ACKs and the newest NACK.
    let st = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let st = cp.status();
            if st
                .proxies
                .get("shop/echo-1")
                .and_then(|p| p.nacked.as_ref())
                .is_some_and(|n| n.version == vr)
            {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let p = &st.proxies["shop/echo-1"];
    assert!(p.connected);
    assert_eq!(p.nacked.as_ref().unwrap().reason, "refused by the proxy");
    assert!(p.acked.unwrap() >= v2, "{p:?}");
    assert!(!applied.lock().unwrap().contains(&vr));
    assert!(!applied.lock().unwrap().contains(&(v2 + 1)));
    task.abort();
    cp.task.abort();
}

#[tokio::test]
async fn a_client_outlives_its_control_plane_and_rejoins_a_restarted_one() {
    let ca = ca();
    let cp = Cp::start(ca.clone(), "127.0.9.13:0".parse().unwrap()).await;
    let addr = cp.addr;
    let client = cp.client("web", "ui-1");
    let svid = resolver(&client).await;
    let (applied, mut state, task) = subscribe(&client, svid, |_| Ok(()));
    let v1 = cp.tx.borrow().version;
    until(&mut state, |s| s.running == Some(v1) && s.connected).await;

    // The control plane goes away (its task and every connection with it).
    cp.task.abort();
    drop(cp);
    let s = until(&mut state, |s| !s.connected).await;
    assert_eq!(s.running, Some(v1), "the last good version stays");

    // A new control plane on the same address, same CA, same mesh: the client rejoins with
    // the SVID it holds; the content is unchanged, so it is ACKed without being re-applied.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cp = Cp::start(ca, addr).await;
    let v2 = cp.tx.borrow().version;
    assert!(v2 > v1, "a restarted control plane never reuses a version");
    until(&mut state, |s| s.running == Some(v2) && s.connected).await;
    assert_eq!(*applied.lock().unwrap(), vec![v1]);
    assert_eq!(cp.status().certificates_issued, 0);
    // And its next change is applied.
    let v3 = cp.publish("  traffic:\n  - {service: echo, namespace: shop, timeout: 2s}\n");
    until(&mut state, |s| s.running == Some(v3)).await;
    assert_eq!(*applied.lock().unwrap(), vec![v1, v3]);
    task.abort();
    cp.task.abort();
}

/// A root rotation: the new root reaches the proxy in a snapshot (both roots trusted) while
/// certificates still come from the old one; once the control plane signs with the new root
/// and says so, the proxy renews by itself and keeps its subscription.
#[tokio::test]
async fn after_a_root_rotation_the_proxy_trusts_the_new_root_then_renews_from_it() {
    let dir = std::env::temp_dir().join(format!("meshfed-rotation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    CertificateAuthority::new(Cp::td(), SystemTime::now())
        .unwrap()
        .save(&dir)
        .unwrap();
    let cp = Cp::start(
        Arc::new(CertificateAuthority::load(&dir).unwrap()),
        "127.0.9.14:0".parse().unwrap(),
    )
    .await;
    let old_root = cp.ca.signing_root();
    let echo = cp.client("shop", "echo-1");
    let svid = echo.certify(None).await.unwrap();
    assert_eq!(echo.certificate_root(), old_root);
    let resolver = Arc::new(SvidResolver::new(&svid, verify::provider()).unwrap());
    let (state, mut watch_state) = watch::channel(ClientState::default());
    let (updates, mut applied) = mpsc::channel::<Update>(4);
    tokio::spawn({
        let (echo, r) = (echo.clone(), resolver.clone());
        async move { echo.subscribe(r, updates, state).await }
    });
    tokio::spawn({
        let (echo, r) = (echo.clone(), resolver.clone());
        async move { echo.renew_forever(r, svid).await }
    });
    // Every update is applied; the test keeps the trust it brought.
    let (roots_tx, mut roots) = watch::channel(0usize);
    tokio::spawn(async move {
        while let Some(u) = applied.recv().await {
            let n = u
                .received
                .bundles
                .get(&Cp::td())
                .map_or(0, |b| b.roots().len());
            roots_tx.send_replace(n);
            let _ = u.done.send(Ok(()));
        }
    });
    until(&mut watch_state, |s| s.running.is_some()).await;

    let mut rotated = CertificateAuthority::load(&dir).unwrap();
    rotated.rotate(SystemTime::now()).unwrap();
    rotated.save(&dir).unwrap();
    assert_eq!(
        cp.ca
            .take(CertificateAuthority::load(&dir).unwrap())
            .unwrap(),
        meshfed_control::rotation::Change::NewRoot
    );
    let v = cp.publish("");
    until(&mut watch_state, |s| s.running == Some(v)).await;
    assert_eq!(*roots.borrow_and_update(), 2, "both roots trusted");
    assert_eq!(
        echo.certificate_root(),
        old_root,
        "nothing renews while the new root is only trusted"
    );

    assert!(cp.ca.promote());
    let new_root = cp.ca.signing_root();
    let v = cp.publish("");
    until(&mut watch_state, |s| s.running == Some(v)).await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while echo.certificate_root() != new_root {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the proxy renews from the new root");
    assert!(cp.status().certificates_issued >= 2);
    // The renewed certificate works on a new connection: the control plane trusts the new
    // root too.
    let (state, mut second) = watch::channel(ClientState::default());
    let (updates, mut applied) = mpsc::channel::<Update>(4);
    tokio::spawn(async move { echo.subscribe(resolver, updates, state).await });
    tokio::spawn(async move {
        while let Some(u) = applied.recv().await {
            let _ = u.done.send(Ok(()));
        }
    });
    until(&mut second, |s| s.running.is_some()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
