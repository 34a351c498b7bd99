//! The first packets of a Minecraft Java Edition connection, as the
//! protocol's public description gives them (the "Java Edition protocol"
//! pages: data types, handshaking, status and login states). Before login
//! nothing is compressed or encrypted, so every packet is
//! `VarInt length · VarInt id · data`, and a client begins with the
//! handshake:
//!
//! ```text
//! 0x00  VarInt protocol version · String server address ·
//!       unsigned short port · VarInt intent (1 status, 2 login, 3 transfer)
//! ```
//!
//! then, for a status, `0x00` (status request) and `0x01 long` (ping);
//! for a login, `0x00` (login start). These functions read from a buffer
//! that may hold only part of a packet: `Ok(None)` asks for more bytes.

use std::fmt;

/// The largest first packet drowsy reads. A client's handshake is a few
/// dozen bytes; proxies that forward player data in the address field
/// (BungeeCord's IP forwarding) make it a few KiB.
pub const MAX_FRAME: usize = 8 * 1024;

/// A VarInt is at most 5 bytes (32 bits in 7-bit groups).
const MAX_VARINT: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// More than 5 bytes, or bits beyond 32 in the fifth.
    VarInt,
    /// A packet of length 0 (no id) or longer than [`MAX_FRAME`].
    Length,
    /// Not the packet this state expects.
    Id,
    /// A string's length runs past its packet, or it is not UTF-8.
    Text,
    /// A packet shorter than its fields.
    Short,
    /// Bytes left in a packet after its last field.
    Trailing,
    /// A handshake intent other than status, login or transfer.
    Intent,
    /// A pre-1.7 client's server-list ping (first byte `0xFE`).
    Legacy,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformed::VarInt => "a VarInt longer than 5 bytes",
            Malformed::Length => "a packet length out of range",
            Malformed::Id => "an unexpected packet",
            Malformed::Text => "a string that is not UTF-8 or runs past its packet",
            Malformed::Short => "a packet shorter than its fields",
            Malformed::Trailing => "bytes after the packet's last field",
            Malformed::Intent => "a handshake intent other than status or login",
            Malformed::Legacy => "a legacy (pre-1.7) server-list ping",
        })
    }
}

/// Where a handshake says the client goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Status,
    Login,
    /// A server's transfer (1.20.5+): a login to this server.
    Transfer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub protocol: i32,
    pub address: String,
    pub port: u16,
    pub intent: Intent,
}

/// What a client in the status state asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAsk {
    Status,
    /// The latency probe; its payload is echoed back.
    Ping([u8; 8]),
}

/// A VarInt at the start of `buf` and its length in bytes.
pub fn varint(buf: &[u8]) -> Result<Option<(i32, usize)>, Malformed> {
    let mut value: u32 = 0;
    for (i, &b) in buf.iter().enumerate().take(MAX_VARINT) {
        if i == MAX_VARINT - 1 && b & 0xF0 != 0 {
            return Err(Malformed::VarInt);
        }
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value as i32, i + 1)));
        }
    }
    match buf.len() >= MAX_VARINT {
        true => Err(Malformed::VarInt),
        false => Ok(None),
    }
}

/// One packet at the start of `buf`: its id and data, and the bytes it
/// takes with its length prefix.
pub fn frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, Malformed> {
    let Some((len, at)) = varint(buf)? else {
        return Ok(None);
    };
    let len = usize::try_from(len).map_err(|_| Malformed::Length)?;
    if len == 0 || len > MAX_FRAME {
        return Err(Malformed::Length);
    }
    Ok(buf.get(at..at + len).map(|packet| (packet, at + len)))
}

/// The handshake at the start of what a client sent.
pub fn handshake(buf: &[u8]) -> Result<Option<(Handshake, usize)>, Malformed> {
    // The vanilla server takes a first byte 0xFE as the old ping, whatever
    // follows; so does drowsy.
    if buf.first() == Some(&0xFE) {
        return Err(Malformed::Legacy);
    }
    // Anything but a handshake is refused as soon as its id shows, not
    // after a length's worth of bytes (an HTTP request's `G` reads as 71).
    if let Some((_, at)) = varint(buf)? {
        if buf.get(at).is_some_and(|&id| id != 0x00) {
            return Err(Malformed::Id);
        }
    }
    let Some((packet, used)) = frame(buf)? else {
        return Ok(None);
    };
    let mut r = Fields(packet);
    if r.varint()? != 0x00 {
        return Err(Malformed::Id);
    }
    let protocol = r.varint()?;
    let address = r.string()?;
    let port = u16::from_be_bytes(r.take::<2>()?);
    let intent = match r.varint()? {
        1 => Intent::Status,
        2 => Intent::Login,
        3 => Intent::Transfer,
        _ => return Err(Malformed::Intent),
    };
    r.end()?;
    let hs = Handshake {
        protocol,
        address,
        port,
        intent,
    };
    Ok(Some((hs, used)))
}

/// A status request or a ping at the start of `buf`.
pub fn status_ask(buf: &[u8]) -> Result<Option<(StatusAsk, usize)>, Malformed> {
    let Some((packet, used)) = frame(buf)? else {
        return Ok(None);
    };
    let mut r = Fields(packet);
    let ask = match r.varint()? {
        0x00 => StatusAsk::Status,
        0x01 => StatusAsk::Ping(r.take::<8>()?),
        _ => return Err(Malformed::Id),
    };
    r.end()?;
    Ok(Some((ask, used)))
}

/// A packet as the server sends it: length, id, data.
pub fn packet(id: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 6);
    put_varint(&mut out, data.len() as i32 + 1);
    out.push(id);
    out.extend_from_slice(data);
    out
}

/// A protocol string: its length in bytes as a VarInt, then UTF-8.
pub fn string(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 3);
    put_varint(&mut out, text.len() as i32);
    out.extend_from_slice(text.as_bytes());
    out
}

pub fn put_varint(out: &mut Vec<u8>, value: i32) {
    let mut v = value as u32;
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The handshake packet a client sends (tests and the fuzz target).
pub fn handshake_packet(h: &Handshake) -> Vec<u8> {
    let mut data = Vec::new();
    put_varint(&mut data, h.protocol);
    data.extend_from_slice(&string(&h.address));
    data.extend_from_slice(&h.port.to_be_bytes());
    put_varint(
        &mut data,
        match h.intent {
            Intent::Status => 1,
            Intent::Login => 2,
            Intent::Transfer => 3,
        },
    );
    packet(0x00, &data)
}

/// The fields of one packet, read in order; running out is malformed (the
/// packet's length said it was complete).
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn varint(&mut self) -> Result<i32, Malformed> {
        let (v, n) = varint(self.0)?.ok_or(Malformed::Short)?;
        self.0 = &self.0[n..];
        Ok(v)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(Malformed::Short)?;
        self.0 = rest;
        Ok(*head)
    }

    fn string(&mut self) -> Result<String, Malformed> {
        let len = usize::try_from(self.varint()?).map_err(|_| Malformed::Text)?;
        let bytes = self.0.get(..len).ok_or(Malformed::Text)?;
        let text = std::str::from_utf8(bytes).map_err(|_| Malformed::Text)?;
        self.0 = &self.0[len..];
        Ok(text.to_string())
    }

    fn end(&self) -> Result<(), Malformed> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(Malformed::Trailing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protocol description's VarInt table.
    #[test]
    fn varints_read_and_write_as_the_protocol_gives_them() {
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (255, &[0xff, 0x01]),
            (25565, &[0xdd, 0xc7, 0x01]),
            (2097151, &[0xff, 0xff, 0x7f]),
            (i32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x07]),
            (-1, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0x80, 0x80, 0x80, 0x80, 0x08]),
        ];
        for &(value, bytes) in cases {
            assert_eq!(varint(bytes), Ok(Some((value, bytes.len()))), "{value}");
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, bytes, "{value}");
        }
    }

    #[test]
    fn a_varint_past_32_bits_is_malformed_and_a_short_one_asks_for_more() {
        assert_eq!(
            varint(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
            Err(Malformed::VarInt)
        );
        assert_eq!(
            varint(&[0x80, 0x80, 0x80, 0x80, 0x80]),
            Err(Malformed::VarInt)
        );
        assert_eq!(varint(&[0x80, 0x80]), Ok(None));
        assert_eq!(varint(&[]), Ok(None));
    }

    /// A 1.21 client's server-list ping to `localhost:25565`, byte for byte.
    const PING: &[u8] = &[
        0x10, 0x00, 0xff, 0x05, 0x09, b'l', b'o', b'c', b'a', b'l', b'h', b'o', b's', b't', 0x63,
        0xdd, 0x01, // handshake, intent status
        0x01, 0x00, // status request
        0x09, 0x01, 0, 0, 0, 0, 0, 0, 0x30, 0x39, // ping 12345
    ];

    #[test]
    fn a_real_server_list_ping_reads_in_any_split() {
        let want = Handshake {
            protocol: 767,
            address: "localhost".into(),
            port: 25565,
            intent: Intent::Status,
        };
        for cut in 0..17 {
            assert_eq!(handshake(&PING[..cut]), Ok(None), "cut at {cut}");
        }
        let (hs, used) = handshake(PING).unwrap().unwrap();
        assert_eq!((hs.clone(), used), (want.clone(), 17));
        assert_eq!(handshake_packet(&want), &PING[..17]);
        let (ask, n) = status_ask(&PING[17..]).unwrap().unwrap();
        assert_eq!((ask, n), (StatusAsk::Status, 2));
        let (ask, _) = status_ask(&PING[19..]).unwrap().unwrap();
        assert_eq!(ask, StatusAsk::Ping([0, 0, 0, 0, 0, 0, 0x30, 0x39]));
    }

    #[test]
    fn logins_and_transfers_are_logins() {
        for (intent, byte) in [(Intent::Login, 2), (Intent::Transfer, 3)] {
            let mut p = PING[..17].to_vec();
            p[16] = byte;
            assert_eq!(handshake(&p).unwrap().unwrap().0.intent, intent);
        }
    }

    #[test]
    fn malformed_handshakes_are_refused() {
        let with = |i: usize, b: u8| {
            let mut p = PING[..17].to_vec();
            p[i] = b;
            p
        };
        assert_eq!(handshake(&[0xfe, 0x01, 0xfa]), Err(Malformed::Legacy));
        assert_eq!(handshake(&[0x00]), Err(Malformed::Length));
        assert_eq!(handshake(&[0x80, 0x80, 0x01]), Err(Malformed::Length));
        assert_eq!(handshake(&with(1, 0x05)), Err(Malformed::Id));
        assert_eq!(handshake(&with(16, 0x04)), Err(Malformed::Intent));
        assert_eq!(handshake(&with(16, 0x00)), Err(Malformed::Intent));
        // The address's length runs past the packet.
        assert_eq!(handshake(&with(4, 0x30)), Err(Malformed::Text));
        // Not UTF-8.
        assert_eq!(handshake(&with(5, 0xff)), Err(Malformed::Text));
        // One byte more than its fields.
        let mut long = with(0, 0x11);
        long.insert(17, 0x00);
        assert_eq!(handshake(&long), Err(Malformed::Trailing));
        // Short of its fields: the intent, then the port, runs out.
        let mut short = with(0, 0x0f);
        short.truncate(16);
        assert_eq!(handshake(&short), Err(Malformed::Short));
        let mut short = with(0, 0x0e);
        short.truncate(15);
        assert_eq!(handshake(&short), Err(Malformed::Short));
        // HTTP and TLS are refused at their second byte.
        assert_eq!(handshake(b"GE"), Err(Malformed::Id));
        assert_eq!(handshake(&[0x16, 0x03, 0x01]), Err(Malformed::Id));
    }

    #[test]
    fn status_asks_other_than_status_and_ping_are_refused() {
        assert_eq!(status_ask(&[0x01, 0x02]), Err(Malformed::Id));
        assert_eq!(status_ask(&[0x02, 0x00, 0x00]), Err(Malformed::Trailing));
        assert_eq!(status_ask(&[0x05, 0x01, 0, 0, 0]), Ok(None));
        assert_eq!(status_ask(&[0x03, 0x01, 0, 0]), Err(Malformed::Short));
    }

    #[test]
    fn server_packets_carry_their_length() {
        assert_eq!(packet(0x01, &[1, 2, 3, 4, 5, 6, 7, 8])[..2], [0x09, 0x01]);
        let s = string(&"é".repeat(100));
        assert_eq!(&s[..2], &[0xc8, 0x01]); // 200 bytes
    }
}
