//! The body of a `Backup` call: the header, then the temporary file in
//! chunks, sent from a blocking thread, and given up when the caller stops
//! taking them.
//!
//! A backup holds the node's only backup slot and a copy of the state in a
//! temporary file until it is sent. Before 2026-12-01 a caller that stopped
//! reading but kept its connection alive (answering HTTP/2 pings) parked
//! the sending thread forever: every later `Backup` on that node was
//! refused ("a backup is already running") until the connection dropped.
//! Now a chunk the caller does not take within [`BACKUP_STALL`] ends the
//! stream with `DEADLINE_EXCEEDED` and frees the slot and the file.

use std::io::{Read, Seek};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;

use crate::pb;

/// Bytes of body per `BackupChunk`.
pub const BACKUP_CHUNK: usize = 64 * 1024;

/// How long the caller may leave a chunk untaken before the backup ends.
pub const BACKUP_STALL: Duration = Duration::from_secs(60);

/// A stream of backup chunks.
pub type BackupStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// Sends `first` then `file`'s bytes on a blocking thread, holding `permit`
/// until done; a chunk not taken within `stall` ends the stream with
/// `DEADLINE_EXCEEDED`. Call from within the runtime.
pub fn stream<P: Send + 'static>(
    file: std::fs::File,
    first: pb::BackupChunk,
    permit: P,
    stall: Duration,
) -> BackupStream {
    use futures_util::StreamExt as _;
    let (tx, rx) = mpsc::channel(4);
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let send = |item| {
            runtime
                .block_on(tokio::time::timeout(stall, tx.send(item)))
                .map_err(|_| flag.store(true, Ordering::Release))
                // The caller went away.
                .and_then(|sent| sent.map_err(|_| ()))
        };
        let _ = send_all(file, first, send);
    });
    let end = futures_util::stream::once(async move {
        stalled.load(Ordering::Acquire).then(|| {
            Err(Status::deadline_exceeded(format!(
                "the backup stream was not read for {} s; it was ended and the node's backup slot freed",
                stall.as_secs()
            )))
        })
    })
    .filter_map(std::future::ready);
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).chain(end))
}

/// Sends every item with `send`, stopping at the first that fails.
fn send_all(
    mut file: std::fs::File,
    first: pb::BackupChunk,
    mut send: impl FnMut(Result<pb::BackupChunk, Status>) -> Result<(), ()>,
) -> Result<(), ()> {
    send(Ok(first))?;
    if let Err(e) = file.rewind() {
        return send(Err(Status::internal(format!("backup: {e}"))));
    }
    loop {
        let mut buf = vec![0u8; BACKUP_CHUNK];
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) => return send(Err(Status::internal(format!("backup: {e}")))),
        };
        buf.truncate(n);
        send(Ok(pb::BackupChunk {
            part: Some(pb::backup_chunk::Part::Data(buf)),
        }))?;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use futures_util::StreamExt as _;

    use super::*;

    fn file_of(len: usize) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; len]).unwrap();
        f
    }

    fn header() -> pb::BackupChunk {
        pb::BackupChunk {
            part: Some(pb::backup_chunk::Part::Header(pb::BackupHeader::default())),
        }
    }

    #[tokio::test]
    async fn a_backup_nobody_reads_gives_its_slot_back_and_says_why() {
        let slot = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = slot.clone().try_acquire_owned().unwrap();
        // More chunks than the channel holds.
        let mut s = stream(
            file_of(BACKUP_CHUNK * 10),
            header(),
            permit,
            Duration::from_millis(50),
        );
        // The caller stops reading: the slot comes back by itself.
        let freed = tokio::time::timeout(Duration::from_secs(30), slot.clone().acquire_owned())
            .await
            .expect("the stalled backup gave its slot back")
            .unwrap();
        drop(freed);
        // What was queued is still there, then the reason.
        let mut last = None;
        while let Some(item) = s.next().await {
            last = Some(item);
        }
        let e = last.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    }

    #[tokio::test]
    async fn a_backup_read_to_the_end_sends_every_byte_and_no_error() {
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let len = BACKUP_CHUNK * 3 + 5;
        let items: Vec<_> = stream(file_of(len), header(), permit, Duration::from_secs(30))
            .collect()
            .await;
        let mut bytes = 0;
        for item in &items[1..] {
            match &item.as_ref().unwrap().part {
                Some(pb::backup_chunk::Part::Data(d)) => bytes += d.len(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(bytes, len);
        assert_eq!(items.len(), 1 + 4);
    }
}
