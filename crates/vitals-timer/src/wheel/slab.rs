//! The wheel's entry store: a slab of entries addressed by `(index, generation)`, with intrusive
//! doubly-linked lists so that an entry joins or leaves a slot's list in O(1).
//!
//! One entry is 40 bytes with an 8-byte payload (checked in a test): the payload, the deadline, two
//! `u32` links, the generation and two bytes of position. Freed entries are kept on a free list and reused,
//! so a wheel in steady state allocates nothing per insert.

/// "No entry" in a link field.
pub(crate) const NIL: u32 = u32::MAX;

/// Where an entry is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// On level `level`, slot `slot` of the wheel.
    Slot { level: u8, slot: u8 },
    /// On the list of entries that are due and not yet handed out by `poll`.
    Pending,
    /// Not in use (on the free list).
    Vacant,
}

/// One timer entry.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    /// The payload; `None` only while vacant.
    pub(crate) value: Option<T>,
    /// The true deadline in ticks. It may be later than the slot the entry sits in (a lazy reset).
    pub(crate) deadline: u64,
    pub(crate) prev: u32,
    /// Next in the slot list, or next free entry while vacant.
    pub(crate) next: u32,
    pub(crate) generation: u32,
    pub(crate) place: Place,
}

/// A list head: first entry or [`NIL`].
pub(crate) type Head = u32;

/// Slab of entries plus a free list.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    pub(crate) entries: Vec<Entry<T>>,
    free: u32,
    len: usize,
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

    /// Stores `value` and returns `(index, generation)`. `None` when 2^32 - 1 entries are live.
    pub(crate) fn alloc(&mut self, value: T, deadline: u64) -> Option<(u32, u32)> {
        let index = if self.free != NIL {
            let index = self.free;
            let entry = &mut self.entries[index as usize];
            self.free = entry.next;
            entry.value = Some(value);
            entry.deadline = deadline;
            entry.prev = NIL;
            entry.next = NIL;
            index
        } else {
            let index = u32::try_from(self.entries.len())
                .ok()
                .filter(|&i| i != NIL)?;
            self.entries.push(Entry {
                value: Some(value),
                deadline,
                prev: NIL,
                next: NIL,
                generation: 0,
                place: Place::Vacant,
            });
            index
        };
        self.len += 1;
        Some((index, self.entries[index as usize].generation))
    }

    /// The live entry at `index` with `generation`, if any.
    pub(crate) fn get(&self, index: u32, generation: u32) -> Option<&Entry<T>> {
        self.entries
            .get(index as usize)
            .filter(|e| e.generation == generation && e.place != Place::Vacant)
    }

    /// Frees an entry that is already unlinked and returns its payload. Bumps the generation so that old
    /// keys become stale.
    pub(crate) fn free(&mut self, index: u32) -> Option<T> {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take();
        entry.place = Place::Vacant;
        entry.generation = entry.generation.wrapping_add(1);
        entry.prev = NIL;
        entry.next = self.free;
        self.free = index;
        self.len -= 1;
        value
    }

    /// Links entry `index` at the front of the list `head`, recording `place`.
    pub(crate) fn push_front(&mut self, head: &mut Head, index: u32, place: Place) {
        let old = *head;
        {
            let entry = &mut self.entries[index as usize];
            entry.prev = NIL;
            entry.next = old;
            entry.place = place;
        }
        if old != NIL {
            self.entries[old as usize].prev = index;
        }
        *head = index;
    }

    /// Unlinks entry `index` from the list `head`. The entry's `place` is left for the caller to set.
    pub(crate) fn unlink(&mut self, head: &mut Head, index: u32) {
        let (prev, next) = {
            let entry = &self.entries[index as usize];
            (entry.prev, entry.next)
        };
        if prev == NIL {
            *head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        let entry = &mut self.entries[index as usize];
        entry.prev = NIL;
        entry.next = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_with_eight_byte_payload_is_forty_bytes() {
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 40);
    }

    #[test]
    fn freed_entries_are_reused_with_a_new_generation() {
        let mut slab = Slab::with_capacity(0);
        let (a, ga) = slab.alloc(1u64, 0).unwrap();
        let mut head = NIL;
        slab.push_front(&mut head, a, Place::Pending);
        slab.unlink(&mut head, a);
        assert_eq!(head, NIL);
        assert_eq!(slab.free(a), Some(1));
        assert!(slab.get(a, ga).is_none());
        let (b, gb) = slab.alloc(2u64, 0).unwrap();
        assert_eq!(b, a);
        assert_ne!(gb, ga);
        assert_eq!(slab.entries.len(), 1);
    }
}
