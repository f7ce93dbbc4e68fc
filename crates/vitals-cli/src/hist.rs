//! An RTT histogram as text, so that a worker process can hand it to the process that aggregates
//! (a `vitals serve` supervisor, a `vitals bench` parent): HdrHistogram's V2 + deflate encoding, in
//! hex. Merging the decoded histograms gives exact percentiles of the whole, which averaging the
//! workers' percentiles would not.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

/// `h` as hex text.
pub(crate) fn encode(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot encode the histogram: {e:?}"))?;
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(HEX[usize::from(b >> 4)]));
        text.push(char::from(HEX[usize::from(b & 15)]));
    }
    Ok(text)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The histogram [`encode`] wrote.
pub(crate) fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    let digit = |c: u8| -> anyhow::Result<u8> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => anyhow::bail!("not a hex digit: {c:#x}"),
        }
    };
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        anyhow::bail!("odd hex length {}", text.len());
    }
    let mut bytes = Vec::with_capacity(text.len() / 2);
    for pair in text.chunks_exact(2) {
        bytes.push(digit(pair[0])? << 4 | digit(pair[1])?);
    }
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("cannot decode the histogram: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_survives_the_round_trip_and_merges() {
        let mut a = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in [1u64, 80, 81, 2_000, 1_000_000] {
            a.record(v).unwrap();
        }
        let back = decode(&encode(&a).unwrap()).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), a.max());
        assert_eq!(back.value_at_quantile(0.5), a.value_at_quantile(0.5));
        let mut sum = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        sum.add(&back).unwrap();
        sum.add(&back).unwrap();
        assert_eq!(sum.len(), 10);
        assert!(decode("zz").is_err());
        assert!(decode("abc").is_err());
    }
}
