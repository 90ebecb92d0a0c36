//! The upstream's addresses (gateway.md §9): the URL's host resolved (or `upstream.resolve`, or
//! the proxy's host), re-resolved every `dns_refresh`; new addresses join, vanished ones are
//! marked removed so that their connections drain (idle ones close, busy ones after their
//! response). A request picks by power of two choices on the fewest requests in flight.
//!
//! Outlier ejection: `outlier_failures` consecutive connect/TLS failures or 502/503/504 answers
//! eject an address for `outlier_ejection`, doubled on each repeat up to 10×; a success resets the
//! count and the repeat. Never more than half the addresses are ejected at once. All state lives
//! in the `Endpoints` a pool owns: a rebuilt stack starts afresh.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};

/// One address of the upstream.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    in_flight: AtomicUsize,
    /// Consecutive failures.
    failures: AtomicU32,
    /// Milliseconds after `Endpoints::epoch` until which it is ejected; 0: not ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row, without a success between them.
    ejections: AtomicU32,
    /// Gone from the resolver's answer: its connections drain.
    removed: AtomicBool,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            addr,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            removed: AtomicBool::new(false),
        })
    }

    pub(crate) fn removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    fn ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A request in flight on an endpoint, for the pick; dropped with the response body.
pub(crate) struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub(crate) fn new(ep: &Arc<Endpoint>) -> InFlight {
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(ep.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Turns the upstream's host name into addresses. The gateway's is the system resolver
/// ([`SystemResolver`]); a test may put another behind `Options::resolver` to change the answer
/// while the gateway runs, through the same refresh, join and drain code.
pub trait Resolve: Send + Sync {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// `getaddrinfo`, on tokio's blocking pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Where the addresses come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// An IP literal in the URL (or the proxy's): never re-resolved.
    Fixed(Vec<SocketAddr>),
    /// `upstream.resolve`: never re-resolved; a reload that changes only it hands the new list
    /// to the running pool (`Endpoints::replace`), so that addresses join and drain.
    Configured(Vec<SocketAddr>),
    /// A host name, resolved now and every `dns_refresh`.
    Dns {
        host: Arc<str>,
        port: u16,
        resolver: Arc<dyn Resolve>,
    },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct OutlierSettings {
    pub(crate) failures: u32,
    pub(crate) ejection: Duration,
}

/// `gateway_upstream_endpoints{state}` and `gateway_upstream_ejections_total`.
#[derive(Clone)]
pub(crate) struct EndpointMetrics {
    pub(crate) healthy: IntGauge,
    pub(crate) ejected: IntGauge,
    pub(crate) ejections: IntCounter,
}

pub(crate) struct Endpoints {
    list: RwLock<Arc<[Arc<Endpoint>]>>,
    source: Source,
    outlier: OutlierSettings,
    metrics: EndpointMetrics,
    epoch: Instant,
    /// How many of the current list are ejected.
    ejected: AtomicUsize,
    /// One first resolution at a time.
    resolving: tokio::sync::Mutex<()>,
}

/// How long the `n`th ejection in a row (from 0) lasts: doubling, at most 10× the first.
pub(crate) fn ejection_time(base: Duration, n: u32) -> Duration {
    base * 2u32.saturating_pow(n).min(10)
}

/// Whether one more may be ejected: never more than half of `total` at once.
pub(crate) fn may_eject(ejected: usize, total: usize) -> bool {
    (ejected + 1) * 2 <= total
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
}

/// A fast per-thread xorshift; good enough to spread picks and jitter backoffs.
pub(crate) fn random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x
    })
}

impl Endpoints {
    pub(crate) fn new(
        source: Source,
        outlier: OutlierSettings,
        metrics: EndpointMetrics,
    ) -> Endpoints {
        let list: Arc<[Arc<Endpoint>]> = match &source {
            Source::Fixed(addrs) | Source::Configured(addrs) => {
                addrs.iter().map(|a| Endpoint::new(*a)).collect()
            }
            Source::Dns { .. } => Arc::from(Vec::new()),
        };
        metrics.healthy.set(list.len() as i64);
        metrics.ejected.set(0);
        Endpoints {
            list: RwLock::new(list),
            source,
            outlier,
            metrics,
            epoch: Instant::now(),
            ejected: AtomicUsize::new(0),
            resolving: tokio::sync::Mutex::new(()),
        }
    }

    fn snapshot(&self) -> Arc<[Arc<Endpoint>]> {
        match self.list.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current addresses; the first call resolves the host.
    pub(crate) async fn current(&self) -> Result<Arc<[Arc<Endpoint>]>, std::io::Error> {
        let list = self.snapshot();
        if !list.is_empty() {
            return Ok(list);
        }
        let _one = self.resolving.lock().await;
        let list = self.snapshot();
        if !list.is_empty() {
            return Ok(list);
        }
        self.refresh().await?;
        Ok(self.snapshot())
    }

    /// Whether the addresses are `upstream.resolve`'s, which a reload may replace in place.
    pub(crate) fn configured(&self) -> bool {
        matches!(self.source, Source::Configured(_))
    }

    /// Resolves the host again (nothing for fixed addresses). An error or an empty answer keeps
    /// the addresses in use.
    pub(crate) async fn refresh(&self) -> Result<(), std::io::Error> {
        let Source::Dns {
            host,
            port,
            resolver,
        } = &self.source
        else {
            return Ok(());
        };
        let mut addrs = resolver.resolve(host, *port).await?;
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ));
        }
        self.replace(&addrs);
        Ok(())
    }

    /// New addresses join; those kept keep their state; vanished ones drain.
    pub(crate) fn replace(&self, addrs: &[SocketAddr]) {
        let mut guard = match self.list.write() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        let old = guard.clone();
        let fresh: Arc<[Arc<Endpoint>]> = addrs
            .iter()
            .map(|a| {
                old.iter()
                    .find(|e| e.addr == *a)
                    .cloned()
                    .unwrap_or_else(|| Endpoint::new(*a))
            })
            .collect();
        for gone in old.iter().filter(|e| !addrs.contains(&e.addr)) {
            gone.removed.store(true, Ordering::Relaxed);
        }
        if fresh.len() != old.len() || old.iter().any(|e| e.removed()) {
            tracing::info!(addresses = ?addrs, "upstream addresses changed");
        }
        let ejected = fresh.iter().filter(|e| e.ejected()).count();
        *guard = fresh.clone();
        drop(guard);
        self.ejected.store(ejected, Ordering::Relaxed);
        self.set_gauges(fresh.len(), ejected);
    }

    fn set_gauges(&self, total: usize, ejected: usize) {
        self.metrics.ejected.set(ejected as i64);
        self.metrics
            .healthy
            .set(total.saturating_sub(ejected) as i64);
    }

    fn now_ms(&self) -> u64 {
        // Never 0, which means "not ejected".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Returns the addresses whose ejection has run out.
    fn expire(&self, list: &[Arc<Endpoint>]) {
        let now = self.now_ms();
        for ep in list {
            let until = ep.ejected_until.load(Ordering::Relaxed);
            if until != 0
                && until <= now
                && ep
                    .ejected_until
                    .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                let left = self
                    .ejected
                    .fetch_sub(1, Ordering::AcqRel)
                    .saturating_sub(1);
                self.set_gauges(list.len(), left);
                tracing::info!(addr = %ep.addr, "upstream address back from ejection");
            }
        }
    }

    /// Power of two choices on the fewest in flight, among addresses neither ejected nor in
    /// `tried`; failing that, any not tried; failing that, any. `list` is not empty.
    pub(crate) fn pick(&self, list: &[Arc<Endpoint>], tried: &[SocketAddr]) -> Arc<Endpoint> {
        if self.ejected.load(Ordering::Relaxed) != 0 {
            self.expire(list);
        }
        let n = list.len();
        if n == 1 {
            return list[0].clone();
        }
        let fit = |ep: &Endpoint| !ep.ejected() && !tried.contains(&ep.addr);
        let r = random();
        let i = (r % n as u64) as usize;
        let j = (i + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
        let (a, b) = (&list[i], &list[j]);
        match (fit(a), fit(b)) {
            (true, true) if b.in_flight() < a.in_flight() => return b.clone(),
            (true, _) => return a.clone(),
            (false, true) => return b.clone(),
            (false, false) => {}
        }
        let scan = |ok: &dyn Fn(&Endpoint) -> bool| {
            (0..n)
                .map(|k| &list[(i + k) % n])
                .find(|ep| ok(ep))
                .cloned()
        };
        scan(&fit)
            .or_else(|| scan(&|ep: &Endpoint| !tried.contains(&ep.addr)))
            .unwrap_or_else(|| list[i].clone())
    }

    /// A connect/TLS failure or a 502/503/504 from `ep`.
    pub(crate) fn failure(&self, ep: &Endpoint) {
        let failures = ep.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < self.outlier.failures || ep.ejected() || ep.removed() {
            return;
        }
        let total = self.snapshot().len();
        let taken = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                may_eject(e, total).then_some(e + 1)
            });
        let Ok(before) = taken else {
            // Half are out already: this one stays in, and keeps counting.
            return;
        };
        let repeat = ep.ejections.fetch_add(1, Ordering::AcqRel);
        let time = ejection_time(self.outlier.ejection, repeat);
        let until = self.now_ms() + time.as_millis() as u64;
        if ep
            .ejected_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Another thread ejected it first.
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        ep.failures.store(0, Ordering::Release);
        self.metrics.ejections.inc();
        self.set_gauges(total, before + 1);
        tracing::warn!(addr = %ep.addr, consecutive_failures = failures, ejected_for = ?time,
            "upstream address ejected");
    }

    /// Anything but a failure: the counts start again. Read first, so that the steady state
    /// writes nothing shared.
    pub(crate) fn success(&self, ep: &Endpoint) {
        if ep.failures.load(Ordering::Relaxed) != 0 {
            ep.failures.store(0, Ordering::Relaxed);
        }
        if ep.ejections.load(Ordering::Relaxed) != 0 && !ep.ejected() {
            ep.ejections.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> EndpointMetrics {
        EndpointMetrics {
            healthy: IntGauge::new("h", "h").unwrap(),
            ejected: IntGauge::new("e", "e").unwrap(),
            ejections: IntCounter::new("x", "x").unwrap(),
        }
    }

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 443)))
            .collect()
    }

    fn endpoints(n: u8, failures: u32) -> Endpoints {
        let outlier = OutlierSettings {
            failures,
            ejection: Duration::from_secs(30),
        };
        Endpoints::new(Source::Fixed(addrs(n)), outlier, metrics())
    }

    #[test]
    fn ejection_doubles_up_to_ten_times() {
        let base = Duration::from_secs(30);
        let times: Vec<u64> = (0..6).map(|n| ejection_time(base, n).as_secs()).collect();
        assert_eq!(times, [30, 60, 120, 240, 300, 300]);
        assert_eq!(ejection_time(base, 40).as_secs(), 300);
    }

    #[test]
    fn never_more_than_half_are_ejected() {
        assert!(!may_eject(0, 1));
        assert!(may_eject(0, 2));
        assert!(!may_eject(1, 2));
        assert!(may_eject(1, 5));
        assert!(!may_eject(2, 5));
        let eps = endpoints(3, 2);
        let list = eps.snapshot();
        for ep in list.iter() {
            for _ in 0..2 {
                eps.failure(ep);
            }
        }
        assert_eq!(list.iter().filter(|e| e.ejected()).count(), 1);
        assert_eq!(eps.metrics.ejected.get(), 1);
        assert_eq!(eps.metrics.healthy.get(), 2);
        assert_eq!(eps.metrics.ejections.get(), 1);
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let eps = endpoints(2, 3);
        let list = eps.snapshot();
        eps.failure(&list[0]);
        eps.failure(&list[0]);
        eps.success(&list[0]);
        eps.failure(&list[0]);
        eps.failure(&list[0]);
        assert!(!list[0].ejected());
        eps.failure(&list[0]);
        assert!(list[0].ejected());
    }

    #[test]
    fn picks_avoid_ejected_and_tried_addresses_and_prefer_the_less_busy() {
        let eps = endpoints(2, 1);
        let list = eps.snapshot();
        eps.failure(&list[1]);
        for _ in 0..50 {
            assert_eq!(eps.pick(&list, &[]).addr, list[0].addr);
        }
        // Tried already: the ejected one rather than the same one again.
        assert_eq!(eps.pick(&list, &[list[0].addr]).addr, list[1].addr);

        let eps = endpoints(2, 5);
        let list = eps.snapshot();
        let _busy: Vec<InFlight> = (0..3).map(|_| InFlight::new(&list[0])).collect();
        for _ in 0..50 {
            assert_eq!(eps.pick(&list, &[]).addr, list[1].addr);
        }
    }

    #[test]
    fn an_ejection_runs_out() {
        let eps = Endpoints::new(
            Source::Fixed(addrs(2)),
            OutlierSettings {
                failures: 1,
                ejection: Duration::from_millis(1),
            },
            metrics(),
        );
        let list = eps.snapshot();
        eps.failure(&list[0]);
        assert!(list[0].ejected());
        std::thread::sleep(Duration::from_millis(5));
        eps.pick(&list, &[]);
        assert!(!list[0].ejected());
        assert_eq!(eps.metrics.healthy.get(), 2);
    }

    #[test]
    fn vanished_addresses_drain_and_kept_ones_keep_their_state() {
        let eps = endpoints(2, 1);
        let list = eps.snapshot();
        eps.failure(&list[0]);
        eps.replace(&[list[0].addr, SocketAddr::from(([127, 0, 0, 9], 443))]);
        let fresh = eps.snapshot();
        assert!(Arc::ptr_eq(&fresh[0], &list[0]));
        assert!(fresh[0].ejected());
        assert!(list[1].removed());
        assert!(!fresh[1].removed());
        assert_eq!(eps.metrics.ejected.get(), 1);
        assert_eq!(eps.metrics.healthy.get(), 1);
    }
}
