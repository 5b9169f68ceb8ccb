//! Tests of the segment-file log: appends across segments, reopen, torn
//! tails, damage in closed segments, truncation and purge.

use openraft::testing::blank_ent;

use super::*;

fn enc(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
    range
        .map(|i| (i, entry_format::encode(&blank_ent(1, 1, i)).unwrap()))
        .collect()
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// A log whose segments close after about three small entries.
fn small(dir: &Path, purged: Option<u64>) -> SegLog {
    SegLog::open(dir, purged).unwrap().with_segment_bytes(64)
}

/// A [`small`] log holding entries `1..=n`, appended one at a time (so
/// across several segments).
fn filled(dir: &Path, n: u64) -> SegLog {
    let log = small(dir, None);
    for i in 1..=n {
        log.append(&enc(i..=i)).unwrap();
    }
    log
}

/// A replication read sent a lagging follower everything it missed in one
/// message, however large (found by review: a few 1 MiB policies made a
/// message the follower never received in time). A bounded read stops
/// before the byte budget, across segments too, and never returns nothing.
#[test]
fn a_bounded_read_returned_every_missing_entry_however_large() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR);
    let log = filled(&dir, 20);
    let all = log.read(1, None, usize::MAX).unwrap();
    let sizes: Vec<u64> = all
        .iter()
        .map(|e| entry_format::encode(e).unwrap().len() as u64)
        .collect();
    // Each record: length and checksum (4 bytes each), index (8), entry.
    let record = sizes[0] + 16;
    assert!(sizes.iter().all(|s| *s == sizes[0]));
    for n in [1u64, 2, 3, 5, 11] {
        let got = log.read_within(1, None, usize::MAX, n * record).unwrap();
        assert_eq!(
            indexes(&got),
            (1..=n).collect::<Vec<_>>(),
            "{n} records' worth"
        );
    }
    // A budget below one entry still returns the first one, alone.
    assert_eq!(
        indexes(&log.read_within(4, None, usize::MAX, 1).unwrap()),
        [4]
    );
    // The count limit and the range still apply.
    assert_eq!(
        indexes(&log.read_within(4, Some(7), 2, u64::MAX).unwrap()),
        [4, 5]
    );
    assert_eq!(
        indexes(&log.read_within(4, Some(7), usize::MAX, u64::MAX).unwrap()),
        [4, 5, 6]
    );
}

#[test]
fn names_round_trip_and_other_files_are_ignored() {
    assert_eq!(parse_name(&segment_name(42)), Some(42));
    assert_eq!(parse_name(&segment_name(u64::MAX)), Some(u64::MAX));
    assert_eq!(parse_name("42.seg"), None);
    assert_eq!(parse_name("0000000000000000004x.seg"), None);
    assert_eq!(parse_name("00000000000000000042.tmp"), None);
}

#[test]
fn entries_read_back_across_segments_and_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR);
    {
        let log = filled(&dir, 20);
        assert!(log.segment_count() > 3, "small segments rotated");
        assert_eq!(log.last_index().unwrap(), Some(20));
        assert_eq!(
            indexes(&log.read(0, None, usize::MAX).unwrap()),
            (1..=20).collect::<Vec<_>>()
        );
        assert_eq!(
            indexes(&log.read(5, Some(12), usize::MAX).unwrap()),
            (5..12).collect::<Vec<_>>()
        );
        assert_eq!(indexes(&log.read(5, None, 4).unwrap()), [5, 6, 7, 8]);
        assert!(log.read(21, None, 10).unwrap().is_empty());
    }
    let log = SegLog::open(&dir, None).unwrap();
    assert_eq!(
        indexes(&log.read(0, None, usize::MAX).unwrap()),
        (1..=20).collect::<Vec<_>>()
    );
    log.append(&enc(21..=22)).unwrap();
    assert_eq!(log.last_index().unwrap(), Some(22));
}

#[test]
fn an_append_out_of_order_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let log = SegLog::open(&tmp.path().join(DIR), None).unwrap();
    log.append(&enc(1..=3)).unwrap();
    for bad in [
        enc(5..=5),
        enc(3..=3),
        vec![enc(4..=4)[0].clone(), enc(6..=6)[0].clone()],
    ] {
        assert!(matches!(log.append(&bad), Err(StoreError::Corrupt { .. })));
    }
    assert!(matches!(log.append(&[]), Err(StoreError::Corrupt { .. })));
    // Still usable: a refused append wrote nothing.
    log.append(&enc(4..=4)).unwrap();
    assert_eq!(log.last_index().unwrap(), Some(4));
}

// What a power loss leaves in the newest segment: any prefix of the bytes
// written, or a page of zeros over part of them. Opening keeps exactly the
// records wholly before the damage, and fsyncs the cut.
#[test]
fn a_torn_newest_segment_keeps_the_records_before_the_tear() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("image");
    let bounds: Vec<u64> = {
        let log = SegLog::open(&image, None).unwrap();
        let mut ends = vec![0];
        for i in 1..=30 {
            log.append(&enc(i..=i)).unwrap();
            ends.push(fs::metadata(&segment_files(&image)[0]).unwrap().len());
        }
        ends
    };
    let file = segment_files(&image)[0].clone();
    let orig = fs::read(&file).unwrap();
    let size = *bounds.last().unwrap();
    let mut trials = 0;
    for cut in (0..=size).step_by(7) {
        for zero in [false, true] {
            let trial = tmp.path().join(format!("t{cut}{zero}"));
            fs::create_dir_all(&trial).unwrap();
            let copy = trial.join(file.file_name().unwrap());
            fs::copy(&file, &copy).unwrap();
            let f = OpenOptions::new().write(true).open(&copy).unwrap();
            if zero {
                f.write_all_at(&[0u8; 4096], cut).unwrap();
            } else {
                f.set_len(cut).unwrap();
            }
            drop(f);
            let log = SegLog::open(&trial, None).unwrap();
            // Records that end at or before the damage survive (and one
            // whose bytes from there on were zeros already).
            let intact =
                |e: u64| e <= cut || orig[cut as usize..e as usize].iter().all(|b| *b == 0);
            let whole = bounds.iter().take_while(|&&e| intact(e)).count() as u64 - 1;
            let got = indexes(&log.read(0, None, usize::MAX).unwrap());
            assert_eq!(
                got,
                (1..=whole).collect::<Vec<_>>(),
                "cut {cut} zero {zero}"
            );
            // The cut is on disk: the file now ends after the last record.
            assert_eq!(fs::metadata(&copy).unwrap().len(), bounds[whole as usize]);
            // And appends continue right after it.
            log.append(&enc(whole + 1..=whole + 1)).unwrap();
            drop(log);
            let log = SegLog::open(&trial, None).unwrap();
            assert_eq!(log.last_index().unwrap(), Some(whole + 1));
            fs::remove_dir_all(&trial).unwrap();
            trials += 1;
        }
    }
    assert!(trials > 100);
}

// Segments other than the newest were fsynced before the next one began:
// damage there is corruption, and the log refuses to open rather than lose
// acknowledged entries.
#[test]
fn damage_in_a_closed_segment_refuses_to_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR);
    filled(&dir, 12);
    let files = segment_files(&dir);
    assert!(files.len() > 2);
    let f = OpenOptions::new().write(true).open(&files[1]).unwrap();
    f.write_all_at(&[0xff; 3], 10).unwrap();
    drop(f);
    match SegLog::open(&dir, None) {
        Err(StoreError::Corrupt { reason, .. }) => {
            assert!(reason.contains("closed segment"), "{reason}")
        }
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
    // A missing middle segment is a hole, also refused.
    let tmp2 = tempfile::tempdir().unwrap();
    let dir2 = tmp2.path().join(DIR);
    filled(&dir2, 12);
    fs::remove_file(&segment_files(&dir2)[1]).unwrap();
    assert!(matches!(
        SegLog::open(&dir2, None),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn truncation_removes_later_segments_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR);
    {
        let log = filled(&dir, 20);
        let before = log.segment_count();
        log.truncate_from(8).unwrap();
        assert!(log.segment_count() < before);
        assert_eq!(log.last_index().unwrap(), Some(7));
        assert_eq!(
            indexes(&log.read(0, None, usize::MAX).unwrap()),
            (1..=7).collect::<Vec<_>>()
        );
        // Truncating past the end changes nothing.
        log.truncate_from(30).unwrap();
        log.append(&enc(8..=9)).unwrap();
    }
    let log = SegLog::open(&dir, None).unwrap();
    assert_eq!(
        indexes(&log.read(0, None, usize::MAX).unwrap()),
        (1..=9).collect::<Vec<_>>()
    );
    log.truncate_from(1).unwrap();
    assert_eq!(log.last_index().unwrap(), None);
    log.append(&enc(1..=1)).unwrap();
    assert_eq!(log.last_index().unwrap(), Some(1));
}

#[test]
fn purge_removes_whole_segments_and_hides_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR);
    {
        let log = filled(&dir, 20);
        let before = segment_files(&dir).len();
        assert!(log.purge(10).unwrap());
        assert!(segment_files(&dir).len() < before);
        assert_eq!(
            indexes(&log.read(0, None, usize::MAX).unwrap()),
            (11..=20).collect::<Vec<_>>()
        );
        assert!(!log.purge(5).unwrap(), "purging backwards does nothing");
    }
    // Reopened with the purge point the caller recorded.
    let log = SegLog::open(&dir, Some(10)).unwrap();
    assert_eq!(
        indexes(&log.read(0, None, usize::MAX).unwrap()),
        (11..=20).collect::<Vec<_>>()
    );
    // Everything purged, then appends resume further on (a snapshot
    // installed past the end of the log).
    log.purge(100).unwrap();
    assert_eq!(log.last_index().unwrap(), None);
    assert!(log.read(0, None, usize::MAX).unwrap().is_empty());
    assert!(matches!(
        log.append(&enc(100..=100)),
        Err(StoreError::Corrupt { .. })
    ));
    log.append(&enc(101..=103)).unwrap();
    assert_eq!(segment_files(&dir).len(), 1, "the purged segments went");
    drop(log);
    let log = SegLog::open(&dir, Some(100)).unwrap();
    assert_eq!(
        indexes(&log.read(0, None, usize::MAX).unwrap()),
        [101, 102, 103]
    );
}

// A purge recorded but cut short before its files went: opening with the
// purge point removes them.
#[test]
fn files_a_purge_left_behind_go_at_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR);
    filled(&dir, 20);
    let before = segment_files(&dir).len();
    let log = SegLog::open(&dir, Some(12)).unwrap();
    assert!(segment_files(&dir).len() < before);
    assert_eq!(
        indexes(&log.read(0, None, usize::MAX).unwrap()),
        (13..=20).collect::<Vec<_>>()
    );
    // Entries beyond the purge point missing at the start are a hole.
    drop(log);
    assert!(matches!(
        SegLog::open(&dir, Some(2)),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn a_log_created_whole_opens_with_its_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR);
    // A scratch directory a crash left behind is replaced.
    fs::create_dir_all(tmp.path().join(format!("{DIR}.new"))).unwrap();
    create_with(&dir, &enc(7..=9)).unwrap();
    assert!(!tmp.path().join(format!("{DIR}.new")).exists());
    let log = SegLog::open(&dir, Some(6)).unwrap();
    assert_eq!(indexes(&log.read(0, None, usize::MAX).unwrap()), [7, 8, 9]);
    let empty = tmp.path().join("empty");
    create_with(&empty, &[]).unwrap();
    assert_eq!(
        SegLog::open(&empty, None).unwrap().last_index().unwrap(),
        None
    );
}

// Opening checks each record's index against its place without decoding
// the entry: a record out of place (here a log with a gap, as a faulty
// conversion would write it) refuses to open, and so does a record whose
// clear index disagrees with the entry inside it, when it is read.
#[test]
fn a_record_out_of_place_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR);
    let mut entries = enc(1..=2);
    entries.extend(enc(4..=4));
    create_with(&dir, &entries).unwrap();
    match SegLog::open(&dir, None) {
        Err(StoreError::Corrupt { reason, .. }) => {
            assert!(reason.contains("entry 4 where entry 3"), "{reason}")
        }
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
    let other = tmp.path().join("other");
    let lying = vec![(1, enc(1..=1)[0].1.clone()), (2, enc(5..=5)[0].1.clone())];
    create_with(&other, &lying).unwrap();
    let log = SegLog::open(&other, None).unwrap();
    assert_eq!(log.last_index().unwrap(), Some(2));
    assert!(matches!(
        log.read(0, None, 10),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn an_append_that_starts_a_file_is_known_before_it_runs() {
    // log.rs sends such an append to a blocking thread, since starting a
    // file fsyncs three times: the hint must match what append then does.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR);
    let log = small(&dir, None);
    let mut starts = 0;
    let mut check = |log: &SegLog, i: u64| {
        let predicted = log.next_append_starts_file();
        log.append(&enc(i..=i)).unwrap();
        let newest = segment_files(&dir).pop().unwrap();
        let started = newest.file_name().unwrap().to_str() == Some(&segment_name(i));
        assert_eq!(predicted, started, "entry {i}");
        starts += usize::from(started);
    };
    for i in 1..=12 {
        check(&log, i);
    }
    assert!(log.purge(12).unwrap());
    for i in 13..=15 {
        check(&log, i);
    }
    assert!(starts >= 4, "small segments rotated: {starts} starts");
}

/// A [`small`] log filled one entry at a time until the next append
/// starts a file, then that append too (entry `n + 1`, alone in the newest
/// file, behind the commit record `b"c"`). Returns `n`.
fn up_to_a_rotation(dir: &Path) -> u64 {
    let log = small(dir, None);
    let mut n = 0;
    loop {
        n += 1;
        log.append(&enc(n..=n)).unwrap();
        if n > 3 && log.next_append_starts_file() {
            break;
        }
    }
    log.set_committed(b"c".to_vec()).unwrap();
    log.append(&enc(n + 1..=n + 1)).unwrap();
    assert!(segment_files(dir)
        .last()
        .unwrap()
        .ends_with(segment_name(n + 1)));
    n
}

#[test]
fn a_rotation_whose_first_write_was_lost_keeps_the_entries_before_it() {
    // The new file was created and its directory entry fsynced, then its
    // first write was lost (a power cut before the fdatasync, or a full
    // disk): the file is empty, or holds only the commit record written
    // ahead of the entry. The log once looked empty then, and the next
    // append from the start replaced the files.
    let commit_only = (HEADER + KIND) as u64 + 1;
    for (kept, commit) in [(0, None), (commit_only, Some(b"c".to_vec()))] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(DIR);
        let n = up_to_a_rotation(&dir);
        let newest = segment_files(&dir).pop().unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&newest)
            .unwrap()
            .set_len(kept)
            .unwrap();

        let log = small(&dir, None);
        assert_eq!(log.last_index().unwrap(), Some(n), "kept {kept} bytes");
        assert_eq!(log.committed().unwrap(), commit);
        assert_eq!(
            indexes(&log.read(0, None, usize::MAX).unwrap()),
            (1..=n).collect::<Vec<_>>()
        );
        let files = segment_files(&dir);
        assert!(log.append(&enc(1..=2)).is_err(), "an append from the start");
        assert_eq!(segment_files(&dir), files);
        log.append(&enc(n + 1..=n + 2)).unwrap();
        drop(log);
        let log = small(&dir, None);
        assert_eq!(
            indexes(&log.read(0, None, usize::MAX).unwrap()),
            (1..=n + 2).collect::<Vec<_>>()
        );
    }
}
