//! DNS-01 through the API providers, end to end with pebble: a Cloudflare
//! API look-alike and an RFC 2136 name server, both on real sockets in
//! this test, both writing the records they are given into challtestsrv
//! (pebble's DNS), and both recording exactly what drowsy sent them.

use super::*;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Mutex;

/// The TXT values a fake DNS service holds, mirrored into challtestsrv
/// (which can only append or clear a name: a delete clears the name and
/// writes back what is left).
struct Zone {
    cts: SocketAddr,
    records: Mutex<BTreeMap<String, (String, String)>>,
    next_id: Mutex<u32>,
}

impl Zone {
    fn new(cts: SocketAddr) -> Arc<Zone> {
        Arc::new(Zone {
            cts,
            records: Mutex::new(BTreeMap::new()),
            next_id: Mutex::new(0),
        })
    }

    async fn post(&self, path: &str, body: serde_json::Value) {
        reqwest::Client::new()
            .post(format!("http://{}{path}", self.cts))
            .json(&body)
            .send()
            .await
            .expect("challtestsrv");
    }

    async fn add(&self, name: &str, value: &str) -> String {
        let id = {
            let mut n = self.next_id.lock().expect("id");
            *n += 1;
            format!("rec{}", *n)
        };
        self.records
            .lock()
            .expect("records")
            .insert(id.clone(), (name.to_string(), value.to_string()));
        self.post(
            "/set-txt",
            serde_json::json!({"host": format!("{name}."), "value": value}),
        )
        .await;
        id
    }

    async fn delete(&self, id: &str) -> bool {
        let Some((name, _)) = self.records.lock().expect("records").remove(id) else {
            return false;
        };
        self.post(
            "/clear-txt",
            serde_json::json!({"host": format!("{name}.")}),
        )
        .await;
        let left: Vec<String> = self
            .records
            .lock()
            .expect("records")
            .values()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect();
        for v in left {
            self.post(
                "/set-txt",
                serde_json::json!({"host": format!("{name}."), "value": v}),
            )
            .await;
        }
        true
    }

    async fn delete_value(&self, name: &str, value: &str) {
        let id = self
            .records
            .lock()
            .expect("records")
            .iter()
            .find(|(_, (n, v))| n == name && v == value)
            .map(|(id, _)| id.clone());
        if let Some(id) = id {
            self.delete(&id).await;
        }
    }

    fn values(&self, name: &str) -> Vec<String> {
        self.records
            .lock()
            .expect("records")
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: String,
    auth: Option<String>,
    body: serde_json::Value,
}

struct Cloudflare {
    zone: Arc<Zone>,
    seen: Mutex<Vec<Seen>>,
}

fn cf_json(status: StatusCode, v: serde_json::Value) -> Response<TestBody> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r
}

async fn cloudflare(
    cf: Arc<Cloudflare>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    cf.seen.lock().expect("seen").push(Seen {
        method: method.clone(),
        uri: uri.clone(),
        auth: auth.clone(),
        body: body.clone(),
    });
    if auth.as_deref() != Some("Bearer cf-secret-token") {
        return Ok(cf_json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"success": false, "errors": [{"code": 9109, "message": "Invalid access token"}], "result": null}),
        ));
    }
    let path = uri.split('?').next().unwrap_or_default().to_string();
    let ok = |result: serde_json::Value| {
        cf_json(
            StatusCode::OK,
            serde_json::json!({"success": true, "errors": [], "result": result}),
        )
    };
    let resp = match (method, path.as_str()) {
        (Method::GET, "/client/v4/zones") => {
            let zones = if uri.ends_with("?name=cf.test") {
                serde_json::json!([{"id": "zone-cf", "name": "cf.test"}])
            } else {
                serde_json::json!([])
            };
            ok(zones)
        }
        (Method::POST, "/client/v4/zones/zone-cf/dns_records") => {
            let id = cf
                .zone
                .add(
                    body["name"].as_str().unwrap_or(""),
                    body["content"].as_str().unwrap_or(""),
                )
                .await;
            ok(serde_json::json!({"id": id}))
        }
        (Method::DELETE, p) if p.starts_with("/client/v4/zones/zone-cf/dns_records/") => {
            let id = p.rsplit('/').next().unwrap_or("");
            if cf.zone.delete(id).await {
                ok(serde_json::json!({"id": id}))
            } else {
                cf_json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"success": false, "errors": [{"code": 81044, "message": "Record does not exist."}]}),
                )
            }
        }
        _ => cf_json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"success": false, "errors": [{"code": 7003, "message": "No route"}]}),
        ),
    };
    Ok(resp)
}

async fn serve_cloudflare(cf: Arc<Cloudflare>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let cf = cf.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| cloudflare(cf.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn cloudflare_provider_uses_the_api_as_documented() {
    let Some((ports, p)) = ca(|_| {}).await else {
        return;
    };
    let cf = Arc::new(Cloudflare {
        zone: Zone::new(p.cts_mgmt),
        seen: Mutex::new(Vec::new()),
    });
    // Someone else's record at the same name must survive.
    cf.zone.add("_acme-challenge.cf.test", "someone-else").await;
    let api = serve_cloudflare(cf.clone()).await;
    let token = p.dir.path().join("cf-token");
    std::fs::write(&token, "cf-secret-token\n").expect("write");
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let dns = format!(
        "    provider: cloudflare\n    api_token_file: {}\n    api_url: http://{api}/client/v4\n",
        token.display()
    );
    let groups = ["['*.cf.test', cf.test, deep.sub.cf.test]"];
    let d = start_dns01(
        &ports,
        &p,
        storage.path(),
        &dns,
        &groups,
        "'*.cf.test', cf.test",
        &backend,
    )
    .await;
    wait_served(&d, &p, &ports, "*.cf.test", "x.cf.test").await;

    let seen = cf.seen.lock().expect("seen").clone();
    assert!(
        seen.iter()
            .all(|s| s.auth.as_deref() == Some("Bearer cf-secret-token")),
        "{seen:?}"
    );
    let mut lookups: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == Method::GET)
        .map(|s| s.uri.as_str())
        .collect();
    lookups.sort();
    // The zone of a deep name is found by walking up, each name asked once.
    assert_eq!(
        lookups,
        vec![
            "/client/v4/zones?name=cf.test",
            "/client/v4/zones?name=deep.sub.cf.test",
            "/client/v4/zones?name=sub.cf.test",
        ],
        "{seen:?}"
    );
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == Method::POST).collect();
    assert_eq!(posts.len(), 3, "{seen:?}");
    for post in &posts {
        assert_eq!(post.body["type"], "TXT");
        assert_eq!(post.body["ttl"], 120);
        assert_eq!(
            post.body["content"].as_str().map(str::len),
            Some(43),
            "base64url SHA-256"
        );
    }
    let names: Vec<&str> = posts
        .iter()
        .filter_map(|s| s.body["name"].as_str())
        .collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "_acme-challenge.cf.test")
            .count(),
        2,
        "wildcard and apex share one name: {names:?}"
    );
    assert!(names.contains(&"_acme-challenge.deep.sub.cf.test"));
    let deletes: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == Method::DELETE)
        .map(|s| s.uri.as_str())
        .collect();
    assert_eq!(deletes.len(), 3, "{seen:?}");
    // Only drowsy's own records went; the other one is still there.
    assert!(!deletes.contains(&"/client/v4/zones/zone-cf/dns_records/rec1"));
    assert_eq!(
        cf.zone.values("_acme-challenge.cf.test"),
        vec!["someone-else"]
    );
    d.running.shutdown().await;
}

mod rfc2136 {
    use super::*;
    use base64::Engine;
    use hickory_proto::op::{Message, OpCode, ResponseCode};
    use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::{
        DNSClass, Name, RData, Record, RecordType, TSigResponseContext, TSigner,
    };

    pub const SECRET: &[u8] = b"a shared secret of 32 bytes ....";

    #[derive(Debug, Clone, PartialEq)]
    pub struct Update {
        pub class: DNSClass,
        pub name: String,
        pub ttl: u32,
        pub value: String,
    }

    pub struct Server {
        pub zone: Arc<Zone>,
        pub updates: Mutex<Vec<Update>>,
        pub rejected: Mutex<usize>,
    }

    fn signer() -> TSigner {
        TSigner::new(
            SECRET.to_vec(),
            TsigAlgorithm::HmacSha256,
            Name::from_ascii("drowsy.").expect("name"),
            300,
        )
        .expect("signer")
    }

    /// A primary for `rfc.test` that takes TSIG-signed updates only, and
    /// answers SOA questions the way an authoritative server does.
    pub async fn serve(server: Arc<Server>) -> SocketAddr {
        let sock = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
        let addr = sock.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let answer = handle(&server, &buf[..n]).await;
                let _ = sock.send_to(&answer, peer).await;
            }
        });
        addr
    }

    async fn handle(server: &Server, bytes: &[u8]) -> Vec<u8> {
        let q = Message::from_vec(bytes).expect("a DNS message");
        let zone = Name::from_ascii("rfc.test.").expect("name");
        if q.metadata.op_code == OpCode::Query {
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.authoritative = true;
            r.add_queries(q.queries.clone());
            let soa = Record::from_rdata(
                zone.clone(),
                60,
                RData::SOA(SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 60, 60)),
            );
            match q.queries.first() {
                Some(query) if query.name() == &zone && query.query_type() == RecordType::SOA => {
                    r.add_answer(soa);
                }
                Some(query) if zone.zone_of(query.name()) => {
                    r.add_authority(soa);
                }
                _ => r.metadata.response_code = ResponseCode::Refused,
            }
            return r.to_vec().expect("encode");
        }
        let s = signer();
        let verified = s.verify_message_byte(bytes, None, true);
        let mut r = Message::response(q.metadata.id, OpCode::Update);
        let Ok((request_mac, _, _)) = verified else {
            *server.rejected.lock().expect("rejected") += 1;
            r.metadata.response_code = ResponseCode::NotAuth;
            return r.to_vec().expect("encode");
        };
        for rec in &q.authorities {
            let value = match &rec.data {
                RData::TXT(t) => t
                    .txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
                _ => String::new(),
            };
            let name = rec.name.to_ascii().trim_end_matches('.').to_string();
            server.updates.lock().expect("updates").push(Update {
                class: rec.dns_class,
                name: name.clone(),
                ttl: rec.ttl,
                value: value.clone(),
            });
            match rec.dns_class {
                DNSClass::IN => {
                    server.zone.add(&name, &value).await;
                }
                DNSClass::NONE => server.zone.delete_value(&name, &value).await,
                _ => {}
            }
        }
        let unsigned = r.to_vec().expect("encode");
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let ctx = TSigResponseContext::new(q.metadata.id, time, s, request_mac, None);
        r.set_signature(ctx.sign(&unsigned).expect("sign"));
        r.to_vec().expect("encode")
    }

    pub fn secret_b64() -> String {
        base64::engine::general_purpose::STANDARD.encode(SECRET)
    }
}

#[tokio::test]
async fn rfc2136_provider_sends_signed_updates_and_deletes_only_its_values() {
    let Some((ports, p)) = ca(|_| {}).await else {
        return;
    };
    let server = Arc::new(rfc2136::Server {
        zone: Zone::new(p.cts_mgmt),
        updates: Mutex::new(Vec::new()),
        rejected: Mutex::new(0),
    });
    server
        .zone
        .add("_acme-challenge.rfc.test", "someone-else")
        .await;
    let addr = rfc2136::serve(server.clone()).await;
    let secret = p.dir.path().join("tsig.key");
    std::fs::write(&secret, rfc2136::secret_b64()).expect("write");
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    // No zone given: found from the server's SOA answer.
    let dns = format!(
        "    provider: rfc2136\n    server: '{addr}'\n    tsig_key: drowsy\n    tsig_secret_file: {}\n",
        secret.display()
    );
    let groups = ["['*.rfc.test', rfc.test]"];
    let d = start_dns01(
        &ports,
        &p,
        storage.path(),
        &dns,
        &groups,
        "'*.rfc.test', rfc.test",
        &backend,
    )
    .await;
    wait_served(&d, &p, &ports, "*.rfc.test", "rfc.test").await;
    assert_eq!(
        *server.rejected.lock().expect("rejected"),
        0,
        "every update was signed"
    );
    let updates = server.updates.lock().expect("updates").clone();
    let adds: Vec<&rfc2136::Update> = updates
        .iter()
        .filter(|u| u.class == hickory_proto::rr::DNSClass::IN)
        .collect();
    let deletes: Vec<&rfc2136::Update> = updates
        .iter()
        .filter(|u| u.class == hickory_proto::rr::DNSClass::NONE)
        .collect();
    assert_eq!(adds.len(), 2, "{updates:?}");
    assert!(adds
        .iter()
        .all(|u| u.name == "_acme-challenge.rfc.test" && u.ttl == 120));
    let mut added: Vec<&str> = adds.iter().map(|u| u.value.as_str()).collect();
    let mut deleted: Vec<&str> = deletes.iter().map(|u| u.value.as_str()).collect();
    added.sort();
    deleted.sort();
    assert_eq!(
        added, deleted,
        "each value added is deleted by its data: {updates:?}"
    );
    assert!(deletes.iter().all(|u| u.ttl == 0));
    assert_eq!(
        server.zone.values("_acme-challenge.rfc.test"),
        vec!["someone-else"]
    );
    d.running.shutdown().await;
}
