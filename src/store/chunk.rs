//! Values stored in pieces small enough that sled never writes them to a
//! blob file.
//!
//! sled 0.34.7 writes a log message (a page fragment or a whole
//! consolidated page) that is larger than
//! `segment_size / MINIMUM_ITEMS_PER_SEGMENT - SEG_HEADER_LEN`
//! = 512 KiB / 4 − 20 bytes = 131 052 bytes
//! (`pagecache/logger.rs`, `reserve_inner`: `over_blob_threshold`;
//! `pagecache/constants.rs`) to its own file under `blobs/`, and
//! `pagecache/blob_io.rs` (`write_blob`) never fsyncs that file or its
//! directory: our fsync of sled's data file does not make it durable. The
//! threshold applies to a whole page, and a leaf only splits once it holds
//! more than 16 items (`node.rs`, `should_split`), so one value must stay
//! well below 1/17 of it. [`CHUNK`] (4 KiB) keeps a full leaf of chunks
//! under 70 KiB.
//!
//! A value up to [`CHUNK`] bytes is stored as is under its key. A larger
//! one is stored as a manifest under its key (a zero byte, which starts no
//! JSON text, then the chunk count and total length) and its chunks under
//! `key ‖ chunk number` (big-endian u32), which sort right after the key.
//! Manifest and chunks are always written in one batch, so readers see all
//! of them or none.
//!
//! Nothing is written in chunks any more (the log has its own files,
//! [`super::seglog`], and snapshots theirs); values are still read from
//! data directories that earlier versions wrote, and tests write them.

use super::StoreError;

/// Largest value stored in one piece, and the size of every chunk.
pub(crate) const CHUNK: usize = 4 * 1024;

/// First byte of a manifest. Stored values are JSON, which never starts
/// with a zero byte.
const MANIFEST: u8 = 0;
const MANIFEST_LEN: usize = 1 + 4 + 8;

/// How many chunks [`put`] writes for a value of `len` bytes (0: inline).
#[cfg(test)]
pub(crate) fn chunk_count(len: usize) -> u32 {
    if len <= CHUNK {
        0
    } else {
        u32::try_from(len.div_ceil(CHUNK)).unwrap_or(u32::MAX)
    }
}

/// The key of chunk `n` of the value stored under `key`.
pub(crate) fn chunk_key(key: &[u8], n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 4);
    k.extend_from_slice(key);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// Adds to `batch` the writes that store `value` under `key`, and removes
/// chunks `[count, stale_upto)` left by a larger value stored before.
#[cfg(test)]
pub(crate) fn put(batch: &mut sled::Batch, key: &[u8], value: &[u8], stale_upto: u32) {
    let count = chunk_count(value.len());
    if count == 0 {
        batch.insert(key, value);
    } else {
        let mut m = Vec::with_capacity(MANIFEST_LEN);
        m.push(MANIFEST);
        m.extend_from_slice(&count.to_be_bytes());
        m.extend_from_slice(&(value.len() as u64).to_be_bytes());
        batch.insert(key, m);
        for (n, piece) in (0..).zip(value.chunks(CHUNK)) {
            batch.insert(chunk_key(key, n), piece);
        }
    }
    for n in count..stale_upto {
        batch.remove(chunk_key(key, n));
    }
}

/// Adds to `batch` the removal of `key` and of its chunks `[0, stale_upto)`.
pub(crate) fn remove(batch: &mut sled::Batch, key: &[u8], stale_upto: u32) {
    batch.remove(key);
    for n in 0..stale_upto {
        batch.remove(chunk_key(key, n));
    }
}

/// One past the highest chunk number stored under `key` in `tree` (0 if
/// none): what a rewrite of `key` must clear. Blocking.
pub(crate) fn stored_chunks(tree: &sled::Tree, key: &[u8]) -> Result<u32, StoreError> {
    let mut upto = 0;
    for kv in tree.scan_prefix(key) {
        let (k, _) = kv?;
        if let Some(n) = chunk_number(key, &k) {
            upto = upto.max(n.saturating_add(1));
        }
    }
    Ok(upto)
}

/// The chunk number if `k` is a chunk key of `key`.
pub(crate) fn chunk_number(key: &[u8], k: &[u8]) -> Option<u32> {
    let rest = k.strip_prefix(key)?;
    Some(u32::from_be_bytes(rest.try_into().ok()?))
}

/// Reassembles a value read under `key` from `tree`: the value itself if it
/// was stored in one piece, else its chunks. Blocking.
pub(crate) fn assemble(
    tree: &sled::Tree,
    name: &'static str,
    key: &[u8],
    stored: sled::IVec,
) -> Result<Vec<u8>, StoreError> {
    if stored.first() != Some(&MANIFEST) {
        return Ok(stored.to_vec());
    }
    let corrupt = |reason: String| StoreError::Corrupt { tree: name, reason };
    if stored.len() != MANIFEST_LEN {
        return Err(corrupt(format!("a manifest of {} bytes", stored.len())));
    }
    let count = u32::from_be_bytes(stored[1..5].try_into().unwrap_or_default());
    let len = u64::from_be_bytes(stored[5..13].try_into().unwrap_or_default());
    if u64::from(count) != (len.div_ceil(CHUNK as u64)) {
        return Err(corrupt(format!("{count} chunks for {len} bytes")));
    }
    let len = usize::try_from(len).map_err(|_| corrupt(format!("a value of {len} bytes")))?;
    let mut out = Vec::with_capacity(len);
    for n in 0..count {
        let piece = tree
            .get(chunk_key(key, n))?
            .ok_or_else(|| corrupt(format!("chunk {n} of {count} is missing")))?;
        out.extend_from_slice(&piece);
    }
    if out.len() != len {
        return Err(corrupt(format!(
            "chunks hold {} bytes, the manifest says {len}",
            out.len()
        )));
    }
    Ok(out)
}

/// Reads the value stored under `key`, whole. Blocking.
pub(crate) fn get(
    tree: &sled::Tree,
    name: &'static str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    match tree.get(key)? {
        Some(stored) => assemble(tree, name, key, stored).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, sled::Db, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let t = db.open_tree("t").unwrap();
        (dir, db, t)
    }

    #[test]
    fn values_round_trip_in_one_piece_or_in_chunks_and_shrink_cleanly() {
        let (_d, _db, t) = tree();
        for len in [
            0,
            1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK,
            3 * CHUNK + 7,
            CHUNK + 1,
            5,
        ] {
            let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            let stale = stored_chunks(&t, b"k").unwrap();
            let mut b = sled::Batch::default();
            put(&mut b, b"k", &value, stale);
            t.apply_batch(b).unwrap();
            assert_eq!(get(&t, "t", b"k").unwrap(), Some(value), "len {len}");
            assert_eq!(stored_chunks(&t, b"k").unwrap(), chunk_count(len));
            assert!(t.iter().all(|kv| kv.unwrap().1.len() <= CHUNK));
        }
        let mut b = sled::Batch::default();
        remove(&mut b, b"k", stored_chunks(&t, b"k").unwrap());
        t.apply_batch(b).unwrap();
        assert!(t.is_empty());
    }

    // A torn chunked value (a chunk missing) is reported, never returned
    // short. sled applies a batch atomically, so this needs corruption.
    #[test]
    fn a_missing_chunk_is_reported_as_corrupt() {
        let (_d, _db, t) = tree();
        let mut b = sled::Batch::default();
        put(&mut b, b"k", &vec![7u8; 3 * CHUNK], 0);
        t.apply_batch(b).unwrap();
        t.remove(chunk_key(b"k", 1)).unwrap();
        let err = get(&t, "t", b"k").unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains("chunk 1 of 3")),
            "{err}"
        );
    }
}
