//! DNS messages over the network: UDP first, TCP when the answer is
//! truncated (RFC 7766 §5), with a deadline. Answers whose id or source
//! do not match the question are ignored, so a spoofed packet cannot
//! stand in for the server's answer.

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Sends an encoded message with id `id` and returns the raw answer
/// (callers verifying a TSIG need the bytes as received).
pub async fn exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let attempt = async {
        let answer = udp(server, query, id).await?;
        match Message::from_vec(&answer) {
            Ok(m) if m.metadata.truncation => tcp(server, query, id).await,
            _ => Ok(answer),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no answer from {server} within {}s", timeout.as_secs()))?
}

async fn udp(server: SocketAddr, query: &[u8], id: u16) -> Result<Vec<u8>, String> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    sock.connect(server)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    sock.send(query)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock
            .recv(&mut buf)
            .await
            .map_err(|e| format!("{server}: {e}"))?;
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp(server: SocketAddr, query: &[u8], id: u16) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(server)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    let len = u16::try_from(query.len()).map_err(|_| "message too long".to_string())?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    s.write_all(&out)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    if buf.len() < 2 || u16::from_be_bytes([buf[0], buf[1]]) != id {
        return Err(format!("{server} answered another question"));
    }
    Ok(buf)
}

/// A name as hickory wants it: absolute, from `a.b.c` or `a.b.c.`.
pub fn name(fqdn: &str) -> Result<Name, String> {
    let text = format!("{}.", fqdn.trim_end_matches('.'));
    Name::from_ascii(&text).map_err(|e| format!("`{fqdn}` is not a DNS name: {e}"))
}

/// A recursive query for `fqdn` of type `rtype`.
pub fn query(fqdn: &str, rtype: RecordType, recursion: bool) -> Result<Message, String> {
    let mut m = Message::query();
    m.add_query(Query::query(name(fqdn)?, rtype));
    m.metadata.recursion_desired = recursion;
    // EDNS so a few TXT values fit in UDP without truncation.
    m.edns.get_or_insert_with(Edns::new).set_max_payload(1232);
    Ok(m)
}

/// What a resolver says about the TXT records at a name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TxtAnswer {
    /// The values of the TXT records at the end of the CNAME chain; the
    /// strings of one record are joined (RFC 7208 §3.3 style).
    pub values: Vec<String>,
    /// Where the CNAME chain starting at the name ends, if it has one.
    pub canonical: Option<String>,
}

pub async fn txt(server: SocketAddr, fqdn: &str, timeout: Duration) -> Result<TxtAnswer, String> {
    let q = query(fqdn, RecordType::TXT, true)?;
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let answer = exchange(server, &bytes, q.metadata.id, timeout).await?;
    let m = Message::from_vec(&answer).map_err(|e| format!("bad answer from {server}: {e}"))?;
    use hickory_proto::op::ResponseCode as R;
    match m.metadata.response_code {
        R::NoError | R::NXDomain => Ok(parse_txt(&m, fqdn)),
        code => Err(format!("{} from {server}", code)),
    }
}

/// Reads a TXT answer, following the CNAME chain in the answer section
/// from `fqdn` (resolvers send the whole chain).
pub fn parse_txt(m: &Message, fqdn: &str) -> TxtAnswer {
    let mut current = fqdn.trim_end_matches('.').to_ascii_lowercase();
    let mut canonical = None;
    for _ in 0..8 {
        let next = m.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if same_name(&r.name, &current) => Some(c.0.to_ascii()),
            _ => None,
        });
        match next {
            Some(target) => {
                current = target.trim_end_matches('.').to_ascii_lowercase();
                canonical = Some(current.clone());
            }
            None => break,
        }
    }
    let values = m
        .answers
        .iter()
        .filter(|r| same_name(&r.name, &current))
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect();
    TxtAnswer { values, canonical }
}

fn same_name(n: &Name, fqdn: &str) -> bool {
    n.to_ascii()
        .trim_end_matches('.')
        .eq_ignore_ascii_case(fqdn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{CNAME, TXT};
    use hickory_proto::rr::Record;

    #[test]
    fn txt_answers_follow_the_cname_chain() {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        let n = |s: &str| Name::from_ascii(s).unwrap();
        m.add_answer(Record::from_rdata(
            n("_acme-challenge.a.test."),
            60,
            RData::CNAME(CNAME(n("a.auth.test."))),
        ));
        m.add_answer(Record::from_rdata(
            n("a.auth.test."),
            60,
            RData::TXT(TXT::new(vec!["abc".into(), "def".into()])),
        ));
        m.add_answer(Record::from_rdata(
            n("other.test."),
            60,
            RData::TXT(TXT::new(vec!["nope".into()])),
        ));
        let a = parse_txt(&m, "_acme-challenge.A.test.");
        assert_eq!(a.values, vec!["abcdef".to_string()]);
        assert_eq!(a.canonical.as_deref(), Some("a.auth.test"));
    }
}
