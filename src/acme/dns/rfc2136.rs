//! `provider: rfc2136`: dynamic updates (RFC 2136) sent to the zone's
//! primary server, signed with TSIG (RFC 8945) when a key is configured.
//! A value is added to the TXT RRset (§2.5.1) and later deleted by its
//! exact data (§2.5.4), so other values at the same name stay.

use super::wire;
use crate::acme::problem::Failure;
use crate::config::TsigKey;
use base64::Engine;
use hickory_proto::op::{update_message, Message, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::TSigner;
use hickory_proto::rr::{DNSClass, RData, Record, RecordSet, RecordType};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 8945 §5.2.3 recommends 300 s of clock skew.
const FUDGE: u16 = 300;

pub struct Rfc2136 {
    server: SocketAddr,
    zone: Option<String>,
    signer: Option<TSigner>,
}

fn fail(detail: impl Into<String>) -> Failure {
    Failure::new(
        "dns-provider",
        detail,
        "check dns.server, the zone, and that the TSIG key may update it (update-policy / allow-update)",
    )
}

pub fn signer(key: &TsigKey) -> Result<TSigner, String> {
    let secret = base64::engine::general_purpose::STANDARD
        .decode(key.secret.expose().trim())
        .map_err(|_| "the TSIG secret is not base64".to_string())?;
    let algorithm = match key.algorithm.as_str() {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        other => return Err(format!("unsupported TSIG algorithm {other}")),
    };
    TSigner::new(secret, algorithm, wire::name(&key.name)?, FUDGE).map_err(|e| e.to_string())
}

fn txt_rrset(fqdn: &str, value: &str, ttl: u32) -> Result<RecordSet, String> {
    let name = wire::name(fqdn)?;
    let mut set = RecordSet::with_ttl(name.clone(), RecordType::TXT, ttl);
    set.insert(
        Record::from_rdata(name, ttl, RData::TXT(TXT::new(vec![value.to_string()]))),
        0,
    );
    Ok(set)
}

/// The UPDATE adding `value` to the TXT RRset at `fqdn` in `zone`.
pub fn add_message(zone: &str, fqdn: &str, value: &str, ttl: u32) -> Result<Message, String> {
    let set = txt_rrset(fqdn, value, ttl)?;
    check_in_zone(zone, fqdn)?;
    Ok(update_message::append(set, wire::name(zone)?, false, true))
}

/// The UPDATE deleting exactly the TXT record `value` at `fqdn`.
pub fn delete_message(zone: &str, fqdn: &str, value: &str) -> Result<Message, String> {
    let set = txt_rrset(fqdn, value, 0)?;
    check_in_zone(zone, fqdn)?;
    Ok(update_message::delete_by_rdata(
        set,
        wire::name(zone)?,
        true,
    ))
}

fn check_in_zone(zone: &str, fqdn: &str) -> Result<(), String> {
    if wire::name(zone)?.zone_of(&wire::name(fqdn)?) {
        Ok(())
    } else {
        Err(format!("{fqdn} is not inside zone {zone}"))
    }
}

/// Signs `m` (when a key is set) and returns the bytes to send and the
/// verifier for the answer.
pub fn sign(
    m: &mut Message,
    signer: Option<&TSigner>,
    now: u64,
) -> Result<(Vec<u8>, Option<hickory_proto::rr::TSigVerifier>), String> {
    let verifier = match signer {
        Some(s) => m.finalize(s, now).map_err(|e| e.to_string())?,
        None => None,
    };
    Ok((m.to_vec().map_err(|e| e.to_string())?, verifier))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Rfc2136 {
    pub fn new(
        server: SocketAddr,
        zone: Option<String>,
        tsig: Option<&TsigKey>,
    ) -> Result<Rfc2136, String> {
        Ok(Rfc2136 {
            server,
            zone,
            signer: tsig.map(signer).transpose()?,
        })
    }

    /// Adds the record; returns the zone it went to.
    pub async fn add(&self, fqdn: &str, value: &str, ttl: u32) -> Result<String, Failure> {
        let zone = match &self.zone {
            Some(z) => z.clone(),
            None => self.find_zone(fqdn).await?,
        };
        let m = add_message(&zone, fqdn, value, ttl).map_err(fail)?;
        self.send(m, &format!("adding TXT {fqdn}")).await?;
        Ok(zone)
    }

    pub async fn delete(&self, zone: &str, fqdn: &str, value: &str) -> Result<(), Failure> {
        let m = delete_message(zone, fqdn, value).map_err(fail)?;
        self.send(m, &format!("deleting TXT {fqdn}")).await
    }

    async fn send(&self, mut m: Message, what: &str) -> Result<(), Failure> {
        let id = m.metadata.id;
        let (bytes, verifier) = sign(&mut m, self.signer.as_ref(), now()).map_err(fail)?;
        let answer = wire::exchange(self.server, &bytes, id, TIMEOUT)
            .await
            .map_err(|e| fail(format!("{what}: {e}")))?;
        let code = match verifier {
            // An answer that is not signed with our key could come from
            // anyone on the path: it proves nothing.
            Some(mut v) => {
                v.verify(&answer)
                    .map_err(|e| {
                        fail(format!(
                            "{what}: the answer of {} failed TSIG verification: {e}",
                            self.server
                        ))
                    })?
                    .metadata
                    .response_code
            }
            None => {
                Message::from_vec(&answer)
                    .map_err(|e| fail(format!("{what}: bad answer: {e}")))?
                    .metadata
                    .response_code
            }
        };
        match code {
            ResponseCode::NoError => Ok(()),
            other => Err(fail(format!("{what}: {} answered {other}", self.server))),
        }
    }

    /// The zone of `fqdn` as its server sees it: the owner of the SOA in
    /// the answer, or in the authority section of a negative answer
    /// (RFC 2308 §3). Asked of the update server, which is authoritative.
    async fn find_zone(&self, fqdn: &str) -> Result<String, Failure> {
        let mut q = wire::query(fqdn, RecordType::SOA, false).map_err(fail)?;
        q.metadata.recursion_desired = false;
        let bytes = q.to_vec().map_err(|e| fail(e.to_string()))?;
        let answer = wire::exchange(self.server, &bytes, q.metadata.id, TIMEOUT)
            .await
            .map_err(|e| fail(format!("finding the zone of {fqdn}: {e}")))?;
        let m = Message::from_vec(&answer).map_err(|e| fail(e.to_string()))?;
        m.answers
            .iter()
            .chain(m.authorities.iter())
            .find(|r| r.record_type() == RecordType::SOA && r.dns_class == DNSClass::IN)
            .map(|r| r.name.to_ascii().trim_end_matches('.').to_string())
            .ok_or_else(|| {
                fail(format!(
                    "{} did not name the zone of {fqdn}; set dns.zone",
                    self.server
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use hickory_proto::op::OpCode;
    use hickory_proto::rr::rdata::tsig::TSIG;

    fn key() -> TsigKey {
        TsigKey {
            name: "drowsy-key".into(),
            algorithm: "hmac-sha256".into(),
            // base64 of "0123456789abcdef0123456789abcdef"
            secret: Secret::new("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
        }
    }

    fn txt_of(r: &Record) -> Option<String> {
        match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// RFC 2136 §2.3 (zone section), §2.5.1 (add: class IN, the TTL, the data).
    #[test]
    fn add_is_an_update_of_the_zone_with_one_txt_record() {
        let m = add_message(
            "example.com",
            "_acme-challenge.www.example.com",
            "v4lue",
            120,
        )
        .unwrap();
        let m = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        assert_eq!(m.metadata.op_code, OpCode::Update);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].name().to_ascii(), "example.com.");
        assert_eq!(m.queries[0].query_type(), RecordType::SOA);
        assert!(
            m.answers.is_empty(),
            "no prerequisites: other values may be there"
        );
        assert_eq!(m.authorities.len(), 1);
        let r = &m.authorities[0];
        assert_eq!(r.name.to_ascii(), "_acme-challenge.www.example.com.");
        assert_eq!(r.dns_class, DNSClass::IN);
        assert_eq!(r.ttl, 120);
        assert_eq!(txt_of(r).as_deref(), Some("v4lue"));
    }

    /// RFC 2136 §2.5.4: delete one RR: class NONE, TTL 0, the exact data.
    #[test]
    fn delete_removes_only_that_value() {
        let m = delete_message("example.com", "_acme-challenge.example.com", "v4lue").unwrap();
        let m = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        assert_eq!(m.metadata.op_code, OpCode::Update);
        assert_eq!(m.authorities.len(), 1);
        let r = &m.authorities[0];
        assert_eq!(r.dns_class, DNSClass::NONE);
        assert_eq!(r.ttl, 0);
        assert_eq!(r.record_type(), RecordType::TXT);
        assert_eq!(txt_of(r).as_deref(), Some("v4lue"));
        assert!(delete_message("example.org", "_acme-challenge.example.com", "v").is_err());
    }

    /// RFC 8945 §4.3: the MAC covers the message without the TSIG record
    /// (and with the original ARCOUNT), then the TSIG variables: key name,
    /// class ANY, TTL 0, algorithm name, time signed (48 bits), fudge,
    /// error, other len, other data. Recomputed here independently.
    #[test]
    fn tsig_mac_is_the_rfc_8945_hmac() {
        let k = key();
        let s = signer(&k).unwrap();
        let mut m = add_message("example.com", "_acme-challenge.example.com", "v", 60).unwrap();
        let unsigned = m.to_vec().unwrap();
        let time = 1_700_000_000u64;
        let (bytes, verifier) = sign(&mut m, Some(&s), time).unwrap();
        assert!(verifier.is_some());
        let parsed = Message::from_vec(&bytes).unwrap();
        let tsig = parsed.signature().expect("a TSIG record");
        assert_eq!(tsig.name.to_ascii(), "drowsy-key.");
        assert_eq!(tsig.dns_class, DNSClass::ANY);
        assert_eq!(tsig.ttl, 0);
        let rdata: &TSIG = &tsig.data;
        assert_eq!(rdata.algorithm, TsigAlgorithm::HmacSha256);
        assert_eq!(rdata.time, time);
        assert_eq!(rdata.fudge, FUDGE);
        assert_eq!(rdata.mac.len(), 32);

        // Names uncompressed and lowercase (RFC 8945 §4.3.3).
        let wire_name = |n: &str| {
            let mut out = Vec::new();
            for label in n.split('.').filter(|l| !l.is_empty()) {
                out.push(label.len() as u8);
                out.extend(label.to_ascii_lowercase().bytes());
            }
            out.push(0);
            out
        };
        let mut tbs = unsigned.clone();
        tbs.extend(wire_name("drowsy-key"));
        tbs.extend(255u16.to_be_bytes()); // class ANY
        tbs.extend(0u32.to_be_bytes()); // TTL
        tbs.extend(wire_name("hmac-sha256"));
        tbs.extend(&time.to_be_bytes()[2..]); // 48-bit time signed
        tbs.extend(FUDGE.to_be_bytes());
        tbs.extend(0u16.to_be_bytes()); // error
        tbs.extend(0u16.to_be_bytes()); // other len
        let secret = b"0123456789abcdef0123456789abcdef";
        let expected =
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), &tbs);
        assert_eq!(rdata.mac.as_slice(), expected.as_ref());
    }

    /// A signed answer from the server verifies; a forged or unsigned one
    /// does not (RFC 8945 §5.3).
    #[test]
    fn answers_must_be_signed_with_the_same_key() {
        use hickory_proto::rr::TSigResponseContext;
        let s = signer(&key()).unwrap();
        let time = now();
        let mut q = add_message("example.com", "_acme-challenge.example.com", "v", 60).unwrap();
        let (_, verifier) = sign(&mut q, Some(&s), time).unwrap();
        let request_mac = q.signature().unwrap().data.mac.clone();
        let mut answer = Message::response(q.metadata.id, OpCode::Update);
        let unsigned = answer.to_vec().unwrap();
        let ctx = TSigResponseContext::new(q.metadata.id, time, s.clone(), request_mac, None);
        answer.set_signature(ctx.sign(&unsigned).unwrap());
        let good = answer.to_vec().unwrap();
        assert!(verifier.unwrap().verify(&good).is_ok());

        let (_, verifier) = sign(
            &mut add_message("example.com", "_acme-challenge.example.com", "v", 60).unwrap(),
            Some(&s),
            time,
        )
        .unwrap();
        let plain = Message::response(q.metadata.id, OpCode::Update)
            .to_vec()
            .unwrap();
        assert!(verifier.unwrap().verify(&plain).is_err());
    }
}
