//! Fuzz the JSON compatibility decoder: arbitrary bytes, split into arbitrary reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitals_proto::{JsonDecoder, JsonLimits, JsonMessage};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let limits = JsonLimits {
        max_object_size: 512,
        max_depth: 8,
        max_buffered: 1024,
    };
    let mut d = JsonDecoder::new(limits);
    let step = usize::from(split).max(1);
    for piece in bytes.chunks(step) {
        let n = piece.len().min(d.space());
        if d.push(&piece[..n]).is_err() {
            return;
        }
        loop {
            assert!(d.buffered() <= limits.max_buffered);
            match d.next_message() {
                Ok(Some(JsonMessage::Data(raw))) => {
                    // Data is always one valid JSON object.
                    assert_eq!(raw.first(), Some(&b'{'));
                    assert!(serde_json_valid(&raw));
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

fn serde_json_valid(raw: &[u8]) -> bool {
    // Re-decode with a fresh decoder: exactly one message, nothing left over.
    let mut d = JsonDecoder::new(JsonLimits::default());
    d.push(raw).is_ok() && matches!(d.next_message(), Ok(Some(_))) && d.buffered() == 0
}
