//! The wheel's entry store: a slab of entries (32 bytes with an 8-byte payload, 24 with a 4-byte one)
//! addressed by `(index, generation)`.
//!
//! An entry records where it is listed (`level`, `slot`, and its position `pos` in that slot's list of
//! slab indices), so the wheel can tell a stale index in a list from a live one without touching the list
//! on cancel (see `wheel/mod.rs`). Lists are `Vec<u32>` of slab indices rather than intrusive linked
//! lists: emptying a slot walks a contiguous array and the entry loads are independent of each other, so
//! the processor overlaps their cache misses (a linked list makes every miss wait for the previous one).
//!
//! Freed entries form a free list threaded through `pos` and are reused, so a wheel in steady state
//! allocates nothing per insert.
//!
//! Entries are stored in blocks of [`BLOCK`] aligned to a cache line, so that an entry whose size divides
//! 64 bytes (the 32-byte entry of a `Wheel<u64>`) never straddles two lines: a `Vec<Entry<T>>` is only
//! 8-byte aligned, and glibc puts a large buffer 16 bytes past a page boundary, which left every other
//! 32-byte entry across two lines, two cache misses where one would do. (Aligning the entry itself to 32
//! would also do it, but would grow the 24-byte entry of a `Wheel<u32>` to 32.)
//!
//! The payload is stored as `MaybeUninit<T>` so that a vacant entry costs no `Option` tag: the invariant
//! is **`level != VACANT` if and only if `value` is initialised**. Every `unsafe` block below that reads or
//! drops a `value` relies on it and nothing else; `alloc`, `free` and `Drop` are the only places that
//! change it. The other two (`entries`, `entries_mut`) view the blocks as one slice of entries and rely
//! only on `Block`'s layout, asserted at compile time.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

/// "No entry" in a free-list link.
pub(crate) const NIL: u32 = u32::MAX;
/// `level` of an entry that is due and waits in the pending list.
pub(crate) const PENDING: u8 = 254;
/// `level` of an unused entry.
pub(crate) const VACANT: u8 = 255;
/// Entries per [`Block`]: 8 entries of any size (a multiple of 8 bytes) fill whole cache lines.
const BLOCK: usize = 8;
/// Bytes in a cache line: the alignment of a [`Block`].
const LINE: usize = 64;

/// One timer entry.
pub(crate) struct Entry<T> {
    /// The payload; initialised exactly when the entry's level is not [`VACANT`].
    value: MaybeUninit<T>,
    /// The true deadline in ticks. It may be later than the slot the entry sits in (a lazy reset).
    pub(crate) deadline: u64,
    /// Where the entry is listed. Level `0..LEVELS`, or [`PENDING`], or [`VACANT`]; while vacant, `pos`
    /// links to the next free entry. One 8-byte-aligned field, so that filing an entry writes it with one
    /// store (see [`Place`]).
    place: Place,
    pub(crate) generation: u32,
}

impl<T> Entry<T> {
    /// An entry never handed out: vacant, generation 0, on no free list.
    fn unused() -> Self {
        Entry {
            value: MaybeUninit::uninit(),
            deadline: 0,
            place: Place::vacant(NIL),
            generation: 0,
        }
    }

    /// Where the entry is listed.
    #[inline(always)]
    pub(crate) fn place(&self) -> Place {
        self.place
    }

    /// The entry's level: `0..LEVELS`, [`PENDING`] or [`VACANT`].
    #[inline(always)]
    pub(crate) fn level(&self) -> u8 {
        self.place().level
    }

    /// Records where the entry is listed. Not for making it vacant (only the slab does that).
    #[inline(always)]
    pub(crate) fn set_place(&mut self, place: Place) {
        debug_assert!(place.level != VACANT && self.level() != VACANT);
        self.place = place;
    }

    /// Records the entry's new position in the list it is in.
    #[inline(always)]
    pub(crate) fn set_pos(&mut self, pos: u32) {
        self.set_place(Place {
            pos,
            ..self.place()
        });
    }

    /// True when the entry holds no payload.
    #[inline(always)]
    fn is_vacant(&self) -> bool {
        self.level() == VACANT
    }
}

/// [`BLOCK`] consecutive entries, aligned to a cache line.
#[repr(C, align(64))]
struct Block<T>([Entry<T>; BLOCK]);

const _: () = assert!(std::mem::align_of::<Block<u64>>() == LINE);

impl<T> Block<T> {
    fn unused() -> Self {
        Block(std::array::from_fn(|_| Entry::unused()))
    }
}

/// Where an entry is listed: `level` (or [`PENDING`]), `slot`, and its position `pos` in that list.
///
/// Aligned to 8 bytes so that the compiler writes a whole place with one 8-byte store: the stores of a
/// cancel + insert wait in the processor's store queue behind the entry's cache miss, and that queue is
/// what runs out first (10 more stores per churn operation cost 4-7 %, 30 more arithmetic instructions
/// or 10 more loads about 1 %). It is a struct of fields rather than a `u64` packed by hand: with the
/// level in the middle of a hand-packed word, reading it back right after the word was stored (the
/// pending list, when it is drained) made expiry 20 % slower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(8))]
pub(crate) struct Place {
    pub(crate) level: u8,
    pub(crate) slot: u8,
    pub(crate) pos: u32,
}

impl Place {
    /// A vacant entry's place: its `pos` is the next free entry.
    const fn vacant(next_free: u32) -> Place {
        Place {
            level: VACANT,
            slot: 0,
            pos: next_free,
        }
    }
}

/// Slab of entries plus a free list. Entry `i` is `blocks[i / BLOCK].0[i % BLOCK]`; the entries from
/// `allocated` to the end of the last block have never been handed out (vacant, on no free list).
pub(crate) struct Slab<T> {
    blocks: Vec<Block<T>>,
    /// Entries ever handed out: the next fresh index.
    allocated: u32,
    /// The first free entry ([`NIL`] when none) in the low 32 bits, the number of live entries in the
    /// high 32 (at most `NIL`): one word, so that a cancel or an insert updates both with one store.
    head: u64,
}

/// [`Slab::head`] from the first free entry and the live count.
#[inline(always)]
const fn head(free: u32, len: u32) -> u64 {
    free as u64 | (len as u64) << 32
}

impl<T> std::fmt::Debug for Slab<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slab")
            .field("len", &self.len())
            .field("capacity", &(self.blocks.capacity() * BLOCK))
            .finish()
    }
}

impl<T> Slab<T> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Slab {
            blocks: Vec::with_capacity(capacity.div_ceil(BLOCK)),
            allocated: 0,
            head: head(NIL, 0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        (self.head >> 32) as usize
    }

    /// The live count, as stored.
    #[inline(always)]
    fn len32(&self) -> u32 {
        (self.head >> 32) as u32
    }

    /// The first free entry, or [`NIL`].
    #[inline(always)]
    fn free_head(&self) -> u32 {
        self.head as u32
    }

    /// Entries ever allocated (live or free).
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.allocated as usize
    }

    /// All entries, handed out or not: the blocks seen as one slice.
    #[inline(always)]
    fn entries(&self) -> &[Entry<T>] {
        const { assert!(size_of::<Block<T>>() == BLOCK * size_of::<Entry<T>>()) };
        let len = self.blocks.len() * BLOCK;
        // SAFETY: `Block<T>` is `repr(C)` around `[Entry<T>; BLOCK]` with no padding (asserted above), so
        // the blocks are `len` consecutive, initialised `Entry<T>`s, borrowed as long as `self`.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<Entry<T>>(), len) }
    }

    /// [`entries`](Self::entries), mutably.
    #[inline(always)]
    fn entries_mut(&mut self) -> &mut [Entry<T>] {
        const { assert!(size_of::<Block<T>>() == BLOCK * size_of::<Entry<T>>()) };
        let len = self.blocks.len() * BLOCK;
        // SAFETY: as in `entries`; the borrow of `self` is exclusive, so is the slice's.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<Entry<T>>(), len) }
    }

    /// The entry at `index` (live or not), if the slab has room for it.
    #[inline(always)]
    fn slot(&self, index: u32) -> Option<&Entry<T>> {
        self.entries().get(index as usize)
    }

    /// The entry at `index` (live or not), mutably, if the slab has room for it.
    #[inline(always)]
    fn slot_mut(&mut self, index: u32) -> Option<&mut Entry<T>> {
        self.entries_mut().get_mut(index as usize)
    }

    /// Stores `value` due at `deadline`, listed at `place` (the caller puts it there) and returns
    /// `(index, generation)`. `None` when 2^32 - 1 entries are live.
    #[inline]
    pub(crate) fn alloc(&mut self, value: T, deadline: u64, place: Place) -> Option<(u32, u32)> {
        let index = self.free_head();
        if index == NIL {
            return self.alloc_new(value, deadline, place);
        }
        let len = self.len32() + 1;
        let entry = self.at_mut(index);
        let next_free = entry.place().pos;
        entry.value = MaybeUninit::new(value);
        entry.deadline = deadline;
        entry.place = place;
        let generation = entry.generation;
        self.head = head(next_free, len);
        Some((index, generation))
    }

    /// [`alloc`](Self::alloc) when no freed entry is left: the slab grows by one.
    #[cold]
    fn alloc_new(&mut self, value: T, deadline: u64, place: Place) -> Option<(u32, u32)> {
        let index = self.allocated;
        if index == NIL {
            return None;
        }
        if (index as usize).is_multiple_of(BLOCK) {
            self.blocks.push(Block::unused());
        }
        let len = self.len32() + 1;
        let entry = self.at_mut(index);
        entry.value = MaybeUninit::new(value);
        entry.deadline = deadline;
        entry.place = place;
        let generation = entry.generation;
        self.allocated += 1;
        self.head = head(NIL, len);
        Some((index, generation))
    }

    /// The live entry at `index` with `generation`, if any.
    pub(crate) fn get(&self, index: u32, generation: u32) -> Option<&Entry<T>> {
        self.slot(index)
            .filter(|e| e.generation == generation && !e.is_vacant())
    }

    /// The entry at `index` (live or not). Panics on an index never handed out: internal use only.
    #[inline(always)]
    pub(crate) fn at(&self, index: u32) -> &Entry<T> {
        &self.entries()[index as usize]
    }

    /// The entry at `index`, mutably (its `value` stays private to this module).
    #[inline(always)]
    pub(crate) fn at_mut(&mut self, index: u32) -> &mut Entry<T> {
        &mut self.entries_mut()[index as usize]
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
            .slot_mut(index)
            .filter(|e| e.generation == generation && !e.is_vacant())?;
        // SAFETY: filtered on `level != VACANT`, so `value` is initialised.
        Some(unsafe { entry.value.assume_init_mut() })
    }

    /// Frees the live entry `(index, generation)` in one visit and returns its payload and where it was
    /// listed. `None` (and nothing changed) for a stale key. The caller takes it out of that list; its
    /// level is [`VACANT`] now, so the index it leaves in a slot list no longer matches it.
    #[inline]
    pub(crate) fn take(&mut self, index: u32, generation: u32) -> Option<(T, Place)> {
        let (free_head, len) = (self.free_head(), self.len32().wrapping_sub(1));
        let entry = self
            .slot_mut(index)
            .filter(|e| e.generation == generation && !e.is_vacant())?;
        let listed = entry.place();
        // SAFETY: filtered on `level != VACANT`, so `value` is initialised; `level = VACANT` right after
        // makes sure it is never read again until `alloc` writes a new value.
        let value = unsafe { entry.value.assume_init_read() };
        entry.place = Place::vacant(free_head);
        // `generation` (the key's, equal to the entry's) rather than the entry's: the value stored then
        // does not wait for the entry to come from memory.
        entry.generation = generation.wrapping_add(1);
        self.head = head(index, len);
        Some((value, listed))
    }

    /// Frees a live entry that is already unlisted and returns its payload. Bumps the generation so
    /// that old keys become stale. `None` if the entry is vacant.
    pub(crate) fn free(&mut self, index: u32) -> Option<T> {
        let (free_head, len) = (self.free_head(), self.len32().wrapping_sub(1));
        let entry = self.slot_mut(index)?;
        if entry.is_vacant() {
            return None;
        }
        // SAFETY: `level != VACANT`, so `value` is initialised; setting `level = VACANT` right after
        // makes sure it is never read again until `alloc` writes a new value.
        let value = unsafe { entry.value.assume_init_read() };
        entry.place = Place::vacant(free_head);
        entry.generation = entry.generation.wrapping_add(1);
        self.head = head(index, len);
        Some(value)
    }
}

impl<T> Drop for Slab<T> {
    fn drop(&mut self) {
        for entry in self.entries_mut() {
            if !entry.is_vacant() {
                // SAFETY: `level != VACANT`, so `value` is initialised; the slab is going away, so it
                // is never read again.
                unsafe { entry.value.assume_init_drop() };
                entry.place = Place::vacant(NIL);
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
        assert_eq!(std::mem::size_of::<Entry<u32>>(), 24, "the server's entry");
        assert_eq!(
            std::mem::size_of::<Block<u32>>(),
            BLOCK * 24,
            "blocks are not padded"
        );
    }

    #[test]
    fn thirty_two_byte_entries_never_straddle_a_cache_line() {
        let mut slab = Slab::with_capacity(0);
        let indices: Vec<u32> = (0..100u64)
            .map(|i| slab.alloc(i, 0, DUE).unwrap().0)
            .collect();
        for index in indices {
            let at = std::ptr::from_ref(slab.at(index)).addr();
            assert_eq!(at % 32, 0, "entry {index} at {at:#x}");
        }
        // Indices map to consecutive entries across blocks, and the unused tail of a block is vacant.
        assert_eq!(slab.allocated(), 100);
        assert!(slab.get(100, 0).is_none() && slab.get(103, 0).is_none());
        assert!(slab.get(104, 0).is_none(), "past the last block");
        assert_eq!(slab.value(99, 0), Some(&99));
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
