//! Unit and property tests of the wheel against an ordered-map oracle.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn drain(wheel: &mut Wheel<u64>, now: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    while let Some(e) = wheel.poll_tick(now) {
        out.push((e.value, e.deadline_tick));
    }
    out.sort_unstable();
    out
}

#[test]
fn fires_exactly_at_deadline_tick_never_before() {
    let start = Instant::now();
    let mut wheel = Wheel::new(start);
    for d in [0u64, 1, 63, 64, 65, 4095, 4096, 300_000] {
        wheel.insert_at_tick(d, d).unwrap();
    }
    let mut fired = Vec::new();
    let mut now = 0;
    while !wheel.is_empty() {
        let next = wheel.next_deadline_tick().unwrap();
        assert!(next >= now, "next deadline went backwards");
        if next > 0 {
            let early = drain(&mut wheel, next - 1);
            assert!(early.is_empty(), "{early:?} fired one tick early");
        }
        now = next;
        for (v, dl) in drain(&mut wheel, now) {
            assert_eq!(dl, now);
            fired.push(v);
        }
    }
    assert_eq!(fired, [0, 1, 63, 64, 65, 4095, 4096, 300_000]);
}

#[test]
fn instants_round_deadline_up_and_now_down() {
    let start = Instant::now();
    let mut wheel = Wheel::new(start);
    wheel
        .insert(start + Duration::from_micros(1500), 1u64)
        .unwrap();
    assert!(wheel.poll(start + Duration::from_micros(1999)).is_none());
    assert_eq!(
        wheel
            .poll(start + Duration::from_millis(2))
            .map(|e| e.value),
        Some(1)
    );
}

#[test]
fn a_key_is_one_word_and_so_is_an_optional_key() {
    assert_eq!(std::mem::size_of::<Key>(), 8);
    assert_eq!(std::mem::size_of::<Option<Key>>(), 8);
    for (index, generation) in [(0, 0), (1, u32::MAX), (u32::MAX - 1, 7), (12345, 0)] {
        let key = Key::new(index, generation);
        assert_eq!((key.index(), key.generation()), (index, generation));
    }
    let none = Key(Key::NO_ENTRY);
    assert_eq!((none.index(), none.generation()), (u32::MAX, 0));
    let mut wheel = Wheel::new(Instant::now());
    wheel.insert_at_tick(5, 1u64).unwrap();
    assert_eq!(wheel.cancel(none), Err(Error::StaleKey));
    assert_eq!(
        format!("{:?}", Key::new(3, 9)),
        "Key { index: 3, generation: 9 }"
    );
}

#[test]
fn stale_keys_are_errors_not_panics() {
    let start = Instant::now();
    let mut wheel = Wheel::new(start);
    let k = wheel.insert_at_tick(5, 1u64).unwrap();
    assert_eq!(wheel.cancel(k), Ok(1));
    assert_eq!(wheel.cancel(k), Err(Error::StaleKey));
    assert_eq!(wheel.reset_to_tick(k, 9), Err(Error::StaleKey));
    let k2 = wheel.insert_at_tick(5, 2u64).unwrap();
    assert_ne!(k, k2, "a reused slot must carry a new generation");
    assert!(wheel.get(k).is_none());
    assert_eq!(wheel.get(k2), Some(&2));
    assert_eq!(wheel.poll_tick(5).map(|e| e.key), Some(k2));
    assert_eq!(wheel.cancel(k2), Err(Error::StaleKey));
}

#[test]
fn lazy_reset_to_later_moves_the_firing() {
    let start = Instant::now();
    let mut wheel = Wheel::new(start);
    let k = wheel.insert_at_tick(10, 7u64).unwrap();
    for later in [20, 100, 5000, 70_000] {
        wheel.reset_to_tick(k, later).unwrap();
    }
    assert!(drain(&mut wheel, 69_999).is_empty());
    assert_eq!(drain(&mut wheel, 70_000), [(7, 70_000)]);
}

#[test]
fn reset_to_earlier_is_refiled_at_once() {
    let start = Instant::now();
    let mut wheel = Wheel::new(start);
    let k = wheel.insert_at_tick(1_000_000, 7u64).unwrap();
    wheel.reset_to_tick(k, 3).unwrap();
    assert_eq!(wheel.next_deadline_tick(), Some(3));
    assert_eq!(drain(&mut wheel, 3), [(7, 3)]);
}

#[test]
fn far_deadlines_beyond_a_top_level_rotation_are_kept() {
    let start = Instant::now();
    let mut wheel = Wheel::new(start);
    wheel.insert_at_tick(u64::MAX, 1u64).unwrap();
    wheel.insert_at_tick(1 << 40, 2).unwrap();
    wheel
        .insert(start + Duration::from_secs(10 * 365 * 24 * 3600), 3)
        .unwrap();
    assert_eq!(wheel.len(), 3);
    let ten_years = 10 * 365 * 24 * 3600 * 1000;
    assert!(drain(&mut wheel, ten_years - 1).is_empty());
    assert_eq!(drain(&mut wheel, (1 << 40) - 1), [(3, ten_years)]);
    assert_eq!(drain(&mut wheel, 1 << 40), [(2, 1 << 40)]);
    assert!(drain(&mut wheel, u64::MAX - 1).is_empty());
    assert_eq!(drain(&mut wheel, u64::MAX), [(1, u64::MAX)]);
}

#[test]
fn past_deadlines_are_due_at_once() {
    let start = Instant::now();
    let mut wheel = Wheel::new(start);
    assert!(wheel.poll_tick(1000).is_none());
    wheel.insert_at_tick(10, 1u64).unwrap();
    assert_eq!(wheel.next_deadline_tick(), Some(1000));
    assert_eq!(drain(&mut wheel, 1000), [(1, 10)]);
}

#[test]
fn steady_state_reuses_entries() {
    let start = Instant::now();
    let mut wheel = Wheel::new(start);
    let keys: Vec<_> = (0..1000)
        .map(|i| wheel.insert_at_tick(i + 1, i).unwrap())
        .collect();
    let slab_len = wheel.slab.allocated();
    for (i, k) in keys.into_iter().enumerate() {
        wheel.cancel(k).unwrap();
        wheel.insert_at_tick(5000 + i as u64, 0).unwrap();
    }
    assert_eq!(
        wheel.slab.allocated(),
        slab_len,
        "churn must reuse freed entries"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64),
    Cancel(usize),
    Reset(usize, u64),
    Advance(u64),
}

fn deadline() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..200,
        3 => 0u64..10_000,
        2 => 0u64..5_000_000,
        1 => 0u64..(1 << 40),
        1 => (u64::MAX - 1000)..=u64::MAX,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => deadline().prop_map(Op::Insert),
        2 => any::<usize>().prop_map(Op::Cancel),
        3 => (any::<usize>(), deadline()).prop_map(|(i, d)| Op::Reset(i, d)),
        3 => prop_oneof![0u64..5, 0u64..300, 0u64..100_000, 0u64..(1 << 41)].prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random insert / cancel / reset / advance agree with an ordered map: after each advance, exactly the
    /// entries whose deadline is at or before `now` have been handed out, each once, with its deadline.
    #[test]
    fn agrees_with_ordered_map_oracle(ops in proptest::collection::vec(op(), 1..300)) {
        let start = Instant::now();
        let mut wheel: Wheel<u64> = Wheel::new(start);
        let mut oracle: BTreeMap<u64, u64> = BTreeMap::new(); // id -> deadline
        let mut keys: HashMap<u64, Key> = HashMap::new();
        let mut ids: Vec<u64> = Vec::new(); // ids ever inserted (live or not)
        let mut next_id = 0u64;
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Insert(d) => {
                    let id = next_id;
                    next_id += 1;
                    let at = now.saturating_add(d);
                    keys.insert(id, wheel.insert_at_tick(at, id).unwrap());
                    oracle.insert(id, at);
                    ids.push(id);
                }
                Op::Cancel(i) if !ids.is_empty() => {
                    let id = ids[i % ids.len()];
                    let got = wheel.cancel(keys[&id]);
                    match oracle.remove(&id) {
                        Some(_) => prop_assert_eq!(got, Ok(id)),
                        None => prop_assert_eq!(got, Err(Error::StaleKey)),
                    }
                }
                Op::Reset(i, d) if !ids.is_empty() => {
                    let id = ids[i % ids.len()];
                    let at = now.saturating_add(d);
                    let got = wheel.reset_to_tick(keys[&id], at);
                    match oracle.get_mut(&id) {
                        Some(dl) => { prop_assert_eq!(got, Ok(())); *dl = at; }
                        None => prop_assert_eq!(got, Err(Error::StaleKey)),
                    }
                }
                Op::Cancel(_) | Op::Reset(..) => {}
                Op::Advance(d) => {
                    now = now.saturating_add(d);
                    if let Some(next) = wheel.next_deadline_tick() {
                        let earliest = oracle.values().min().copied();
                        prop_assert!(earliest.is_some());
                        prop_assert!(next <= earliest.unwrap().max(wheel.elapsed_tick()),
                            "next_deadline {} after earliest {:?}", next, earliest);
                    } else {
                        prop_assert!(oracle.is_empty());
                    }
                    let got = drain(&mut wheel, now);
                    let mut want: Vec<(u64, u64)> =
                        oracle.iter().filter(|&(_, &dl)| dl <= now).map(|(&id, &dl)| (id, dl)).collect();
                    want.sort_unstable();
                    for (id, _) in &want {
                        oracle.remove(id);
                    }
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(wheel.len(), oracle.len());
        }
    }
}

/// Every position of every slot list holds either a stale index or the index of an entry whose place is
/// exactly that list and position; returns the live positions per list.
fn check_lists(wheel: &Wheel<u64>) -> usize {
    let mut live = 0;
    for (level, lists) in wheel.slots.iter().enumerate() {
        for (slot, list) in lists.iter().enumerate() {
            for (pos, &index) in list.iter().enumerate() {
                if wheel.listed_at(index, level, slot, pos) {
                    live += 1;
                }
            }
        }
    }
    assert_eq!(
        live,
        wheel.len() - wheel.pending.len(),
        "each live entry listed exactly once"
    );
    live
}

#[test]
fn cancel_leaves_the_list_alone_and_a_full_list_is_compacted() {
    let start = Instant::now();
    let mut wheel = Wheel::new(start);
    // 2,000 entries in the same level-2 slot (ticks 8192..12287).
    let keys: Vec<Key> = (0..2000u64)
        .map(|i| wheel.insert_at_tick(8192 + (i * 7) % 4096, i).unwrap())
        .collect();
    let list_len = |w: &Wheel<u64>| w.slots[2][2].len();
    assert_eq!(list_len(&wheel), 2000);
    // Cancel 1,900 in a scattered order: the list is not touched.
    let mut cancelled = std::collections::HashSet::new();
    for j in 0..1900u64 {
        let i = (j * 1013) % 2000;
        assert!(cancelled.insert(i));
        assert_eq!(wheel.cancel(keys[i as usize]), Ok(i));
    }
    assert_eq!(list_len(&wheel), 2000, "cancel does not touch the list");
    assert_eq!(check_lists(&wheel), 100);
    // Re-file some survivors earlier within the same slot (appended again: their old index goes stale),
    // and recycle cancelled entries into it until its buffer is full and it is compacted.
    let survivors: Vec<u64> = (0..2000).filter(|i| !cancelled.contains(i)).collect();
    for &i in survivors.iter().take(20) {
        wheel.reset_to_tick(keys[i as usize], 8192).unwrap();
    }
    assert_eq!(check_lists(&wheel), 100);
    let capacity = wheel.slots[2][2].capacity();
    let fresh_count = (capacity - list_len(&wheel) + 1) as u64;
    let fresh: Vec<Key> = (0..fresh_count)
        .map(|i| wheel.insert_at_tick(9000 + i % 3000, 10_000 + i).unwrap())
        .collect();
    let live = 100 + fresh_count as usize;
    assert_eq!(wheel.len(), live);
    assert_eq!(
        list_len(&wheel),
        live,
        "the full list was compacted down to its live entries before growing"
    );
    assert!(wheel.slots[2][2].capacity() <= COMPACT_RATIO * live + COMPACT_SLACK + 64);
    assert_eq!(
        check_lists(&wheel),
        live,
        "compaction fixed the moved entries' positions"
    );
    let mut fired: Vec<u64> = drain(&mut wheel, 20_000)
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    fired.sort_unstable();
    let mut want: Vec<u64> = survivors.clone();
    want.extend(10_000..10_000 + fresh_count);
    assert_eq!(
        fired, want,
        "every live entry fires once; no stale index fires"
    );
    assert!(fresh.iter().all(|k| !wheel.contains(*k)));
    assert!(wheel.is_empty());
}

#[test]
fn an_index_freed_and_reused_in_the_same_list_fires_once() {
    let mut wheel = Wheel::new(Instant::now());
    let other = wheel.insert_at_tick(5000, 0u64).unwrap();
    let a = wheel.insert_at_tick(100, 1).unwrap();
    assert_eq!(wheel.cancel(a), Ok(1));
    // Same slab index (the free list is LIFO), same level-1 slot, later position: the list holds the
    // index twice, and only the second position matches the entry.
    let b = wheel.insert_at_tick(101, 2).unwrap();
    assert_eq!(b.index(), a.index());
    assert_eq!(wheel.slots[1][1].len(), 2);
    assert_eq!(check_lists(&wheel), 2);
    assert_eq!(drain(&mut wheel, 200), [(2, 101)]);
    assert_eq!(wheel.cancel(other), Ok(0));
    assert!(wheel.is_empty());
    assert_eq!(wheel.cancel(a), Err(Error::StaleKey));
}

#[test]
fn an_index_freed_and_reused_in_another_list_does_not_fire_from_the_old_one() {
    let mut wheel = Wheel::new(Instant::now());
    let a = wheel.insert_at_tick(100, 1u64).unwrap();
    let keep = wheel.insert_at_tick(110, 3).unwrap();
    assert_eq!(wheel.cancel(a), Ok(1));
    let b = wheel.insert_at_tick(5000, 2).unwrap();
    assert_eq!(b.index(), a.index());
    assert_eq!(check_lists(&wheel), 2);
    // The old list (level 1, slot 1) still holds the index: emptying it skips it.
    assert_eq!(drain(&mut wheel, 200), [(3, 110)]);
    assert!(!wheel.contains(keep));
    assert!(wheel.contains(b));
    assert_eq!(drain(&mut wheel, 4999), []);
    assert_eq!(drain(&mut wheel, 5000), [(2, 5000)]);
}

#[test]
fn a_timer_moved_earlier_fires_once_from_its_new_list() {
    let mut wheel = Wheel::new(Instant::now());
    let k = wheel.insert_at_tick(5000, 7u64).unwrap();
    wheel.reset_to_tick(k, 100).unwrap();
    wheel.reset_to_tick(k, 90).unwrap();
    // Listed three times (level 2, then twice level 1), live once.
    assert_eq!(check_lists(&wheel), 1);
    assert_eq!(drain(&mut wheel, 10_000), [(7, 90)]);
    assert!(wheel.is_empty());
    // And a timer moved out of the pending list leaves it.
    let d = wheel.insert_at_tick(5, 8).unwrap();
    let e = wheel.insert_at_tick(6, 9).unwrap();
    wheel.reset_to_tick(d, 20_000).unwrap();
    assert_eq!(wheel.pending, [e.index()]);
    assert_eq!(drain(&mut wheel, 20_000), [(8, 20_000), (9, 6)]);
}

#[test]
fn steady_churn_keeps_lists_within_the_compaction_bound() {
    let mut wheel = Wheel::new(Instant::now());
    let mut keys: Vec<Key> = (0..5000u64)
        .map(|i| wheel.insert_at_tick(8192 + i % 4096, i).unwrap())
        .collect();
    let mut x = 12345u64;
    for n in 0..100_000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let victim = (x >> 33) as usize % keys.len();
        wheel.cancel(keys[victim]).unwrap();
        keys[victim] = wheel.insert_at_tick(8192 + (x >> 20) % 4096, n).unwrap();
        let list = &wheel.slots[2][2];
        assert!(
            list.capacity() <= (COMPACT_RATIO + 1) * 5000,
            "list of {} ({} room) for 5000 live",
            list.len(),
            list.capacity()
        );
    }
    assert_eq!(check_lists(&wheel), 5000);
    assert_eq!(drain(&mut wheel, 20_000).len(), 5000);
}

#[test]
fn an_emptied_wheel_reports_no_deadline_and_forgets_its_lists() {
    let mut wheel = Wheel::new(Instant::now());
    let keys: Vec<Key> = (0..3000u64)
        .map(|i| wheel.insert_at_tick(100 + i, i).unwrap())
        .collect();
    for (i, k) in keys.iter().enumerate().skip(1) {
        wheel.cancel(*k).unwrap();
        assert!(wheel.next_deadline_tick().is_some(), "{i}");
    }
    wheel.cancel(keys[0]).unwrap();
    assert_eq!(wheel.next_deadline_tick(), None);
    assert!(wheel.slots.iter().flatten().all(Vec::is_empty));
    assert_eq!(drain(&mut wheel, 1 << 20), []);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Cancels, inserts and resets (earlier and later) on a few long level-2 lists, so that full lists
    /// are compacted along the way (the oracle test's lists are too short for that): every list position
    /// stays stale or matches its entry, and draining hands out exactly the oracle's entries, each once.
    #[test]
    fn compaction_under_churn_agrees_with_the_oracle(
        seed in any::<u64>(),
        slots in 1u64..3,
        ops in 6000usize..12000,
    ) {
        let mut wheel: Wheel<u64> = Wheel::new(Instant::now());
        let mut oracle: BTreeMap<u64, u64> = BTreeMap::new();
        let mut keys: Vec<(u64, Key)> = Vec::new();
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let span = slots * 4096;
        let mut id = 0u64;
        let mut appended = 3000usize;
        for _ in 0..3000 {
            let at = 8192 + next() % span;
            keys.push((id, wheel.insert_at_tick(at, id).unwrap()));
            oracle.insert(id, at);
            id += 1;
        }
        for _ in 0..ops {
            let r = next();
            let victim = (r >> 8) as usize % keys.len();
            let (vid, vkey) = keys[victim];
            match r % 8 {
                0..=5 => {
                    prop_assert_eq!(wheel.cancel(vkey), Ok(vid));
                    oracle.remove(&vid);
                    let at = 8192 + next() % span;
                    keys[victim] = (id, wheel.insert_at_tick(at, id).unwrap());
                    oracle.insert(id, at);
                    id += 1;
                    appended += 1;
                }
                6 => {
                    let at = 8192 + next() % span;
                    prop_assert_eq!(wheel.reset_to_tick(vkey, at), Ok(()));
                    if oracle.insert(vid, at).is_some_and(|old| at < old) {
                        appended += 1; // re-filed at once
                    }
                }
                _ => {
                    let at = 8192 + next() % span;
                    keys.push((id, wheel.insert_at_tick(at, id).unwrap()));
                    oracle.insert(id, at);
                    id += 1;
                    appended += 1;
                }
            }
        }
        prop_assert_eq!(check_lists(&wheel), oracle.len());
        let listed: usize = wheel.slots.iter().flatten().map(Vec::len).sum();
        prop_assert!(listed < appended, "no list was compacted: {} listed, {} appended", listed, appended);
        let got = drain(&mut wheel, 1 << 20);
        let mut want: Vec<(u64, u64)> = oracle.into_iter().collect();
        want.sort_unstable();
        prop_assert_eq!(got, want);
        prop_assert!(wheel.is_empty());
    }
}
