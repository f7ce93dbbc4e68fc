//! Baseline timer queue for the comparisons: a `BinaryHeap` with lazy cancellation.
//!
//! Handles are `(index, generation)` into a slot table, so they stay valid across resets. Cancel frees the
//! slot and bumps its generation and sequence number; reset bumps the sequence number and pushes a new heap
//! entry. A heap entry whose sequence number no longer matches its slot is stale and is skipped when it
//! surfaces in `poll`. Stale entries are purged (one `retain` pass) when they outnumber live ones, so the
//! heap stays within about twice the live count.
//!
//! Shared by `benches/wheel.rs`, `examples/compare.rs` and `examples/churn_profile.rs` through `#[path]`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Names one timer of a [`HeapTimers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeapKey {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Slot<T> {
    value: Option<T>,
    generation: u32,
    /// Matches the `seq` of the one heap entry that is current for this slot.
    seq: u32,
}

/// A min-heap of `(deadline, slot, seq)` plus a generation table.
#[derive(Debug)]
pub(crate) struct HeapTimers<T> {
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> HeapTimers<T> {
    /// An empty queue; nothing is pre-allocated.
    pub(crate) fn new() -> Self {
        HeapTimers {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Number of live timers.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Adds a timer due at `when`.
    pub(crate) fn insert(&mut self, when: Instant, value: T) -> HeapKey {
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize].value = Some(value);
                index
            }
            None => {
                let index = u32::try_from(self.slots.len()).expect("too many timers");
                self.slots.push(Slot {
                    value: Some(value),
                    generation: 0,
                    seq: 0,
                });
                index
            }
        };
        let slot = &self.slots[index as usize];
        let key = HeapKey {
            index,
            generation: slot.generation,
        };
        self.heap.push(Reverse((when, index, slot.seq)));
        self.live += 1;
        key
    }

    /// Removes the timer and returns its payload; `None` for a stale key.
    pub(crate) fn cancel(&mut self, key: HeapKey) -> Option<T> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        slot.seq = slot.seq.wrapping_add(1);
        self.free.push(key.index);
        self.live -= 1;
        self.maybe_purge();
        Some(value)
    }

    /// Moves the timer to `when` (earlier or later): invalidates its heap entry and pushes a new one.
    pub(crate) fn reset(&mut self, key: HeapKey, when: Instant) -> bool {
        let Some(slot) = self.slots.get_mut(key.index as usize) else {
            return false;
        };
        if slot.generation != key.generation || slot.value.is_none() {
            return false;
        }
        slot.seq = slot.seq.wrapping_add(1);
        self.heap.push(Reverse((when, key.index, slot.seq)));
        self.maybe_purge();
        true
    }

    /// Hands out one timer due at or before `now`, skipping stale heap entries.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<(T, Instant)> {
        while let Some(&Reverse((when, index, seq))) = self.heap.peek() {
            if when > now {
                return None;
            }
            self.heap.pop();
            let slot = &mut self.slots[index as usize];
            if slot.seq != seq {
                continue;
            }
            let Some(value) = slot.value.take() else {
                continue;
            };
            slot.generation = slot.generation.wrapping_add(1);
            slot.seq = slot.seq.wrapping_add(1);
            self.free.push(index);
            self.live -= 1;
            return Some((value, when));
        }
        None
    }

    fn maybe_purge(&mut self) {
        if self.heap.len() > 2 * self.live + 1024 {
            let slots = &self.slots;
            self.heap.retain(|&Reverse((_, index, seq))| {
                let slot = &slots[index as usize];
                slot.seq == seq && slot.value.is_some()
            });
        }
    }
}
