//! Instance pools: per function, which instances are idle, how many are leased to invocations,
//! and whether another may be started.
//!
//! This is bookkeeping only, generic over the instance type so that it is tested without
//! processes. The engine keeps one [`Pools`] under a mutex and starts, stops and kills processes
//! outside it.
//!
//! ```text
//!            acquire                      release(Some)
//!  (none) ──────────> leased ──────────────────────────> idle ──┐ acquire (same version and
//!     ^    Cold        │  ^                                     │  revision): Warm
//!     │                │  └─────────────────────────────────────┘
//!     └── release(None), retired, closed, evicted, expired ───── stop
//! ```
//!
//! Invariants: a function's live count (idle + leased) never exceeds the limit it is acquired
//! with; a pool entry exists while it has live instances and is removed when it has none; an
//! instance released under an older generation (the function was retired meanwhile) or after
//! close is handed back for stopping, never pooled.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// A function's pool key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FunctionKey {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// What code an instance runs: only an exact match is reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tag {
    pub(crate) version: String,
    pub(crate) revision: u64,
}

/// Identifies one lease of an instance slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    id: u64,
    generation: u64,
}

/// Whether an invocation may run, and on what.
#[derive(Debug)]
pub(crate) enum Admission<I> {
    /// Reuse this idle instance.
    Warm(I),
    /// Start a new instance.
    Cold,
    /// The function is at its concurrency limit.
    Exceeded,
    /// The engine is shut down.
    Closed,
}

/// Answer to [`Pools::acquire`].
#[derive(Debug)]
pub(crate) struct Grant<I> {
    pub(crate) admission: Admission<I>,
    /// Present for `Warm` and `Cold`: the lease to release later.
    pub(crate) ticket: Option<Ticket>,
    /// Idle instances that must be stopped (stale revision, or making room).
    pub(crate) evicted: Vec<I>,
}

#[derive(Debug)]
struct Idle<I> {
    instance: I,
    tag: Tag,
    since: Instant,
}

#[derive(Debug)]
struct Pool<I> {
    /// Oldest first.
    idle: Vec<Idle<I>>,
    leased: usize,
    generation: u64,
}

impl<I> Pool<I> {
    fn live(&self) -> usize {
        self.idle.len() + self.leased
    }
}

/// Every function's pool.
#[derive(Debug)]
pub(crate) struct Pools<I> {
    pools: HashMap<FunctionKey, Pool<I>>,
    /// Process group of each leased instance that is running, by lease id.
    busy: HashMap<u64, u32>,
    next_id: u64,
    closed: bool,
    leased: watch::Sender<usize>,
}

impl<I> Default for Pools<I> {
    fn default() -> Self {
        Pools {
            pools: HashMap::new(),
            busy: HashMap::new(),
            next_id: 0,
            closed: false,
            leased: watch::Sender::new(0),
        }
    }
}

impl<I> Pools<I> {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn count_leases(&self, change: isize) {
        self.leased
            .send_modify(|n| *n = n.saturating_add_signed(change));
    }

    /// Decides how an invocation of `key` running `tag` gets an instance, with at most `limit`
    /// live instances for the function.
    pub(crate) fn acquire(&mut self, key: &FunctionKey, tag: &Tag, limit: usize) -> Grant<I> {
        if self.closed {
            return Grant {
                admission: Admission::Closed,
                ticket: None,
                evicted: Vec::new(),
            };
        }
        let id = self.next_id();
        let fresh_generation = self.next_id();
        let pool = self.pools.entry(key.clone()).or_insert_with(|| Pool {
            idle: Vec::new(),
            leased: 0,
            generation: fresh_generation,
        });

        let mut evicted: Vec<I> = pool
            .idle
            .extract_if(.., |i| {
                i.tag.version == tag.version && i.tag.revision != tag.revision
            })
            .map(|i| i.instance)
            .collect();
        let warm = pool.idle.iter().rposition(|i| i.tag == *tag);
        let admission = match warm {
            Some(at) => Admission::Warm(pool.idle.remove(at).instance),
            None => {
                if pool.live() >= limit && !pool.idle.is_empty() {
                    // Make room by stopping the least recently used instance of another version.
                    evicted.push(pool.idle.remove(0).instance);
                }
                if pool.live() < limit {
                    Admission::Cold
                } else {
                    Admission::Exceeded
                }
            }
        };

        let ticket = match admission {
            Admission::Warm(_) | Admission::Cold => {
                pool.leased += 1;
                Some(Ticket {
                    id,
                    generation: pool.generation,
                })
            }
            Admission::Exceeded | Admission::Closed => None,
        };
        if pool.live() == 0 {
            self.pools.remove(key);
        }
        if ticket.is_some() {
            self.count_leases(1);
        }
        Grant {
            admission,
            ticket,
            evicted,
        }
    }

    /// Records that the leased instance runs as process group `pid`, for [`Pools::close`] to
    /// kill. Returns false if the engine is closed (the caller must stop the instance).
    pub(crate) fn register_busy(&mut self, ticket: Ticket, pid: u32) -> bool {
        if self.closed {
            return false;
        }
        self.busy.insert(ticket.id, pid);
        true
    }

    /// Forgets the process group of a lease; do this before reaping its process.
    pub(crate) fn unregister_busy(&mut self, ticket: Ticket) {
        self.busy.remove(&ticket.id);
    }

    /// Ends a lease. A returned instance is pooled as idle from `now` if its function was not
    /// retired meanwhile and the engine is open; otherwise it comes back to be stopped.
    pub(crate) fn release(
        &mut self,
        key: &FunctionKey,
        ticket: Ticket,
        returned: Option<(I, Tag)>,
        now: Instant,
    ) -> Option<I> {
        self.busy.remove(&ticket.id);
        self.count_leases(-1);
        let Some(pool) = self.pools.get_mut(key) else {
            return returned.map(|(instance, _)| instance);
        };
        pool.leased = pool.leased.saturating_sub(1);
        let rejected = match returned {
            Some((instance, tag)) if !self.closed && pool.generation == ticket.generation => {
                pool.idle.push(Idle {
                    instance,
                    tag,
                    since: now,
                });
                None
            }
            other => other.map(|(instance, _)| instance),
        };
        if pool.live() == 0 {
            self.pools.remove(key);
        }
        rejected
    }

    /// Takes the idle instances of `key` for stopping; leased ones are stopped on release.
    pub(crate) fn retire(&mut self, key: &FunctionKey) -> Vec<I> {
        let generation = self.next_id();
        let Some(pool) = self.pools.get_mut(key) else {
            return Vec::new();
        };
        pool.generation = generation;
        let retired = pool.idle.drain(..).map(|i| i.instance).collect();
        if pool.live() == 0 {
            self.pools.remove(key);
        }
        retired
    }

    /// Takes the instances idle for `keep_alive` or longer at `now`.
    pub(crate) fn expire(&mut self, now: Instant, keep_alive: Duration) -> Vec<I> {
        let mut expired = Vec::new();
        for pool in self.pools.values_mut() {
            let old = pool
                .idle
                .extract_if(.., |i| now.saturating_duration_since(i.since) >= keep_alive);
            expired.extend(old.map(|i| i.instance));
        }
        self.pools.retain(|_, pool| pool.live() > 0);
        expired
    }

    /// Refuses further leases; returns every idle instance and the process groups of running
    /// ones (to be killed while this lock is held, so none of them is reaped meanwhile).
    pub(crate) fn close(&mut self) -> (Vec<I>, Vec<u32>) {
        self.closed = true;
        let idle = self
            .pools
            .values_mut()
            .flat_map(|pool| pool.idle.drain(..).map(|i| i.instance))
            .collect();
        self.pools.retain(|_, pool| pool.live() > 0);
        (idle, self.busy.values().copied().collect())
    }

    /// Whether [`Pools::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Idle plus leased instances, all functions.
    pub(crate) fn live(&self) -> usize {
        self.pools.values().map(Pool::live).sum()
    }

    /// Watches the number of open leases.
    pub(crate) fn watch_leases(&self) -> watch::Receiver<usize> {
        self.leased.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> FunctionKey {
        FunctionKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn tag(version: &str, revision: u64) -> Tag {
        Tag {
            version: version.into(),
            revision,
        }
    }

    fn lease(
        pools: &mut Pools<u32>,
        name: &str,
        tag: &Tag,
        limit: usize,
    ) -> (Admission<u32>, Ticket) {
        let grant = pools.acquire(&key(name), tag, limit);
        (grant.admission, grant.ticket.expect("admitted"))
    }

    #[test]
    fn released_instance_is_reused_warm() {
        let mut pools = Pools::default();
        let (admission, ticket) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        assert!(matches!(admission, Admission::Cold));
        let back = pools.release(
            &key("f"),
            ticket,
            Some((7, tag("$LATEST", 1))),
            Instant::now(),
        );
        assert_eq!(back, None);

        let (admission, _) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        assert!(matches!(admission, Admission::Warm(7)));
    }

    #[test]
    fn new_revision_evicts_idle_instance_of_old_one() {
        let mut pools = Pools::default();
        let (_, ticket) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        pools.release(
            &key("f"),
            ticket,
            Some((7, tag("$LATEST", 1))),
            Instant::now(),
        );

        let grant = pools.acquire(&key("f"), &tag("$LATEST", 2), 8);
        assert!(matches!(grant.admission, Admission::Cold));
        assert_eq!(grant.evicted, vec![7]);
        assert_eq!(pools.live(), 1);
    }

    #[test]
    fn other_version_stays_idle_below_limit() {
        let mut pools = Pools::default();
        let (_, ticket) = lease(&mut pools, "f", &tag("1", 1), 8);
        pools.release(&key("f"), ticket, Some((7, tag("1", 1))), Instant::now());

        let grant = pools.acquire(&key("f"), &tag("$LATEST", 2), 8);
        assert!(matches!(grant.admission, Admission::Cold));
        assert!(grant.evicted.is_empty());
        assert_eq!(pools.live(), 2);
    }

    #[test]
    fn at_limit_idle_instance_of_other_version_makes_room() {
        let mut pools = Pools::default();
        let (_, ticket) = lease(&mut pools, "f", &tag("1", 1), 1);
        pools.release(&key("f"), ticket, Some((7, tag("1", 1))), Instant::now());

        let grant = pools.acquire(&key("f"), &tag("$LATEST", 2), 1);
        assert!(matches!(grant.admission, Admission::Cold));
        assert_eq!(grant.evicted, vec![7]);
    }

    #[test]
    fn rejects_beyond_concurrency_limit() {
        let mut pools = Pools::<u32>::default();
        let _first = lease(&mut pools, "f", &tag("$LATEST", 1), 1);
        let grant = pools.acquire(&key("f"), &tag("$LATEST", 1), 1);
        assert!(matches!(grant.admission, Admission::Exceeded));
        assert!(grant.ticket.is_none());
        let other = pools.acquire(&key("g"), &tag("$LATEST", 1), 1);
        assert!(matches!(other.admission, Admission::Cold));
    }

    #[test]
    fn abandoned_lease_frees_its_slot() {
        let mut pools = Pools::<u32>::default();
        let (_, ticket) = lease(&mut pools, "f", &tag("$LATEST", 1), 1);
        assert_eq!(pools.release(&key("f"), ticket, None, Instant::now()), None);
        assert_eq!(pools.live(), 0);
        assert!(pools.pools.is_empty());
        let grant = pools.acquire(&key("f"), &tag("$LATEST", 1), 1);
        assert!(matches!(grant.admission, Admission::Cold));
    }

    #[test]
    fn retire_takes_idle_and_refuses_in_flight_return() {
        let mut pools = Pools::default();
        let (_, idle_ticket) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        let (_, busy_ticket) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        pools.release(
            &key("f"),
            idle_ticket,
            Some((1, tag("$LATEST", 1))),
            Instant::now(),
        );

        assert_eq!(pools.retire(&key("f")), vec![1]);
        let back = pools.release(
            &key("f"),
            busy_ticket,
            Some((2, tag("$LATEST", 1))),
            Instant::now(),
        );
        assert_eq!(back, Some(2));
        assert_eq!(pools.live(), 0);
    }

    #[test]
    fn lease_after_retire_is_pooled_again() {
        let mut pools = Pools::default();
        pools.retire(&key("f"));
        let (_, ticket) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        let back = pools.release(
            &key("f"),
            ticket,
            Some((3, tag("$LATEST", 1))),
            Instant::now(),
        );
        assert_eq!(back, None);
    }

    #[tokio::test(start_paused = true)]
    async fn expires_instances_idle_for_keep_alive() {
        let keep_alive = Duration::from_secs(600);
        let mut pools = Pools::default();
        let (_, old) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        let (_, young) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        pools.release(&key("f"), old, Some((1, tag("$LATEST", 1))), Instant::now());
        tokio::time::advance(Duration::from_secs(300)).await;
        pools.release(
            &key("f"),
            young,
            Some((2, tag("$LATEST", 1))),
            Instant::now(),
        );

        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(pools.expire(Instant::now(), keep_alive).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pools.expire(Instant::now(), keep_alive), vec![1]);
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(pools.expire(Instant::now(), keep_alive), vec![2]);
        assert!(pools.pools.is_empty());
    }

    #[test]
    fn close_returns_idle_and_busy_groups_and_refuses_leases() {
        let mut pools = Pools::default();
        let (_, idle) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        let (_, busy) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        pools.release(
            &key("f"),
            idle,
            Some((1, tag("$LATEST", 1))),
            Instant::now(),
        );
        assert!(pools.register_busy(busy, 4242));

        assert_eq!(pools.close(), (vec![1], vec![4242]));
        assert!(pools.is_closed());
        let grant = pools.acquire(&key("f"), &tag("$LATEST", 1), 8);
        assert!(matches!(grant.admission, Admission::Closed));
        assert!(!pools.register_busy(busy, 4243));
        let back = pools.release(
            &key("f"),
            busy,
            Some((2, tag("$LATEST", 1))),
            Instant::now(),
        );
        assert_eq!(back, Some(2));
    }

    #[test]
    fn lease_count_is_watched() {
        let mut pools = Pools::<u32>::default();
        let watch = pools.watch_leases();
        let (_, ticket) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        assert_eq!(*watch.borrow(), 1);
        pools.release(&key("f"), ticket, None, Instant::now());
        assert_eq!(*watch.borrow(), 0);
    }
}
