//! Any bytes as a TCP/TLS stream, delivered in two pieces: framing never panics, never
//! reports more bytes than it was given, and every frame it reports parses or is rejected.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sip_message::{frame_stream, parse_stream_message, Frame};

fuzz_target!(|data: &[u8]| {
    let mut buf: Vec<u8> = Vec::new();
    let split = data.first().map_or(0, |b| *b as usize % (data.len().max(1)));
    for piece in [&data[..split], &data[split..]] {
        buf.extend_from_slice(piece);
        loop {
            match frame_stream(&buf, 4096) {
                Ok(Frame::Incomplete) | Err(_) => break,
                Ok(Frame::Ping(n)) | Ok(Frame::Skip(n)) => {
                    assert!(n <= buf.len());
                    buf.drain(..n);
                }
                Ok(Frame::Message(n)) => {
                    assert!(n <= buf.len());
                    let _ = parse_stream_message(&buf[..n]);
                    buf.drain(..n);
                }
            }
        }
    }
});
