//! The wheel's entry store: a slab of 32-byte entries (with an 8-byte payload) addressed by
//! `(index, generation)`, plus the index lists that hold each slot's entries.
//!
//! An entry records where it is listed (`level`, `slot`, and its position `pos` in that list), so it
//! leaves a list in O(1) by `swap_remove` (the entry moved into its place gets its `pos` fixed). Lists are
//! `Vec<u32>` of slab indices rather than intrusive linked lists: emptying a slot walks a contiguous
//! array and the entry loads are independent of each other, so the processor overlaps their cache misses
//! (a linked list makes every miss wait for the previous one).
//!
//! Freed entries form a free list threaded through `pos` and are reused, so a wheel in steady state
//! allocates nothing per insert.
//!
//! The payload is stored as `MaybeUninit<T>` so that a vacant entry costs no `Option` tag: the invariant
//! is **`level != VACANT` if and only if `value` is initialised**. Every `unsafe` block below relies on it
//! and nothing else; `alloc`, `free` and `Drop` are the only places that change it.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

/// "No entry" in a free-list link.
pub(crate) const NIL: u32 = u32::MAX;
/// `level` of an entry that is due and waits in the pending list.
pub(crate) const PENDING: u8 = 254;
/// `level` of an unused entry.
pub(crate) const VACANT: u8 = 255;

/// One timer entry.
pub(crate) struct Entry<T> {
    /// The payload; initialised exactly when `level != VACANT`.
    value: MaybeUninit<T>,
    /// The true deadline in ticks. It may be later than the slot the entry sits in (a lazy reset).
    pub(crate) deadline: u64,
    /// Position in its list; the next free entry while vacant.
    pub(crate) pos: u32,
    pub(crate) generation: u32,
    /// Level `0..LEVELS`, or [`PENDING`], or [`VACANT`].
    pub(crate) level: u8,
    pub(crate) slot: u8,
}

/// Where an entry is listed: `level` (or [`PENDING`]), `slot`, and its position `pos` in that list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub(crate) level: u8,
    pub(crate) slot: u8,
    pub(crate) pos: u32,
}

/// Slab of entries plus a free list.
pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: u32,
    len: usize,
}

impl<T> std::fmt::Debug for Slab<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slab")
            .field("len", &self.len)
            .field("capacity", &self.entries.capacity())
            .finish()
    }
}

impl<T> Slab<T> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Slab {
            entries: Vec::with_capacity(capacity),
            free: NIL,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Entries ever allocated (live or free).
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.entries.len()
    }

    /// Stores `value` due at `deadline`, listed at `place` (the caller puts it there) and returns
    /// `(index, generation)`. `None` when 2^32 - 1 entries are live.
    #[inline]
    pub(crate) fn alloc(&mut self, value: T, deadline: u64, place: Place) -> Option<(u32, u32)> {
        if self.free == NIL {
            return self.alloc_new(value, deadline, place);
        }
        let index = self.free;
        let entry = &mut self.entries[index as usize];
        self.free = entry.pos;
        entry.value = MaybeUninit::new(value);
        entry.deadline = deadline;
        entry.pos = place.pos;
        entry.level = place.level;
        entry.slot = place.slot;
        self.len += 1;
        Some((index, entry.generation))
    }

    /// [`alloc`](Self::alloc) when no freed entry is left: the slab grows by one.
    #[cold]
    fn alloc_new(&mut self, value: T, deadline: u64, place: Place) -> Option<(u32, u32)> {
        let index = u32::try_from(self.entries.len())
            .ok()
            .filter(|&i| i != NIL)?;
        self.entries.push(Entry {
            value: MaybeUninit::new(value),
            deadline,
            pos: place.pos,
            generation: 0,
            level: place.level,
            slot: place.slot,
        });
        self.len += 1;
        Some((index, 0))
    }

    /// The live entry at `index` with `generation`, if any.
    pub(crate) fn get(&self, index: u32, generation: u32) -> Option<&Entry<T>> {
        self.entries
            .get(index as usize)
            .filter(|e| e.generation == generation && e.level != VACANT)
    }

    /// The entry at `index` (live or not). Panics on an index never handed out: internal use only.
    pub(crate) fn at(&self, index: u32) -> &Entry<T> {
        &self.entries[index as usize]
    }

    /// The entry at `index`, mutably (its `value` stays private to this module).
    pub(crate) fn at_mut(&mut self, index: u32) -> &mut Entry<T> {
        &mut self.entries[index as usize]
    }

    /// The payload of a live entry.
    pub(crate) fn value(&self, index: u32, generation: u32) -> Option<&T> {
        let entry = self.get(index, generation)?;
        // SAFETY: `get` returned it, so `level != VACANT`, so `value` is initialised.
        Some(unsafe { entry.value.assume_init_ref() })
    }

    /// The payload of a live entry, mutably.
    pub(crate) fn value_mut(&mut self, index: u32, generation: u32) -> Option<&mut T> {
        let entry = self
            .entries
            .get_mut(index as usize)
            .filter(|e| e.generation == generation && e.level != VACANT)?;
        // SAFETY: filtered on `level != VACANT`, so `value` is initialised.
        Some(unsafe { entry.value.assume_init_mut() })
    }

    /// Frees the live entry `(index, generation)` in one visit and returns its payload and where it was
    /// listed: `(value, level, slot, pos)`. `None` (and nothing changed) for a stale key. The caller takes
    /// it out of that list; its `level` is [`VACANT`] now, so a slot-list tombstone no longer matches it.
    #[inline]
    pub(crate) fn take(&mut self, index: u32, generation: u32) -> Option<(T, u8, u8, u32)> {
        let free_head = self.free;
        let entry = self
            .entries
            .get_mut(index as usize)
            .filter(|e| e.generation == generation && e.level != VACANT)?;
        let listed = (entry.level, entry.slot, entry.pos);
        // SAFETY: filtered on `level != VACANT`, so `value` is initialised; `level = VACANT` right after
        // makes sure it is never read again until `alloc` writes a new value.
        let value = unsafe { entry.value.assume_init_read() };
        entry.level = VACANT;
        // `generation` (the key's, equal to the entry's) rather than the entry's: the value stored then
        // does not wait for the entry to come from memory.
        entry.generation = generation.wrapping_add(1);
        entry.pos = free_head;
        self.free = index;
        self.len -= 1;
        Some((value, listed.0, listed.1, listed.2))
    }

    /// Frees a live entry that is already unlisted and returns its payload. Bumps the generation so
    /// that old keys become stale. `None` if the entry is vacant.
    pub(crate) fn free(&mut self, index: u32) -> Option<T> {
        let free_head = self.free;
        let entry = self.entries.get_mut(index as usize)?;
        if entry.level == VACANT {
            return None;
        }
        // SAFETY: `level != VACANT`, so `value` is initialised; setting `level = VACANT` right after
        // makes sure it is never read again until `alloc` writes a new value.
        let value = unsafe { entry.value.assume_init_read() };
        entry.level = VACANT;
        entry.generation = entry.generation.wrapping_add(1);
        entry.pos = free_head;
        self.free = index;
        self.len -= 1;
        Some(value)
    }
}

impl<T> Drop for Slab<T> {
    fn drop(&mut self) {
        for entry in &mut self.entries {
            if entry.level != VACANT {
                // SAFETY: `level != VACANT`, so `value` is initialised; the slab is going away, so it
                // is never read again.
                unsafe { entry.value.assume_init_drop() };
                entry.level = VACANT;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    const DUE: Place = Place {
        level: PENDING,
        slot: 0,
        pos: 0,
    };

    #[test]
    fn entry_with_eight_byte_payload_is_thirty_two_bytes() {
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 32);
    }

    #[test]
    fn freed_entries_are_reused_with_a_new_generation() {
        let mut slab = Slab::with_capacity(0);
        let (a, ga) = slab.alloc(1u64, 0, DUE).unwrap();
        assert_eq!(slab.free(a), Some(1));
        assert_eq!(slab.free(a), None, "double free is refused");
        assert!(slab.get(a, ga).is_none());
        let (b, gb) = slab.alloc(2u64, 0, DUE).unwrap();
        assert_eq!(b, a);
        assert_ne!(gb, ga);
        assert_eq!(slab.value(b, gb), Some(&2));
        assert_eq!(slab.allocated(), 1);
    }

    #[test]
    fn payloads_are_dropped_exactly_once() {
        let probe = Rc::new(());
        {
            let mut slab = Slab::with_capacity(0);
            let (a, _) = slab.alloc(Rc::clone(&probe), 0, DUE).unwrap();
            slab.alloc(Rc::clone(&probe), 0, DUE).unwrap();
            slab.alloc(Rc::clone(&probe), 0, DUE).unwrap();
            assert_eq!(Rc::strong_count(&probe), 4);
            drop(slab.free(a));
            assert_eq!(Rc::strong_count(&probe), 3);
        }
        assert_eq!(
            Rc::strong_count(&probe),
            1,
            "the slab's drop released the live payloads"
        );
    }
}
