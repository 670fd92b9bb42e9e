//! Limits on what answers without a key and costs real CPU: sign-ins and registrations. Each is an Argon2
//! hash, tens of milliseconds of a core on purpose, so an unbounded stream of them is both a password
//! guesser and a way to take the CPU. Attempts are counted per source address and per account name
//! (governor's keyed GCRA limiters: a burst, then a steady rate), and hashing runs at most one per core.
//!
//! The counts live in this server's memory: with several API servers an attacker gets each server's
//! allowance, a bound that grows with the servers and nothing else. Nothing here guards a write, so a count
//! lost with a restart costs a little allowance and never an update.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use nimbus_core::DomainError;

/// Sign-in and registration attempts allowed, per minute, from one address and at one account.
#[derive(Debug, Clone, Copy)]
pub struct AttemptLimits {
    pub per_source_per_minute: u32,
    pub per_account_per_minute: u32,
}

impl Default for AttemptLimits {
    fn default() -> Self {
        AttemptLimits { per_source_per_minute: 20, per_account_per_minute: 10 }
    }
}

pub(crate) struct Throttle {
    by_source: DefaultKeyedRateLimiter<String>,
    by_account: DefaultKeyedRateLimiter<String>,
    /// One Argon2 at a time per core: the rest wait their turn instead of starving the API.
    pub(crate) hashing: tokio::sync::Semaphore,
}

/// Beyond this many remembered keys, the ones back to a full allowance are forgotten.
const FORGET_ABOVE: usize = 10_000;

impl Throttle {
    pub(crate) fn new(limits: AttemptLimits) -> Throttle {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least one"));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Throttle {
            by_source: RateLimiter::keyed(quota(limits.per_source_per_minute)),
            by_account: RateLimiter::keyed(quota(limits.per_account_per_minute)),
            hashing: tokio::sync::Semaphore::new(cores),
        }
    }

    /// Counts one attempt from `source` at `account`: refused, saying when to try again, once either has
    /// used its allowance.
    pub(crate) fn attempt(&self, source: Option<&str>, account: &str) -> Result<(), DomainError> {
        let now = DefaultClock::default().now();
        let account = account.to_lowercase();
        for (limiter, key, what) in [
            (&self.by_source, source, "from this address"),
            (&self.by_account, Some(account.as_str()), "for this account"),
        ] {
            let Some(key) = key else { continue };
            if limiter.len() > FORGET_ABOVE {
                limiter.retain_recent();
            }
            if let Err(not_until) = limiter.check_key(&key.to_string()) {
                let wait = not_until.wait_time_from(now).as_secs() + 1;
                return Err(DomainError::RateLimited {
                    message: format!("too many sign-in attempts {what}; try again in {wait} s"),
                    retry_after_secs: wait,
                });
            }
        }
        Ok(())
    }
}
