//! Fuzz the binary frame decoder: arbitrary bytes, split into arbitrary reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitals_proto::{FrameDecoder, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_frame_size: 256,
        max_buffered: 512,
    };
    let mut d = FrameDecoder::new(limits);
    let step = usize::from(split).max(1);
    for piece in bytes.chunks(step) {
        let n = piece.len().min(d.space());
        if d.push(&piece[..n]).is_err() {
            return;
        }
        loop {
            assert!(d.buffered() <= limits.max_buffered);
            match d.next_frame() {
                Ok(Some(frame)) => {
                    // Whatever decodes re-encodes to bytes that decode to the same frame.
                    let mut out = Vec::new();
                    frame.encode(&mut out);
                    let mut again = FrameDecoder::new(Limits::default());
                    again.push(&out).unwrap();
                    assert_eq!(again.next_frame().unwrap().as_ref(), Some(&frame));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
