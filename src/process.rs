//! The `process_*` metrics: prometheus's process collector, except that
//! `process_cpu_seconds_total` keeps its fraction of a second. The crate's counts whole seconds,
//! so a rate over a minute of a lightly loaded gateway jumps between 0 and 1/60.

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::{Counter, MetricFamily};

const CPU: &str = "process_cpu_seconds_total";

pub struct ProcessMetrics {
    inner: ProcessCollector,
}

impl ProcessMetrics {
    pub fn for_self() -> Self {
        ProcessMetrics {
            inner: ProcessCollector::for_self(),
        }
    }
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.inner.collect();
        if let Some(seconds) = cpu_seconds() {
            for family in families.iter_mut().filter(|f| f.name() == CPU) {
                for metric in family.mut_metric() {
                    let mut counter = Counter::default();
                    counter.set_value(seconds);
                    metric.set_counter(counter);
                }
            }
        }
        families
    }
}

/// User plus system CPU time of this process, in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn burn(d: Duration) {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < d {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }

    fn collected() -> f64 {
        let families = ProcessMetrics::for_self().collect();
        let cpu = families.iter().find(|f| f.name() == CPU).unwrap();
        cpu.get_metric()[0].get_counter().get_value()
    }

    #[test]
    fn cpu_seconds_grow_in_ticks_not_whole_seconds() {
        let before = collected();
        burn(Duration::from_millis(100));
        assert!(collected() > before);
        // Ticks are hundredths of a second: among a few readings, one is not a whole number.
        let fractional = (0..20).any(|_| {
            burn(Duration::from_millis(15));
            collected().fract() != 0.0
        });
        assert!(fractional, "{}", collected());
    }
}
