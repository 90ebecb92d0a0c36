//! GCRA (the generic cell rate algorithm), as pure arithmetic on microseconds. The same function
//! judges the per-replica table and the store's answer (the store's script only reads and writes
//! the theoretical arrival times, on its own clock), so both speak the same numbers.
//!
//! Our own rather than `governor`'s: `governor` keeps its state to itself, but the store needs the
//! same state (one TAT per key) under a Lua script, and the `RateLimit` header needs the remaining
//! budget and the wait, which `governor` does not give for an allowed request.

/// One limit's constants: the emission interval `T` (`per / rate`) and the tolerance
/// `burst × T` (how far ahead of now the TAT may run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) interval_us: u64,
    pub(crate) tolerance_us: u64,
}

impl Rule {
    pub(crate) fn new(rate: u32, per_us: u64, burst: u32) -> Rule {
        let interval_us = (per_us / u64::from(rate.max(1))).max(1);
        Rule {
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst.max(1))),
        }
    }
}

/// What one limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) allowed: bool,
    /// Requests still allowed at once after this one (0 when refused).
    pub(crate) remaining: u64,
    /// Whole seconds until one more request is allowed (0 when one is allowed now).
    pub(crate) reset_secs: u64,
    /// The TAT to store when the request goes on.
    pub(crate) new_tat: u64,
}

fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// Judges a request arriving at `now` against a key whose TAT is `tat` (`None`: never seen, or
/// long ago). Pure.
pub(crate) fn decide(rule: Rule, tat: Option<u64>, now: u64) -> Decision {
    let base = tat.map_or(now, |t| t.max(now));
    let new_tat = base.saturating_add(rule.interval_us);
    let ahead = new_tat - now;
    if ahead <= rule.tolerance_us {
        let remaining = (rule.tolerance_us - ahead) / rule.interval_us;
        let reset_secs = if remaining > 0 {
            0
        } else {
            // The next request fits once now has caught up with new_tat + T - tolerance.
            ceil_secs((ahead + rule.interval_us).saturating_sub(rule.tolerance_us))
        };
        Decision {
            allowed: true,
            remaining,
            reset_secs,
            new_tat,
        }
    } else {
        Decision {
            allowed: false,
            remaining: 0,
            // At least a second: Retry-After is whole seconds, and 0 would invite a retry now.
            reset_secs: ceil_secs(ahead - rule.tolerance_us).max(1),
            new_tat: base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn burst_at_once_then_the_sustained_rate() {
        // 10 per 10 s, burst 3.
        let rule = Rule::new(10, 10 * S, 3);
        assert_eq!(rule.interval_us, S);
        let now = 1_000 * S;
        let mut tat = None;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let d = decide(rule, tat, now);
            if d.allowed {
                tat = Some(d.new_tat);
            }
            seen.push((d.allowed, d.remaining, d.reset_secs));
        }
        assert_eq!(
            seen,
            [(true, 2, 0), (true, 1, 0), (true, 0, 1), (false, 0, 1)]
        );
        // One interval later exactly one more fits.
        let d = decide(rule, tat, now + S);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let d2 = decide(rule, Some(d.new_tat), now + S);
        assert!(!d2.allowed);
        // Long after, the key is as new.
        assert_eq!(
            decide(rule, tat, now + 100 * S),
            decide(rule, None, now + 100 * S)
        );
    }

    #[test]
    fn a_refusal_spends_nothing_and_says_how_long_to_wait() {
        // 1 per minute, burst 1.
        let rule = Rule::new(1, 60 * S, 1);
        let now = 5 * S;
        let first = decide(rule, None, now);
        assert!(first.allowed);
        assert_eq!(first.reset_secs, 60);
        let refused = decide(rule, Some(first.new_tat), now + 500_000);
        assert!(!refused.allowed);
        assert_eq!(refused.new_tat, first.new_tat);
        assert_eq!(refused.reset_secs, 60);
        let refused = decide(rule, Some(first.new_tat), now + 59 * S + 1);
        assert_eq!(refused.reset_secs, 1);
        assert!(decide(rule, Some(first.new_tat), now + 60 * S).allowed);
    }

    #[test]
    fn extreme_rules_neither_panic_nor_divide_by_zero() {
        let rule = Rule::new(u32::MAX, 1, u32::MAX);
        assert!(rule.interval_us >= 1);
        assert!(decide(rule, Some(u64::MAX), 0).reset_secs >= 1);
        // The TAT saturates at the end of time rather than wrapping round to the past.
        assert!(decide(rule, None, u64::MAX).allowed);
        let one = Rule::new(1, S, 1);
        assert!(!decide(one, Some(u64::MAX), u64::MAX - 2 * S).allowed);
    }
}
