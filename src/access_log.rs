//! The access log (gateway.md §7): one line per request, formatted by hand into a reused
//! per-thread buffer (no `tracing` field machinery, no `format!`), appended to a bounded batch and
//! written by a writer thread, one `write(2)` per batch.
//!
//! A request never waits on the log: when the pending batch is full ([`MAX_PENDING`] bytes), the
//! line is dropped and counted in `gateway_access_log_dropped_total`. Whether the log is on is
//! still the subscriber's decision (`log.level`, `RUST_LOG`): the target is `access`, level info.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

use crate::config::LogFormat;

/// Bytes of lines waiting for the writer before new lines are dropped (some 3,000 lines).
pub(crate) const MAX_PENDING: usize = 1 << 20;

/// After each write, the writer lets lines gather this long: at most this many writes a second
/// whatever the request rate, and a line is never held longer than one write plus this.
const LINGER: Duration = Duration::from_millis(5);

/// `user_agent` is cut to this many bytes.
const MAX_USER_AGENT: usize = 256;

/// Where the lines go: stderr in production, a capture in tests.
pub type Sink = Box<dyn Write + Send>;

/// One request's fields; `None` is left out of the line.
#[derive(Default)]
pub(crate) struct Line<'a> {
    pub request_id: Option<&'a str>,
    pub trace_id: Option<[u8; 16]>,
    pub span_id: Option<[u8; 8]>,
    pub method: &'a str,
    pub route: &'a str,
    pub path: Option<&'a str>,
    pub protocol: Option<&'a str>,
    pub authority: Option<&'a [u8]>,
    pub status: u16,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub upstream_status: Option<u16>,
    pub upstream_addr: Option<SocketAddr>,
    pub duration_us: u64,
    pub upstream_us: Option<u64>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub client: Option<IpAddr>,
    pub peer: Option<SocketAddr>,
    pub user_agent: Option<&'a [u8]>,
}

/// A handle on the log; clones share one writer thread, which drains and ends when the last
/// handle is dropped (a reload builds a new one).
#[derive(Clone)]
pub(crate) struct AccessLog {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    format: LogFormat,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: IntCounter,
}

struct Pending {
    buf: Vec<u8>,
    /// The writer sleeps on `wake` and must be woken by the next line.
    idle: bool,
    closed: bool,
}

impl AccessLog {
    /// Starts the writer thread on `sink`.
    pub(crate) fn start(
        format: LogFormat,
        sink: Sink,
        dropped: IntCounter,
    ) -> std::io::Result<AccessLog> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(64 * 1024),
                idle: false,
                closed: false,
            }),
            wake: Condvar::new(),
            dropped,
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(sink))?;
        Ok(AccessLog {
            inner: Arc::new(Handle { shared, format }),
        })
    }

    /// Formats `line` straight into the pending batch; drops and counts it when the batch is
    /// full. The lock is held while formatting (about a microsecond): one copy less than a
    /// line formatted aside and appended.
    pub(crate) fn log(&self, line: &Line<'_>) {
        let now = SystemTime::now();
        let format = self.inner.format;
        self.inner.shared.push_with(|buf| match format {
            LogFormat::Text => write_text(buf, line, now),
            LogFormat::Json => write_json(buf, line, now),
        });
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut p = self.shared.lock();
        p.closed = true;
        drop(p);
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves only bytes behind; keep logging.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one line, written by `format`, to the pending batch, unless that would take the
    /// batch past [`MAX_PENDING`]: then the line is taken back out and counted as dropped.
    fn push_with(&self, format: impl FnOnce(&mut Vec<u8>)) {
        let mut p = self.lock();
        let start = p.buf.len();
        if start < MAX_PENDING {
            format(&mut p.buf);
            if p.buf.len() <= MAX_PENDING {
                let wake = std::mem::replace(&mut p.idle, false);
                drop(p);
                if wake {
                    self.wake.notify_one();
                }
                return;
            }
            p.buf.truncate(start);
        }
        drop(p);
        self.dropped.inc();
    }

    /// The writer thread: takes the whole pending batch, writes it at once, lingers, repeats.
    fn run(&self, mut sink: Sink) {
        let mut batch = Vec::with_capacity(64 * 1024);
        loop {
            let mut p = self.lock();
            while p.buf.is_empty() && !p.closed {
                p.idle = true;
                p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if p.buf.is_empty() {
                return;
            }
            std::mem::swap(&mut p.buf, &mut batch);
            drop(p);
            // Nowhere to report a failed write to but the log itself.
            let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            batch.clear();
            std::thread::sleep(LINGER);
        }
    }
}

/// `key=value` pairs after a `tracing`-like prefix (timestamp, level, target), so that what parsed
/// the old lines still does. Free text is quoted and escaped; closed sets and numbers are bare.
pub(crate) fn write_text(buf: &mut Vec<u8>, l: &Line<'_>, now: SystemTime) {
    write_timestamp(buf, now);
    buf.extend_from_slice(b"  INFO access:");
    // Each key is one static slice with its leading space and `=`.
    let key = |buf: &mut Vec<u8>, k: &[u8]| buf.extend_from_slice(k);
    if let Some(v) = l.request_id {
        key(buf, b" request_id=");
        quoted(buf, v.as_bytes(), Escape::Text);
    }
    if let Some(v) = l.trace_id {
        key(buf, b" trace_id=");
        hex(buf, &v);
    }
    if let Some(v) = l.span_id {
        key(buf, b" span_id=");
        hex(buf, &v);
    }
    key(buf, b" method=");
    buf.extend_from_slice(l.method.as_bytes());
    key(buf, b" route=");
    buf.extend_from_slice(l.route.as_bytes());
    if let Some(v) = l.path {
        key(buf, b" path=");
        quoted(buf, v.as_bytes(), Escape::Text);
    }
    if let Some(v) = l.protocol {
        key(buf, b" protocol=");
        buf.extend_from_slice(v.as_bytes());
    }
    if let Some(v) = l.authority {
        key(buf, b" authority=");
        quoted(buf, v, Escape::Text);
    }
    key(buf, b" status=");
    int(buf, l.status.into());
    key(buf, b" outcome=");
    buf.extend_from_slice(l.outcome.as_bytes());
    if let Some(v) = l.reason {
        key(buf, b" reason=");
        buf.extend_from_slice(v.as_bytes());
    }
    if let Some(v) = l.upstream_status {
        key(buf, b" upstream_status=");
        int(buf, v.into());
    }
    if let Some(v) = l.upstream_addr {
        key(buf, b" upstream_addr=");
        socket_addr(buf, v);
    }
    key(buf, b" duration_us=");
    int(buf, l.duration_us);
    if let Some(v) = l.upstream_us {
        key(buf, b" upstream_us=");
        int(buf, v);
    }
    if let Some(v) = l.bytes_in {
        key(buf, b" bytes_in=");
        int(buf, v);
    }
    if let Some(v) = l.bytes_out {
        key(buf, b" bytes_out=");
        int(buf, v);
    }
    if let Some(v) = l.client {
        key(buf, b" client=");
        ip(buf, v);
    }
    if let Some(v) = l.peer {
        key(buf, b" peer=");
        socket_addr(buf, v);
    }
    if let Some(v) = l.user_agent {
        key(buf, b" user_agent=");
        quoted(buf, &v[..v.len().min(MAX_USER_AGENT)], Escape::Text);
    }
    buf.push(b'\n');
}

/// One JSON object per line, with the keys `tracing`'s JSON format used (`timestamp`, `level`,
/// `target`) and the fields flattened beside them.
pub(crate) fn write_json(buf: &mut Vec<u8>, l: &Line<'_>, now: SystemTime) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    write_timestamp(buf, now);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"access\"");
    let key = |buf: &mut Vec<u8>, k: &str| {
        buf.extend_from_slice(b",\"");
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(b"\":");
    };
    let string = |buf: &mut Vec<u8>, k: &str, v: &[u8]| {
        key(buf, k);
        quoted(buf, v, Escape::Json);
    };
    if let Some(v) = l.request_id {
        string(buf, "request_id", v.as_bytes());
    }
    if let Some(v) = l.trace_id {
        key(buf, "trace_id");
        buf.push(b'"');
        hex(buf, &v);
        buf.push(b'"');
    }
    if let Some(v) = l.span_id {
        key(buf, "span_id");
        buf.push(b'"');
        hex(buf, &v);
        buf.push(b'"');
    }
    string(buf, "method", l.method.as_bytes());
    string(buf, "route", l.route.as_bytes());
    if let Some(v) = l.path {
        string(buf, "path", v.as_bytes());
    }
    if let Some(v) = l.protocol {
        string(buf, "protocol", v.as_bytes());
    }
    if let Some(v) = l.authority {
        string(buf, "authority", v);
    }
    key(buf, "status");
    int(buf, l.status.into());
    string(buf, "outcome", l.outcome.as_bytes());
    if let Some(v) = l.reason {
        string(buf, "reason", v.as_bytes());
    }
    if let Some(v) = l.upstream_status {
        key(buf, "upstream_status");
        int(buf, v.into());
    }
    if let Some(v) = l.upstream_addr {
        key(buf, "upstream_addr");
        buf.push(b'"');
        socket_addr(buf, v);
        buf.push(b'"');
    }
    key(buf, "duration_us");
    int(buf, l.duration_us);
    for (k, v) in [
        ("upstream_us", l.upstream_us),
        ("bytes_in", l.bytes_in),
        ("bytes_out", l.bytes_out),
    ] {
        if let Some(v) = v {
            key(buf, k);
            int(buf, v);
        }
    }
    if let Some(v) = l.client {
        key(buf, "client");
        buf.push(b'"');
        ip(buf, v);
        buf.push(b'"');
    }
    if let Some(v) = l.peer {
        key(buf, "peer");
        buf.push(b'"');
        socket_addr(buf, v);
        buf.push(b'"');
    }
    if let Some(v) = l.user_agent {
        string(buf, "user_agent", &v[..v.len().min(MAX_USER_AGENT)]);
    }
    buf.extend_from_slice(b"}\n");
}

#[derive(Clone, Copy)]
enum Escape {
    /// `\"`, `\\`, and `\xHH` for control and non-ASCII bytes.
    Text,
    /// `\"`, `\\`, and `\u00HH` for control and non-ASCII bytes (read as Latin-1, so that the
    /// line stays valid UTF-8 whatever a header held).
    Json,
}

fn quoted(buf: &mut Vec<u8>, v: &[u8], esc: Escape) {
    // Most values need no escape: checked eight bytes at a time and copied whole.
    if is_clean(v) {
        buf.reserve(v.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(v);
        buf.push(b'"');
        return;
    }
    buf.push(b'"');
    let mut start = 0;
    let mut i = clean_prefix(v);
    while i < v.len() {
        let b = v[i];
        if !needs_escape(b) {
            i += 1;
            continue;
        }
        buf.extend_from_slice(&v[start..i]);
        match b {
            b'"' | b'\\' => buf.extend_from_slice(&[b'\\', b]),
            _ => {
                match esc {
                    Escape::Text => buf.extend_from_slice(b"\\x"),
                    Escape::Json => buf.extend_from_slice(b"\\u00"),
                }
                hex(buf, &[b]);
            }
        }
        i += 1;
        start = i;
    }
    buf.extend_from_slice(&v[start..]);
    buf.push(b'"');
}

/// Control and non-ASCII bytes, `"` and `\\`.
fn needs_escape(b: u8) -> bool {
    !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\'
}

/// Whether no byte of `v` needs an escape: its 8-byte words, the last one overlapping the one
/// before, instead of a tail byte by byte.
fn is_clean(v: &[u8]) -> bool {
    if v.len() < 8 {
        return !v.iter().any(|&b| needs_escape(b));
    }
    let whole = v.len() / 8 * 8;
    clean_prefix(v) == whole && clean_word(&v[v.len() - 8..])
}

/// How many leading bytes of `v` need no escape, eight at a time.
fn clean_prefix(v: &[u8]) -> usize {
    let mut i = 0;
    for chunk in v.chunks_exact(8) {
        if !clean_word(chunk) {
            break;
        }
        i += 8;
    }
    i
}

/// Eight bytes pass when none is below 0x20, above 0x7e, `"` or `\\`.
fn clean_word(chunk: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let mut word = [0u8; 8];
    word.copy_from_slice(chunk);
    let w = u64::from_le_bytes(word);
    // Below 0x20, or 0x7f and above (adding 1 sets the high bit of 0x7f; 0x80+ has it).
    let low = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let high = (w.wrapping_add(ONES) | w) & HIGHS;
    let special = has_zero(w ^ (ONES * u64::from(b'"'))) | has_zero(w ^ (ONES * u64::from(b'\\')));
    low | high | special == 0
}

fn hex(buf: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        buf.push(DIGITS[usize::from(b >> 4)]);
        buf.push(DIGITS[usize::from(b & 0xf)]);
    }
}

fn int(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` with at least `width` digits.
fn padded(buf: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    let mut n = n;
    while n > 0 || digits.len() - i < width {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&digits[i..]);
}

pub(crate) fn ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        // Into a stack buffer from a table of octets and appended once.
        IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            let mut n = 0;
            for o in v4.octets() {
                // Each octet's digits and a dot from a table, copied as one word.
                let (digits, len) = &OCTETS[usize::from(o)];
                out[n..n + 4].copy_from_slice(digits);
                n += usize::from(*len);
            }
            // Without the last dot.
            buf.extend_from_slice(&out[..n - 1]);
        }
        // Rare enough to go through `Display`'s zero compression.
        IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// `0.` … `255.`: each octet's decimal digits and a dot, and how many bytes of that are used.
static OCTETS: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let o = i as u8;
        t[i] = if o >= 100 {
            ([b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10, b'.'], 4)
        } else if o >= 10 {
            ([b'0' + o / 10, b'0' + o % 10, b'.', 0], 3)
        } else {
            ([b'0' + o, b'.', 0, 0], 2)
        };
        i += 1;
    }
    t
};

fn socket_addr(buf: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => ip(buf, IpAddr::V4(*a.ip())),
        SocketAddr::V6(a) => {
            buf.push(b'[');
            ip(buf, IpAddr::V6(*a.ip()));
            buf.push(b']');
        }
    }
    buf.push(b':');
    int(buf, addr.port().into());
}

/// RFC 3339 in UTC with microseconds: `2026-12-03T14:13:07.123456Z`. The part up to the second
/// is formatted once a second per thread.
fn write_timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        static LAST: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (at, mut prefix) = LAST.get();
    if at != secs {
        let mut b = Vec::with_capacity(19);
        date_time(&mut b, secs);
        if b.len() == 19 {
            prefix.copy_from_slice(&b);
            LAST.set((secs, prefix));
        } else {
            // A year past 9999: not cached.
            buf.extend_from_slice(&b);
            buf.push(b'.');
            padded(buf, since.subsec_micros().into(), 6);
            buf.push(b'Z');
            return;
        }
    }
    buf.extend_from_slice(&prefix);
    buf.push(b'.');
    padded(buf, since.subsec_micros().into(), 6);
    buf.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the epoch.
fn date_time(buf: &mut Vec<u8>, secs: u64) {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    padded(buf, y as u64, 4);
    buf.push(b'-');
    padded(buf, m.into(), 2);
    buf.push(b'-');
    padded(buf, d.into(), 2);
    buf.push(b'T');
    padded(buf, rem / 3600, 2);
    buf.push(b':');
    padded(buf, rem / 60 % 60, 2);
    buf.push(b':');
    padded(buf, rem % 60, 2);
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Line<'static> {
        Line {
            request_id: Some("req-1"),
            trace_id: Some([0xab; 16]),
            span_id: Some([0x01; 8]),
            method: "PATCH",
            route: "update_contact",
            path: Some("/o/x\"%20status=999"),
            protocol: Some("HTTP/1.1"),
            authority: Some(b"api.example.com"),
            status: 200,
            outcome: "forwarded",
            reason: None,
            upstream_status: Some(200),
            upstream_addr: Some("10.0.0.7:443".parse().unwrap()),
            duration_us: 1234,
            upstream_us: Some(1000),
            bytes_in: Some(57),
            bytes_out: Some(0),
            client: Some("192.0.2.1".parse().unwrap()),
            peer: Some("[::1]:50000".parse().unwrap()),
            user_agent: Some(b"curl/8 \xff\n"),
        }
    }

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into())
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut b = Vec::new();
        write_timestamp(&mut b, at(0, 0));
        assert_eq!(b, b"1970-01-01T00:00:00.000000Z");
        b.clear();
        // 2024-02-29T23:59:59.000042Z, a leap day.
        write_timestamp(&mut b, at(1_709_251_199, 42));
        assert_eq!(b, b"2024-02-29T23:59:59.000042Z");
        b.clear();
        write_timestamp(&mut b, at(4_102_444_800, 999_999));
        assert_eq!(b, b"2100-01-01T00:00:00.999999Z");
    }

    #[test]
    fn a_text_line_has_every_field_and_escapes_free_text() {
        let mut b = Vec::new();
        write_text(&mut b, &full(), at(0, 0));
        let s = String::from_utf8(b).unwrap();
        assert_eq!(
            s,
            "1970-01-01T00:00:00.000000Z  INFO access: request_id=\"req-1\" \
             trace_id=abababababababababababababababab span_id=0101010101010101 method=PATCH \
             route=update_contact path=\"/o/x\\\"%20status=999\" protocol=HTTP/1.1 \
             authority=\"api.example.com\" status=200 outcome=forwarded upstream_status=200 \
             upstream_addr=10.0.0.7:443 duration_us=1234 upstream_us=1000 bytes_in=57 \
             bytes_out=0 client=192.0.2.1 peer=[::1]:50000 user_agent=\"curl/8 \\xff\\x0a\"\n"
        );
    }

    #[test]
    fn a_json_line_parses_and_leaves_absent_fields_out() {
        let mut b = Vec::new();
        write_json(&mut b, &full(), at(0, 0));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["path"], "/o/x\"%20status=999");
        assert_eq!(v["user_agent"], "curl/8 \u{ff}\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["peer"], "[::1]:50000");
        assert_eq!(v["trace_id"], "abababababababababababababababab");
        assert_eq!(v["target"], "access");
        assert!(v.get("reason").is_none());
        let sparse = Line {
            method: "GET",
            route: "other",
            status: 404,
            outcome: "rejected",
            reason: Some("unknown_route"),
            ..Line::default()
        };
        b.clear();
        write_json(&mut b, &sparse, at(0, 0));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "target",
                "method",
                "route",
                "status",
                "outcome",
                "reason",
                "duration_us"
            ]
        );
        b.clear();
        write_text(&mut b, &sparse, at(0, 0));
        let s = String::from_utf8(b).unwrap();
        assert!(!s.contains("=\"\""), "{s}");
        assert!(!s.contains("trace_id"), "{s}");
    }

    #[test]
    fn the_word_at_a_time_scan_stops_at_every_byte_that_needs_an_escape() {
        for bad in [0u8, 0x1f, b'"', b'\\', 0x7f, 0x80, 0xff] {
            for at in 0..20 {
                let mut v = vec![b'a'; 20];
                v[at] = bad;
                assert!(clean_prefix(&v) <= at, "{bad:#x} at {at}");
                let mut out = Vec::new();
                quoted(&mut out, &v, Escape::Json);
                let s: String = serde_json::from_slice(&out).unwrap();
                assert_eq!(s.chars().nth(at).unwrap() as u32, u32::from(bad));
            }
        }
        let clean: Vec<u8> = (0x20..0x7f).filter(|b| *b != b'"' && *b != b'\\').collect();
        assert_eq!(clean_prefix(&clean), clean.len() / 8 * 8);
    }

    #[test]
    fn ipv4_addresses_are_formatted_like_display() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "192.168.1.20",
            "1.99.100.255",
        ] {
            let addr: IpAddr = text.parse().unwrap();
            let mut b = Vec::new();
            ip(&mut b, addr);
            assert_eq!(b, addr.to_string().as_bytes());
        }
    }

    #[test]
    fn the_user_agent_is_cut_to_256_bytes() {
        let ua = vec![b'a'; 1000];
        let line = Line {
            user_agent: Some(&ua),
            ..full()
        };
        let mut b = Vec::new();
        write_json(&mut b, &line, at(0, 0));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["user_agent"].as_str().unwrap().len(), 256);
    }

    /// A sink that hands each write to the test.
    struct Chan(std::sync::mpsc::Sender<Vec<u8>>);
    impl Write for Chan {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let shared = Shared {
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                idle: false,
                closed: false,
            }),
            wake: Condvar::new(),
            dropped: IntCounter::new("d", "d").unwrap(),
        };
        let mut one = Vec::new();
        write_text(&mut one, &full(), SystemTime::now());
        let fit = MAX_PENDING / one.len();
        for _ in 0..fit + 3 {
            shared.push_with(|b| b.extend_from_slice(&one));
        }
        assert_eq!(shared.dropped.get(), 3);
        assert_eq!(shared.lock().buf.len(), fit * one.len());
    }

    #[test]
    fn every_line_reaches_the_sink_in_few_writes_before_the_writer_ends() {
        let (tx, rx) = std::sync::mpsc::channel();
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog::start(LogFormat::Json, Box::new(Chan(tx)), dropped.clone()).unwrap();
        for _ in 0..500 {
            log.log(&full());
        }
        // The last handle gone, the writer drains and ends: `rx` then closes.
        drop(log);
        let mut got = Vec::new();
        let mut writes = 0;
        while let Ok(chunk) = rx.recv() {
            writes += 1;
            got.extend_from_slice(&chunk);
        }
        let lines: Vec<&[u8]> = got
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 500);
        assert_eq!(dropped.get(), 0);
        for l in lines {
            serde_json::from_slice::<serde_json::Value>(l).unwrap();
        }
        assert!(writes < 100, "{writes} writes: not batched");
    }
}
