//! The revoked-jti set, sized for millions of entries.
//!
//! A jti in the form Tessera mints ([`crate::token::new_jti`]: 16 random
//! bytes, 22 base64url characters without padding) is held as its 16
//! bytes; any other string a client revoked is held as a boxed string. Each
//! kind lives in a hash map with its `until` (a slot of 24 bytes plus one
//! control byte for a minted jti, against ~565 bytes per revocation when
//! the state was a `BTreeMap<String, u64>` mirrored in sled).
//!
//! No order is kept in memory: a snapshot sorts what it writes (so equal
//! states give equal bytes), and a purge scans the map. Purges run once a
//! minute by default and a scan of a million entries takes milliseconds;
//! the earliest `until` held is tracked so that a purge with nothing to
//! remove costs nothing. An expiry-ordered index would cost ~40 bytes per
//! entry more to save that scan.
//!
//! The minted ids are split into 256 maps by their first byte. One map of
//! a million entries grows by copying itself into a table twice its size
//! (52 MB at 1M) and freeing the old one: the allocator then keeps freed
//! blocks of that size around instead of returning them (glibc raises its
//! mmap threshold to the largest block freed), and apply stops for the
//! copy. With shards every table stays below ~0.5 MB at 1M, a growth copies
//! one shard, and a snapshot copies and sorts shard by shard (the shards
//! are in byte order, so their concatenation is sorted). A purge that
//! empties most of a shard shrinks it.

use std::collections::HashMap;

/// A jti in the minted form, as its 16 bytes.
pub(crate) type Id = [u8; 16];

/// A jti in any other form, with its `until`.
pub(crate) type Other = (Box<str>, u64);

/// Shards of the minted ids: one per value of an id's first byte.
const SHARDS: usize = 256;

/// A shard shrinks after a purge once it uses less than this fraction
/// (1/n) of its capacity.
const SHRINK_BELOW: usize = 4;

/// Revoked jtis and when each may be forgotten.
#[derive(Debug, Clone)]
pub(crate) struct Jtis {
    /// `ids[b]` holds the minted ids whose first byte is `b`.
    ids: Vec<HashMap<Id, u64>>,
    other: HashMap<Box<str>, u64>,
    /// No entry expires before this (`None` when empty): a lower bound,
    /// exact after a purge.
    min_until: Option<u64>,
}

impl Default for Jtis {
    fn default() -> Self {
        Self {
            ids: (0..SHARDS).map(|_| HashMap::new()).collect(),
            other: HashMap::new(),
            min_until: None,
        }
    }
}

impl PartialEq for Jtis {
    fn eq(&self, o: &Self) -> bool {
        self.ids == o.ids && self.other == o.other
    }
}

/// The minted ids of a state, copied shard by shard (ascending shards).
pub(crate) type IdShards = Vec<Vec<(Id, u64)>>;

impl Eq for Jtis {}

/// What [`Jtis::raise`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Raised {
    /// The jti was not held; it is now, until the given time.
    New,
    /// It was held with an earlier `until`; it is now held until the given
    /// time.
    Later,
    /// It was held with this `until` or a later one: nothing changed.
    Unchanged,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn sextet(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// The 16 bytes of a jti in the minted form, or `None` for any other
/// string. Only the canonical encoding qualifies (the 4 bits past the 16th
/// byte must be zero), so a string and its bytes map one to one.
pub(crate) fn decode_id(jti: &str) -> Option<Id> {
    let b = jti.as_bytes();
    if b.len() != 22 {
        return None;
    }
    let mut out = [0u8; 16];
    for g in 0..5 {
        let mut n = 0u32;
        for &c in &b[4 * g..4 * g + 4] {
            n = n << 6 | sextet(c)?;
        }
        out[3 * g..3 * g + 3].copy_from_slice(&n.to_be_bytes()[1..]);
    }
    let n = sextet(b[20])? << 6 | sextet(b[21])?;
    if n & 0xf != 0 {
        return None;
    }
    out[15] = (n >> 4) as u8;
    Some(out)
}

/// The minted form (22 base64url characters) of `id`.
pub(crate) fn encode_id(id: &Id) -> String {
    let mut s = String::with_capacity(22);
    let mut push = |n: u32, count: usize| {
        for k in (0..count).rev() {
            s.push(char::from(ALPHABET[(n >> (6 * k) & 63) as usize]));
        }
    };
    for g in 0..5 {
        let n = u32::from_be_bytes([0, id[3 * g], id[3 * g + 1], id[3 * g + 2]]);
        push(n, 4);
    }
    push(u32::from(id[15]) << 4, 2);
    s
}

impl Jtis {
    /// Whether `jti` is held.
    pub(crate) fn contains(&self, jti: &str) -> bool {
        self.get(jti).is_some()
    }

    /// When `jti` may be forgotten, if it is held.
    pub(crate) fn get(&self, jti: &str) -> Option<u64> {
        match decode_id(jti) {
            Some(id) => self.ids[usize::from(id[0])].get(&id).copied(),
            None => self.other.get(jti).copied(),
        }
    }

    /// How many jtis are held.
    pub(crate) fn len(&self) -> usize {
        self.ids.iter().map(HashMap::len).sum::<usize>() + self.other.len()
    }

    /// Whether none is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Holds `jti` until at least `until`: an entry's `until` only grows.
    pub(crate) fn raise(&mut self, jti: &str, until: u64) -> Raised {
        let slot = match decode_id(jti) {
            Some(id) => self.ids[usize::from(id[0])].entry(id),
            None => return raise_in(self.other.entry(jti.into()), until, &mut self.min_until),
        };
        raise_in(slot, until, &mut self.min_until)
    }

    /// Inserts a minted jti read from a snapshot (a repeat keeps the later
    /// `until`).
    pub(crate) fn insert_id(&mut self, id: Id, until: u64) {
        raise_in(
            self.ids[usize::from(id[0])].entry(id),
            until,
            &mut self.min_until,
        );
    }

    /// Makes room for `n` more minted jtis (snapshot decoding; bounded by
    /// the caller), spread evenly: ids are random bytes.
    pub(crate) fn reserve_ids(&mut self, n: usize) {
        for shard in &mut self.ids {
            shard.reserve(n / SHARDS);
        }
    }

    /// Removes every entry with `until < at`; returns how many.
    pub(crate) fn purge(&mut self, at: u64) -> u64 {
        if self.min_until.is_none_or(|m| m >= at) {
            return 0;
        }
        let before = self.len();
        let mut min = u64::MAX;
        let mut keep = |until: &mut u64| {
            let kept = *until >= at;
            if kept {
                min = min.min(*until);
            }
            kept
        };
        for shard in &mut self.ids {
            shard.retain(|_, u| keep(u));
            shrink_if_sparse(shard);
        }
        self.other.retain(|_, u| keep(u));
        shrink_if_sparse(&mut self.other);
        self.min_until = (!self.is_empty()).then_some(min);
        (before - self.len()) as u64
    }

    /// Every entry, as (jti, until), in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let ids = self.ids.iter().flatten().map(|(id, u)| (encode_id(id), *u));
        let other = self.other.iter().map(|(s, u)| (s.to_string(), *u));
        ids.chain(other)
    }

    /// A copy of every entry, for writing out once a lock is released:
    /// (minted ids by shard, other strings), unsorted within a shard.
    pub(crate) fn export(&self) -> (IdShards, Vec<Other>) {
        (
            self.ids
                .iter()
                .map(|shard| shard.iter().map(|(k, v)| (*k, *v)).collect())
                .collect(),
            self.other.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        )
    }
}

/// Gives memory back once a purge left `map` mostly empty (a table never
/// shrinks by itself).
fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > SHRINK_BELOW * map.len().max(16) {
        map.shrink_to_fit();
    }
}

fn raise_in<K>(
    slot: std::collections::hash_map::Entry<'_, K, u64>,
    until: u64,
    min_until: &mut Option<u64>,
) -> Raised {
    use std::collections::hash_map::Entry;
    let r = match slot {
        Entry::Occupied(mut o) if until > *o.get() => {
            o.insert(until);
            Raised::Later
        }
        Entry::Occupied(_) => return Raised::Unchanged,
        Entry::Vacant(v) => {
            v.insert(until);
            Raised::New
        }
    };
    *min_until = Some(min_until.map_or(until, |m| m.min(until)));
    r
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn minted_jtis_round_trip_through_their_bytes() {
        for seed in 0..2_000u32 {
            let mut id = [0u8; 16];
            for (i, b) in id.iter_mut().enumerate() {
                *b = (seed.wrapping_mul(2_654_435_761).rotate_left(i as u32 * 3) >> 7) as u8;
            }
            if seed == 1 {
                id = [0xff; 16];
            } else if seed == 2 {
                id = [0; 16];
            }
            let s = B64.encode(id);
            assert_eq!(encode_id(&id), s);
            assert_eq!(decode_id(&s), Some(id), "{s}");
        }
        let minted = crate::token::new_jti().unwrap();
        assert!(decode_id(&minted).is_some(), "{minted}");
    }

    #[test]
    fn other_strings_are_not_minted_ids() {
        let minted = encode_id(&[7; 16]);
        // Non-zero bits past the 16th byte: another spelling of other bytes.
        let mut tail = minted.clone().into_bytes();
        tail[21] = b'B';
        let tail = String::from_utf8(tail).unwrap();
        for s in [
            "",
            "j-live",
            &minted[..21],
            &format!("{minted}A"),
            &minted.replace('H', "+"),
            &format!("{}=", &minted[..21]),
            &tail,
            "ééééééééééé",
        ] {
            assert_eq!(decode_id(s), None, "{s:?}");
        }
    }

    #[test]
    fn both_kinds_are_held_raised_and_purged() {
        let minted = encode_id(&[1; 16]);
        let mut j = Jtis::default();
        assert!(j.is_empty());
        assert_eq!(j.purge(u64::MAX), 0);
        assert_eq!(j.raise(&minted, 100), Raised::New);
        assert_eq!(j.raise("custom", 50), Raised::New);
        assert_eq!(j.raise(&minted, 90), Raised::Unchanged);
        assert_eq!(j.raise(&minted, 100), Raised::Unchanged);
        assert_eq!(j.raise(&minted, 120), Raised::Later);
        assert_eq!(j.get(&minted), Some(120));
        assert_eq!(j.get("custom"), Some(50));
        assert!(!j.contains("other"));
        assert_eq!(j.len(), 2);
        let mut all: Vec<_> = j.iter().collect();
        all.sort();
        assert_eq!(all, [(minted.clone(), 120), ("custom".into(), 50)]);
        // Nothing before 50: nothing to scan.
        assert_eq!(j.purge(50), 0);
        assert_eq!(j.purge(51), 1);
        assert_eq!(j.min_until, Some(120));
        assert_eq!(j.purge(121), 1);
        assert!(j.is_empty());
        assert_eq!(j.min_until, None);
        // Equality ignores the purge bound.
        let mut a = Jtis::default();
        a.raise("x", 5);
        let mut b = a.clone();
        b.raise("y", 1);
        b.purge(2);
        assert_eq!(a, b);
    }

    fn id(first: u8, rest: u8) -> Id {
        let mut id = [rest; 16];
        id[0] = first;
        id
    }

    #[test]
    fn minted_ids_export_ascending_across_shards() {
        let mut j = Jtis::default();
        let mut want = Vec::new();
        for first in [255u8, 0, 128, 1, 7] {
            for rest in [9u8, 3, 200] {
                j.insert_id(id(first, rest), u64::from(rest));
                want.push((id(first, rest), u64::from(rest)));
            }
        }
        want.sort();
        let st = crate::store::state::State {
            jtis: j,
            ..Default::default()
        };
        let mut bytes = Vec::new();
        st.export().write(&mut bytes).unwrap();
        let back = crate::store::state::body::read(&mut bytes.as_slice()).unwrap();
        assert_eq!(back, st);
        // The ids section: count, then ascending (id, until) records.
        let at = bytes.len() - 8 - 8 - want.len() * 24;
        let got: Vec<(Id, u64)> = bytes[at..at + want.len() * 24]
            .chunks(24)
            .map(|c| {
                (
                    c[..16].try_into().unwrap(),
                    u64::from_le_bytes(c[16..].try_into().unwrap()),
                )
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_purge_that_empties_most_of_a_shard_gives_its_memory_back() {
        let mut j = Jtis::default();
        for n in 0..4_000u32 {
            let mut k = [0u8; 16];
            k[1..5].copy_from_slice(&n.to_be_bytes());
            j.insert_id(k, if n < 10 { 100 } else { 1 });
        }
        let full = j.ids[0].capacity();
        assert!(full >= 4_000);
        assert_eq!(j.purge(2), 3_990);
        assert_eq!(j.len(), 10);
        assert!(j.ids[0].capacity() < full / 4, "{}", j.ids[0].capacity());
        assert_eq!(j.get(&encode_id(&[0; 16])), Some(100));
    }
}
