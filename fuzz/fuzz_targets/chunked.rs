//! The fast path's chunked decoder: however the body arrives in pieces,
//! it decodes the same, and what it writes for the client is plain chunks
//! that decode again to themselves with the same payload.
#![no_main]

use drowsy::proxy::fast::response::Chunked;
use libfuzzer_sys::fuzz_target;

/// Decodes `input` in pieces of `step` bytes: the output, the bytes used
/// and the payload length, or `None` when it is malformed or incomplete.
fn decode(input: &[u8], step: usize) -> Option<(Vec<u8>, usize, u64)> {
    let mut c = Chunked::new();
    let mut out = Vec::new();
    let mut used = 0;
    for piece in input.chunks(step.max(1)) {
        let n = c.decode(piece, &mut out).ok()?;
        used += n;
        if c.is_done() {
            return Some((out, used, c.payload));
        }
        assert_eq!(n, piece.len(), "an unfinished body uses every byte");
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input, input.len());
    let pieces = decode(input, usize::from(step % 16) + 1);
    assert_eq!(whole, pieces, "the pieces changed the outcome");
    let Some((out, used, payload)) = whole else {
        return;
    };
    assert!(used <= input.len());
    assert!(out.ends_with(b"0\r\n\r\n"));
    let again = decode(&out, out.len()).expect("the re-encoded body decodes");
    assert_eq!((&again.0, again.1, again.2), (&out, out.len(), payload));
});
