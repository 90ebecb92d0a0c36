//! Per-client caps, so that one client cannot take every slot of the global ones:
//! `max_concurrent_requests_per_client` (this layer: beyond it 503 `overloaded`, at once) and
//! `max_connections_per_client` (the public accept loop closes a connection over it, with the same
//! `ClientTable`).
//!
//! The request cap keys on the client after `trusted_proxies` (gateway.md §4): behind a trusted
//! ingress, the address it reports in `X-Forwarded-For` or `Forwarded`. The connection cap can only
//! key on the socket peer, since no header has arrived at accept time; a peer in `trusted_proxies`
//! carries many clients, so it is not held to a per-client connection cap at all.
//!
//! A table holds one entry per client with something in flight and drops it when the count falls
//! to 0, so its size is bounded by what is in flight (`max_connections`, `max_concurrent_requests`),
//! whatever number of addresses come and go.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Response};
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::headers::{ConnInfo, FORWARDED, X_FORWARDED_FOR};
use crate::shed::ResponseFuture;

/// Whether a client holding `held` slots may take one more under `cap` (0 = no cap).
pub fn admit(held: usize, cap: usize) -> bool {
    cap == 0 || held < cap
}

/// The address a cap keys on: IPv4-mapped IPv6 (a dual-stack listener's view of an IPv4 peer) is
/// the IPv4 address, so one client has one key.
pub fn key(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The client of a request after `trusted_proxies`: the peer itself unless it is trusted; else,
/// walking `X-Forwarded-For` (or, without it, `Forwarded`) from the right, the first address that
/// is not a trusted proxy. Fails closed: an entry that is not an address (garbage, `unknown`, an
/// obfuscated node) stops the walk at the nearest trusted hop, so a client cannot pick its own key
/// by writing junk left of what the trusted proxy appended.
pub fn client_ip(conn: &ConnInfo, trusted_proxies: &[IpNet], headers: &HeaderMap) -> IpAddr {
    let peer = key(conn.peer.ip());
    if !conn.trusted {
        return peer;
    }
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let walk = |entries: &mut dyn Iterator<Item = Option<IpAddr>>| {
        let mut nearest = peer;
        for entry in entries {
            match entry.map(key) {
                Some(ip) if trusted(&ip) => nearest = ip,
                Some(ip) => return ip,
                None => return nearest,
            }
        }
        nearest
    };
    if headers.contains_key(&X_FORWARDED_FOR) {
        let mut entries = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(items_last_first)
            .map(|item| item.and_then(parse_node));
        walk(&mut entries)
    } else if headers.contains_key(&FORWARDED) {
        let mut entries = headers
            .get_all(&FORWARDED)
            .iter()
            .rev()
            .flat_map(items_last_first)
            .map(|element| element.and_then(forwarded_for).and_then(parse_node));
        walk(&mut entries)
    } else {
        peer
    }
}

/// The comma-separated items of a header value, last first; one `None` for a value that is not text.
fn items_last_first(value: &HeaderValue) -> impl Iterator<Item = Option<&str>> {
    let text = value.to_str().ok();
    let items = text
        .into_iter()
        .flat_map(|t| t.rsplit(',').map(|s| Some(s.trim())));
    items.chain(text.is_none().then_some(None))
}

/// The `for=` value of one `Forwarded` element, unquoted.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// How many slots each client holds, under one cap.
#[derive(Debug)]
pub struct ClientTable {
    /// Changed by a reload; connections accepted before keep their slot.
    cap: std::sync::atomic::AtomicUsize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientTable {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(ClientTable {
            cap: std::sync::atomic::AtomicUsize::new(cap),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `ip`, or `None` when it is at the cap. With no cap nothing is stored.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let cap = self.cap.load(std::sync::atomic::Ordering::Relaxed);
        if cap == 0 {
            return Some(ClientSlot { table: None, ip });
        }
        let ip = key(ip);
        let mut held = self.lock();
        let n = held.entry(ip).or_insert(0);
        if !admit(*n, cap) {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: Some(self.clone()),
            ip,
        })
    }

    /// A new cap, for connections accepted from now on.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, std::sync::atomic::Ordering::Relaxed);
    }

    /// Clients with at least one slot.
    #[cfg(test)]
    pub fn clients(&self) -> usize {
        self.lock().len()
    }

    /// Slots `ip` holds.
    #[cfg(test)]
    pub fn held(&self, ip: IpAddr) -> usize {
        self.lock().get(&key(ip)).copied().unwrap_or(0)
    }

    fn release(&self, ip: IpAddr) {
        let mut held = self.lock();
        if let Some(n) = held.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&ip);
                // Give back the memory of a past flood of addresses once most of it is unused.
                let len = held.len();
                if held.capacity() > 64 && len * 4 < held.capacity() {
                    held.shrink_to(len * 2);
                }
            }
        }
    }

    /// Nothing under the lock can panic; a poisoned lock still holds valid counts.
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One slot of one client; given back when dropped.
#[derive(Debug)]
pub struct ClientSlot {
    table: Option<Arc<ClientTable>>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some(table) = self.table.take() {
            table.release(self.ip);
        }
    }
}

/// Counts connections closed over `max_connections_per_client` and says when to log them: at most
/// one line per interval, however fast a client reconnects.
#[derive(Debug, Default)]
pub struct CloseCounter {
    total: AtomicU64,
    logged_total: AtomicU64,
    last_log_ms: AtomicU64,
}

/// Whether a summary is due at `now_ms`, the last one having been at `last_ms` (0 = never).
pub fn log_due(last_ms: u64, now_ms: u64, every_ms: u64) -> bool {
    last_ms == 0 || now_ms.saturating_sub(last_ms) >= every_ms
}

impl CloseCounter {
    /// Counts one close at `now_ms` (> 0); when a summary is due, returns (closed since the last
    /// summary, closed in all).
    pub fn record(&self, now_ms: u64, every_ms: u64) -> Option<(u64, u64)> {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if !log_due(last, now_ms, every_ms) {
            return None;
        }
        // One caller wins the interval.
        self.last_log_ms
            .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        let before = self.logged_total.swap(total, Ordering::Relaxed);
        Some((total.saturating_sub(before), total))
    }

    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// `max_concurrent_requests_per_client`; inside the global `ShedLayer`, so the table never holds
/// more entries than `max_concurrent_requests`.
#[derive(Debug, Clone)]
pub struct ShedClientLayer {
    table: Arc<ClientTable>,
    trusted_proxies: Arc<[IpNet]>,
}

impl ShedClientLayer {
    pub fn new(max_concurrent_requests_per_client: usize, trusted_proxies: &[IpNet]) -> Self {
        ShedClientLayer {
            table: ClientTable::new(max_concurrent_requests_per_client),
            trusted_proxies: trusted_proxies.into(),
        }
    }
}

impl<S> Layer<S> for ShedClientLayer {
    type Service = ShedClientService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ShedClientService {
            inner,
            table: self.table.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ShedClientService<S> {
    inner: S,
    table: Arc<ClientTable>,
    trusted_proxies: Arc<[IpNet]>,
}

impl<S, B, ResBody> Service<Request<B>> for ShedClientService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>, Error = GatewayError>,
{
    type Response = Response<ResBody>;
    type Error = GatewayError;
    type Future = ResponseFuture<S::Future, ClientSlot>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The listener tags every request with its connection; only in-process callers (benches,
        // fuzz targets) have none, and they have no client to cap.
        let conn = req.extensions().get::<ConnInfo>().copied();
        let slot = match conn {
            None => None,
            Some(conn) => {
                let ip = client_ip(&conn, &self.trusted_proxies, req.headers());
                match self.table.try_acquire(ip) {
                    Some(slot) => Some(slot),
                    None => {
                        return ResponseFuture::Shed {
                            err: Some(GatewayError::ClientOverloaded),
                        }
                    }
                }
            }
        };
        ResponseFuture::Running {
            fut: self.inner.call(req),
            permit: slot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn conn(peer: &str, trusted: &[IpNet]) -> ConnInfo {
        ConnInfo::new(SocketAddr::new(ip(peer), 40000), false, trusted)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn admit_is_below_the_cap_and_zero_is_no_cap() {
        assert!(admit(0, 1));
        assert!(admit(127, 128));
        assert!(!admit(128, 128));
        assert!(!admit(500, 128));
        assert!(admit(usize::MAX, 0));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        assert_eq!(
            client_ip(&conn("198.51.100.7", &trusted), &trusted, &h),
            ip("198.51.100.7")
        );
        // An IPv4 peer seen through a dual-stack socket is its IPv4 address.
        assert_eq!(
            client_ip(&conn("::ffff:127.0.0.2", &[]), &[], &HeaderMap::new()),
            ip("127.0.0.2")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        let c = conn("10.0.0.1", &trusted);
        let cases: &[(&[(&'static str, &str)], &str)] = &[
            (&[("x-forwarded-for", "203.0.113.9")], "203.0.113.9"),
            // A spoofed entry left of the real client is not read.
            (
                &[("x-forwarded-for", "1.1.1.1, 203.0.113.9")],
                "203.0.113.9",
            ),
            // A chain of trusted proxies is skipped.
            (
                &[("x-forwarded-for", "203.0.113.9, 10.1.1.1, 10.2.2.2")],
                "203.0.113.9",
            ),
            // Several header lines are one list, in order.
            (
                &[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", "203.0.113.9, 10.2.2.2"),
                ],
                "203.0.113.9",
            ),
            (&[("x-forwarded-for", "[2001:db8::1]:4711")], "2001:db8::1"),
            (&[("x-forwarded-for", "203.0.113.9:5000")], "203.0.113.9"),
            // Junk stops the walk at the nearest trusted hop: fail closed, never the junk's choice.
            (
                &[("x-forwarded-for", "203.0.113.9, garbage, 10.2.2.2")],
                "10.2.2.2",
            ),
            (&[("x-forwarded-for", "nonsense")], "10.0.0.1"),
            // Only trusted hops: the leftmost.
            (&[("x-forwarded-for", "10.3.3.3, 10.2.2.2")], "10.3.3.3"),
            // Without X-Forwarded-For, Forwarded's for=.
            (
                &[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")],
                "192.0.2.60",
            ),
            (
                &[("forwarded", "for=1.1.1.1, For=\"[2001:db8:cafe::17]:4711\"")],
                "2001:db8:cafe::17",
            ),
            (
                &[("forwarded", "for=198.51.100.1, for=unknown")],
                "10.0.0.1",
            ),
            (&[("forwarded", "for=_hidden, for=10.9.9.9")], "10.9.9.9"),
            // X-Forwarded-For wins when both are there.
            (
                &[
                    ("forwarded", "for=192.0.2.60"),
                    ("x-forwarded-for", "203.0.113.9"),
                ],
                "203.0.113.9",
            ),
            // Nothing forwarded: the proxy itself.
            (&[], "10.0.0.1"),
        ];
        for (pairs, want) in cases {
            let got = client_ip(&c, &trusted, &headers(pairs));
            assert_eq!(got, ip(want), "{pairs:?}");
        }
    }

    #[test]
    fn a_non_text_forwarded_value_stops_at_the_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap(),
        );
        assert_eq!(
            client_ip(&conn("10.0.0.1", &trusted), &trusted, &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_table_caps_each_client_and_forgets_a_client_at_zero() {
        let table = ClientTable::new(2);
        let a = ip("127.0.0.1");
        let b = ip("127.0.0.2");
        let s1 = table.try_acquire(a).unwrap();
        let s2 = table.try_acquire(a).unwrap();
        assert!(table.try_acquire(a).is_none());
        // The mapped spelling of the same client is the same key.
        assert!(table.try_acquire(ip("::ffff:127.0.0.1")).is_none());
        let other = table.try_acquire(b).unwrap();
        assert_eq!(table.held(a), 2);
        drop(s1);
        let s3 = table.try_acquire(a).unwrap();
        drop((s2, s3, other));
        assert_eq!(table.clients(), 0);
    }

    #[test]
    fn many_addresses_leave_nothing_behind() {
        let table = ClientTable::new(1);
        let slots: Vec<_> = (0..10_000u32)
            .map(|i| table.try_acquire(IpAddr::from(i.to_be_bytes())).unwrap())
            .collect();
        assert_eq!(table.clients(), 10_000);
        drop(slots);
        assert_eq!(table.clients(), 0);
        assert!(table.lock().capacity() <= 64 * 2, "memory is given back");
    }

    #[test]
    fn no_cap_stores_nothing() {
        let table = ClientTable::new(0);
        let slots: Vec<_> = (0..100)
            .map(|_| table.try_acquire(ip("127.0.0.1")).unwrap())
            .collect();
        assert_eq!(table.clients(), 0);
        drop(slots);
    }

    #[test]
    fn closes_are_counted_and_logged_at_most_once_per_interval() {
        let c = CloseCounter::default();
        assert_eq!(c.record(1_000, 10_000), Some((1, 1)));
        assert_eq!(c.record(2_000, 10_000), None);
        assert_eq!(c.record(10_999, 10_000), None);
        assert_eq!(c.record(11_000, 10_000), Some((3, 4)));
        assert_eq!(c.total(), 4);
        assert!(log_due(0, 5, 10_000));
        assert!(!log_due(5, 6, 10_000));
    }

    fn tagged(peer: &str, trusted: &[IpNet], xff: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(conn(peer, trusted));
        if let Some(v) = xff {
            req.headers_mut()
                .insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        req
    }

    #[tokio::test]
    async fn the_greedy_client_is_shed_while_another_is_served_and_slots_come_back() {
        let trusted = nets(&["10.0.0.0/8"]);
        let (tx, rx) = oneshot::channel::<()>();
        let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let svc =
            ShedClientLayer::new(1, &trusted).layer(tower::service_fn(move |_: Request<()>| {
                let rx = rx.clone();
                async move {
                    // Only the first call waits; the lock is not held while it does.
                    let first = rx.lock().await.take();
                    if let Some(rx) = first {
                        let _ = rx.await;
                    }
                    Ok::<_, GatewayError>(Response::new(()))
                }
            }));
        let first = tokio::spawn(svc.clone().oneshot(tagged("127.0.0.1", &trusted, None)));
        tokio::task::yield_now().await;
        let shed = svc
            .clone()
            .oneshot(tagged("127.0.0.1", &trusted, None))
            .await;
        assert!(matches!(shed, Err(GatewayError::ClientOverloaded)));
        // Another address, and another client behind a trusted proxy, are served.
        assert!(svc
            .clone()
            .oneshot(tagged("127.0.0.2", &trusted, None))
            .await
            .is_ok());
        assert!(svc
            .clone()
            .oneshot(tagged("10.0.0.1", &trusted, Some("198.51.100.1")))
            .await
            .is_ok());
        // An untrusted peer cannot escape its cap with a forwarded header.
        let spoofed = svc
            .clone()
            .oneshot(tagged("127.0.0.1", &trusted, Some("198.51.100.2")))
            .await;
        assert!(matches!(spoofed, Err(GatewayError::ClientOverloaded)));
        tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert!(svc
            .oneshot(tagged("127.0.0.1", &trusted, None))
            .await
            .is_ok());
    }
}
