//! The HTTP client under the ACME client: rustls with ring, trusting the
//! public roots or `acme.ca_file`, a deadline on every exchange, bounded
//! bodies, and the `Retry-After` of error answers kept for the back-off
//! (the ACME client's problem type does not carry it).

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// Certificate chains and problem documents are a few KiB.
const MAX_BODY: usize = 1 << 20;

tokio::task_local! {
    /// The latest `Retry-After` seen by requests made inside [`track`].
    static RETRY_AFTER_SEEN: Cell<Option<SystemTime>>;
}

/// Runs `f` and returns what it returned with the latest `Retry-After`
/// of an error answer it received. Task-local, so orders running side by
/// side keep theirs apart.
pub async fn track<F: Future>(f: F) -> (F::Output, Option<SystemTime>) {
    RETRY_AFTER_SEEN
        .scope(Cell::new(None), async move {
            let out = f.await;
            (out, RETRY_AFTER_SEEN.with(Cell::get))
        })
        .await
}

pub struct AcmeHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

impl AcmeHttp {
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<AcmeHttp, String> {
        let tls = crate::tls_trust::client_config(ca_file, false)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let fut = self.client.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            let exchange = async {
                let resp = fut.await.map_err(|e| Error::Other(Box::new(e)))?;
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, MAX_BODY)
                    .collect()
                    .await
                    .map_err(Error::Other)?
                    .to_bytes();
                Ok::<_, Error>((parts, body))
            };
            let (parts, body) = tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| {
                    Error::Other(format!("no answer within {}s", timeout.as_secs()).into())
                })??;
            if !parts.status.is_success() {
                if let Some(at) = retry_after(&parts.headers, SystemTime::now()) {
                    let _ = RETRY_AFTER_SEEN.try_with(|c| c.set(Some(at)));
                }
            }
            Ok(BytesResponse::from(http::Response::from_parts(
                parts,
                Full::new(body),
            )))
        })
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return now.checked_add(Duration::from_secs(secs));
    }
    httpdate::HttpDate::from_str(value)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h, now), Some(now + Duration::from_secs(120)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 09 Sep 2001 01:56:40 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(now + Duration::from_secs(600)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[tokio::test]
    async fn tracked_retry_after_stays_with_its_task() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let (_, seen) = track(async {
            RETRY_AFTER_SEEN.with(|c| c.set(Some(at)));
        })
        .await;
        assert_eq!(seen, Some(at));
        let (_, seen) = track(async {}).await;
        assert_eq!(seen, None);
    }
}
