//! Division of nanosecond counts by the wheel's tick length without a `div` instruction.
//!
//! Every insert and reset converts a deadline to ticks: `nanos / tick_nanos`, rounded up. The divisor is
//! fixed when the wheel is built, so the division is done the way compilers divide by a constant
//! (Granlund and Montgomery, "Division by Invariant Integers using Multiplication", 1994, figure 4.1):
//! a multiply-high by a precomputed magic number, a subtraction, an addition and two shifts. A 64-bit
//! `div` takes tens of cycles and everything filed after it waits on it; this takes a few.
//!
//! With `l = ceil(log2(d))` and `m = floor(2^64 * (2^l - d) / d) + 1` (the low 64 bits of the 65-bit
//! magic `floor(2^(64 + l) / d) + 1`), for every `n < 2^64`:
//! `n / d == (t + ((n - t) >> min(l, 1))) >> max(l - 1, 0)` where `t = (n * m) >> 64`.
//! (`n - t` cannot underflow since `t <= n`; the halving before the add keeps the sum within 64 bits.)

/// A divisor `d >= 1` with its magic number. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Divisor {
    d: u64,
    magic: u64,
    /// `min(l, 1)`.
    shift1: u32,
    /// `max(l - 1, 0)`.
    shift2: u32,
}

impl Divisor {
    /// The divisor `d`; `None` for zero.
    pub(crate) const fn new(d: u64) -> Option<Divisor> {
        if d == 0 {
            return None;
        }
        // l = ceil(log2(d)): 0 for d = 1, 64 for d > 2^63.
        let l = 64 - (d - 1).leading_zeros();
        // floor(2^64 * (2^l - d) / d) + 1, computed in u128: (2^l - d) < d, so the quotient is < 2^64.
        let magic = (((1u128 << l) - d as u128) << 64) / d as u128 + 1;
        Some(Divisor {
            d,
            magic: magic as u64,
            shift1: if l > 0 { 1 } else { 0 },
            shift2: l.saturating_sub(1),
        })
    }

    /// The divisor itself.
    #[inline]
    pub(crate) fn get(self) -> u64 {
        self.d
    }

    /// `n / d`, rounded down.
    #[inline]
    pub(crate) fn floor(self, n: u64) -> u64 {
        let t = ((u128::from(n) * u128::from(self.magic)) >> 64) as u64;
        (t + ((n - t) >> self.shift1)) >> self.shift2
    }

    /// `n / d`, rounded up.
    #[inline]
    pub(crate) fn ceil(self, n: u64) -> u64 {
        let q = self.floor(n);
        // q * d <= n, so the product cannot overflow; it falls short of n exactly when there is a remainder.
        q + u64::from(q * self.d != n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(d: u64, n: u64) {
        let div = Divisor::new(d).expect("non-zero");
        assert_eq!(div.floor(n), n / d, "{n} / {d}");
        assert_eq!(div.ceil(n), n.div_ceil(d), "ceil({n} / {d})");
    }

    #[test]
    fn zero_is_refused() {
        assert_eq!(Divisor::new(0), None);
    }

    #[test]
    fn edges_agree_with_div() {
        let divisors = [
            1,
            2,
            3,
            7,
            1_000,
            1_000_000,
            1_000_000_000,
            (1 << 32) - 1,
            1 << 32,
            (1 << 63) - 1,
            1 << 63,
            (1 << 63) + 1,
            u64::MAX - 1,
            u64::MAX,
        ];
        for d in divisors {
            for n in [0, 1, d - 1, d, d.saturating_add(1), u64::MAX - 1, u64::MAX] {
                check(d, n);
            }
            for k in [2, 3, 1_000, 1 << 20] {
                if let Some(n) = d.checked_mul(k) {
                    check(d, n - 1);
                    check(d, n);
                    check(d, n.saturating_add(1));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn agrees_with_div(d in 1u64.., n in any::<u64>(), small in 1u64..10_000_000) {
            check(d, n);
            check(small, n);
        }
    }
}
