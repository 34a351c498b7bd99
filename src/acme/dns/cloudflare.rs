//! `provider: cloudflare`: TXT records through the Cloudflare v4 API with
//! an API token. The token needs Zone:Read (to find the zone of a name:
//! `GET /zones?name=`) and DNS:Edit (to add and delete records) on the
//! zones drowsy issues for. Each value is its own record and only records
//! drowsy created (by id) are deleted.

use crate::acme::problem::Failure;
use crate::config::Secret;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const SCOPES_HINT: &str =
    "the API token needs Zone:Read and DNS:Edit (Zone → DNS → Edit) on this zone";

pub struct Cloudflare {
    http: reqwest::Client,
    api: String,
    token: Secret,
    /// Zone ids by name (`None`: not a zone), each name asked once.
    zones: Mutex<HashMap<String, Option<String>>>,
}

#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiError>,
    result: Option<T>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Zone {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

impl Cloudflare {
    pub fn new(api: &str, token: Secret) -> Result<Cloudflare, String> {
        let tls = crate::tls_trust::client_config(None, false)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Cloudflare {
            http,
            api: api.trim_end_matches('/').to_string(),
            token,
            zones: Mutex::new(HashMap::new()),
        })
    }

    /// Adds a TXT record; returns (zone id, record id).
    pub async fn add(
        &self,
        fqdn: &str,
        value: &str,
        ttl: u32,
    ) -> Result<(String, String), Failure> {
        let zone = self.zone_of(fqdn).await?;
        // Cloudflare's minimum TTL is 60 (1 means "automatic").
        let body = serde_json::json!({
            "type": "TXT",
            "name": fqdn,
            "content": value,
            "ttl": ttl.max(60),
        });
        let url = format!("{}/zones/{zone}/dns_records", self.api);
        let created: Created = self
            .call(
                self.http.post(&url).json(&body),
                &format!("adding TXT {fqdn}"),
            )
            .await?;
        Ok((zone, created.id))
    }

    pub async fn delete(&self, zone: &str, id: &str) -> Result<(), Failure> {
        let url = format!("{}/zones/{zone}/dns_records/{id}", self.api);
        self.call::<serde_json::Value>(self.http.delete(&url), "deleting a TXT record")
            .await
            .map(|_| ())
    }

    /// The zone holding `fqdn`: the longest parent name Cloudflare knows
    /// (so a delegated sub-zone wins over its parent).
    async fn zone_of(&self, fqdn: &str) -> Result<String, Failure> {
        for name in super::zone_candidates(fqdn) {
            let known = self.lock_zones().get(&name).cloned();
            let id = match known {
                Some(id) => id,
                None => {
                    let id = self.lookup(&name).await?;
                    self.lock_zones().insert(name, id.clone());
                    id
                }
            };
            if let Some(id) = id {
                return Ok(id);
            }
        }
        Err(Failure::new(
            "dns-provider",
            format!("Cloudflare has no zone for {fqdn} that this token can see"),
            SCOPES_HINT,
        ))
    }

    async fn lookup(&self, name: &str) -> Result<Option<String>, Failure> {
        let mut url = reqwest::Url::parse(&format!("{}/zones", self.api))
            .map_err(|e| Failure::new("dns-provider", e.to_string(), "check dns.api_url"))?;
        url.query_pairs_mut().append_pair("name", name);
        let zones: Vec<Zone> = self.call(self.http.get(url), "looking up the zone").await?;
        Ok(zones
            .into_iter()
            .find(|z| z.name.eq_ignore_ascii_case(name))
            .map(|z| z.id))
    }

    fn lock_zones(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<String>>> {
        self.zones.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, Failure> {
        let fail = |detail: String, hint: &str| {
            Failure::new(
                "dns-provider",
                format!("Cloudflare API, {what}: {detail}"),
                hint,
            )
        };
        let resp = req
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| {
                fail(
                    e.without_url().to_string(),
                    "check that drowsy can reach api.cloudflare.com",
                )
            })?;
        let status = resp.status();
        let env: Envelope<T> = resp.json().await.map_err(|e| {
            fail(
                format!("HTTP {status}, unreadable answer: {e}"),
                "see the detail",
            )
        })?;
        if env.success {
            if let Some(r) = env.result {
                return Ok(r);
            }
        }
        let errors: Vec<String> = env
            .errors
            .iter()
            .map(|e| format!("{} ({})", e.message, e.code))
            .collect();
        let hint = if matches!(status.as_u16(), 401 | 403) {
            SCOPES_HINT
        } else {
            "see the detail"
        };
        Err(fail(format!("HTTP {status}: {}", errors.join("; ")), hint))
    }
}
