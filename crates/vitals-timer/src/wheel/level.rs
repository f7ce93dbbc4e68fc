//! Slot math for the hierarchical wheel: which level and slot a deadline belongs to, found by bit operations.
//!
//! Time is counted in ticks (`u64`). Level `L` has [`SLOTS`] slots, each `64^L` ticks wide, so a level
//! spans `64^(L+1)` ticks. [`LEVELS`] = 11 levels cover every `u64` tick value (`64^11 = 2^66`), so no
//! deadline is ever out of range: the top level simply has only 16 of its 64 slots reachable.
//!
//! An entry due at `when` is filed at the level of the highest 6-bit group in which `when` differs from the
//! wheel's current time `elapsed` (the scheme of tokio's time driver): everything on a lower level is due
//! before anything on a higher level, so the next expiration is always found on the lowest occupied level.

/// Slots per level. Must be 64: each level's occupancy is one `u64` bitmap.
pub(crate) const SLOTS: usize = 64;
/// Bits of a tick value consumed per level (`log2(SLOTS)`).
pub(crate) const SLOT_BITS: u32 = 6;
/// Mask of one level's slot index.
pub(crate) const SLOT_MASK: u64 = (SLOTS as u64) - 1;
/// Levels needed so that `SLOTS^LEVELS >= 2^64`: every `u64` deadline has a slot.
pub(crate) const LEVELS: usize = 11;

/// The level at which an entry due at `when` is filed, given the wheel's current time `elapsed`.
///
/// `when <= elapsed` lands on level 0 (the caller treats it as due at once).
#[inline]
pub(crate) fn level_for(elapsed: u64, when: u64) -> usize {
    // Force the lowest 6 bits on so that equal values map to level 0, then find the highest differing bit.
    let masked = (elapsed ^ when) | SLOT_MASK;
    let significant = 63 - masked.leading_zeros();
    (significant / SLOT_BITS) as usize
}

/// The slot index of tick `when` at `level`.
#[inline]
pub(crate) fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize
}

/// Where the next occupied slot of one level starts, seen from `elapsed`.
///
/// `occupied` is the level's bitmap. Returns `(slot, first tick of that slot)`, or `None` when the level is
/// empty. The slot that holds `elapsed` itself counts as the first candidate. Computed in `u128` because the
/// top level spans `2^66` ticks.
#[inline]
pub(crate) fn next_occupied(occupied: u64, level: usize, elapsed: u64) -> Option<(usize, u64)> {
    if occupied == 0 {
        return None;
    }
    let now_slot = slot_for(elapsed, level) as u32;
    let distance = occupied.rotate_right(now_slot).trailing_zeros();
    let slot = ((now_slot + distance) as u64 & SLOT_MASK) as usize;

    let slot_bits = level as u32 * SLOT_BITS;
    let level_bits = slot_bits + SLOT_BITS;
    let level_range: u128 = 1u128 << level_bits;
    let level_start: u128 = (elapsed as u128) & !(level_range - 1);
    let mut start = level_start + ((slot as u128) << slot_bits);
    if start + (1u128 << slot_bits) <= elapsed as u128 {
        // The slot lies behind `elapsed` in this rotation: it belongs to the next turn of the level.
        start += level_range;
    }
    // Never report a start before `elapsed`: the slot holding `elapsed` is due now.
    let start = start.max(elapsed as u128);
    Some((slot, u64::try_from(start).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_zero_for_near_deadlines() {
        assert_eq!(level_for(0, 0), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(64, 127), 0);
        assert_eq!(level_for(63, 64), 1);
        assert_eq!(level_for(0, 4095), 1);
        assert_eq!(level_for(0, 4096), 2);
    }

    #[test]
    fn top_level_covers_u64_max() {
        assert_eq!(level_for(0, u64::MAX), LEVELS - 1);
        assert_eq!(slot_for(u64::MAX, LEVELS - 1), 15);
    }

    #[test]
    fn next_occupied_wraps_to_next_rotation() {
        // Level 0, elapsed at slot 10, only slot 3 occupied: the next turn, tick 64 + 3.
        assert_eq!(next_occupied(1 << 3, 0, 10), Some((3, 67)));
        // The current slot counts.
        assert_eq!(next_occupied(1 << 10, 0, 10), Some((10, 10)));
        // Level 1: slot 2 starts at tick 128.
        assert_eq!(next_occupied(1 << 2, 1, 5), Some((2, 128)));
        assert_eq!(next_occupied(0, 1, 5), None);
    }
}
