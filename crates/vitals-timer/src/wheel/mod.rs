//! `Wheel<T>`: a hierarchical timing wheel over a slab, with O(1) insert, cancel and reset.
//!
//! # Shape
//! 11 levels of 64 slots, one occupancy bitmap per level (`wheel/level.rs` holds the slot
//! math). Entries live in a slab (`wheel/slab.rs`) and are addressed by a [`Key`] = (index, generation), so a key
//! that outlived its entry is reported as [`Error::StaleKey`], never a panic. Each slot is a list of
//! slab indices and each entry records its place: level, slot and position in that list. An index in a
//! list is live exactly when its entry's place is that list and that position; any other is stale (the
//! entry was cancelled or re-filed, and the index may since have been reused, in another list or in this
//! one at another position). So cancel and reset leave a list without touching it (nor a counter beside
//! it): a cancel touches the entry alone. Stale indices are skipped when the slot is emptied, and dropped
//! when a list whose buffer is full is compacted instead of grown (see `make_room`, at about twice its
//! live entries, `COMPACT_RATIO`); emptying a slot walks a contiguous array whose entry loads overlap in
//! the cache.
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
//! which `poll` returns nothing (it is never later than the true earliest deadline). The same holds after
//! cancels: a slot whose entries were all cancelled still counts as occupied until it comes due (or until
//! the wheel is empty).
//!
//! # Order
//! `poll` hands out every entry due by `now`. Entries that came due in one call are returned slot by slot,
//! not strictly sorted by deadline; callers that need strict order sort the batch (the [`Timer`] does).
//!
//! [`Timer`]: crate::Timer

pub(crate) mod divide;
pub(crate) mod level;
pub(crate) mod slab;

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use crate::Error;
use divide::Divisor;
use level::{LEVELS, SLOTS, level_for, next_occupied, slot_for};
use slab::{NIL, PENDING, Place, Slab, VACANT};

/// Default tick: one millisecond.
pub const DEFAULT_TICK: Duration = Duration::from_millis(1);

/// [`DEFAULT_TICK`] in nanoseconds, as a divisor.
const DEFAULT_DIVISOR: Divisor = match Divisor::new(DEFAULT_TICK.as_nanos() as u64) {
    Some(d) => d,
    None => panic!("the default tick is not zero"),
};

/// Names one entry of a [`Wheel`]. Cheap to copy; detects reuse of its slot through a generation.
///
/// One word: the entry's slab index (low 32 bits) and generation (high 32), complemented so that the
/// word is never zero (no index is `u32::MAX`): `Option<Key>` is as small as a `Key`, and a key is
/// stored with one store.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(NonZeroU64);

impl Key {
    /// The key of entry `index` with `generation`.
    #[inline(always)]
    fn new(index: u32, generation: u32) -> Key {
        let word = !(u64::from(index) | u64::from(generation) << 32);
        // Zero only for index `u32::MAX`, which the slab never hands out (it is its "no entry").
        debug_assert_ne!(index, u32::MAX);
        Key(NonZeroU64::new(word).unwrap_or(Key::NO_ENTRY))
    }

    /// A key for index `u32::MAX`, generation 0: no entry ever has it, so it is always stale.
    const NO_ENTRY: NonZeroU64 = match NonZeroU64::new(!(u32::MAX as u64)) {
        Some(word) => word,
        None => panic!("not zero"),
    };

    /// The entry's slab index.
    #[inline(always)]
    fn index(self) -> u32 {
        !self.0.get() as u32
    }

    /// The entry's generation when the key was made.
    #[inline(always)]
    fn generation(self) -> u32 {
        (!self.0.get() >> 32) as u32
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("index", &self.index())
            .field("generation", &self.generation())
            .finish()
    }
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
    /// The tick length in nanoseconds, as a divisor (converting an instant to ticks divides by it).
    tick: Divisor,
    /// Ticks since origin up to which all slots have been processed.
    elapsed: u64,
    slab: Slab<T>,
    /// The slot lists, `slots[level][slot]`: slab indices in filing order, stale ones included (indices
    /// of entries that left the list — cancelled or re-filed — which no longer match their entry's place;
    /// skipped when the slot is emptied, dropped when a full list is compacted).
    slots: Box<[[Vec<u32>; SLOTS]; LEVELS]>,
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
        Self::build(origin, DEFAULT_DIVISOR, 0)
    }

    /// A wheel with the given tick length and room for `capacity` entries before it allocates.
    ///
    /// Errors with [`Error::ZeroTick`] for a zero tick. Ticks longer than 584 years are clamped.
    pub fn with_tick(origin: Instant, tick: Duration, capacity: usize) -> Result<Self, Error> {
        let nanos = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX);
        let tick = Divisor::new(nanos).ok_or(Error::ZeroTick)?;
        Ok(Self::build(origin, tick, capacity))
    }

    fn build(origin: Instant, tick: Divisor, capacity: usize) -> Self {
        Wheel {
            origin,
            tick,
            elapsed: 0,
            slab: Slab::with_capacity(capacity),
            slots: Box::new(std::array::from_fn(|_| std::array::from_fn(|_| Vec::new()))),
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
        Duration::from_nanos(self.tick.get())
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
    #[inline]
    pub fn tick_ceil(&self, instant: Instant) -> u64 {
        let d = instant.saturating_duration_since(self.origin);
        self.tick.ceil(duration_nanos(d))
    }

    /// `instant` as a tick, rounded down (used for `now`).
    pub fn tick_floor(&self, instant: Instant) -> u64 {
        self.tick.floor(duration_nanos(
            instant.saturating_duration_since(self.origin),
        ))
    }

    /// The instant at which tick `tick` begins (saturating far in the future).
    pub fn instant_of(&self, tick: u64) -> Instant {
        let nanos = u128::from(tick) * u128::from(self.tick.get());
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        let d = Duration::new(secs, (nanos % 1_000_000_000) as u32);
        self.origin
            .checked_add(d)
            .unwrap_or_else(|| far_future(self.origin))
    }

    /// Inserts `value` due at `deadline`. O(1).
    #[inline(always)]
    pub fn insert(&mut self, deadline: Instant, value: T) -> Result<Key, Error> {
        let tick = self.tick_ceil(deadline);
        self.insert_at_tick(tick, value)
    }

    /// Inserts `value` due at tick `tick`. O(1).
    #[inline(always)]
    pub fn insert_at_tick(&mut self, tick: u64, value: T) -> Result<Key, Error> {
        if tick <= self.elapsed {
            return self.insert_due(tick, value);
        }
        // The hot path of churn: the entry is written once, with its place, and its list is appended to.
        // (Borrowing the fields apart lets the list be found once, not again after the slab's writes.)
        let level = level_for(self.elapsed, tick);
        let slot = slot_for(tick, level);
        self.make_room(level, slot);
        let Wheel {
            slab,
            slots,
            occupied,
            ..
        } = self;
        let list = &mut slots[level][slot];
        let pos = list.len() as u32;
        let place = Place {
            level: level as u8,
            slot: slot as u8,
            pos,
        };
        let Some((index, generation)) = slab.alloc(value, tick, place) else {
            return Err(Error::Full(slab.len()));
        };
        list.push(index);
        mark_occupied(&mut occupied[level], slot);
        Ok(Key::new(index, generation))
    }

    /// [`insert_at_tick`](Self::insert_at_tick) for a tick that is already due: the entry goes to the
    /// pending list.
    #[cold]
    fn insert_due(&mut self, tick: u64, value: T) -> Result<Key, Error> {
        let pos = self.pending.len() as u32;
        let (index, generation) = self
            .slab
            .alloc(
                value,
                tick,
                Place {
                    level: PENDING,
                    slot: 0,
                    pos,
                },
            )
            .ok_or_else(|| Error::Full(self.slab.len()))?;
        self.pending.push(index);
        Ok(Key::new(index, generation))
    }

    /// Removes the entry and returns its payload. O(1). A stale key is [`Error::StaleKey`].
    #[inline]
    pub fn cancel(&mut self, key: Key) -> Result<T, Error> {
        let (value, place) = self
            .slab
            .take(key.index(), key.generation())
            .ok_or(Error::StaleKey)?;
        if place.level == PENDING {
            self.leave_pending(key.index(), place.pos as usize);
        }
        if self.slab.len() == 0 {
            self.forget_stale();
        }
        Ok(value)
    }

    /// Moves the entry's deadline to `deadline`. O(1); a later deadline re-files lazily.
    #[inline]
    pub fn reset(&mut self, key: Key, deadline: Instant) -> Result<(), Error> {
        let tick = self.tick_ceil(deadline);
        self.reset_to_tick(key, tick)
    }

    /// Moves the entry's deadline to tick `tick`. O(1); a later deadline re-files lazily.
    #[inline]
    pub fn reset_to_tick(&mut self, key: Key, tick: u64) -> Result<(), Error> {
        let (old, level) = {
            let entry = self
                .slab
                .get(key.index(), key.generation())
                .ok_or(Error::StaleKey)?;
            (entry.deadline, entry.level())
        };
        if tick >= old && level != PENDING {
            // Lazy: the entry's slot comes due no later than the new deadline; it is re-filed then.
            self.slab.at_mut(key.index()).deadline = tick;
            return Ok(());
        }
        self.unlink(key.index());
        self.slab.at_mut(key.index()).deadline = tick;
        self.file_at(key.index(), tick);
        Ok(())
    }

    /// The entry's deadline in ticks.
    pub fn deadline_tick(&self, key: Key) -> Result<u64, Error> {
        self.slab
            .get(key.index(), key.generation())
            .map(|e| e.deadline)
            .ok_or(Error::StaleKey)
    }

    /// The entry's payload, if the key is live.
    pub fn get(&self, key: Key) -> Option<&T> {
        self.slab.value(key.index(), key.generation())
    }

    /// The entry's payload, mutably, if the key is live.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        self.slab.value_mut(key.index(), key.generation())
    }

    /// True when `key` names an entry still in the wheel.
    pub fn contains(&self, key: Key) -> bool {
        self.slab.get(key.index(), key.generation()).is_some()
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
                let key = Key::new(index, entry.generation);
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
    /// resets and cancels.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_deadline_tick().map(|t| self.instant_of(t))
    }

    /// [`next_deadline`](Self::next_deadline) in ticks.
    pub fn next_deadline_tick(&self) -> Option<u64> {
        if self.slab.len() == 0 {
            return None;
        }
        if !self.pending.is_empty() {
            return Some(self.elapsed);
        }
        self.next_expiration().map(|(_, _, start)| start)
    }

    /// Lists entry `index`, whose deadline is `when`, where it belongs: due now → pending, else its level
    /// and slot.
    fn file_at(&mut self, index: u32, when: u64) {
        if when <= self.elapsed {
            self.file_pending(index);
            return;
        }
        let level = level_for(self.elapsed, when);
        let slot = slot_for(when, level);
        let pos = self.append(level, slot, index);
        self.slab.at_mut(index).set_place(Place {
            level: level as u8,
            slot: slot as u8,
            pos,
        });
    }

    /// Appends `index` to the list of (`level`, `slot`) and returns its position there.
    #[inline]
    fn append(&mut self, level: usize, slot: usize, index: u32) -> u32 {
        self.make_room(level, slot);
        let list = &mut self.slots[level][slot];
        let pos = list.len() as u32;
        list.push(index);
        mark_occupied(&mut self.occupied[level], slot);
        pos
    }

    /// Appends entry `index` to the pending list (it is due).
    fn file_pending(&mut self, index: u32) {
        let pos = self.pending.len() as u32;
        self.pending.push(index);
        self.slab.at_mut(index).set_place(Place {
            level: PENDING,
            slot: 0,
            pos,
        });
    }

    /// Takes entry `index` out of whatever list holds it, in O(1), and marks it as listed nowhere. From
    /// the pending list it is removed (`swap_remove`); in a slot list its index is left behind, stale
    /// (it no longer matches the entry's place), and nothing there is touched.
    fn unlink(&mut self, index: u32) {
        let place = self.slab.at(index).place();
        if place.level == VACANT {
            return;
        }
        // Listed nowhere: no slot list position matches it any more.
        self.slab.at_mut(index).set_place(Place {
            level: PENDING,
            slot: 0,
            pos: NIL,
        });
        if place.level == PENDING {
            self.leave_pending(index, place.pos as usize);
        }
    }

    /// Removes entry `index` from position `pos` of the pending list.
    fn leave_pending(&mut self, index: u32, pos: usize) {
        if self.pending.get(pos) != Some(&index) {
            debug_assert!(false, "entry {index} not at its pending position");
            return;
        }
        self.pending.swap_remove(pos);
        if let Some(&moved) = self.pending.get(pos) {
            self.slab.at_mut(moved).set_pos(pos as u32);
        }
    }

    /// Before appending to list (`level`, `slot`): when the list is full (appending would grow its buffer)
    /// and holds many stale indices, compacts it instead of growing it. Cancel and re-filing leave a list
    /// untouched, so this is where stale indices go, the way a growing `Vec` pays for its copies:
    /// compaction loads every listed entry and happens only once a list's buffer is full, which after
    /// the previous compaction takes as many appends as about 1.25 times its live entries.
    #[inline(always)]
    fn make_room(&mut self, level: usize, slot: usize) {
        let list = &self.slots[level][slot];
        if list.len() == list.capacity() {
            self.full(level, slot);
        }
    }

    /// [`make_room`](Self::make_room) for a full list: compacts it if it is long and a sample of its
    /// indices is at least [`STALE_SHARE`] stale (so a list is not scanned just to find that it has
    /// nothing to drop, as when a wheel fills or a slot's entries cascade to lower levels), else lets it
    /// grow the way a `Vec` does.
    #[cold]
    #[inline(never)]
    fn full(&mut self, level: usize, slot: usize) {
        if self.slots[level][slot].len() >= SCAN_MIN && self.looks_stale(level, slot) {
            self.compact(level, slot);
        } else {
            let list = &mut self.slots[level][slot];
            list.reserve(list.len().max(1));
        }
    }

    /// True when at least [`STALE_SHARE`] of [`SAMPLES`] evenly spaced indices of list (`level`, `slot`)
    /// are stale. [`SAMPLES`] entry loads.
    fn looks_stale(&self, level: usize, slot: usize) -> bool {
        let list = &self.slots[level][slot];
        let step = list.len() / SAMPLES;
        let stale = (0..SAMPLES)
            .map(|i| i * step)
            .filter(|&pos| !self.listed_at(list[pos], level, slot, pos))
            .count();
        stale * STALE_SHARE.1 >= SAMPLES * STALE_SHARE.0
    }

    /// Drops every slot list's indices, all stale when the wheel holds no entry, giving back their
    /// buffers beyond [`KEEP_LIST_CAPACITY`]. Visits only the occupied slots (a list holds indices only
    /// while its slot is marked occupied), so emptying a small wheel stays cheap.
    #[cold]
    fn forget_stale(&mut self) {
        for (level, lists) in self.slots.iter_mut().enumerate() {
            let mut bits = std::mem::take(&mut self.occupied[level]);
            while bits != 0 {
                let list = &mut lists[bits.trailing_zeros() as usize];
                list.clear();
                list.shrink_to(KEEP_LIST_CAPACITY);
                bits &= bits - 1;
            }
        }
    }

    /// True when the entry at `index` really is at position `pos` of list (`level`, `slot`).
    fn listed_at(&self, index: u32, level: usize, slot: usize, pos: usize) -> bool {
        let place = self.slab.at(index).place();
        place.level as usize == level && place.slot as usize == slot && place.pos as usize == pos
    }

    /// Drops the stale indices of one list, fixing the positions of the entries that stay.
    fn compact(&mut self, level: usize, slot: usize) {
        let mut list = std::mem::take(&mut self.slots[level][slot]);
        let mut kept = 0;
        for read in 0..list.len() {
            let index = list[read];
            if self.listed_at(index, level, slot, read) {
                list[kept] = index;
                self.slab.at_mut(index).set_pos(kept as u32);
                kept += 1;
            }
        }
        list.truncate(kept);
        // Room for about `COMPACT_RATIO` times the live entries (the next compaction comes when that is
        // full). A list whose live entries dwindled gives the rest back, one left less than half free
        // grows to it; one within that keeps its buffer, as it does in steady churn (moving a long list's
        // buffer costs more than the difference is worth).
        let room = COMPACT_RATIO * kept + kept / 4 + COMPACT_SLACK;
        if list.capacity() > room + room / 4 {
            list.shrink_to(room);
        } else if kept * 2 > list.capacity() {
            list.reserve_exact(room - kept);
        }
        self.slots[level][slot] = list;
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
        let mut list = std::mem::take(&mut self.slots[level][slot]);
        self.occupied[level] &= !(1 << slot);
        for (pos, &index) in list.iter().enumerate() {
            if !self.listed_at(index, level, slot, pos) {
                continue; // stale
            }
            let when = self.slab.at(index).deadline;
            if when <= now {
                self.file_pending(index);
            } else {
                self.file_at(index, when);
            }
        }
        list.clear();
        // Keep small buffers (level-0 slots refill every rotation); give big ones back to the allocator.
        if list.capacity() <= KEEP_LIST_CAPACITY && self.slots[level][slot].is_empty() {
            self.slots[level][slot] = list;
        }
    }
}

/// A compacted list gets room for about `COMPACT_RATIO` times its live entries (plus a quarter, plus
/// [`COMPACT_SLACK`]), and is compacted again when that room is full: about `RATIO / (RATIO - 1)` entry
/// loads per departure (2 here) in exchange for at most `RATIO - 1` stale indices (4 bytes each) per live
/// entry. With 4 (and no buffer given back), a wheel of 1,000,000 timers under steady cancel + insert churn
/// grew from 41 to about 64 bytes per timer.
const COMPACT_RATIO: usize = 2;
/// Room beyond `COMPACT_RATIO` times the live entries that a compacted list gets.
const COMPACT_SLACK: usize = 32;
/// Lists shorter than this are never scanned for stale indices, only grown: the most a short list can
/// waste, and a short list is emptied soon anyway (its slot is near).
const SCAN_MIN: usize = 1024;
/// Indices of a full list checked to decide whether it is worth compacting (at most one sample per
/// [`SCAN_MIN`] / `SAMPLES` appends since the list last filled up).
const SAMPLES: usize = 32;
/// `(a, b)`: a full list is compacted when at least `a / b` of the sampled indices are stale.
const STALE_SHARE: (usize, usize) = (1, 4);

/// Largest slot-list buffer (in entries) kept after its slot is emptied.
const KEEP_LIST_CAPACITY: usize = 1024;

/// Sets `slot`'s bit in a level's occupancy bitmap. Tested first: the bit is nearly always set already, and a
/// test costs less than a read-modify-write.
#[inline(always)]
fn mark_occupied(bits: &mut u64, slot: usize) {
    if *bits & (1 << slot) == 0 {
        *bits |= 1 << slot;
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
#[inline]
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
