//! `cargo run --release -- [moka|quick_cache] [ENTRIES]`: fills one cache with ENTRIES distinct
//! sessions (default 1,000,000) and prints what they hold.

use std::sync::Arc;
use std::time::Duration;

use cap::Cap;
use companies_gateway::session::cache::{
    Entry, KeyHasher, ManualClock, Packed, SessionCache, Ttls, Verdict,
};

#[global_allocator]
static ALLOCATOR: Cap<mimalloc::MiMalloc> = Cap::new(mimalloc::MiMalloc, usize::MAX);

/// A `/proc/self/status` figure in kB (`VmHWM`, `VmRSS`), in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The process's peak resident set, in MiB.
fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "moka".into());
    let entries: u64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);

    // Sessions as the gateway keys them: a keyed hash of a bearer and a session token.
    let hasher = KeyHasher::default();
    let key = |i: u64| hasher.key(format!("bearer-{i}").as_bytes(), b"session");
    let value = Packed::from(Entry {
        verdict: Verdict::Valid,
        expires: Duration::from_secs(4_000_000_000),
    });

    let base_live = ALLOCATOR.allocated();
    let base_rss = peak_rss_mib();
    // (entries held, bytes live), read while the cache is still alive.
    let measure = |held: u64| (held, ALLOCATOR.allocated().saturating_sub(base_live));
    let (held, live) = match which.as_str() {
        "moka" => {
            let ttls = Ttls {
                valid: Duration::from_secs(3600),
                invalid: Duration::from_secs(60),
                stale_if_error: Duration::ZERO,
            };
            // Capacity with headroom, as `benches/load/run.sh` configures the gateway.
            let cache = SessionCache::new(entries * 11 / 10, ttls, Arc::new(ManualClock::new()));
            for i in 0..entries {
                cache.cache.insert(key(i), value).await;
            }
            cache.cache.run_pending_tasks().await;
            measure(cache.cache.entry_count())
        }
        "quick_cache" => {
            let cache = quick_cache::sync::Cache::<u128, Packed>::new(entries as usize * 11 / 10);
            for i in 0..entries {
                cache.insert(key(i), value);
            }
            measure(cache.len() as u64)
        }
        other => {
            eprintln!("unknown cache '{other}': moka or quick_cache");
            std::process::exit(2);
        }
    };
    // The most the allocator had handed out at once during the fill (the probe's own baseline
    // included), against what stays: a gap is transient garbage (e.g. a table's old arrays).
    let peak_live = ALLOCATOR.max_allocated().saturating_sub(base_live);
    println!(
        "{which}: {held} entries, {:.1} MiB live in the allocator ({:.0} B an entry; peak live \
         {:.1} MiB), RSS {:.1} MiB, peak RSS {:.1} MiB (+{:.1} MiB, {:.0} B an entry)",
        mib(live),
        live as f64 / held.max(1) as f64,
        mib(peak_live),
        status_mib("VmRSS:"),
        peak_rss_mib(),
        peak_rss_mib() - base_rss,
        (peak_rss_mib() - base_rss) * 1024.0 * 1024.0 / held.max(1) as f64,
    );
}
