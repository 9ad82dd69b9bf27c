//! The cost of framing a header that arrives one octet per read (a slowloris peer), for
//! instruction counts under callgrind:
//!
//! ```sh
//! cargo build --release -p sip-message --example trickle
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/trickle stateless
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/trickle resumed
//! ```
//! `stateless` calls [`frame_stream`] after every octet, as the transport did (it scans
//! the buffer from the start each time: quadratic); `resumed` keeps a [`StreamFramer`], as
//! the transport does now (linear).
use sip_message::{frame_stream, Frame, StreamFramer};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "resumed".into());
    let size: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(32 * 1024);
    let mut msg = b"OPTIONS sip:x SIP/2.0\r\n".to_vec();
    while msg.len() < size {
        msg.extend_from_slice(b"X-Pad: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n");
    }
    msg.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    let mut framer = StreamFramer::default();
    let mut frames = 0;
    for end in 1..=msg.len() {
        let buf = &msg[..end];
        let f = match mode.as_str() {
            "stateless" => frame_stream(buf, 1 << 20),
            _ => framer.next_frame(buf, 1 << 20),
        };
        if let Ok(Frame::Message(_)) = f {
            frames += 1;
        }
    }
    assert_eq!(frames, 1);
    println!("{mode}: {} octets framed one at a time", msg.len());
}
