//! `Wheel<T>`: a hierarchical timing wheel over a slab, with O(1) insert, cancel and reset.
//!
//! # Shape
//! 11 levels of 64 slots, one occupancy bitmap per level (`wheel/level.rs` holds the slot
//! math). Entries live in a slab (`wheel/slab.rs`) and are addressed by a [`Key`] = (index, generation), so a key
//! that outlived its entry is reported as [`Error::StaleKey`], never a panic. Each slot is an intrusive
//! doubly-linked list through the slab, so cancel and reset unlink in O(1).
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
use slab::{Head, NIL, Place, Slab};

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
    heads: [[Head; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    /// Entries that are due and wait to be handed out by `poll`.
    pending: Head,
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
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            pending: NIL,
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
        let (old, place) = {
            let entry = self
                .slab
                .get(key.index, key.generation)
                .ok_or(Error::StaleKey)?;
            (entry.deadline, entry.place)
        };
        if tick >= old && matches!(place, Place::Slot { .. }) {
            // Lazy: the entry's slot comes due no later than the new deadline; it is re-filed then.
            self.slab.entries[key.index as usize].deadline = tick;
            return Ok(());
        }
        self.unlink(key.index);
        self.slab.entries[key.index as usize].deadline = tick;
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
        self.slab
            .get(key.index, key.generation)
            .and_then(|e| e.value.as_ref())
    }

    /// The entry's payload, mutably, if the key is live.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        self.check(key).ok()?;
        self.slab.entries[key.index as usize].value.as_mut()
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
            if self.pending != NIL {
                let index = self.pending;
                self.slab.unlink(&mut self.pending, index);
                let entry = &self.slab.entries[index as usize];
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
        if self.pending != NIL {
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

    /// Links entry `index` where its deadline belongs: due now → pending, else its level and slot.
    fn file(&mut self, index: u32) {
        let when = self.slab.entries[index as usize].deadline;
        if when <= self.elapsed {
            self.slab
                .push_front(&mut self.pending, index, Place::Pending);
            return;
        }
        let level = level_for(self.elapsed, when);
        let slot = slot_for(when, level);
        let place = Place::Slot {
            level: level as u8,
            slot: slot as u8,
        };
        self.slab
            .push_front(&mut self.heads[level][slot], index, place);
        self.occupied[level] |= 1 << slot;
    }

    /// Removes entry `index` from whatever list holds it.
    fn unlink(&mut self, index: u32) {
        match self.slab.entries[index as usize].place {
            Place::Slot { level, slot } => {
                let (level, slot) = (level as usize, slot as usize);
                self.slab.unlink(&mut self.heads[level][slot], index);
                if self.heads[level][slot] == NIL {
                    self.occupied[level] &= !(1 << slot);
                }
            }
            Place::Pending => self.slab.unlink(&mut self.pending, index),
            Place::Vacant => {}
        }
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
    /// (entries of a coarser slot, or lazily reset ones) are re-filed relative to `start`.
    fn process_slot(&mut self, level: usize, slot: usize, start: u64, now: u64) {
        self.elapsed = self.elapsed.max(start);
        let mut index = std::mem::replace(&mut self.heads[level][slot], NIL);
        self.occupied[level] &= !(1 << slot);
        while index != NIL {
            let entry = &mut self.slab.entries[index as usize];
            let next = entry.next;
            entry.prev = NIL;
            entry.next = NIL;
            if entry.deadline <= now {
                self.slab
                    .push_front(&mut self.pending, index, Place::Pending);
            } else {
                self.file(index);
            }
            index = next;
        }
    }
}

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
