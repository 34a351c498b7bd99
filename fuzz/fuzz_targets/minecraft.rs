//! The Minecraft handshake and status packets a client sends to a
//! `protocol: minecraft` route: no panic on any bytes; a packet that
//! parses from a buffer parses the same from exactly its own bytes, every
//! shorter prefix asks for more, and a handshake written back parses to
//! the same handshake.
#![no_main]

use drowsy::proxy::stream::minecraft::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((hs, used))) = wire::handshake(data) {
        assert!(used <= data.len() && used <= wire::MAX_FRAME + 5);
        for cut in 0..used {
            assert_eq!(wire::handshake(&data[..cut]), Ok(None), "prefix {cut}");
        }
        assert_eq!(wire::handshake(&data[..used]), Ok(Some((hs.clone(), used))));
        let again = wire::handshake_packet(&hs);
        assert_eq!(
            wire::handshake(&again),
            Ok(Some((hs.clone(), again.len())))
        );
    }
    if let Ok(Some((ask, used))) = wire::status_ask(data) {
        for cut in 0..used {
            assert_eq!(wire::status_ask(&data[..cut]), Ok(None), "prefix {cut}");
        }
        assert_eq!(wire::status_ask(&data[..used]), Ok(Some((ask, used))));
    }
});
