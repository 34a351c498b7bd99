//! The backend's response on the fast path: its head checked and written
//! again for the client without hop-by-hop fields, and how its body is
//! framed (RFC 9112 §6.3). A chunked body is decoded and encoded again,
//! so what the client gets is always well formed whatever the backend
//! sent; a head or a framing drowsy cannot be sure of is an error (502),
//! never guessed at.

use crate::http::fields::{rule, Rule};
use crate::proxy::fast::request::MAX_HEADERS;
use httparse::{Status, EMPTY_HEADER};

/// How the body after the head ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the backend closes (RFC 9112 §6.3 ¶8), and sent to the
    /// client chunked, so its connection stays open (as hyper's server
    /// does: the fast path's client is HTTP/1.1).
    UntilClose,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// The head's length in the buffer.
    pub len: usize,
    pub framing: Framing,
    /// The backend connection may carry another request afterwards.
    pub reusable: bool,
    /// The client's connection closes after this response.
    pub close_client: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Partial,
    /// An interim response (103 Early Hints and the like) of this length:
    /// dropped, as the hyper path does; the final one follows.
    Interim(usize),
    Final(Head),
    Bad(&'static str),
}

/// The most fields `Connection` may name in a response.
const MAX_NAMED: usize = 8;

/// Parses the response head at the start of `buf` and, when it is final,
/// writes the client's head into `out`. `head_request`: the request was
/// HEAD, so no body follows whatever the head says. `close`: the client's
/// connection closes after this response (it asked, or drowsy is shutting
/// down). `date`: the value for a `Date` field when the backend sent none
/// (RFC 9110 §6.6.1: an origin server with a clock sends it; hyper's
/// server adds it too).
pub fn parse(
    buf: &[u8],
    head_request: bool,
    close: bool,
    date: impl FnOnce() -> String,
    out: &mut Vec<u8>,
) -> Parsed {
    let mut slots = [EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Bad("malformed response head"),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Parsed::Bad("malformed response head");
    };
    // hyper's client refuses these too (`StatusCode` starts at 100).
    if status < 100 {
        return Parsed::Bad("invalid status code");
    }
    if status == 101 {
        return Parsed::Bad("the backend switched protocols without being asked");
    }
    if (100..200).contains(&status) {
        return Parsed::Interim(len);
    }
    let fields = &*resp.headers;
    // First what the fields say about the connection and the framing.
    let mut backend_close = version == 0;
    let mut named: [&[u8]; MAX_NAMED] = [b""; MAX_NAMED];
    let mut n_named = 0;
    let mut chunked = None;
    let mut length = None;
    for f in fields {
        match Name::of(f.name) {
            Name::Connection => {
                for token in list(f.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        backend_close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        let Some(slot) = named.get_mut(n_named) else {
                            return Parsed::Bad("Connection names too many fields");
                        };
                        *slot = token;
                        n_named += 1;
                    }
                }
            }
            // The codings apply in order: the last one says whether the
            // body is chunked (RFC 9112 §6.3 ¶4).
            Name::TransferEncoding => {
                if let Some(last) = list(f.value).last() {
                    chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
            }
            Name::ContentLength => match content_length(f.value, length) {
                Some(n) => length = Some(n),
                None => return Parsed::Bad("invalid Content-Length"),
            },
            Name::Date | Name::HopByHop | Name::Other => {}
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    // Both framings at once may be an attempt at smuggling: the body is
    // read as chunked (RFC 9112 §6.3 ¶3) and the connection not reused.
    let both = chunked.is_some() && length.is_some();
    let reusable = !backend_close && !both && framing != Framing::UntilClose;
    let close_client = close;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse read exactly three digits.
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let named = &named[..n_named];
    // Counted as written: a Date that `Connection` names is dropped.
    let mut has_date = false;
    for f in fields {
        let name = Name::of(f.name);
        let skip = match name {
            Name::Connection | Name::TransferEncoding | Name::HopByHop => true,
            // The length a chunked body did not have.
            Name::ContentLength => chunked.is_some(),
            Name::Date | Name::Other => named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(f.name.as_bytes())),
        };
        if !skip {
            has_date |= name == Name::Date;
            out.extend_from_slice(f.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(f.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if matches!(framing, Framing::Chunked | Framing::UntilClose) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Parsed::Final(Head {
        status,
        len,
        framing,
        reusable,
        close_client,
    })
}

/// The elements of a comma-separated field value, trimmed, without empty
/// ones (RFC 9110 §5.6.1).
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// RFC 9110 §8.6: digits only; a list of one repeated value (or the same
/// value on several lines) is that value; anything else is invalid.
fn content_length(value: &[u8], before: Option<u64>) -> Option<u64> {
    let mut found = before;
    let mut any = false;
    for item in value.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(item).ok()?.parse::<u64>().ok()?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
        any = true;
    }
    any.then_some(found).flatten()
}

#[derive(Debug, PartialEq, Eq)]
enum Name {
    Connection,
    TransferEncoding,
    ContentLength,
    Date,
    /// The rest of RFC 9110 §7.6.1's hop-by-hop fields, and the ones
    /// clients still use.
    HopByHop,
    Other,
}

impl Name {
    fn of(name: &str) -> Name {
        match rule(name.as_bytes()) {
            Rule::Connection => Name::Connection,
            Rule::TransferEncoding => Name::TransferEncoding,
            Rule::ContentLength => Name::ContentLength,
            Rule::Date => Name::Date,
            Rule::Hop(_) | Rule::Upgrade | Rule::Te => Name::HopByHop,
            _ => Name::Other,
        }
    }
}

/// The longest chunk-size line (size and extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// The longest trailer section accepted (the trailers are dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// A chunked body (RFC 9112 §7.1) decoded as it arrives and written again
/// in plain chunks: extensions and trailers are dropped, and anything
/// malformed (a size that is not hex, a bare CR or LF, data longer than
/// its size) is an error.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// Bytes of the current size line or of the trailers so far.
    line: usize,
    /// Payload bytes so far.
    pub payload: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: whitespace and extensions up to CR.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: State::Size { size: 0, digits: 0 },
            line: 0,
            payload: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending the re-encoded chunks to `out`; the
    /// number of bytes used (all of them, unless the body ended).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data(rem) = self.state {
                let take = rem.min((input.len() - i) as u64) as usize;
                out.extend_from_slice(&input[i..i + take]);
                i += take;
                self.payload += take as u64;
                self.state = match rem - take as u64 {
                    0 => State::DataCr,
                    rem => State::Data(rem),
                };
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = self.step(b, out)?;
            if self.state == State::Done {
                break;
            }
        }
        Ok(i)
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> Result<State, BadChunk> {
        let next = match self.state {
            State::Size { size, digits } => match (hex(b), b) {
                (Some(d), _) if digits < 16 => State::Size {
                    size: size << 4 | u64::from(d),
                    digits: digits + 1,
                },
                (None, b';' | b' ' | b'\t') if digits > 0 => State::Extension { size },
                (None, b'\r') if digits > 0 => State::SizeLf { size },
                _ => return Err(BadChunk),
            },
            // chunk-ext: anything visible, spaces and tabs (its grammar
            // does not matter once it is dropped); no controls.
            State::Extension { size } => match b {
                b'\r' => State::SizeLf { size },
                b'\t' | b' '..=b'~' | 0x80.. => State::Extension { size },
                _ => return Err(BadChunk),
            },
            State::SizeLf { size } => match (b, size) {
                (b'\n', 0) => {
                    self.line = 0;
                    State::TrailerStart
                }
                (b'\n', size) => {
                    self.line = 0;
                    write_size(size, out);
                    State::Data(size)
                }
                _ => return Err(BadChunk),
            },
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => {
                out.extend_from_slice(b"\r\n");
                State::Size { size: 0, digits: 0 }
            }
            State::TrailerStart if b == b'\r' => State::FinalLf,
            State::TrailerStart | State::Trailer => match b {
                b'\r' => State::TrailerLf,
                b'\n' => return Err(BadChunk),
                _ => State::Trailer,
            },
            State::TrailerLf if b == b'\n' => State::TrailerStart,
            State::FinalLf if b == b'\n' => {
                out.extend_from_slice(b"0\r\n\r\n");
                State::Done
            }
            _ => return Err(BadChunk),
        };
        self.line += 1;
        let limit = match next {
            State::Size { .. } | State::Extension { .. } | State::SizeLf { .. } => MAX_SIZE_LINE,
            _ => MAX_TRAILERS,
        };
        if self.line > limit {
            return Err(BadChunk);
        }
        Ok(next)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A chunk's size line: lowercase hex and CRLF.
fn write_size(size: u64, out: &mut Vec<u8>) {
    let digits = (64 - size.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        let d = (size >> (shift * 4)) & 0xf;
        out.push(b"0123456789abcdef"[d as usize]);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, head_request: bool, close: bool) -> (Parsed, String) {
        let mut out = Vec::new();
        let p = parse(
            raw.as_bytes(),
            head_request,
            close,
            || "Tue, 01 Dec 2026 00:00:00 GMT".into(),
            &mut out,
        );
        (p, String::from_utf8(out).unwrap())
    }

    fn framing(raw: &str) -> Result<(Framing, bool), &'static str> {
        match head(raw, false, false).0 {
            Parsed::Final(h) => Ok((h.framing, h.reusable)),
            Parsed::Bad(why) => Err(why),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn hop_by_hop_fields_stay_here_and_date_is_added_when_missing() {
        let raw =
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n\
                   X-Internal: secret\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
        let (p, out) = head(raw, false, false);
        let Parsed::Final(h) = p else { panic!() };
        assert_eq!(h.len, raw.len() - 2);
        assert_eq!(
            (h.status, h.framing, h.reusable),
            (200, Framing::Length(2), true)
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\
             date: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n"
        );
    }

    #[test]
    fn the_backends_date_is_kept_and_close_is_said_when_the_client_leaves() {
        let raw = "HTTP/1.1 404 Not Found\r\nDate: Mon, 30 Nov 2026 10:00:00 GMT\r\nContent-Length: 0\r\n\r\n";
        let (p, out) = head(raw, false, true);
        let Parsed::Final(h) = p else { panic!() };
        assert!(h.close_client);
        assert_eq!(
            out,
            "HTTP/1.1 404 Not Found\r\nDate: Mon, 30 Nov 2026 10:00:00 GMT\r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        use Framing::*;
        let ok = |s: &str| framing(&format!("HTTP/1.1 200 OK\r\n{s}\r\n"));
        assert_eq!(ok("Content-Length: 10\r\n"), Ok((Length(10), true)));
        assert_eq!(ok("Content-Length: 10, 10\r\n"), Ok((Length(10), true)));
        assert_eq!(
            ok("Content-Length: 7\r\ncontent-length: 7\r\n"),
            Ok((Length(7), true))
        );
        assert_eq!(ok("Transfer-Encoding: chunked\r\n"), Ok((Chunked, true)));
        assert_eq!(
            ok("Transfer-Encoding: gzip, Chunked\r\n"),
            Ok((Chunked, true))
        );
        // Chunked, then something else: only the close ends it.
        assert_eq!(
            ok("Transfer-Encoding: chunked, gzip\r\n"),
            Ok((UntilClose, false))
        );
        // Both: chunked wins and the connection is not reused.
        assert_eq!(
            ok("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
            Ok((Chunked, false))
        );
        assert_eq!(ok(""), Ok((UntilClose, false)));
        assert_eq!(
            ok("Connection: close\r\nContent-Length: 1\r\n"),
            Ok((Length(1), false))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"),
            Ok((Length(1), false))
        );
        for bad in [
            "Content-Length: 1, 2\r\n",
            "Content-Length: 1\r\nContent-Length: 2\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 0x10\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999\r\n",
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
        // No body, whatever the fields say.
        for status in ["204 No Content", "304 Not Modified"] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(framing(&raw), Ok((Empty, true)));
        }
        let (p, _) = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false);
        assert!(matches!(
            p,
            Parsed::Final(Head {
                framing: Empty,
                reusable: true,
                ..
            })
        ));
    }

    #[test]
    fn a_date_that_connection_names_is_replaced() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: Date\r\nDate: old\r\nContent-Length: 0\r\n\r\n";
        let (_, out) = head(raw, false, false);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n"
        );
    }

    #[test]
    fn a_chunked_response_loses_its_length_and_gets_one_transfer_encoding() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nDate: x\r\n\r\n";
        let (_, out) = head(raw, false, false);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nDate: x\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn interim_responses_are_skipped_and_101_is_refused() {
        let interim = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        let (p, _) = head(&format!("{interim}HTTP/1.1 200"), false, false);
        assert_eq!(p, Parsed::Interim(interim.len()));
        let (p, _) = head("HTTP/1.1 101 Switching Protocols\r\n\r\n", false, false);
        assert!(matches!(p, Parsed::Bad(_)));
    }

    #[test]
    fn malformed_heads_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: b\r\n folded\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 000 Zero\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(
                matches!(head(raw, false, false).0, Parsed::Bad(_)),
                "{raw:?}"
            );
        }
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nX-A:", false, false).0,
            Parsed::Partial
        );
    }

    /// Decodes `input` fed in pieces of `step` bytes.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, u64), BadChunk> {
        let mut c = Chunked::new();
        let mut out = Vec::new();
        let mut used = 0;
        for piece in input.chunks(step) {
            let n = c.decode(piece, &mut out)?;
            used += n;
            if c.is_done() {
                return Ok((out, used, c.payload));
            }
            assert_eq!(n, piece.len());
        }
        Err(BadChunk)
    }

    #[test]
    fn chunks_are_decoded_and_written_again_in_any_pieces() {
        let body = b"5;name=\"v\"\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, body.len()] {
            let (out, used, payload) = decode(body, step).unwrap();
            assert_eq!(
                out, b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
                "step {step}"
            );
            assert_eq!(used, body.len() - 4, "the body ends before what follows");
            assert_eq!(payload, 31);
        }
        let (out, ..) = decode(b"0\r\n\r\n", 1).unwrap();
        assert_eq!(out, b"0\r\n\r\n");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"\r\n\r\n"[..],             // no size
            b";ext\r\n\r\n",              // no size before the extension
            b"5\nhello\r\n0\r\n\r\n",     // bare LF after the size
            b"5\r\nhelloX\r\n0\r\n\r\n",  // more data than the size
            b"5\r\nhello\n0\r\n\r\n",     // bare LF after the data
            b"0x5\r\nhello\r\n0\r\n\r\n", // not hex
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",    // 17 digits: beyond u64
            b"1;a\nb\r\nx\r\n0\r\n\r\n", // LF inside an extension
            b"0\r\nX: a\nY: b\r\n\r\n",  // bare LF in the trailers
            b"0\r\n\r\r\n",
        ] {
            assert_eq!(decode(bad, 1).map(|_| ()), Err(BadChunk), "{bad:?}");
        }
        let long = [b"1;".as_slice(), &[b'a'; MAX_SIZE_LINE], b"\r\n"].concat();
        assert_eq!(decode(&long, 64).map(|_| ()), Err(BadChunk));
    }

    #[test]
    fn sizes_are_written_in_lowercase_hex() {
        for (size, text) in [
            (1u64, "1"),
            (15, "f"),
            (16, "10"),
            (0xabc, "abc"),
            (u64::MAX, "ffffffffffffffff"),
        ] {
            let mut out = Vec::new();
            write_size(size, &mut out);
            assert_eq!(out, format!("{text}\r\n").as_bytes());
        }
    }
}
