//! The Raft log's entries in append-only segment files: Tessera's own log,
//! in place of sled's `log` tree.
//!
//! Why not sled: every sled flush wakes all seven of sled 0.34's idle io
//! threads (its thread pool's queue notifies every waiter), and a flush
//! per appended batch made those wake-ups about 40 % of a node's context
//! switches per log entry (docs/BENCHMARKS.md, "Where a log entry's CPU
//! goes"). Here an append is one `pwrite` on the calling thread and its
//! durability one `fdatasync` on the log flusher's thread.
//!
//! Layout: the directory [`DIR`] under the data directory holds files named
//! after the index of their first entry (`{first:020}.seg`). A file is a
//! sequence of records, each `len: u32 LE, crc32(payload): u32 LE,
//! payload`, the payload being an entry's index (u64 LE) and the entry in
//! [`super::entry_format`]. The index is in the clear so that opening a
//! file checks the entries' order without decoding them (they are decoded
//! when read). Entries are contiguous. Between them, *commit records*
//! ([`COMMIT`] where an index would be) carry the committed log id:
//! openraft reports
//! it after every commit, and the next append writes it ahead of its
//! entries (and every new file starts with it), so it is made durable by
//! the same fdatasync as they are, and never names an entry the log
//! before it does not hold.
//!
//! Crash consistency:
//! - Records are only appended to the newest file, or cut off by a
//!   truncation that is fsynced before it returns. An append is
//!   acknowledged only after the `fdatasync` of its file, so after a crash
//!   the newest file holds every acknowledged record followed by at most a
//!   torn tail (a short record, a bad checksum, zeros), which opening cuts
//!   off.
//! - A new file is started only after the previous one was fsynced, and
//!   its directory entry is fsynced before anything is written to it: a
//!   damaged record in any file but the newest is corruption, and the log
//!   refuses to open rather than drop acknowledged entries. The newest file
//!   may then be empty (its first write was lost): the log's last entry is
//!   the last one of the newest file that holds any.
//! - Any file operation that fails part-way marks the log unusable
//!   (fail-stop): the files and the index in memory may differ.
//! - Purging removes whole files whose entries are all at or below the
//!   purge point (recorded durably by the caller first); entries of a file
//!   that straddles it stay on disk and are never read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::entry_format;
use super::StoreError;
use crate::raft::Entry;

/// The log's directory, under the node's data directory.
pub(crate) const DIR: &str = "raftlog";
/// Suffix of a segment file's name.
const SUFFIX: &str = ".seg";
/// A segment is closed, and a new one started, once it reaches this size.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes before each record's payload: its length and its checksum.
const HEADER: usize = 8;
/// Where an entry record has its index, a commit record has this (no
/// entry has it).
const COMMIT: u64 = u64::MAX;
/// Bytes of a payload before the entry (or committed id): the index.
const KIND: usize = 8;

/// The index (or [`COMMIT`]) a payload starts with; `parse_records` only
/// yields payloads of at least [`KIND`] bytes.
fn kind(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..KIND].try_into().expect("8 bytes"))
}

/// One segment file.
struct Segment {
    /// Index of its first entry (its name).
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Byte offset of each entry's record: entry `first + i` at `offsets[i]`.
    offsets: Vec<u64>,
    /// Length of the valid records (where the next one goes).
    end: u64,
}

impl Segment {
    /// Index the next entry appended here would have.
    fn next(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    /// Index of its last entry, `None` when it is empty.
    fn last(&self) -> Option<u64> {
        self.next()
            .checked_sub(1)
            .filter(|_| !self.offsets.is_empty())
    }

    /// Byte offset of entry `index`'s record (which must be in this segment)
    /// or the end for `index == next()`.
    fn offset(&self, index: u64) -> u64 {
        let i = (index - self.first) as usize;
        self.offsets.get(i).copied().unwrap_or(self.end)
    }
}

/// The log's segments, behind one lock: appends, reads, truncation and
/// purge are each short (one system call or a handful), and openraft
/// issues the writes one at a time anyway.
pub(crate) struct SegLog {
    dir: PathBuf,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// In index order, contiguous.
    segs: Vec<Segment>,
    /// Entries at or below this index are purged: never read, never counted.
    purged: Option<u64>,
    /// The committed log id last reported (encoded, without its tag), and
    /// whether the log has yet to write it.
    commit: Option<Vec<u8>>,
    commit_pending: bool,
    /// Set when a write failed part-way: the in-memory offsets may no
    /// longer describe the file, so every later operation fails (the node
    /// stops on a storage error and recovers from the disk).
    broken: Option<String>,
}

fn io_err(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt { tree: DIR, reason }
}

/// Fsyncs a directory (its entries: created, renamed or removed files).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// The first index a segment file's name gives, `None` for other files.
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Appends one record to `buf`: `kind` (an entry's index, or [`COMMIT`])
/// then `body`.
fn put_record(buf: &mut Vec<u8>, kind: u64, body: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(KIND + body.len())
        .map_err(|_| corrupt(format!("a log entry of {} bytes", body.len())))?;
    let kind = kind.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&kind);
    crc.update(body);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&kind);
    buf.extend_from_slice(body);
    Ok(())
}

/// The records at the start of `bytes`: each payload's range, then the
/// length of the valid prefix (where parsing stopped: the end, or the
/// first record that is short or fails its checksum).
fn parse_records(bytes: &[u8]) -> (Vec<std::ops::Range<usize>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let start = at + HEADER;
        // Shorter than its index: a zeroed tail (length 0), not a record.
        if len < KIND || bytes.len() - start < len {
            break;
        }
        if crc32fast::hash(&bytes[start..start + len]) != crc {
            break;
        }
        out.push(start..start + len);
        at = start + len;
    }
    (out, at)
}

/// Decodes the entry in an entry record's `payload`, which must be entry
/// `index`.
fn decode_at(payload: &[u8], index: u64, path: &Path) -> Result<Entry, StoreError> {
    if kind(payload) != index {
        return Err(corrupt(format!(
            "{}: record of entry {} where entry {index} belongs",
            path.display(),
            kind(payload)
        )));
    }
    let entry = entry_format::decode(&payload[KIND..])?;
    if entry.log_id.index != index {
        return Err(corrupt(format!(
            "{}: entry {} where entry {index} belongs",
            path.display(),
            entry.log_id.index
        )));
    }
    Ok(entry)
}

impl SegLog {
    /// Opens the log in `dir` (created if missing), forgetting entries at
    /// or below `purged`. Cuts a torn tail off the newest segment; fails on
    /// damage anywhere else. Blocking.
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> Result<SegLog, StoreError> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut found = Vec::new();
        for e in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let e = e.map_err(|e| io_err(dir, e))?;
            if let Some(first) = e.file_name().to_str().and_then(parse_name) {
                found.push((first, e.path()));
            }
        }
        found.sort();
        let newest = found.len().checked_sub(1);
        let mut segs: Vec<Segment> = Vec::with_capacity(found.len());
        let mut removed = false;
        let mut commit = None;
        for (i, (first, path)) in found.into_iter().enumerate() {
            let (seg, seg_commit) = load_segment(first, &path, Some(i) == newest)?;
            commit = seg_commit.or(commit);
            // Wholly purged (a purge cut short before it removed the file,
            // or an empty file a later segment superseded): not part of the
            // log any more.
            let superseded = seg.offsets.is_empty() && Some(i) != newest;
            if superseded || seg.last().is_some_and(|l| purged.is_some_and(|p| l <= p)) {
                fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                removed = true;
                continue;
            }
            if let Some(prev) = segs.last() {
                if prev.next() != seg.first {
                    return Err(corrupt(format!(
                        "{} starts at entry {} but the segment before it ends before {}",
                        path.display(),
                        seg.first,
                        prev.next()
                    )));
                }
            }
            segs.push(seg);
        }
        if removed {
            sync_dir(dir)?;
        }
        if let (Some(first), Some(p)) = (segs.first(), purged) {
            if first.first > p + 1 && !first.offsets.is_empty() {
                return Err(corrupt(format!(
                    "the log resumes at entry {} after a purge up to {p}: entries are missing",
                    first.first
                )));
            }
        }
        Ok(SegLog {
            dir: dir.to_path_buf(),
            segment_bytes: SEGMENT_BYTES,
            inner: Mutex::new(Inner {
                segs,
                purged,
                commit,
                commit_pending: false,
                broken: None,
            }),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &inner.broken {
            return Err(corrupt(format!(
                "the log is unusable after a failed write: {why}"
            )));
        }
        Ok(inner)
    }

    /// Index of the last entry, `None` when the log holds none (above the
    /// purge point).
    pub(crate) fn last_index(&self) -> Result<Option<u64>, StoreError> {
        let inner = self.lock()?;
        Ok(inner.last_index())
    }

    /// Appends `entries` (their indexes must follow the last entry, or
    /// anything above the purge point when the log is empty) with one
    /// write. Returns the file to fdatasync before acknowledging them.
    pub(crate) fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<Arc<File>, StoreError> {
        let mut inner = self.lock()?;
        let Some((first, _)) = entries.first() else {
            return Err(corrupt("an empty append".into()));
        };
        for (a, b) in entries.iter().zip(entries.iter().skip(1)) {
            if b.0 != a.0 + 1 {
                return Err(corrupt(format!(
                    "an append of entries {} then {}",
                    a.0, b.0
                )));
            }
        }
        let start_new = match inner.segs.last() {
            None => true,
            Some(seg) if inner.last_index().is_none() && seg.next() != *first => {
                if inner.purged.is_some_and(|p| *first <= p) {
                    return Err(corrupt(format!(
                        "an append at entry {first}, at or below the purge point"
                    )));
                }
                true
            }
            Some(seg) if seg.next() != *first => {
                return Err(corrupt(format!(
                    "an append at entry {first} where entry {} comes next",
                    seg.next()
                )));
            }
            Some(seg) => seg.end >= self.segment_bytes,
        };
        if start_new {
            self.start_segment(&mut inner, *first)?;
        }
        let mut buf = Vec::with_capacity(entries.iter().map(|(_, v)| v.len() + HEADER).sum());
        let mut offsets = Vec::with_capacity(entries.len());
        let seg = inner.segs.last().expect("a segment was just ensured");
        let base = seg.end;
        let with_commit = inner.commit_pending || seg.end == 0;
        if let Some(c) = inner.commit.as_ref().filter(|_| with_commit) {
            put_record(&mut buf, COMMIT, c)?;
        }
        for (index, body) in entries {
            offsets.push(base + buf.len() as u64);
            put_record(&mut buf, *index, body)?;
        }
        if let Err(e) = seg.file.write_all_at(&buf, base) {
            let err = io_err(&seg.path, e);
            return Err(inner.fail(err));
        }
        if with_commit {
            inner.commit_pending = false;
        }
        let seg = inner.segs.last_mut().expect("a segment was just ensured");
        seg.offsets.extend(offsets);
        seg.end = base + buf.len() as u64;
        Ok(seg.file.clone())
    }

    /// Whether the next append starts a new file, which fsyncs the current
    /// one, the new file and the directory first: such an append belongs on
    /// a blocking thread, not on a runtime worker. A hint (the answer may
    /// be stale by the time the append runs), never a condition of
    /// correctness.
    pub(crate) fn next_append_starts_file(&self) -> bool {
        let Ok(inner) = self.lock() else {
            return true;
        };
        match inner.segs.last() {
            None => true,
            Some(_) if inner.last_index().is_none() => true,
            Some(seg) => seg.end >= self.segment_bytes,
        }
    }

    /// Records the committed log id (encoded): written ahead of the next
    /// append's entries, durable with them.
    pub(crate) fn set_committed(&self, encoded: Vec<u8>) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if inner.commit.as_ref() != Some(&encoded) {
            inner.commit = Some(encoded);
            inner.commit_pending = true;
        }
        Ok(())
    }

    /// Writes the committed log id if no append has carried it yet, and
    /// fdatasyncs it: at a clean close, so that a restart re-applies
    /// everything committed even when nothing was appended after the last
    /// commit. Blocking.
    pub(crate) fn write_pending_commit(&self) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let (Some(c), true) = (inner.commit.clone(), inner.commit_pending) else {
            return Ok(());
        };
        let Some(seg) = inner.segs.last() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        put_record(&mut buf, COMMIT, &c)?;
        let base = seg.end;
        let written = seg
            .file
            .write_all_at(&buf, base)
            .and_then(|()| seg.file.sync_data());
        if let Err(e) = written {
            let err = io_err(&seg.path, e);
            return Err(inner.fail(err));
        }
        let seg = inner.segs.last_mut().expect("checked");
        seg.end = base + buf.len() as u64;
        inner.commit_pending = false;
        Ok(())
    }

    /// The committed log id last recorded (encoded): at open, the last
    /// commit record on disk.
    pub(crate) fn committed(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.commit.clone())
    }

    /// Starts a new segment for entry `first`: the current one is fsynced
    /// first (so only the newest segment can have a torn tail), and the new
    /// file's directory entry before anything is written to it.
    fn start_segment(&self, inner: &mut Inner, first: u64) -> Result<(), StoreError> {
        let path = self.dir.join(segment_name(first));
        if inner.segs.iter().any(|s| s.path == path) {
            return Err(corrupt(format!(
                "a new segment for entry {first} would replace {}",
                path.display()
            )));
        }
        // Past this point the files may no longer match what `inner` says.
        self.start_segment_at(inner, first, path)
            .map_err(|e| inner.fail(e))
    }

    fn start_segment_at(
        &self,
        inner: &mut Inner,
        first: u64,
        path: PathBuf,
    ) -> Result<(), StoreError> {
        if let Some(seg) = inner.segs.last() {
            seg.file.sync_data().map_err(|e| io_err(&seg.path, e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        file.sync_all().map_err(|e| io_err(&path, e))?;
        sync_dir(&self.dir)?;
        // Segments that hold only purged entries go; the log is empty.
        if inner.last_index().is_none() {
            let old: Vec<Segment> = inner.segs.drain(..).collect();
            if !old.is_empty() {
                for seg in old {
                    fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
                }
                sync_dir(&self.dir)?;
            }
        }
        inner.segs.push(Segment {
            first,
            path,
            file: Arc::new(file),
            offsets: Vec::new(),
            end: 0,
        });
        Ok(())
    }

    /// Entries `lo..hi` (`hi` `None`: to the end) that the log holds, at
    /// most `limit`, in order. Blocking (reads the files; recent entries
    /// come from the page cache).
    pub(crate) fn read(
        &self,
        lo: u64,
        hi: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.read_within(lo, hi, limit, u64::MAX)
    }

    /// As [`SegLog::read`], and stops before the entries read come to more
    /// than `max_bytes` of records, except that the first entry is always
    /// read (a replication message must make progress whatever its size).
    pub(crate) fn read_within(
        &self,
        lo: u64,
        hi: Option<u64>,
        limit: usize,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let inner = self.lock()?;
        let lo = lo.max(inner.purged.map_or(0, |p| p + 1));
        let mut out = Vec::new();
        let mut bytes_left = max_bytes;
        for seg in &inner.segs {
            let a = lo.max(seg.first);
            let b = hi.unwrap_or(u64::MAX).min(seg.next());
            let room = (limit - out.len()) as u64;
            let b = b.min(a.saturating_add(room));
            if a >= b {
                if out.len() >= limit {
                    break;
                }
                continue;
            }
            // The longest run from `a` within the bytes left (records are
            // laid out in index order, so offsets grow), but never nothing:
            // an entry larger than the budget goes alone.
            let within = |end: u64| seg.offset(end) - seg.offset(a) <= bytes_left;
            let (mut fits, mut over) = (a, b + 1);
            while over - fits > 1 {
                let mid = fits + (over - fits) / 2;
                if within(mid) {
                    fits = mid;
                } else {
                    over = mid;
                }
            }
            let cut = fits < b;
            let b = if fits == a && out.is_empty() {
                a + 1
            } else {
                fits
            };
            if a >= b {
                break;
            }
            bytes_left = bytes_left.saturating_sub(seg.offset(b) - seg.offset(a));
            let (from, to) = (seg.offset(a), seg.offset(b));
            let mut bytes = vec![0u8; (to - from) as usize];
            seg.file
                .read_exact_at(&mut bytes, from)
                .map_err(|e| io_err(&seg.path, e))?;
            let (mut records, _) = parse_records(&bytes);
            records.retain(|r| kind(&bytes[r.clone()]) != COMMIT);
            if records.len() as u64 != b - a {
                return Err(corrupt(format!(
                    "{}: entries {a}..{b} no longer read back whole",
                    seg.path.display()
                )));
            }
            for (r, index) in records.into_iter().zip(a..) {
                out.push(decode_at(&bytes[r], index, &seg.path)?);
            }
            if cut {
                break;
            }
        }
        Ok(out)
    }

    /// Removes entries at and after `index`, durably. Blocking.
    pub(crate) fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        // Later segments first: a crash part-way leaves a prefix of the log.
        let mut removed = false;
        while inner.segs.len() > 1 && inner.segs.last().is_some_and(|s| s.first >= index) {
            let seg = inner.segs.pop().expect("checked");
            fs::remove_file(&seg.path).map_err(|e| inner.fail(io_err(&seg.path, e)))?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir).map_err(|e| inner.fail(e))?;
        }
        let Some(seg) = inner.segs.last_mut() else {
            return Ok(());
        };
        if index >= seg.next() {
            return Ok(());
        }
        let keep = index.saturating_sub(seg.first) as usize;
        let end = seg.offset(seg.first + keep as u64);
        let cut = seg.file.set_len(end).and_then(|()| seg.file.sync_data());
        if let Err(e) = cut {
            let err = io_err(&seg.path, e);
            return Err(inner.fail(err));
        }
        seg.offsets.truncate(keep);
        seg.end = end;
        // The cut may have taken the last commit record with it (the id
        // itself still holds: committed entries are never truncated).
        inner.commit_pending = inner.commit.is_some();
        Ok(())
    }

    /// Forgets entries at and below `upto` and removes the files that hold
    /// only such entries. The caller has made the purge point durable
    /// first. Returns whether files were removed (and the directory
    /// fsynced). Blocking.
    pub(crate) fn purge(&self, upto: u64) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        if inner.purged.is_some_and(|p| p >= upto) {
            return Ok(false);
        }
        inner.purged = Some(upto);
        let mut removed = false;
        // The newest segment stays even if wholly purged: appends continue
        // in it, or start a new one (which removes it) if they resume
        // further on.
        while inner.segs.len() > 1 && inner.segs[0].last().is_some_and(|l| l <= upto) {
            let seg = inner.segs.remove(0);
            fs::remove_file(&seg.path).map_err(|e| inner.fail(io_err(&seg.path, e)))?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir).map_err(|e| inner.fail(e))?;
        }
        Ok(removed)
    }

    /// The same log with segments closed at `bytes` (tests: many segments
    /// from a few entries).
    #[cfg(test)]
    pub(crate) fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// How many segment files the log has open (tests).
    #[cfg(test)]
    pub(crate) fn segment_count(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .segs
            .len()
    }
}

impl Inner {
    /// Marks the log unusable after a failed file operation that may have
    /// left the files and this index out of step (fail-stop), and hands
    /// the error back.
    fn fail(&mut self, err: StoreError) -> StoreError {
        self.broken = Some(err.to_string());
        err
    }

    fn last_index(&self) -> Option<u64> {
        // Not just the newest file's last entry: a rotation whose first
        // write was lost (a power cut before its fdatasync, a full disk)
        // leaves the newest file empty, and the entries before it stand.
        let last = self.segs.iter().rev().find_map(Segment::last)?;
        match self.purged {
            Some(p) if last <= p => None,
            _ => Some(last),
        }
    }
}

/// Reads one segment file, and the last commit record in it. The newest
/// may end in a torn record, which is cut off (and the cut fsynced); any
/// other damage is corruption.
fn load_segment(
    first: u64,
    path: &Path,
    newest: bool,
) -> Result<(Segment, Option<Vec<u8>>), StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
    let (records, valid) = parse_records(&bytes);
    let mut offsets = Vec::with_capacity(records.len());
    let mut commit = None;
    for r in &records {
        let payload = &bytes[r.clone()];
        let index = kind(payload);
        if index == COMMIT {
            commit = Some(payload[KIND..].to_vec());
            continue;
        }
        // The checksum held; the entry itself is decoded when it is read.
        let expected = first + offsets.len() as u64;
        if index != expected {
            return Err(corrupt(format!(
                "{}: record of entry {index} where entry {expected} belongs",
                path.display()
            )));
        }
        offsets.push((r.start - HEADER) as u64);
    }
    if valid < bytes.len() {
        if !newest {
            return Err(corrupt(format!(
                "{}: damaged record at byte {valid} of {} in a closed segment",
                path.display(),
                bytes.len()
            )));
        }
        tracing::warn!(
            path = %path.display(),
            kept_entries = offsets.len(),
            cut_bytes = bytes.len() - valid,
            "cutting a torn tail off the Raft log (never acknowledged)"
        );
        file.set_len(valid as u64)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_err(path, e))?;
    }
    let seg = Segment {
        first,
        path: path.to_path_buf(),
        file: Arc::new(file),
        offsets,
        end: valid as u64,
    };
    Ok((seg, commit))
}

/// Writes `entries` (contiguous, in order) as the log in `dir`, which must
/// not exist yet: into a scratch directory first, renamed into place once
/// every byte is fsynced, so a crash leaves either no log or all of it.
/// Used once, to move a log out of sled. Blocking.
pub(crate) fn create_with(dir: &Path, entries: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let scratch = parent.join(format!("{DIR}.new"));
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(|e| io_err(&scratch, e))?;
    }
    fs::create_dir_all(&scratch).map_err(|e| io_err(&scratch, e))?;
    if let Some((first, _)) = entries.first() {
        let mut buf = Vec::new();
        for (index, body) in entries {
            put_record(&mut buf, *index, body)?;
        }
        let path = scratch.join(segment_name(*first));
        let mut f = File::create(&path).map_err(|e| io_err(&path, e))?;
        io::Write::write_all(&mut f, &buf)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err(&path, e))?;
    }
    sync_dir(&scratch)?;
    fs::rename(&scratch, dir).map_err(|e| io_err(dir, e))?;
    sync_dir(parent)
}

#[cfg(test)]
#[path = "seglog_tests.rs"]
mod tests;
