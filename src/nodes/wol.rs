//! Wake-on-LAN: the magic packet (6 bytes 0xFF, then the target's MAC 16
//! times; AMD's Magic Packet Technology white paper), sent over UDP to a
//! broadcast address, as Proxmox's own `wakeonlan` does.

use std::net::{Ipv4Addr, SocketAddr};
use tokio::net::UdpSocket;

pub fn magic_packet(mac: [u8; 6]) -> [u8; 102] {
    let mut p = [0xFF; 102];
    for chunk in p[6..].chunks_mut(6) {
        chunk.copy_from_slice(&mac);
    }
    p
}

/// Sends the packet a few times (UDP may drop one; a NIC wakes once).
pub async fn send(mac: [u8; 6], to: SocketAddr) -> std::io::Result<()> {
    let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    socket.set_broadcast(true)?;
    let packet = magic_packet(mac);
    for _ in 0..3 {
        socket.send_to(&packet, to).await?;
    }
    Ok(())
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_is_a_sync_stream_then_the_mac_sixteen_times() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let p = magic_packet(mac);
        assert_eq!(&p[..6], &[0xFF; 6]);
        assert!(p[6..].chunks(6).all(|c| c == mac));
        assert_eq!(p[6..].chunks(6).count(), 16);
        assert_eq!(crate::sim::parse_magic_packet(&p), Some(mac));
        assert_eq!(format_mac(&mac), "52:54:00:12:34:56");
    }
}
