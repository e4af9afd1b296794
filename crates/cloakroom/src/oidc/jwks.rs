//! The IdP's signing keys (JWKS) and their re-fetch budgets.

use super::idp_call;
use openidconnect::core::CoreJsonWebKeySet;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The IdP's signing keys, in both forms we verify with, re-fetched (at most once per
/// [`JWKS_REFETCH_INTERVAL`]) when a token names a key we don't know.
pub(super) struct Jwks {
    uri: Url,
    http: reqwest::Client,
    current: std::sync::RwLock<Arc<KeySet>>,
    /// Last re-fetch for a token that came from the IdP's token endpoint.
    last_refetch: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Last re-fetch for a token anyone could have sent (back-channel logout): its own, smaller
    /// budget, so random `kid`s cannot keep the refetch window busy for real ID tokens.
    last_anonymous_refetch: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// Who asks for a JWKS re-fetch, and so which budget it spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Budget {
    /// A token from the IdP's own token endpoint.
    Idp,
    /// A token an unauthenticated caller posted.
    Anonymous,
}

pub(super) struct KeySet {
    pub(super) oidc: CoreJsonWebKeySet,
    pub(super) jwt: Vec<jsonwebtoken::jwk::Jwk>,
}

/// Minimum time between two JWKS re-fetches triggered by unknown key ids.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// The same for tokens from unauthenticated callers (back-channel logout).
pub const JWKS_ANONYMOUS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

impl KeySet {
    fn from_oidc(oidc: CoreJsonWebKeySet) -> Self {
        let jwt = serde_json::to_value(&oidc)
            .ok()
            .and_then(|v| v.get("keys").and_then(|k| k.as_array()).cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|k| serde_json::from_value(k).ok())
            .collect();
        Self { oidc, jwt }
    }
}

impl Jwks {
    pub(super) fn new(uri: Url, http: reqwest::Client, keys: CoreJsonWebKeySet) -> Self {
        Self {
            uri,
            http,
            current: std::sync::RwLock::new(Arc::new(KeySet::from_oidc(keys))),
            last_refetch: tokio::sync::Mutex::new(None),
            last_anonymous_refetch: tokio::sync::Mutex::new(None),
        }
    }

    pub(super) fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-fetches the JWKS unless `budget`'s last one was within its interval. True if keys
    /// other than `seen` (the set the caller failed with) are now current — fetched now, or
    /// by another task meanwhile — so the caller tries once more.
    pub(super) async fn refetch(&self, seen: &Arc<KeySet>, budget: Budget) -> bool {
        let (mut last, interval) = match budget {
            Budget::Idp => (self.last_refetch.lock().await, JWKS_REFETCH_INTERVAL),
            Budget::Anonymous => (
                self.last_anonymous_refetch.lock().await,
                JWKS_ANONYMOUS_REFETCH_INTERVAL,
            ),
        };
        if !Arc::ptr_eq(&self.current(), seen) {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < interval) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        crate::metrics::jwks_refetch();
        let fetched = async {
            let req = http::Request::get(self.uri.as_str())
                .body(Vec::new())
                .ok()?;
            let resp = idp_call(self.http.clone(), req).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            serde_json::from_slice::<CoreJsonWebKeySet>(resp.body()).ok()
        }
        .await;
        match fetched {
            Some(keys) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Arc::new(KeySet::from_oidc(keys));
                tracing::info!("JWKS re-fetched after an unknown key id");
                true
            }
            None => {
                tracing::warn!("JWKS re-fetch failed");
                false
            }
        }
    }
}
