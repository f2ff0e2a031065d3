//! The journal's checks: replay, grouping, torn tails, damage, repair, failed syncs, segments.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::*;

/// Segments of 64 KiB, so each test fills only small files.
fn options() -> JournalOptions {
    JournalOptions {
        segment_bytes: 64 << 10,
        ..JournalOptions::new(Arc::new(Metrics::new()))
    }
}

/// Replayed records, each with the position after it.
type Replayed = Vec<(u64, Vec<u8>)>;

/// Opens the journal in `dir`, returning it with every replayed record.
fn reopen(dir: &Path, options: JournalOptions) -> Result<(Journal, Replayed), StoreError> {
    let mut seen = Vec::new();
    let journal = Journal::open(dir, options, |position, record| {
        seen.push((position, record.to_vec()));
        Ok(())
    })?;
    Ok((journal, seen))
}

fn records(seen: &[(u64, Vec<u8>)]) -> Vec<String> {
    seen.iter()
        .map(|(_, r)| String::from_utf8(r.clone()).unwrap())
        .collect()
}

async fn write(journal: &Journal, records: &[&str]) -> u64 {
    journal
        .append(&records.iter().map(|r| r.as_bytes()).collect::<Vec<_>>())
        .unwrap()
        .wait()
        .await
        .unwrap()
}

fn only_segment(dir: &Path) -> PathBuf {
    let starts = segment::list(dir).unwrap();
    assert_eq!(starts.len(), 1, "one segment");
    segment::path(dir, starts[0])
}

fn damage_of(err: StoreError) -> (PathBuf, u64) {
    let StoreError::Backend(cause) = &err else {
        panic!("a damaged journal, not {err:?}")
    };
    let damaged = cause
        .downcast_ref::<Damaged>()
        .unwrap_or_else(|| panic!("a damaged journal, not {err:?}"));
    (damaged.file.clone(), damaged.offset)
}

#[tokio::test]
async fn what_was_appended_replays_in_order_with_its_positions() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, seen) = reopen(dir.path(), options()).unwrap();
    assert!(seen.is_empty());
    let first = write(&journal, &["queued a", "queued b"]).await;
    let second = write(&journal, &["acked a"]).await;
    assert_eq!(first, 2 * 8 + 8 + 8);
    assert_eq!(second, first + 8 + 7);
    assert_eq!(journal.position(), second);
    drop(journal);

    let (journal, seen) = reopen(dir.path(), options()).unwrap();
    assert_eq!(records(&seen), ["queued a", "queued b", "acked a"]);
    assert_eq!(seen[1].0, first);
    assert_eq!(seen[2].0, second);
    let third = write(&journal, &["acked b"]).await;
    assert_eq!(third, second + 8 + 7, "positions go on where they stopped");
    drop(journal);
    let (_, seen) = reopen(dir.path(), options()).unwrap();
    assert_eq!(seen.len(), 4);
}

#[tokio::test]
async fn a_lazy_append_costs_no_sync_and_goes_with_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), options()).unwrap();
    let syncs = || journal.counters().syncs.load(Ordering::Relaxed);
    let stamped = journal.append_lazy(&[&b"stamp a"[..]]).unwrap();
    journal.append_lazy(&[&b"stamp b"[..]]).unwrap();
    // Nobody waits, so the writer is not woken: given the time, it still has not synced.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(syncs(), 0, "a lazy append took a sync of its own");
    assert!(journal.durable() < stamped);

    let acked = write(&journal, &["acked a"]).await;
    assert_eq!(
        syncs(),
        1,
        "one sync for the waiting writer and the lazy ones before it"
    );
    assert_eq!(journal.durable(), acked);

    // A sync point writes what lazy appends left, and closing does too.
    let stamped = journal.append_lazy(&[&b"stamp c"[..]]).unwrap();
    assert_eq!(journal.sync_point().unwrap().wait().await.unwrap(), stamped);
    assert_eq!(syncs(), 2);
    journal.append_lazy(&[&b"stamp d"[..]]).unwrap();
    drop(journal);
    let (_, seen) = reopen(dir.path(), options()).unwrap();
    assert_eq!(
        records(&seen),
        ["stamp a", "stamp b", "acked a", "stamp c", "stamp d"]
    );
}

/// A sync that takes a while, so writers pile up behind it.
fn slow_sync(file: &File) -> std::io::Result<()> {
    std::thread::sleep(Duration::from_millis(20));
    file.sync_data()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_arriving_during_a_sync_share_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        sync: slow_sync,
        ..options()
    };
    let (journal, _) = reopen(dir.path(), options).unwrap();
    let journal = Arc::new(journal);
    let writers: Vec<_> = (0..200)
        .map(|i| {
            let journal = Arc::clone(&journal);
            tokio::spawn(async move {
                let record = format!("pixel {i}");
                journal.append(&[record.as_bytes()]).unwrap().wait().await
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let syncs = journal.counters().syncs.load(Ordering::Relaxed);
    let appends = journal.counters().appends.load(Ordering::Relaxed);
    assert_eq!(appends, 200);
    assert!(syncs <= 10, "200 writers took {syncs} syncs");
}

static SYNC_MAY_RETURN: AtomicBool = AtomicBool::new(false);

/// A sync that does not return until the test lets it.
fn held_sync(file: &File) -> std::io::Result<()> {
    while !SYNC_MAY_RETURN.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    file.sync_data()
}

#[tokio::test]
async fn no_writer_is_answered_before_its_sync_returned() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        sync: held_sync,
        ..options()
    };
    let (journal, _) = reopen(dir.path(), options).unwrap();
    let durable = journal.append(&[&b"ftd"[..]]).unwrap();
    let waiting = tokio::spawn(durable.wait());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answered_early = waiting.is_finished();
    // Let the sync return before asserting, so a failure does not leave the writer thread stuck.
    SYNC_MAY_RETURN.store(true, Ordering::SeqCst);
    assert!(!answered_early, "answered while the sync still ran");
    assert!(waiting.await.unwrap().is_ok());
}

fn failing_sync(_: &File) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::EIO))
}

#[tokio::test]
async fn a_failed_sync_fails_its_writers_and_every_later_one_and_is_never_retried() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        sync: failing_sync,
        ..options()
    };
    let (journal, _) = reopen(dir.path(), options).unwrap();
    let failed = journal.append(&[&b"ftd"[..]]).unwrap().wait().await;
    assert!(matches!(failed, Err(StoreError::Failed(_))), "{failed:?}");
    let later = journal.append(&[&b"qftd"[..]]);
    assert!(matches!(later, Err(StoreError::Failed(_))));
    assert_eq!(journal.counters().syncs.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_torn_last_write_is_cleared_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), options()).unwrap();
    write(&journal, &["one", "two"]).await;
    let end = write(&journal, &["three"]).await as usize + segment::HEADER;
    drop(journal);
    let file = only_segment(dir.path());
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > end, "the segment has room filled ahead");
    // Every cut inside the last record: the crash came mid-write. The rest of the write is either
    // missing (a file that grew) or still the zeros filled ahead.
    for cut in 1..(8 + 5) {
        for zeroed in [false, true] {
            let torn = dir.path().join("torn");
            std::fs::create_dir_all(&torn).unwrap();
            let mut copy = bytes[..end - cut].to_vec();
            if zeroed {
                copy.resize(bytes.len(), 0);
            }
            std::fs::write(torn.join(file.file_name().unwrap()), &copy).unwrap();
            let (journal, seen) = reopen(&torn, options()).unwrap();
            assert_eq!(records(&seen), ["one", "two"], "cut {cut}, zeroed {zeroed}");
            write(&journal, &["four"]).await;
            drop(journal);
            let (_, seen) = reopen(&torn, options()).unwrap();
            assert_eq!(
                records(&seen),
                ["one", "two", "four"],
                "cut {cut}, zeroed {zeroed}"
            );
            std::fs::remove_dir_all(&torn).unwrap();
        }
    }
}

#[tokio::test]
async fn damage_with_intact_records_after_it_stops_the_open_and_repair_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), options()).unwrap();
    let after_one = write(&journal, &["one"]).await;
    let after_two = write(&journal, &["two"]).await;
    write(&journal, &["three", "four"]).await;
    drop(journal);
    let file = only_segment(dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    let two_at = segment::HEADER + after_one as usize;
    bytes[two_at + frame::HEADER] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();

    let refused = reopen(dir.path(), options()).err().expect("refused");
    assert_eq!(damage_of(refused), (file.clone(), two_at as u64));

    let report = repair(dir.path()).unwrap();
    assert_eq!(report.kept, 3);
    assert_eq!(
        report.dropped,
        vec![Dropped {
            file: file.clone(),
            offset: two_at as u64,
            bytes: after_two - after_one,
            what: "damaged records",
        }]
    );
    let (journal, seen) = reopen(dir.path(), options()).unwrap();
    assert_eq!(records(&seen), ["one", "three", "four"]);
    assert_eq!(
        seen[1].0,
        after_two + 8 + 5,
        "records after the hole keep their positions"
    );
    drop(journal);
    assert_eq!(repair(dir.path()).unwrap().dropped, vec![], "sound now");
}

#[tokio::test]
async fn full_segments_are_sealed_released_once_checkpointed_and_a_missing_one_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let small = JournalOptions {
        segment_bytes: 64,
        ..options()
    };
    let (journal, _) = reopen(dir.path(), small.clone()).unwrap();
    let mut positions = Vec::new();
    for i in 0..10 {
        positions.push(write(&journal, &[&format!("record {i:02} of ten")]).await);
    }
    let segments = segment::list(dir.path()).unwrap();
    assert!(segments.len() >= 4, "{segments:?}");
    drop(journal);
    let (journal, seen) = reopen(dir.path(), small.clone()).unwrap();
    assert_eq!(seen.len(), 10);
    assert_eq!(
        seen.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        positions,
        "positions run on across segments"
    );

    // The checkpoint holds the first five records: segments wholly before them go.
    let released = journal.release(positions[4]).unwrap();
    assert!(released >= 1);
    drop(journal);
    let (journal, seen) = reopen(dir.path(), small.clone()).unwrap();
    assert!(seen.len() < 10 && seen.len() >= 5, "{}", seen.len());
    assert_eq!(seen.last().unwrap().0, positions[9]);
    drop(journal);

    let segments = segment::list(dir.path()).unwrap();
    let middle = segment::path(dir.path(), segments[1]);
    std::fs::remove_file(&middle).unwrap();
    let refused = reopen(dir.path(), small).err().expect("refused");
    assert_eq!(damage_of(refused).0, segment::path(dir.path(), segments[2]));
}

#[tokio::test]
async fn a_segment_a_crash_left_without_its_header_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), options()).unwrap();
    let end = write(&journal, &["one"]).await;
    drop(journal);
    std::fs::write(dir.path().join(segment::name(end)), b"PXH").unwrap();
    let (journal, seen) = reopen(dir.path(), options()).unwrap();
    assert_eq!(records(&seen), ["one"]);
    assert_eq!(write(&journal, &["two"]).await, end + 8 + 3);
}

#[tokio::test]
async fn a_closed_journal_takes_nothing_and_keeps_what_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), options()).unwrap();
    let pending = journal.append(&[&b"last"[..]]).unwrap();
    journal.close();
    assert!(pending.wait().await.is_ok(), "the pending group is written");
    assert!(matches!(
        journal.append(&[&b"late"[..]]),
        Err(StoreError::Closed)
    ));
    drop(journal);
    let (_, seen) = reopen(dir.path(), options()).unwrap();
    assert_eq!(records(&seen), ["last"]);
}

#[tokio::test]
async fn a_sync_point_answers_once_everything_appended_before_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), options()).unwrap();
    let idle = journal.sync_point().unwrap();
    assert_eq!(idle.position(), journal.durable(), "nothing pending");
    idle.wait().await.unwrap();
    let appended = journal.append(&[b"a".as_slice()]).unwrap();
    let after = journal.sync_point().unwrap();
    assert_eq!(after.position(), appended.position());
    let at = after.wait().await.unwrap();
    assert!(journal.durable() >= at);
    appended.wait().await.unwrap();
    journal.close();
    assert!(matches!(journal.sync_point(), Err(StoreError::Closed)));
}

#[test]
fn a_fill_in_pieces_is_the_whole_segment_in_zeros() {
    let dir = tempfile::tempdir().unwrap();
    for (bytes, sync_every) in [
        (3 * segment::FILL_PIECE / 2 + 7, segment::FILL_PIECE),
        (64 << 10, segment::FILL_PIECE),
        (segment::FILL_PIECE * 5, 4096),
        (1, 1 << 30),
    ] {
        let file = segment::prepare(dir.path(), bytes, sync_every).unwrap();
        let len = file.metadata().unwrap().len();
        assert_eq!(
            len,
            bytes.max(segment::HEADER as u64),
            "{bytes} by {sync_every}"
        );
        let written = std::fs::read(dir.path().join("next.journal-filling")).unwrap();
        assert!(written.iter().all(|b| *b == 0));
        assert_eq!(written.len() as u64, len);
    }
}

#[tokio::test]
async fn a_released_segment_is_deleted_whole_and_one_a_crash_left_half_deleted_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    // A segment bigger than a few pieces of a release.
    let big = JournalOptions {
        segment_bytes: 9 << 20,
        ..options()
    };
    let (journal, _) = reopen(dir.path(), big.clone()).unwrap();
    write(&journal, &["one"]).await;
    drop(journal);
    let start = segment::list(dir.path()).unwrap()[0];
    segment::delete(dir.path(), start).unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "next.journal-filling")
        .collect();
    assert!(left.is_empty(), "nothing left of it: {left:?}");

    // A crash in the middle of a release leaves the renamed file cut short: not a segment, not damage.
    let (journal, _) = reopen(dir.path(), big.clone()).unwrap();
    write(&journal, &["two"]).await;
    drop(journal);
    let releasing = dir.path().join("old.journal-releasing");
    std::fs::write(&releasing, b"PXHJRNL1 cut in the middle of a fr").unwrap();
    let (_journal, seen) = reopen(dir.path(), big).unwrap();
    assert_eq!(records(&seen), ["two"]);
    assert!(!releasing.exists(), "removed at open");
}
