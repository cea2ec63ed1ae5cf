//! The trust store in the cluster: peer bundles in the ConfigMap `meshfed-peer-bundles` (one
//! key per trust domain, `<td>.json`, the SPIFFE bundle document — public material) and the
//! token ledger in the Secret `meshfed-peering-tokens` (`pending-tokens.json`: hashes of the
//! secrets this mesh issued; `accepted-tokens.json`: ids of the tokens it accepted), both in
//! the control-plane namespace. The CA Secret stays mounted read-only, every replica sees the
//! same records, and they survive restarts.
//!
//! Every write is a compare-and-swap on the object's `resourceVersion` (create when absent):
//! when two replicas race, one write wins and the other re-reads and re-runs its change — so a
//! token secret is spent exactly once, and a bundle never goes back to a lower sequence.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use meshfed_core::TrustDomain;
use meshfed_trust::TrustBundle;
use meshfed_trust::bundle::Applied;
use meshfed_trust::store::{BoxFuture, LedgerChange, StoreError, TrustStore, check_peer_bundle};
use meshfed_trust::token::{LEDGER_FILES, Ledger};

/// The ConfigMap of peer bundles.
pub const BUNDLES_CONFIGMAP: &str = "meshfed-peer-bundles";
/// The Secret of the token ledger.
pub const LEDGER_SECRET: &str = "meshfed-peering-tokens";
/// How often a write is retried when another writer got there first.
const TRIES: u32 = 8;

/// The store in a namespace.
#[derive(Clone)]
pub struct KubeTrustStore {
    client: kube::Client,
    namespace: String,
    own: TrustDomain,
}

impl std::fmt::Debug for KubeTrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTrustStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The ConfigMap key of a trust domain's bundle.
pub fn bundle_key(td: &str) -> String {
    format!("{td}.json")
}

/// The bundles a `meshfed-peer-bundles` ConfigMap holds, and an error for each entry that
/// does not parse (named by its key).
pub fn parse_bundles(data: &BTreeMap<String, String>) -> (Vec<TrustBundle>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (key, text) in data {
        let parsed = key
            .strip_suffix(".json")
            .ok_or_else(|| "the key is not <trust-domain>.json".to_owned())
            .and_then(|td| td.parse().map_err(|e| format!("{e}")))
            .and_then(|td| {
                TrustBundle::from_json(td, text)
                    .map(|(b, _)| b)
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok(b) => out.push(b),
            Err(e) => problems.push(format!("ConfigMap {BUNDLES_CONFIGMAP}: data.{key}: {e}")),
        }
    }
    (out, problems)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/part-of".to_owned(),
            "meshfed".to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}

impl KubeTrustStore {
    /// The store in `namespace` of the mesh whose trust domain is `own`.
    pub fn new(client: kube::Client, namespace: impl Into<String>, own: TrustDomain) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            own,
        }
    }

    fn at(&self, kind: &str, name: &str) -> String {
        format!("{kind} {}/{name}", self.namespace)
    }

    fn io(&self, kind: &str, name: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            at: self.at(kind, name),
            detail: e.to_string(),
        }
    }

    async fn get<K>(&self, name: &str) -> Result<Option<K>, StoreError>
    where
        K: Stored,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get_opt(name)
            .await
            .map_err(|e| self.io(&K::kind(&()), name, e))
    }

    /// Reads `name`, lets `edit` decide what to write, and writes it with the resourceVersion
    /// read (creates it when absent); when another writer got there first, reads again and
    /// re-runs `edit`, up to [`TRIES`] times.
    async fn compare_and_swap<K, T>(
        &self,
        name: &str,
        mut edit: impl FnMut(Option<K>) -> Result<Step<K, T>, StoreError>,
    ) -> Result<T, StoreError>
    where
        K: Stored,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let kind = K::kind(&()).into_owned();
        for _ in 0..TRIES {
            let current = self.get::<K>(name).await?;
            let existed = current.is_some();
            let (object, out) = match edit(current)? {
                Step::Keep(out) => return Ok(out),
                Step::Write(object, out) => (object, out),
            };
            let result = if existed {
                api.replace(name, &PostParams::default(), &object).await
            } else {
                api.create(&PostParams::default(), &object).await
            };
            match result {
                Ok(_) => return Ok(out),
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(self.io(&kind, name, e)),
            }
        }
        Err(StoreError::Contended {
            at: self.at(&kind, name),
            tries: TRIES,
        })
    }

    fn bundles_of(&self, cm: Option<&ConfigMap>) -> Result<Vec<TrustBundle>, StoreError> {
        let empty = BTreeMap::new();
        let data = cm.and_then(|c| c.data.as_ref()).unwrap_or(&empty);
        let (bundles, problems) = parse_bundles(data);
        match problems.into_iter().next() {
            Some(p) => Err(StoreError::Io {
                at: self.at("ConfigMap", BUNDLES_CONFIGMAP),
                detail: p,
            }),
            None => Ok(bundles),
        }
    }

    async fn save(&self, bundle: &TrustBundle) -> Result<Applied, StoreError> {
        if bundle.trust_domain() == &self.own {
            return Err(StoreError::OwnDomain(self.own.to_string()));
        }
        let key = bundle_key(bundle.trust_domain().as_str());
        let body = bundle.to_json().to_string();
        self.compare_and_swap(BUNDLES_CONFIGMAP, |current: Option<ConfigMap>| {
            // An entry that does not parse is replaced by a good one; the others must parse.
            let mut others = current
                .as_ref()
                .and_then(|c| c.data.clone())
                .unwrap_or_default();
            let stored_text = others.remove(&key);
            let (mut stored, _) = parse_bundles(&others);
            if let Some(t) = &stored_text
                && let Ok((b, _)) = TrustBundle::from_json(bundle.trust_domain().clone(), t)
            {
                stored.push(b);
            }
            let applied =
                check_peer_bundle(&stored, bundle).map_err(|source| StoreError::Bundle {
                    at: format!("{}: data.{key}", self.at("ConfigMap", BUNDLES_CONFIGMAP)),
                    source,
                })?;
            if applied == Applied::Unchanged && stored.iter().any(|b| b == bundle) {
                return Ok(Step::Keep(applied));
            }
            let mut cm = current.unwrap_or_else(|| ConfigMap {
                metadata: meta(BUNDLES_CONFIGMAP),
                ..ConfigMap::default()
            });
            cm.data
                .get_or_insert_default()
                .insert(key.clone(), body.clone());
            Ok(Step::Write(cm, applied))
        })
        .await
    }

    /// The ledger a Secret holds (none: empty).
    fn ledger_of(&self, secret: Option<&Secret>) -> Result<Ledger, StoreError> {
        let data = secret.and_then(|s| s.data.as_ref());
        let field = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.as_slice());
        Ok(Ledger::from_json(
            field(LEDGER_FILES.0),
            field(LEDGER_FILES.1),
            &format!("{}: data.", self.at("Secret", LEDGER_SECRET)),
        )?)
    }

    async fn change(&self, change: LedgerChange<'_>) -> Result<(), StoreError> {
        self.compare_and_swap(LEDGER_SECRET, |current: Option<Secret>| {
            let before = self.ledger_of(current.as_ref())?;
            let mut after = before.clone();
            change(&mut after)?;
            if after == before {
                return Ok(Step::Keep(()));
            }
            let (pending, accepted) = after.to_json();
            let mut secret = current.unwrap_or_else(|| Secret {
                metadata: meta(LEDGER_SECRET),
                ..Secret::default()
            });
            secret.string_data = None;
            secret.data = Some(BTreeMap::from([
                (LEDGER_FILES.0.to_owned(), ByteString(pending)),
                (LEDGER_FILES.1.to_owned(), ByteString(accepted)),
            ]));
            Ok(Step::Write(secret, ()))
        })
        .await
    }
}

/// What a compare-and-swap edit decided.
enum Step<K, T> {
    /// Nothing to write; the result is `T`.
    Keep(T),
    /// Write `K`; the result is `T` once written.
    Write(K, T),
}

/// The objects the store keeps (a ConfigMap and a Secret).
trait Stored:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
{
}

impl Stored for ConfigMap {}
impl Stored for Secret {}

impl TrustStore for KubeTrustStore {
    fn location(&self) -> String {
        format!(
            "{} and {}",
            self.at("ConfigMap", BUNDLES_CONFIGMAP),
            self.at("Secret", LEDGER_SECRET)
        )
    }

    fn peer_bundles(&self) -> BoxFuture<'_, Result<Vec<TrustBundle>, StoreError>> {
        Box::pin(async move {
            let cm = self.get::<ConfigMap>(BUNDLES_CONFIGMAP).await?;
            self.bundles_of(cm.as_ref())
        })
    }

    fn save_peer_bundle<'a>(
        &'a self,
        bundle: &'a TrustBundle,
    ) -> BoxFuture<'a, Result<Applied, StoreError>> {
        Box::pin(self.save(bundle))
    }

    fn ledger(&self) -> BoxFuture<'_, Result<Ledger, StoreError>> {
        Box::pin(async move {
            let secret = self.get::<Secret>(LEDGER_SECRET).await?;
            self.ledger_of(secret.as_ref())
        })
    }

    fn update_ledger<'a>(
        &'a self,
        change: LedgerChange<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.change(change))
    }
}
