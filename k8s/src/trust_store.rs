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

    async fn bundles_map(&self) -> Result<Option<ConfigMap>, StoreError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get_opt(BUNDLES_CONFIGMAP)
            .await
            .map_err(|e| self.io("ConfigMap", BUNDLES_CONFIGMAP, e))
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
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let key = bundle_key(bundle.trust_domain().as_str());
        let body = bundle.to_json().to_string();
        for _ in 0..TRIES {
            let current = self.bundles_map().await?;
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
                return Ok(applied);
            }
            let result = match current {
                Some(mut cm) => {
                    cm.data
                        .get_or_insert_default()
                        .insert(key.clone(), body.clone());
                    api.replace(BUNDLES_CONFIGMAP, &PostParams::default(), &cm)
                        .await
                }
                None => {
                    let cm = ConfigMap {
                        metadata: meta(BUNDLES_CONFIGMAP),
                        data: Some(BTreeMap::from([(key.clone(), body.clone())])),
                        ..ConfigMap::default()
                    };
                    api.create(&PostParams::default(), &cm).await
                }
            };
            match result {
                Ok(_) => return Ok(applied),
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(self.io("ConfigMap", BUNDLES_CONFIGMAP, e)),
            }
        }
        Err(StoreError::Contended {
            at: self.at("ConfigMap", BUNDLES_CONFIGMAP),
            tries: TRIES,
        })
    }

    async fn ledger_secret(&self) -> Result<(Option<Secret>, Ledger), StoreError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = api
            .get_opt(LEDGER_SECRET)
            .await
            .map_err(|e| self.io("Secret", LEDGER_SECRET, e))?;
        let data = secret.as_ref().and_then(|s| s.data.as_ref());
        let field = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.as_slice());
        let ledger = Ledger::from_json(
            field(LEDGER_FILES.0),
            field(LEDGER_FILES.1),
            &format!("{}: data.", self.at("Secret", LEDGER_SECRET)),
        )?;
        Ok((secret, ledger))
    }

    async fn change(&self, change: LedgerChange<'_>) -> Result<(), StoreError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for _ in 0..TRIES {
            let (current, before) = self.ledger_secret().await?;
            let mut after = before.clone();
            change(&mut after)?;
            if after == before {
                return Ok(());
            }
            let (pending, accepted) = after.to_json();
            let data = BTreeMap::from([
                (LEDGER_FILES.0.to_owned(), ByteString(pending)),
                (LEDGER_FILES.1.to_owned(), ByteString(accepted)),
            ]);
            let result = match current {
                Some(mut s) => {
                    s.data = Some(data);
                    s.string_data = None;
                    api.replace(LEDGER_SECRET, &PostParams::default(), &s).await
                }
                None => {
                    let s = Secret {
                        metadata: meta(LEDGER_SECRET),
                        data: Some(data),
                        ..Secret::default()
                    };
                    api.create(&PostParams::default(), &s).await
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(self.io("Secret", LEDGER_SECRET, e)),
            }
        }
        Err(StoreError::Contended {
            at: self.at("Secret", LEDGER_SECRET),
            tries: TRIES,
        })
    }
}

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
            let cm = self.bundles_map().await?;
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
        Box::pin(async move { Ok(self.ledger_secret().await?.1) })
    }

    fn update_ledger<'a>(
        &'a self,
        change: LedgerChange<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.change(change))
    }
}
