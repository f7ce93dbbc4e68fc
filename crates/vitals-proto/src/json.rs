//! JSON compatibility codec: back-to-back `{"ping":N}` / `{"pong":N}` objects, no delimiter.
//!
//! A scanner finds object boundaries (aware of strings and escapes, with a nesting limit),
//! resuming where it stopped when more bytes arrive, so an object split across reads costs
//! no rescanning. A complete object is then classified: `{"ping":N}` / `{"pong":N}` with a
//! non-negative integer `N` (whitespace allowed anywhere JSON allows it) are heartbeats, any
//! other valid object is a data message (its raw bytes), and invalid JSON is an error.
//! Whitespace (including newlines) between objects is skipped; anything else there is an error.

use crate::error::JsonError;

/// Limits of the JSON decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Largest accepted object, in bytes. Default 64 KiB.
    pub max_object_size: usize,
    /// Deepest accepted nesting of objects and arrays (1 = a flat object). Default 32, at most 128.
    pub max_depth: u32,
    /// Most bytes held undecoded. Default 128 KiB.
    pub max_buffered: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            max_object_size: 64 * 1024,
            max_depth: 32,
            max_buffered: 128 * 1024,
        }
    }
}

/// One decoded JSON message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonMessage {
    /// `{"ping":N}`.
    Ping(u64),
    /// `{"pong":N}`.
    Pong(u64),
    /// Any other object, as its raw bytes (valid JSON).
    Data(Vec<u8>),
}

/// Above this capacity an emptied buffer is released.
const SHRINK_ABOVE: usize = 4096;
/// The bracket stack is a bit set (1 = `[`), so depth is capped at 128.
const MAX_DEPTH_CAP: u32 = 128;

/// Incremental decoder of back-to-back JSON objects.
#[derive(Debug, Default)]
pub struct JsonDecoder {
    limits: JsonLimits,
    buf: Vec<u8>,
    /// Start of the current object (or of unscanned inter-object bytes).
    start: usize,
    /// Where scanning resumes.
    pos: usize,
    /// Where the scanner is inside the current object.
    scanner: Scanner,
    /// Stream offset of `buf[0]`.
    base: u64,
    poisoned: bool,
}

impl JsonDecoder {
    /// A decoder with the given limits (`max_depth` is capped at 128).
    pub fn new(mut limits: JsonLimits) -> JsonDecoder {
        limits.max_depth = limits.max_depth.min(MAX_DEPTH_CAP);
        JsonDecoder {
            limits,
            ..JsonDecoder::default()
        }
    }

    /// Bytes held but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// How many more bytes [`push`](Self::push) accepts right now.
    pub fn space(&self) -> usize {
        self.limits.max_buffered.saturating_sub(self.buffered())
    }

    /// Append received bytes (at most [`space`](Self::space)); drain with
    /// [`next_message`](Self::next_message) between pushes.
    pub fn push(&mut self, input: &[u8]) -> Result<(), JsonError> {
        if self.poisoned {
            return Err(JsonError::Poisoned);
        }
        let buffered = self.buffered() + input.len();
        if buffered > self.limits.max_buffered {
            self.poisoned = true;
            return Err(JsonError::BufferFull {
                buffered,
                max: self.limits.max_buffered,
            });
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.base += self.start as u64;
            self.start = 0;
        }
        self.buf.extend_from_slice(input);
        Ok(())
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<JsonMessage>, JsonError> {
        if self.poisoned {
            return Err(JsonError::Poisoned);
        }
        match self.scan() {
            Ok(Some(end)) => {
                let obj = self.buf.get(self.start..end).unwrap_or(&[]);
                let msg = classify(obj);
                self.start = end;
                self.pos = end;
                if self.start == self.buf.len() {
                    self.base += self.buf.len() as u64;
                    self.buf.clear();
                    self.start = 0;
                    self.pos = 0;
                    if self.buf.capacity() > SHRINK_ABOVE {
                        self.buf = Vec::new();
                    }
                }
                msg.map(Some).inspect_err(|_| self.poisoned = true)
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Advance the scanner; `Some(end)` when the object starting at `self.start` ends at `end`.
    fn scan(&mut self) -> Result<Option<usize>, JsonError> {
        self.scanner.scan(
            &self.buf,
            &mut self.start,
            &mut self.pos,
            self.base,
            0,
            &self.limits,
        )
    }
}

/// The resumable state of the object scanner: where it is inside the current object.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Scanner {
    /// Nesting depth inside the current object (0 = between objects).
    depth: u32,
    /// Bit i set: level i+1 was opened by `[`.
    stack: u128,
    in_string: bool,
    escape: bool,
}

impl Scanner {
    /// Scan `buf[*pos..]`. `*start` is where the current object (or the unscanned bytes
    /// between objects) starts in `buf`; `carried` bytes of the object precede `buf` (they were
    /// scanned before); `base` is the stream offset of `buf[0]`. Returns `Some(end)` when the
    /// object closes at `end` (exclusive), `None` when `buf` ran out first.
    pub(crate) fn scan(
        &mut self,
        buf: &[u8],
        start: &mut usize,
        pos: &mut usize,
        base: u64,
        carried: usize,
        limits: &JsonLimits,
    ) -> Result<Option<usize>, JsonError> {
        while let Some(&b) = buf.get(*pos) {
            let offset = base + *pos as u64;
            *pos += 1;
            if self.depth == 0 {
                match b {
                    b' ' | b'\t' | b'\n' | b'\r' => {
                        *start = *pos;
                        continue;
                    }
                    b'{' => {
                        self.depth = 1;
                        self.stack = 0;
                        continue;
                    }
                    _ => return Err(JsonError::NotAnObject { byte: b, offset }),
                }
            }
            if carried + *pos - *start > limits.max_object_size {
                return Err(JsonError::ObjectTooLarge {
                    max: limits.max_object_size,
                });
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if self.depth >= limits.max_depth {
                        return Err(JsonError::TooDeep {
                            max: limits.max_depth,
                        });
                    }
                    if b == b'[' {
                        self.stack |= 1u128 << self.depth;
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    self.depth -= 1;
                    let opened_by_bracket = self.stack & (1u128 << self.depth) != 0;
                    self.stack &= !(1u128 << self.depth);
                    if opened_by_bracket != (b == b']') {
                        return Err(JsonError::Mismatched {
                            found: b as char,
                            offset,
                        });
                    }
                    if self.depth == 0 {
                        return Ok(Some(*pos));
                    }
                }
                _ => {}
            }
        }
        if self.depth > 0 && carried + *pos - *start > limits.max_object_size {
            return Err(JsonError::ObjectTooLarge {
                max: limits.max_object_size,
            });
        }
        Ok(None)
    }
}

/// Classify a complete, bracket-balanced object.
pub(crate) fn classify(obj: &[u8]) -> Result<JsonMessage, JsonError> {
    if let Some(m) = fast_heartbeat(obj) {
        return Ok(m);
    }
    let value: serde_json::Value =
        serde_json::from_slice(obj).map_err(|e| JsonError::Invalid(e.to_string()))?;
    if let serde_json::Value::Object(map) = &value
        && map.len() == 1
    {
        if let Some(n) = map.get("ping").and_then(serde_json::Value::as_u64) {
            return Ok(JsonMessage::Ping(n));
        }
        if let Some(n) = map.get("pong").and_then(serde_json::Value::as_u64) {
            return Ok(JsonMessage::Pong(n));
        }
    }
    Ok(JsonMessage::Data(obj.to_vec()))
}

/// Longest object [`heartbeat_at_start`] looks for.
const SHORT_HEARTBEAT: usize = 64;

/// A heartbeat object (`{"ping":N}` / `{"pong":N}`, as [`classify`] reads it) at the very start of
/// `data`, with its length — found without the general scanner, for the common case of a read that
/// holds one short heartbeat. Only objects of at most 64 bytes that also fit `limits` are taken; for
/// anything else (`None`) the caller scans as usual, with the same outcome it would have had.
pub(crate) fn heartbeat_at_start(data: &[u8], limits: &JsonLimits) -> Option<(JsonMessage, usize)> {
    let most = SHORT_HEARTBEAT
        .min(limits.max_object_size)
        .min(limits.max_buffered);
    let window = data.get(..most).unwrap_or(data);
    // A heartbeat has no string or object holding a `}`: its first `}` ends it.
    let end = window.iter().position(|&b| b == b'}')? + 1;
    if limits.max_depth == 0 {
        return None;
    }
    fast_heartbeat(&data[..end]).map(|m| (m, end))
}

/// Allocation-free recognition of `{ "ping" : 123 }` / `{ "pong" : 123 }`.
fn fast_heartbeat(obj: &[u8]) -> Option<JsonMessage> {
    fn ws(s: &[u8]) -> &[u8] {
        let n = s
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
        s.get(n..).unwrap_or(&[])
    }
    let s = ws(obj.strip_prefix(b"{")?);
    let (is_ping, s) = if let Some(r) = s.strip_prefix(b"\"ping\"") {
        (true, r)
    } else {
        (false, s.strip_prefix(b"\"pong\"")?)
    };
    let s = ws(ws(s).strip_prefix(b":")?);
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    let (num, rest) = s.split_at_checked(digits)?;
    // JSON forbids leading zeros ("01"); leave such text to serde_json to reject.
    if num.is_empty() || (num.len() > 1 && num.first() == Some(&b'0')) {
        return None;
    }
    if ws(rest) != b"}" {
        return None;
    }
    let mut n: u64 = 0;
    for d in num {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(if is_ping {
        JsonMessage::Ping(n)
    } else {
        JsonMessage::Pong(n)
    })
}

/// Append `{"ping":n}`.
pub fn encode_json_ping(out: &mut Vec<u8>, n: u64) {
    encode_json_number(out, b"{\"ping\":", n);
}

/// Append `{"pong":n}`.
pub fn encode_json_pong(out: &mut Vec<u8>, n: u64) {
    encode_json_number(out, b"{\"pong\":", n);
}

/// Append `head`, the decimal digits of `n` and `}` (a heartbeat's hot path: no formatter).
fn encode_json_number(out: &mut Vec<u8>, head: &[u8], mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(head);
    out.extend_from_slice(&digits[i..]);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(d: &mut JsonDecoder) -> Vec<JsonMessage> {
        let mut v = Vec::new();
        while let Some(m) = d.next_message().unwrap() {
            v.push(m);
        }
        v
    }

    #[test]
    fn back_to_back_objects_split_anywhere() {
        let stream = b"{\"ping\":10}{\"pong\":11}\n {\"msg\":\"a}\\\"{\",\"x\":[1,{\"y\":2}]}\r\n{ \"ping\" : 7 }";
        let expected = vec![
            JsonMessage::Ping(10),
            JsonMessage::Pong(11),
            JsonMessage::Data(b"{\"msg\":\"a}\\\"{\",\"x\":[1,{\"y\":2}]}".to_vec()),
            JsonMessage::Ping(7),
        ];
        for split in 0..stream.len() {
            let mut d = JsonDecoder::new(JsonLimits::default());
            let (a, b) = stream.split_at(split);
            d.push(a).unwrap();
            let mut got = all(&mut d);
            d.push(b).unwrap();
            got.extend(all(&mut d));
            assert_eq!(got, expected, "split at {split}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn escaped_key_still_counts_as_ping() {
        let mut d = JsonDecoder::new(JsonLimits::default());
        d.push(br#"{"\u0070ing":3}{"ping":"x"}"#).unwrap();
        assert_eq!(
            all(&mut d),
            vec![
                JsonMessage::Ping(3),
                JsonMessage::Data(br#"{"ping":"x"}"#.to_vec())
            ]
        );
    }

    #[test]
    fn limits_and_garbage_are_typed_errors() {
        let limits = JsonLimits {
            max_object_size: 16,
            max_depth: 2,
            max_buffered: 64,
        };
        let mut d = JsonDecoder::new(limits);
        d.push(b"  x").unwrap();
        assert_eq!(
            d.next_message(),
            Err(JsonError::NotAnObject {
                byte: b'x',
                offset: 2
            })
        );
        let mut d = JsonDecoder::new(limits);
        d.push(b"{\"a\":[[1]]}").unwrap();
        assert_eq!(d.next_message(), Err(JsonError::TooDeep { max: 2 }));
        let mut d = JsonDecoder::new(limits);
        d.push(b"{\"a\":\"0123456789abcdef\"}").unwrap();
        assert_eq!(d.next_message(), Err(JsonError::ObjectTooLarge { max: 16 }));
        let mut d = JsonDecoder::new(limits);
        d.push(b"{\"a\":[}").unwrap();
        assert_eq!(
            d.next_message(),
            Err(JsonError::Mismatched {
                found: '}',
                offset: 6
            })
        );
        let mut d = JsonDecoder::new(limits);
        d.push(b"{\"a\" 1}").unwrap();
        assert!(matches!(d.next_message(), Err(JsonError::Invalid(_))));
        let mut d = JsonDecoder::new(limits);
        assert!(matches!(
            d.push(&[b' '; 65]),
            Err(JsonError::BufferFull { buffered: 65, .. })
        ));
    }

    #[test]
    fn encoders_produce_what_the_decoder_reads() {
        let mut out = Vec::new();
        encode_json_ping(&mut out, 10);
        encode_json_pong(&mut out, u64::MAX);
        assert_eq!(
            out,
            format!("{{\"ping\":10}}{{\"pong\":{}}}", u64::MAX).into_bytes()
        );
        let mut d = JsonDecoder::new(JsonLimits::default());
        d.push(&out).unwrap();
        assert_eq!(
            all(&mut d),
            vec![JsonMessage::Ping(10), JsonMessage::Pong(u64::MAX)]
        );
        let limits = JsonLimits::default();
        assert_eq!(
            heartbeat_at_start(b"{\"ping\":41}{\"ping\":42}", &limits),
            Some((JsonMessage::Ping(41), 11))
        );
        assert_eq!(
            heartbeat_at_start(b"{ \"pong\" : 7 }\n", &limits),
            Some((JsonMessage::Pong(7), 14))
        );
        for not in [
            &b"{\"ping\":01}"[..],
            b"{\"pi}ng\":1}",
            b"{\"ping\":1",
            b"{\"chat\":\"}\"}",
            b"{\"ping\":1,\"x\":2}",
            b"{\"ping\":99999999999999999999}",
        ] {
            assert_eq!(heartbeat_at_start(not, &limits), None, "{not:?}");
        }
        let tiny = JsonLimits {
            max_object_size: 8,
            ..limits
        };
        assert_eq!(heartbeat_at_start(b"{\"ping\":1}", &tiny), None);
        for n in [0, 1, 9, 10, 99, 100, 12_345_678_901, u64::MAX - 1] {
            let mut out = Vec::new();
            encode_json_pong(&mut out, n);
            assert_eq!(out, format!("{{\"pong\":{n}}}").into_bytes());
        }
    }
}
