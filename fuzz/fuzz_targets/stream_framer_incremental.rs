//! A TCP/TLS stream read in pieces: framing must not depend on where the reads ended.
//! The same bytes are fed to `frame_stream` whole, one byte at a time, and in chunks whose
//! sizes the input chooses; each way must find the same frames (kind and bytes), end in
//! the same state (the same kind of error, or the same bytes left over), and no message
//! frame may exceed the limit. Every message frame is self-delimiting: framed alone it is
//! exactly one message.
//!
//! Input: byte 0 picks the limit (64..=4144 bytes), byte 1 how many chunk sizes follow,
//! then the chunk sizes (1..=256 each, repeated), then the stream.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sip_message::{frame_stream, parse_stream_message, Frame, FrameError};

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Ping(Vec<u8>),
    Skip(Vec<u8>),
    Message(Vec<u8>),
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Incomplete, with these bytes still buffered.
    Waiting(Vec<u8>),
    TooLarge,
    MissingContentLength,
    BadContentLength,
}

fn end_of(e: &FrameError) -> End {
    match e {
        FrameError::TooLarge { .. } => End::TooLarge,
        FrameError::MissingContentLength { .. } => End::MissingContentLength,
        FrameError::BadContentLength(..) => End::BadContentLength,
    }
}

/// Frames what `buf` holds; `Some(end)` once the stream is dead.
fn drain(buf: &mut Vec<u8>, max: usize, out: &mut Vec<Event>) -> Option<End> {
    loop {
        match frame_stream(buf, max) {
            Ok(Frame::Incomplete) => return None,
            Err(e) => return Some(end_of(&e)),
            Ok(Frame::Ping(n)) => {
                assert!(n > 0 && n <= buf.len());
                out.push(Event::Ping(buf.drain(..n).collect()));
            }
            Ok(Frame::Skip(n)) => {
                assert!(n > 0 && n <= buf.len());
                out.push(Event::Skip(buf.drain(..n).collect()));
            }
            Ok(Frame::Message(n)) => {
                assert!(n > 0 && n <= buf.len());
                assert!(n <= max, "a {n}-byte frame exceeds the {max}-byte limit");
                let frame: Vec<u8> = buf.drain(..n).collect();
                assert_eq!(frame_stream(&frame, max), Ok(Frame::Message(n)), "a frame framed alone is itself");
                let _ = parse_stream_message(&frame);
                out.push(Event::Message(frame));
            }
        }
    }
}

/// Feeds `stream` in pieces of the sizes `sizes` yields.
fn feed(stream: &[u8], max: usize, mut sizes: impl FnMut() -> usize) -> (Vec<Event>, End) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = sizes().clamp(1, stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        if let Some(end) = drain(&mut buf, max, &mut out) {
            return (out, end);
        }
    }
    (out, End::Waiting(buf))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = 64 + data[0] as usize * 16;
    let k = data[1] as usize % 16;
    let Some(sizes) = data.get(2..2 + k) else { return };
    let stream = &data[2 + k..];
    let sizes: Vec<usize> = sizes.iter().map(|&s| s as usize + 1).collect();

    let whole = feed(stream, max, || usize::MAX);
    let bytewise = feed(stream, max, || 1);
    assert_eq!(bytewise, whole, "byte by byte differs from all at once");
    if !sizes.is_empty() {
        let mut i = 0;
        let chunked = feed(stream, max, || {
            i += 1;
            sizes[(i - 1) % sizes.len()]
        });
        assert_eq!(chunked, whole, "chunks {sizes:?} differ from all at once");
    }
});
