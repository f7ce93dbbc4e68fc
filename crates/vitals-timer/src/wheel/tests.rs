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

#[test]
fn cancels_leave_tombstones_that_compaction_and_expiry_skip() {
    let start = Instant::now();
    let mut wheel = Wheel::new(start);
    // 2,000 entries in the same level-2 slot (ticks 8192..12287).
    let keys: Vec<Key> = (0..2000u64)
        .map(|i| wheel.insert_at_tick(8192 + (i * 7) % 4096, i).unwrap())
        .collect();
    let slot_list = |w: &Wheel<u64>| w.slots[2][2].len();
    assert_eq!(slot_list(&wheel), 2000);
    // Cancel 1,900 in a scattered order: the list is compacted on the way, never left mostly dead.
    let mut cancelled = std::collections::HashSet::new();
    for j in 0..1900u64 {
        let i = (j * 1013) % 2000;
        assert!(cancelled.insert(i));
        assert_eq!(wheel.cancel(keys[i as usize]), Ok(i));
        assert!(
            slot_list(&wheel)
                <= COMPACT_RATIO * (wheel.slots[2][2].len() - wheel.dead[2][2] as usize)
                    + COMPACT_SLACK
        );
    }
    // Re-file some survivors earlier within the same slot, and recycle cancelled entries into it.
    let survivors: Vec<u64> = (0..2000).filter(|i| !cancelled.contains(i)).collect();
    for &i in survivors.iter().take(20) {
        wheel.reset_to_tick(keys[i as usize], 8192).unwrap();
    }
    let fresh: Vec<Key> = (0..50u64)
        .map(|i| wheel.insert_at_tick(9000 + i, 10_000 + i).unwrap())
        .collect();
    assert_eq!(wheel.len(), 100 + 50);
    let mut fired: Vec<u64> = drain(&mut wheel, 20_000)
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    fired.sort_unstable();
    let mut want: Vec<u64> = survivors.clone();
    want.extend(10_000..10_050);
    assert_eq!(
        fired, want,
        "every live entry fires once; no tombstone fires"
    );
    assert!(fresh.iter().all(|k| !wheel.contains(*k)));
    assert!(wheel.is_empty());
}
