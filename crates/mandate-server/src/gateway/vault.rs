//! Reading upstream credentials from HashiCorp Vault / OpenBao KV v2 over its HTTP API.
//! A value read for a task is cached for that task only, and never past its end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mandate_gateway::config::VaultConfig;
use mandate_gateway::{SecretValue, VaultRef};

/// Most cached values; beyond, expired ones are dropped, then the cache is emptied.
const MAX_CACHED: usize = 10_000;

/// A Vault server and the token Mandate reads it with.
pub struct Vault {
    address: url::Url,
    token: SecretValue,
    client: reqwest::Client,
    /// `(task id, reference)` → (the task's end, value).
    cache: Mutex<HashMap<(String, VaultRef), (i64, SecretValue)>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("address", &self.address.as_str())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Connects lazily to the configured server; the token comes from `token_file`, or
    /// from `env_token` (`VAULT_TOKEN`).
    pub fn new(cfg: &VaultConfig, env_token: Option<SecretValue>) -> Result<Self, String> {
        let address = url::Url::parse(&cfg.address)
            .map_err(|e| format!("vault address {:?}: {e}", cfg.address))?;
        if !matches!(address.scheme(), "http" | "https") {
            return Err("vault address must be http(s)".into());
        }
        crate::edge::upstream::check_literal(&address, cfg.allow_private)?;
        let token = match &cfg.token_file {
            Some(f) => SecretValue::new(
                zeroize::Zeroizing::new(
                    std::fs::read_to_string(f)
                        .map_err(|e| format!("cannot read vault token file {f}: {e}"))?,
                )
                .trim()
                .as_bytes()
                .to_vec(),
            ),
            None => env_token.ok_or("no vault token: set token_file in [vault] or VAULT_TOKEN")?,
        };
        if token.expose().len() < mandate_gateway::redact::MIN_SECRET_LEN {
            return Err("the vault token is empty or too short to redact reliably".into());
        }
        Ok(Self {
            address,
            token,
            client: crate::edge::upstream::client(
                cfg.allow_private,
                Duration::from_secs(5),
                Duration::from_secs(10),
            )?,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The token Mandate uses, so responses that echo it are redacted too.
    pub fn token(&self) -> &SecretValue {
        &self.token
    }

    /// The value of `r` for a task ending at `task_end_ms`.
    pub async fn read(
        &self,
        r: &VaultRef,
        task_id: &str,
        task_end_ms: i64,
        now_ms: i64,
    ) -> Result<SecretValue, String> {
        let key = (task_id.to_owned(), r.clone());
        {
            let mut cache = mandate_engine::engine::lock(&self.cache);
            if let Some((end, v)) = cache.get(&key)
                && *end > now_ms
            {
                return Ok(v.clone());
            }
            cache.retain(|_, (end, _)| *end > now_ms);
        }
        // Keep a path prefix of the address (a Vault behind a reverse proxy).
        let mut url = self.address.clone();
        url.set_path(&format!(
            "{}{}",
            self.address.path().trim_end_matches('/'),
            r.api_path()
        ));
        let token =
            std::str::from_utf8(self.token.expose()).map_err(|_| "vault token is not UTF-8")?;
        let res = self
            .client
            .get(url)
            .header("X-Vault-Token", token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("vault unreachable: {}", without_url(&e)))?;
        let status = res.status();
        if !status.is_success() {
            return Err(format!("vault answered {status} for {r}"));
        }
        let body: serde_json::Value = res
            .json()
            .await
            .map_err(|_| format!("vault answer for {r} is not JSON"))?;
        let value = body
            .pointer("/data/data")
            .and_then(|d| d.get(&r.field))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("{r}: no string field {:?}", r.field))?;
        let v = SecretValue::new(value.as_bytes().to_vec());
        let mut cache = mandate_engine::engine::lock(&self.cache);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (task_end_ms, v.clone()));
        Ok(v)
    }

    /// Forgets every value cached for a task that has ended, and every expired one.
    pub fn forget_task(&self, task_id: &str) {
        mandate_engine::engine::lock(&self.cache).retain(|(t, _), _| t != task_id);
    }

    /// Drops the values of tasks that are no longer live (called by the gateway's sweep).
    pub fn retain_live(&self, live: impl Fn(&str) -> bool, now_ms: i64) {
        mandate_engine::engine::lock(&self.cache)
            .retain(|(t, _), (end, _)| *end > now_ms && live(t));
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<vault>");
    }
    s
}
