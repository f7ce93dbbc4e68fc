//! `Wheel<T>`: a hierarchical timing wheel over a slab, with O(1) insert, cancel and reset.
//!
//! # Shape
//! 11 levels of 64 slots, one occupancy bitmap per level (`wheel/level.rs` holds the slot
//! math). Entries live in a slab (`wheel/slab.rs`) and are addressed by a [`Key`] = (index, generation), so a key
//! that outlived its entry is reported as [`Error::StaleKey`], never a panic. Each slot is a list of
//! slab indices and each entry knows its position in it, so cancel and reset leave a list in O(1)
//! (`swap_remove`); emptying a slot walks a contiguous array whose entry loads overlap in the cache.
//!
//! # Time
//! The wheel counts ticks (default 1 ms) from an `origin` instant. A deadline is rounded *up* to a tick and
//! `now` is rounded *down*, so an entry never fires before its deadline, and fires at the first
//! `poll(now)` whose `now` has reached its deadline rounded up to a whole tick: within one tick of it.
//! Every `u64` tick is representable (11 levels cover 2^66 ticks), so far deadlines are filed, not dropped.
//!
//! # Lazy re-filing
//! A reset to a *later* deadline (the heartbeat hot path: "the peer spoke, push its deadline back") only
//! stores the new deadline; the entry stays in its old slot and is re-filed when that slot comes due. A reset
//! to an earlier deadline is re-linked at once. Consequence: [`Wheel::next_deadline`] may name a time at
//! which `poll` returns nothing (it is never later than the true earliest deadline).
//!
//! # Order
//! `poll` hands out every entry due by `now`. Entries that came due in one call are returned slot by slot,
//! not strictly sorted by deadline; callers that need strict order sort the batch (the [`Timer`] does).
//!
//! [`Timer`]: crate::Timer

pub(crate) mod level;
pub(crate) mod slab;

use std::time::{Duration, Instant};

use crate::Error;
use level::{LEVELS, SLOTS, level_for, next_occupied, slot_for};
use slab::{PENDING, Slab, VACANT};

/// Default tick: one millisecond.
pub const DEFAULT_TICK: Duration = Duration::from_millis(1);

/// Names one entry of a [`Wheel`]. Cheap to copy; detects reuse of its slot through a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    index: u32,
    generation: u32,
}

/// An entry handed out by [`Wheel::poll`]: its key (now stale), payload and deadline.
#[derive(Debug)]
pub struct Expired<T> {
    /// The key the entry had. It is stale now: the entry has left the wheel.
    pub key: Key,
    /// The payload given at insert.
    pub value: T,
    /// The deadline, in ticks since the wheel's origin.
    pub deadline_tick: u64,
}

/// A hierarchical timing wheel. See the [module docs](self).
#[derive(Debug)]
pub struct Wheel<T> {
    origin: Instant,
    tick_nanos: u64,
    /// Ticks since origin up to which all slots have been processed.
    elapsed: u64,
    slab: Slab<T>,
    /// Slot lists, `level * SLOTS + slot`. May hold tombstones: indices of entries that left the list
    /// (cancelled or re-filed) and are skipped when the slot is emptied.
    lists: Box<[Vec<u32>]>,
    /// Entries really in each list (the rest are tombstones).
    live: Box<[u32]>,
    occupied: [u64; LEVELS],
    /// Entries that are due and wait to be handed out by `poll`.
    pending: Vec<u32>,
    /// The last `now` given to [`poll`](Wheel::poll) and its tick: callers drain with one `now` many times,
    /// so the `Instant` → tick conversion (a subtraction and a division) is done once per drain.
    last_poll: Option<(Instant, u64)>,
}

impl<T> Wheel<T> {
    /// A wheel with the default 1 ms tick whose tick 0 is `origin`.
    pub fn new(origin: Instant) -> Self {
        Self::build(origin, DEFAULT_TICK.as_nanos() as u64, 0)
    }

    /// A wheel with the given tick length and room for `capacity` entries before it allocates.
    ///
    /// Errors with [`Error::ZeroTick`] for a zero tick. Ticks longer than 584 years are clamped.
    pub fn with_tick(origin: Instant, tick: Duration, capacity: usize) -> Result<Self, Error> {
        let nanos = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Err(Error::ZeroTick);
        }
        Ok(Self::build(origin, nanos, capacity))
    }

    fn build(origin: Instant, tick_nanos: u64, capacity: usize) -> Self {
        Wheel {
            origin,
            tick_nanos,
            elapsed: 0,
            slab: Slab::with_capacity(capacity),
            lists: (0..LEVELS * SLOTS).map(|_| Vec::new()).collect(),
            live: vec![0; LEVELS * SLOTS].into_boxed_slice(),
            occupied: [0; LEVELS],
            pending: Vec::new(),
            last_poll: None,
        }
    }

    /// The instant of tick 0.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// The length of one tick.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_nanos)
    }

    /// Number of entries in the wheel (filed or due but not yet polled).
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True when the wheel holds no entry.
    pub fn is_empty(&self) -> bool {
        self.slab.len() == 0
    }

    /// The tick up to which the wheel has processed time.
    pub fn elapsed_tick(&self) -> u64 {
        self.elapsed
    }

    /// `instant` as a tick, rounded up (deadlines never fire early). Instants before the origin are tick 0.
    pub fn tick_ceil(&self, instant: Instant) -> u64 {
        let d = instant.saturating_duration_since(self.origin);
        let nanos = duration_nanos(d);
        nanos / self.tick_nanos + u64::from(!nanos.is_multiple_of(self.tick_nanos))
    }

    /// `instant` as a tick, rounded down (used for `now`).
    pub fn tick_floor(&self, instant: Instant) -> u64 {
        duration_nanos(instant.saturating_duration_since(self.origin)) / self.tick_nanos
    }

    /// The instant at which tick `tick` begins (saturating far in the future).
    pub fn instant_of(&self, tick: u64) -> Instant {
        let nanos = u128::from(tick) * u128::from(self.tick_nanos);
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        let d = Duration::new(secs, (nanos % 1_000_000_000) as u32);
        self.origin
            .checked_add(d)
            .unwrap_or_else(|| far_future(self.origin))
    }

    /// Inserts `value` due at `deadline`. O(1).
    pub fn insert(&mut self, deadline: Instant, value: T) -> Result<Key, Error> {
        let tick = self.tick_ceil(deadline);
        self.insert_at_tick(tick, value)
    }

    /// Inserts `value` due at tick `tick`. O(1).
    pub fn insert_at_tick(&mut self, tick: u64, value: T) -> Result<Key, Error> {
        let (index, generation) = self
            .slab
            .alloc(value, tick)
            .ok_or(Error::Full(self.slab.len()))?;
        self.file(index);
        Ok(Key { index, generation })
    }

    /// Removes the entry and returns its payload. O(1). A stale key is [`Error::StaleKey`].
    pub fn cancel(&mut self, key: Key) -> Result<T, Error> {
        self.check(key)?;
        self.unlink(key.index);
        self.slab.free(key.index).ok_or(Error::StaleKey)
    }

    /// Moves the entry's deadline to `deadline`. O(1); a later deadline re-files lazily.
    pub fn reset(&mut self, key: Key, deadline: Instant) -> Result<(), Error> {
        let tick = self.tick_ceil(deadline);
        self.reset_to_tick(key, tick)
    }

    /// Moves the entry's deadline to tick `tick`. O(1); a later deadline re-files lazily.
    pub fn reset_to_tick(&mut self, key: Key, tick: u64) -> Result<(), Error> {
        let (old, level) = {
            let entry = self
                .slab
                .get(key.index, key.generation)
                .ok_or(Error::StaleKey)?;
            (entry.deadline, entry.level)
        };
        if tick >= old && level != PENDING {
            // Lazy: the entry's slot comes due no later than the new deadline; it is re-filed then.
            self.slab.at_mut(key.index).deadline = tick;
            return Ok(());
        }
        self.unlink(key.index);
        self.slab.at_mut(key.index).deadline = tick;
        self.file(key.index);
        Ok(())
    }

    /// The entry's deadline in ticks.
    pub fn deadline_tick(&self, key: Key) -> Result<u64, Error> {
        self.slab
            .get(key.index, key.generation)
            .map(|e| e.deadline)
            .ok_or(Error::StaleKey)
    }

    /// The entry's payload, if the key is live.
    pub fn get(&self, key: Key) -> Option<&T> {
        self.slab.value(key.index, key.generation)
    }

    /// The entry's payload, mutably, if the key is live.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        self.slab.value_mut(key.index, key.generation)
    }

    /// True when `key` names an entry still in the wheel.
    pub fn contains(&self, key: Key) -> bool {
        self.slab.get(key.index, key.generation).is_some()
    }

    /// Hands out one entry due at or before `now`, or `None` when nothing more is due. Call it until it
    /// returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Expired<T>> {
        let tick = match self.last_poll {
            Some((instant, tick)) if instant == now => tick,
            _ => {
                let tick = self.tick_floor(now);
                self.last_poll = Some((now, tick));
                tick
            }
        };
        self.poll_tick(tick)
    }

    /// [`poll`](Self::poll) with `now` given in ticks.
    pub fn poll_tick(&mut self, now: u64) -> Option<Expired<T>> {
        loop {
            if let Some(index) = self.pending.pop() {
                let entry = self.slab.at(index);
                let key = Key {
                    index,
                    generation: entry.generation,
                };
                let deadline_tick = entry.deadline;
                let value = self.slab.free(index)?;
                return Some(Expired {
                    key,
                    value,
                    deadline_tick,
                });
            }
            match self.next_expiration() {
                Some((level, slot, start)) if start <= now => {
                    self.process_slot(level, slot, start, now)
                }
                _ => {
                    self.elapsed = self.elapsed.max(now);
                    return None;
                }
            }
        }
    }

    /// When to call `poll` next: the start of the earliest occupied slot (due entries: the current tick).
    /// `None` when the wheel is empty. Never later than the earliest deadline; may be earlier after lazy
    /// resets.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_deadline_tick().map(|t| self.instant_of(t))
    }

    /// [`next_deadline`](Self::next_deadline) in ticks.
    pub fn next_deadline_tick(&self) -> Option<u64> {
        if !self.pending.is_empty() {
            return Some(self.elapsed);
        }
        self.next_expiration().map(|(_, _, start)| start)
    }

    fn check(&self, key: Key) -> Result<(), Error> {
        self.slab
            .get(key.index, key.generation)
            .map(|_| ())
            .ok_or(Error::StaleKey)
    }

    /// Lists entry `index` where its deadline belongs: due now → pending, else its level and slot.
    fn file(&mut self, index: u32) {
        let when = self.slab.at(index).deadline;
        if when <= self.elapsed {
            let pos = self.pending.len() as u32;
            self.pending.push(index);
            let entry = self.slab.at_mut(index);
            entry.level = PENDING;
            entry.pos = pos;
            return;
        }
        let level = level_for(self.elapsed, when);
        let slot = slot_for(when, level);
        let i = level * SLOTS + slot;
        let list = &mut self.lists[i];
        let pos = list.len() as u32;
        list.push(index);
        self.live[i] += 1;
        self.occupied[level] |= 1 << slot;
        let entry = self.slab.at_mut(index);
        entry.level = level as u8;
        entry.slot = slot as u8;
        entry.pos = pos;
    }

    /// Takes entry `index` out of whatever list holds it, in O(1). From the pending list it is removed
    /// (`swap_remove`); from a slot list it leaves a tombstone — no other entry is touched, which keeps a
    /// cancel to one cache miss. A list whose entries are all gone is cleared; one that is mostly
    /// tombstones is compacted (amortised O(1), see [`COMPACT_RATIO`]).
    fn unlink(&mut self, index: u32) {
        let (level, slot, pos) = {
            let e = self.slab.at(index);
            (e.level, e.slot as usize, e.pos as usize)
        };
        match level {
            VACANT => {}
            PENDING => {
                if self.pending.get(pos) != Some(&index) {
                    debug_assert!(false, "entry {index} not at its pending position");
                    return;
                }
                self.pending.swap_remove(pos);
                if let Some(&moved) = self.pending.get(pos) {
                    self.slab.at_mut(moved).pos = pos as u32;
                }
            }
            level => {
                let i = level as usize * SLOTS + slot;
                // Mark the entry as listed nowhere so that its tombstone is recognised.
                self.slab.at_mut(index).level = PENDING;
                self.live[i] = self.live[i].saturating_sub(1);
                if self.live[i] == 0 {
                    self.lists[i].clear();
                    self.occupied[level as usize] &= !(1 << slot);
                } else if self.lists[i].len()
                    > COMPACT_RATIO * self.live[i] as usize + COMPACT_SLACK
                {
                    self.compact(level as usize, slot);
                }
            }
        }
    }

    /// True when the entry at `index` really is at position `pos` of list (`level`, `slot`).
    fn listed_at(&self, index: u32, level: usize, slot: usize, pos: usize) -> bool {
        let e = self.slab.at(index);
        e.level as usize == level && e.slot as usize == slot && e.pos as usize == pos
    }

    /// Drops the tombstones of one list, fixing the positions of the entries that stay.
    fn compact(&mut self, level: usize, slot: usize) {
        let i = level * SLOTS + slot;
        let mut list = std::mem::take(&mut self.lists[i]);
        let mut kept = 0;
        for read in 0..list.len() {
            let index = list[read];
            if self.listed_at(index, level, slot, read) {
                list[kept] = index;
                self.slab.at_mut(index).pos = kept as u32;
                kept += 1;
            }
        }
        list.truncate(kept);
        self.lists[i] = list;
    }

    /// The earliest occupied slot over all levels: `(level, slot, first tick)`.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        let mut best: Option<(usize, usize, u64)> = None;
        for (level, &bits) in self.occupied.iter().enumerate() {
            if let Some((slot, start)) = next_occupied(bits, level, self.elapsed)
                && best.is_none_or(|(_, _, b)| start < b)
            {
                best = Some((level, slot, start));
            }
        }
        best
    }

    /// Empties one slot that has come due at tick `start`: entries due by `now` become pending, the rest
    /// (entries of a coarser slot, or lazily reset ones) are re-filed relative to `start`. An entry never
    /// returns to the slot being emptied (a later deadline lands on a lower level, or a higher one for a
    /// later rotation), so the list's buffer is handed back afterwards for reuse.
    fn process_slot(&mut self, level: usize, slot: usize, start: u64, now: u64) {
        self.elapsed = self.elapsed.max(start);
        let i = level * SLOTS + slot;
        let mut list = std::mem::take(&mut self.lists[i]);
        self.live[i] = 0;
        self.occupied[level] &= !(1 << slot);
        for (pos, &index) in list.iter().enumerate() {
            if !self.listed_at(index, level, slot, pos) {
                continue; // a tombstone
            }
            if self.slab.at(index).deadline <= now {
                let pos = self.pending.len() as u32;
                self.pending.push(index);
                let entry = self.slab.at_mut(index);
                entry.level = PENDING;
                entry.pos = pos;
            } else {
                self.file(index);
            }
        }
        list.clear();
        // Keep small buffers (level-0 slots refill every rotation); give big ones back to the allocator.
        if list.capacity() <= KEEP_LIST_CAPACITY && self.lists[i].is_empty() {
            self.lists[i] = list;
        }
    }
}

/// A list is compacted once it is longer than `COMPACT_RATIO` times its live entries (plus
/// [`COMPACT_SLACK`]): compaction reads every listed entry, so a higher ratio spreads that cost over more
/// cancels (about `RATIO / (RATIO - 1)` entry reads per cancel) for up to `RATIO - 1` tombstones of 4 bytes
/// per live entry, only in lists that see cancels.
const COMPACT_RATIO: usize = 4;
/// Tombstones any list may hold before compaction is considered.
const COMPACT_SLACK: usize = 32;

/// Largest slot-list buffer (in entries) kept after its slot is emptied.
const KEEP_LIST_CAPACITY: usize = 1024;

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
fn duration_nanos(d: Duration) -> u64 {
    d.as_secs()
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(u64::from(d.subsec_nanos())))
        .unwrap_or(u64::MAX)
}

/// The latest instant we can name after `origin` (about a century ahead; `Instant` has no MAX).
fn far_future(origin: Instant) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    origin.checked_add(CENTURY).unwrap_or(origin)
}

#[cfg(test)]
mod tests;
