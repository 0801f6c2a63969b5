//! Instance pools: per function, which instances are idle, how many are leased to invocations,
//! and whether another may be started within the function's concurrency limit and the node's
//! memory budget.
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
//! Memory budget: every live instance (idle or leased) counts at its function's `memory_mb`.
//! A cold start that would take the sum past the budget first evicts idle instances, least
//! recently used first and of any function, but only if evicting all of them would make room;
//! otherwise it is refused ([`Admission::OverBudget`]) and nothing is evicted. A warm start
//! reuses memory already counted.
//!
//! Invariants: a function's live count (idle + leased) never exceeds the limit it is acquired
//! with; the committed memory is the sum of `memory_mb` over live instances and never exceeds
//! the budget through an admission; a pool entry exists while it has live instances and is
//! removed when it has none; an instance released under an older generation (the function was
//! retired meanwhile) or after close is handed back for stopping, never pooled. Each pool's
//! idle list is ordered by the time its instances were last released, oldest first.

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

/// What one invocation asks of the pools.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Demand<'a> {
    pub(crate) key: &'a FunctionKey,
    pub(crate) tag: &'a Tag,
    /// Most live instances the function may have.
    pub(crate) limit: usize,
    /// What a new instance of the function counts against the memory budget.
    pub(crate) memory_mb: u32,
}

/// Identifies one lease of an instance slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    id: u64,
    generation: u64,
    memory_mb: u32,
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
    /// A new instance would not fit into the node's memory budget.
    OverBudget,
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
    memory_mb: u32,
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
    budget_mb: u64,
    /// Sum of `memory_mb` over live instances.
    committed_mb: u64,
}

impl<I> Default for Pools<I> {
    /// Pools without a memory budget.
    fn default() -> Self {
        Pools::with_budget(u64::MAX)
    }
}

impl<I> Pools<I> {
    /// Pools whose live instances may add up to `budget_mb`.
    pub(crate) fn with_budget(budget_mb: u64) -> Self {
        Pools {
            pools: HashMap::new(),
            busy: HashMap::new(),
            next_id: 0,
            closed: false,
            leased: watch::Sender::new(0),
            budget_mb,
            committed_mb: 0,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn count_leases(&self, change: isize) {
        self.leased
            .send_modify(|n| *n = n.saturating_add_signed(change));
    }

    /// Takes idle entries out of the books, returning their instances for stopping.
    fn discard(&mut self, idle: impl IntoIterator<Item = Idle<I>>) -> Vec<I> {
        idle.into_iter()
            .map(|i| {
                self.committed_mb = self.committed_mb.saturating_sub(u64::from(i.memory_mb));
                i.instance
            })
            .collect()
    }

    /// Decides how an invocation gets an instance.
    pub(crate) fn acquire(&mut self, demand: Demand<'_>) -> Grant<I> {
        if self.closed {
            return Grant {
                admission: Admission::Closed,
                ticket: None,
                evicted: Vec::new(),
            };
        }
        let id = self.next_id();
        let fresh_generation = self.next_id();
        let pool = self
            .pools
            .entry(demand.key.clone())
            .or_insert_with(|| Pool {
                idle: Vec::new(),
                leased: 0,
                generation: fresh_generation,
            });
        let generation = pool.generation;

        // Idle instances of an older revision of this version are never used again.
        let mut dropped: Vec<Idle<I>> = pool
            .idle
            .extract_if(.., |i| {
                i.tag.version == demand.tag.version && i.tag.revision != demand.tag.revision
            })
            .collect();
        let warm = pool.idle.iter().rposition(|i| i.tag == *demand.tag);
        let (admission, memory_mb) = match warm {
            Some(at) => {
                let idle = pool.idle.remove(at);
                (Admission::Warm(idle.instance), idle.memory_mb)
            }
            None => {
                if pool.live() >= demand.limit && !pool.idle.is_empty() {
                    // Make room by stopping the least recently used instance of another version.
                    dropped.push(pool.idle.remove(0));
                }
                let admission = if pool.live() < demand.limit {
                    Admission::Cold
                } else {
                    Admission::Exceeded
                };
                (admission, demand.memory_mb)
            }
        };
        let mut evicted = self.discard(dropped);
        let admission = match admission {
            Admission::Cold => self.make_room(u64::from(memory_mb), &mut evicted),
            other => other,
        };

        let ticket = match admission {
            Admission::Warm(_) | Admission::Cold => {
                if let Some(pool) = self.pools.get_mut(demand.key) {
                    pool.leased += 1;
                }
                if matches!(admission, Admission::Cold) {
                    self.committed_mb += u64::from(memory_mb);
                }
                self.count_leases(1);
                Some(Ticket {
                    id,
                    generation,
                    memory_mb,
                })
            }
            Admission::Exceeded | Admission::OverBudget | Admission::Closed => None,
        };
        self.pools.retain(|_, pool| pool.live() > 0);
        Grant {
            admission,
            ticket,
            evicted,
        }
    }

    /// Admits a cold start of `memory_mb` within the budget, evicting least recently used idle
    /// instances if that makes enough room; otherwise evicts nothing.
    fn make_room(&mut self, memory_mb: u64, evicted: &mut Vec<I>) -> Admission<I> {
        let needed = self.committed_mb.saturating_add(memory_mb);
        if needed <= self.budget_mb {
            return Admission::Cold;
        }
        let excess = needed - self.budget_mb;
        let idle_mb: u64 = self
            .pools
            .values()
            .flat_map(|pool| &pool.idle)
            .map(|i| u64::from(i.memory_mb))
            .sum();
        if idle_mb < excess {
            return Admission::OverBudget;
        }
        let mut freed = 0;
        while freed < excess {
            let oldest = self
                .pools
                .values_mut()
                .filter(|pool| !pool.idle.is_empty())
                .min_by_key(|pool| pool.idle[0].since);
            let Some(pool) = oldest else {
                break;
            };
            let idle = pool.idle.remove(0);
            freed += u64::from(idle.memory_mb);
            evicted.extend(self.discard([idle]));
        }
        Admission::Cold
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
        let pooled = match self.pools.get_mut(key) {
            Some(pool) => {
                pool.leased = pool.leased.saturating_sub(1);
                match returned {
                    Some((instance, tag))
                        if !self.closed && pool.generation == ticket.generation =>
                    {
                        pool.idle.push(Idle {
                            instance,
                            tag,
                            since: now,
                            memory_mb: ticket.memory_mb,
                        });
                        None
                    }
                    other => Some(other.map(|(instance, _)| instance)),
                }
            }
            None => Some(returned.map(|(instance, _)| instance)),
        };
        self.pools.retain(|_, pool| pool.live() > 0);
        match pooled {
            None => None,
            Some(rejected) => {
                self.committed_mb = self
                    .committed_mb
                    .saturating_sub(u64::from(ticket.memory_mb));
                rejected
            }
        }
    }

    /// Takes the idle instances of `key` for stopping; leased ones are stopped on release.
    pub(crate) fn retire(&mut self, key: &FunctionKey) -> Vec<I> {
        let generation = self.next_id();
        let Some(pool) = self.pools.get_mut(key) else {
            return Vec::new();
        };
        pool.generation = generation;
        let idle: Vec<Idle<I>> = pool.idle.drain(..).collect();
        self.pools.retain(|_, pool| pool.live() > 0);
        self.discard(idle)
    }

    /// Takes the instances idle for `keep_alive` or longer at `now`.
    pub(crate) fn expire(&mut self, now: Instant, keep_alive: Duration) -> Vec<I> {
        let mut expired = Vec::new();
        for pool in self.pools.values_mut() {
            let old = pool
                .idle
                .extract_if(.., |i| now.saturating_duration_since(i.since) >= keep_alive);
            expired.extend(old);
        }
        self.pools.retain(|_, pool| pool.live() > 0);
        self.discard(expired)
    }

    /// Checks the idle instances `check` watches (it answers `None` for one it does not, else
    /// whether it must go); answers those that must go, out of the pools, and whether any
    /// idle instance is still watched.
    pub(crate) fn sweep_idle(
        &mut self,
        mut check: impl FnMut(&mut I) -> Option<bool>,
    ) -> (Vec<I>, bool) {
        let mut watched = false;
        let mut gone = Vec::new();
        for pool in self.pools.values_mut() {
            let out = pool
                .idle
                .extract_if(.., |idle| match check(&mut idle.instance) {
                    Some(true) => true,
                    Some(false) => {
                        watched = true;
                        false
                    }
                    None => false,
                });
            gone.extend(out);
        }
        self.pools.retain(|_, pool| pool.live() > 0);
        (self.discard(gone), watched)
    }

    /// Freezes (with `freeze`, which answers whether the instance is frozen) every instance
    /// idle for `after` or longer at `now`. Answers how long until the next one that is not
    /// frozen yet has been idle that long; `None` when every idle instance is frozen or cannot
    /// be.
    pub(crate) fn freeze_idle(
        &mut self,
        now: Instant,
        after: Duration,
        mut freeze: impl FnMut(&mut I) -> bool,
    ) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        for idle in self
            .pools
            .values_mut()
            .flat_map(|pool| pool.idle.iter_mut())
        {
            let idle_for = now.saturating_duration_since(idle.since);
            if idle_for >= after {
                freeze(&mut idle.instance);
            } else {
                let wait = after - idle_for;
                next = Some(next.map_or(wait, |next| next.min(wait)));
            }
        }
        next
    }

    /// Refuses further leases; returns every idle instance and the process groups of running
    /// ones (to be killed while this lock is held, so none of them is reaped meanwhile).
    pub(crate) fn close(&mut self) -> (Vec<I>, Vec<u32>) {
        self.closed = true;
        let idle: Vec<Idle<I>> = self
            .pools
            .values_mut()
            .flat_map(|pool| pool.idle.drain(..))
            .collect();
        self.pools.retain(|_, pool| pool.live() > 0);
        (self.discard(idle), self.busy.values().copied().collect())
    }

    /// Whether [`Pools::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Idle plus leased instances, all functions.
    pub(crate) fn live(&self) -> usize {
        self.pools.values().map(Pool::live).sum()
    }

    /// Sum of `memory_mb` over live instances.
    pub(crate) fn committed_mb(&self) -> u64 {
        self.committed_mb
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

    fn acquire(pools: &mut Pools<u32>, name: &str, tag: &Tag, limit: usize) -> Grant<u32> {
        acquire_mb(pools, name, tag, limit, 128)
    }

    fn acquire_mb(
        pools: &mut Pools<u32>,
        name: &str,
        tag: &Tag,
        limit: usize,
        memory_mb: u32,
    ) -> Grant<u32> {
        pools.acquire(Demand {
            key: &key(name),
            tag,
            limit,
            memory_mb,
        })
    }

    fn lease(
        pools: &mut Pools<u32>,
        name: &str,
        tag: &Tag,
        limit: usize,
    ) -> (Admission<u32>, Ticket) {
        let grant = acquire(pools, name, tag, limit);
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
    fn sweeping_idle_instances_takes_out_those_that_must_go() {
        let mut pools = Pools::default();
        for (name, id) in [("f", 7), ("g", 8), ("h", 9)] {
            let (_, ticket) = lease(&mut pools, name, &tag("$LATEST", 1), 8);
            pools.release(
                &key(name),
                ticket,
                Some((id, tag("$LATEST", 1))),
                Instant::now(),
            );
        }
        // 7 is watched and over its limit, 8 is watched and within it, 9 is not watched.
        let verdict = |id: &mut u32| match *id {
            7 => Some(true),
            8 => Some(false),
            _ => None,
        };
        assert_eq!(pools.sweep_idle(verdict), (vec![7], true));
        assert_eq!((pools.live(), pools.committed_mb()), (2, 256));
        assert_eq!(pools.sweep_idle(|_| None), (vec![], false));
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

        let grant = acquire(&mut pools, "f", &tag("$LATEST", 2), 8);
        assert!(matches!(grant.admission, Admission::Cold));
        assert_eq!(grant.evicted, vec![7]);
        assert_eq!(pools.live(), 1);
    }

    #[test]
    fn other_version_stays_idle_below_limit() {
        let mut pools = Pools::default();
        let (_, ticket) = lease(&mut pools, "f", &tag("1", 1), 8);
        pools.release(&key("f"), ticket, Some((7, tag("1", 1))), Instant::now());

        let grant = acquire(&mut pools, "f", &tag("$LATEST", 2), 8);
        assert!(matches!(grant.admission, Admission::Cold));
        assert!(grant.evicted.is_empty());
        assert_eq!(pools.live(), 2);
    }

    #[test]
    fn at_limit_idle_instance_of_other_version_makes_room() {
        let mut pools = Pools::default();
        let (_, ticket) = lease(&mut pools, "f", &tag("1", 1), 1);
        pools.release(&key("f"), ticket, Some((7, tag("1", 1))), Instant::now());

        let grant = acquire(&mut pools, "f", &tag("$LATEST", 2), 1);
        assert!(matches!(grant.admission, Admission::Cold));
        assert_eq!(grant.evicted, vec![7]);
    }

    #[test]
    fn rejects_beyond_concurrency_limit() {
        let mut pools = Pools::<u32>::default();
        let _first = lease(&mut pools, "f", &tag("$LATEST", 1), 1);
        let grant = acquire(&mut pools, "f", &tag("$LATEST", 1), 1);
        assert!(matches!(grant.admission, Admission::Exceeded));
        assert!(grant.ticket.is_none());
        let other = acquire(&mut pools, "g", &tag("$LATEST", 1), 1);
        assert!(matches!(other.admission, Admission::Cold));
    }

    #[test]
    fn abandoned_lease_frees_its_slot() {
        let mut pools = Pools::<u32>::default();
        let (_, ticket) = lease(&mut pools, "f", &tag("$LATEST", 1), 1);
        assert_eq!(pools.release(&key("f"), ticket, None, Instant::now()), None);
        assert_eq!(pools.live(), 0);
        assert!(pools.pools.is_empty());
        let grant = acquire(&mut pools, "f", &tag("$LATEST", 1), 1);
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
    fn freezes_instances_idle_long_enough_and_says_when_the_next_is_due() {
        let after = Duration::from_millis(50);
        let start = Instant::now();
        let mut pools = Pools::default();
        idle(&mut pools, "f", 1, start);
        idle(&mut pools, "g", 2, start + Duration::from_millis(30));
        idle(&mut pools, "k", 3, start + Duration::from_millis(40));
        // Instance 4 cannot be frozen: it is skipped, and not waited for.
        idle(&mut pools, "h", 4, start);
        let mut frozen = Vec::new();
        let mut freeze = |instance: &mut u32| {
            if *instance == 4 {
                return false;
            }
            if !frozen.contains(instance) {
                frozen.push(*instance);
            }
            true
        };
        let next = pools.freeze_idle(start + Duration::from_millis(60), after, &mut freeze);
        assert_eq!(
            next,
            Some(Duration::from_millis(20)),
            "instance 2 is due in 20 ms"
        );
        let next = pools.freeze_idle(start + Duration::from_millis(90), after, &mut freeze);
        assert_eq!(next, None);
        frozen.sort_unstable();
        assert_eq!(frozen, vec![1, 2, 3]);
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
        let grant = acquire(&mut pools, "f", &tag("$LATEST", 1), 8);
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

    fn budgeted(budget_mb: u64) -> Pools<u32> {
        Pools::with_budget(budget_mb)
    }

    /// Leases an instance of `name` and returns it to the pool as `instance`, idle since `at`.
    fn idle(pools: &mut Pools<u32>, name: &str, instance: u32, at: Instant) {
        let (_, ticket) = lease(pools, name, &tag("$LATEST", 1), 8);
        assert_eq!(
            pools.release(&key(name), ticket, Some((instance, tag("$LATEST", 1))), at),
            None
        );
    }

    #[test]
    fn live_instances_count_against_budget() {
        let mut pools = budgeted(256);
        let (_, ticket) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        assert_eq!(pools.committed_mb(), 128);
        pools.release(
            &key("f"),
            ticket,
            Some((1, tag("$LATEST", 1))),
            Instant::now(),
        );
        assert_eq!(pools.committed_mb(), 128, "an idle instance still counts");
        let grant = acquire(&mut pools, "g", &tag("$LATEST", 1), 8);
        assert!(matches!(grant.admission, Admission::Cold));
        assert!(grant.evicted.is_empty());
        assert_eq!(pools.committed_mb(), 256);
    }

    #[test]
    fn over_budget_evicts_least_recently_used_idle_of_any_function() {
        let now = Instant::now();
        let mut pools = budgeted(256);
        idle(&mut pools, "f", 1, now);
        idle(&mut pools, "g", 2, now + Duration::from_secs(1));
        let grant = acquire(&mut pools, "h", &tag("$LATEST", 1), 8);
        assert!(matches!(grant.admission, Admission::Cold));
        assert_eq!(grant.evicted, vec![1]);
        assert_eq!(pools.committed_mb(), 256);
        assert_eq!(pools.live(), 2);
    }

    #[test]
    fn evicts_as_many_idle_instances_as_needed() {
        let now = Instant::now();
        let mut pools = budgeted(384);
        idle(&mut pools, "f", 1, now + Duration::from_secs(2));
        idle(&mut pools, "g", 2, now);
        idle(&mut pools, "h", 3, now + Duration::from_secs(1));
        let grant = acquire_mb(&mut pools, "big", &tag("$LATEST", 1), 8, 256);
        assert!(matches!(grant.admission, Admission::Cold));
        assert_eq!(grant.evicted, vec![2, 3]);
        assert_eq!(pools.committed_mb(), 384);
    }

    #[test]
    fn over_budget_without_enough_idle_memory_is_refused_and_evicts_nothing() {
        let mut pools = budgeted(256);
        let _busy = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        idle(&mut pools, "g", 2, Instant::now());
        let grant = acquire_mb(&mut pools, "big", &tag("$LATEST", 1), 8, 256);
        assert!(matches!(grant.admission, Admission::OverBudget));
        assert!(grant.ticket.is_none());
        assert!(grant.evicted.is_empty());
        assert_eq!(pools.committed_mb(), 256);
        // The idle instance survived and is still reused warm.
        let again = acquire(&mut pools, "g", &tag("$LATEST", 1), 8);
        assert!(matches!(again.admission, Admission::Warm(2)));
    }

    #[test]
    fn function_larger_than_budget_is_refused() {
        let mut pools = budgeted(100);
        let grant = acquire(&mut pools, "f", &tag("$LATEST", 1), 8);
        assert!(matches!(grant.admission, Admission::OverBudget));
        assert_eq!(pools.live(), 0);
        assert!(pools.pools.is_empty());
    }

    #[test]
    fn warm_start_needs_no_room() {
        let mut pools = budgeted(128);
        idle(&mut pools, "f", 1, Instant::now());
        let grant = acquire(&mut pools, "f", &tag("$LATEST", 1), 8);
        assert!(matches!(grant.admission, Admission::Warm(1)));
        assert_eq!(pools.committed_mb(), 128);
    }

    #[test]
    fn stopped_instances_give_their_memory_back() {
        let now = Instant::now();
        let mut pools = budgeted(1024);
        let (_, abandoned) = lease(&mut pools, "f", &tag("$LATEST", 1), 8);
        pools.release(&key("f"), abandoned, None, now);
        assert_eq!(pools.committed_mb(), 0);

        idle(&mut pools, "f", 1, now);
        idle(&mut pools, "g", 2, now);
        let (_, busy) = lease(&mut pools, "h", &tag("$LATEST", 1), 8);
        assert_eq!(pools.committed_mb(), 384);
        assert_eq!(pools.retire(&key("f")), vec![1]);
        assert_eq!(pools.committed_mb(), 256);
        assert_eq!(
            pools.expire(now + Duration::from_secs(1), Duration::ZERO),
            vec![2]
        );
        assert_eq!(pools.committed_mb(), 128);
        pools.retire(&key("h"));
        let back = pools.release(&key("h"), busy, Some((3, tag("$LATEST", 1))), now);
        assert_eq!(back, Some(3));
        assert_eq!(pools.committed_mb(), 0);
    }

    #[test]
    fn close_gives_idle_memory_back() {
        let mut pools = budgeted(1024);
        idle(&mut pools, "f", 1, Instant::now());
        assert_eq!(pools.close().0, vec![1]);
        assert_eq!(pools.committed_mb(), 0);
    }
}
