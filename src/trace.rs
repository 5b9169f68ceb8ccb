//! W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>)
//! across nodes.
//!
//! The public API's tower layer ([`crate::api`]) takes the caller's
//! `traceparent` (or starts a new trace when there is none or it is
//! malformed) and makes it the request's [`current`] context for the whole
//! handler. A write that a follower forwards to the leader carries it in
//! the Raft call's metadata ([`TRACEPARENT`]), and both nodes log the
//! trace id, so one revocation can be followed from the follower that took
//! it to the leader's commit. Log lines about a write's path use the target
//! [`LOG_TARGET`] (at `debug`).
//!
//! This module sits below `api` and `raft`, which both use it; it has no
//! exporter (OpenTelemetry would add a large dependency tree: see
//! docs/OPERATIONS.md).

use std::sync::atomic::{AtomicU64, Ordering};

/// The gRPC metadata key (an HTTP/2 header) carrying the context.
pub const TRACEPARENT: &str = "traceparent";

/// The `tracing` target of log lines that follow a write across nodes.
pub const LOG_TARGET: &str = "tessera::trace";

/// One hop of a trace: the trace id shared by every node, the id of the
/// span that made the call, and the flags (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// Parses a `traceparent` header value. Version `00` must be exactly
    /// 55 characters; a later version may append fields after a `-`, which
    /// are ignored (as the specification asks). All-zero ids, version `ff`
    /// and upper-case hex are invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let b = value.as_bytes();
        if b.len() < 55 || (b.len() > 55 && (b[55] != b'-' || &b[..2] == b"00")) {
            return None;
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex::<1>(&b[0..2])?[0];
        if version == 0xff {
            return None;
        }
        let trace_id = hex::<16>(&b[3..35])?;
        let span_id = hex::<8>(&b[36..52])?;
        let flags = hex::<1>(&b[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace (sampled), with random ids.
    pub fn generate() -> Self {
        // One call to the generator for both ids (a call costs about a
        // microsecond, on every request that arrives without a context).
        let mut ids = [0u8; 24];
        fill_random(&mut ids);
        let (trace, span) = ids.split_at_mut(16);
        // Each id must be non-zero on its own (never, in practice).
        for id in [trace, span] {
            if id.iter().all(|b| *b == 0) {
                fill_random(id);
            }
        }
        let (trace, span) = ids.split_at(16);
        Self {
            trace_id: trace.try_into().expect("16 bytes"),
            span_id: span.try_into().expect("8 bytes"),
            flags: 1,
        }
    }

    /// The next hop of the same trace: a new span id, same trace and flags.
    pub fn child(&self) -> Self {
        Self {
            span_id: random_span_id(),
            ..*self
        }
    }

    /// The trace id as 32 lower-case hex digits (what logs show).
    pub fn trace_id(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The `traceparent` header value (version `00`).
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            to_hex(&self.trace_id),
            to_hex(&self.span_id),
            self.flags
        )
    }

    /// The context in gRPC metadata, if present and valid.
    pub fn from_metadata(meta: &tonic::metadata::MetadataMap) -> Option<Self> {
        Self::parse(meta.get(TRACEPARENT)?.to_str().ok()?)
    }

    /// Adds this context to outgoing gRPC metadata.
    pub fn inject(&self, meta: &mut tonic::metadata::MetadataMap) {
        if let Ok(v) = self.header().parse() {
            meta.insert(TRACEPARENT, v);
        }
    }
}

/// Runs `fut` with `ctx` as its [`current`] context.
pub fn scope<F: std::future::Future>(
    ctx: TraceContext,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<TraceContext, F> {
    CURRENT.scope(ctx, fut)
}

/// The context of the request being handled, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn random_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    fill_random(&mut id);
    id
}

/// Random bytes, never all zero (an invalid id). The system RNG does not
/// fail in practice; if it did, a counter mixed with the clock still gives
/// ids unique enough to follow a request (they are not secrets).
fn fill_random(buf: &mut [u8]) {
    static FALLBACK: AtomicU64 = AtomicU64::new(1);
    if aws_lc_rs::rand::fill(buf).is_err() || buf.iter().all(|b| *b == 0) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = (FALLBACK.fetch_add(1, Ordering::Relaxed) ^ nanos) | 1;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (n >> ((i % 8) * 8)) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_specification_example() {
        let c = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(c.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.header(), EXAMPLE);
        let child = c.child();
        assert_eq!(child.trace_id(), c.trace_id());
        assert_ne!(child.header(), c.header());
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(TraceContext::parse(later).is_some());
    }

    #[test]
    fn generated_contexts_are_valid_and_distinct() {
        let a = TraceContext::generate();
        let b = TraceContext::generate();
        assert_ne!(a.trace_id(), b.trace_id());
        assert_eq!(TraceContext::parse(&a.header()), Some(a));
    }

    #[tokio::test]
    async fn current_is_set_only_inside_a_scope() {
        assert_eq!(current(), None);
        let c = TraceContext::generate();
        assert_eq!(scope(c, async { current() }).await, Some(c));
    }
}
