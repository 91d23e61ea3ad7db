//! Lookups for a client address over its failed-authentication budget: not refused (a caller
//! whose credential verifies is never refused for other callers' failures at its address, a
//! NAT or a proxy not listed as trusted) but paced. One lookup at a time per address, each
//! holding the address's turn for at least [`PACED_LOOKUP_SPACING`]: a guesser at that address
//! makes at most 50 store (or JWKS) lookups a second and holds at most one database connection,
//! whatever its concurrency, while a valid key from the same address waits its turn and is
//! served. Addresses within their budget never come here.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

/// The least time one over-budget lookup holds its address's turn (the lookup included).
pub const PACED_LOOKUP_SPACING: Duration = Duration::from_millis(20);

type Turn = Arc<tokio::sync::Mutex<()>>;

/// The lanes of the addresses over their budget that have a lookup waiting or running. An
/// address has an entry only while a request of it holds a [`LookupLane`], so the map is
/// bounded by the requests in flight.
#[derive(Default)]
pub struct LookupLanes {
    lanes: Mutex<HashMap<String, Turn>>,
}

impl LookupLanes {
    /// The lane of `address` (the failed-authentication bucket's key), for one request.
    pub fn lane(&self, address: String) -> LookupLane<'_> {
        let turn = Arc::clone(self.lock().entry(address.clone()).or_default());
        LookupLane {
            lanes: self,
            address,
            turn: Some(turn),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Turn>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many addresses have a lane right now (requests of theirs in flight).
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }
}

/// One request's place in its address's lane.
pub struct LookupLane<'a> {
    lanes: &'a LookupLanes,
    address: String,
    turn: Option<Turn>,
}

impl LookupLane<'_> {
    /// Runs `lookup` when the address's turn comes (first come, first served), and keeps the
    /// turn until [`PACED_LOOKUP_SPACING`] has passed since it began.
    pub async fn run<F: Future>(&self, lookup: F) -> F::Output {
        let Some(turn) = &self.turn else {
            return lookup.await;
        };
        let _turn = turn.lock().await;
        let started = tokio::time::Instant::now();
        let output = lookup.await;
        tokio::time::sleep_until(started + PACED_LOOKUP_SPACING).await;
        output
    }
}

impl Drop for LookupLane<'_> {
    fn drop(&mut self) {
        // Under the map's lock, so two lanes of one address dropped at once cannot both see
        // the other's handle and leave the entry behind.
        let mut lanes = self.lanes.lock();
        drop(self.turn.take());
        if lanes
            .get(&self.address)
            .is_some_and(|turn| Arc::strong_count(turn) == 1)
        {
            lanes.remove(&self.address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_lookup_at_a_time_per_address_paced_and_forgotten_when_done() {
        let lanes = LookupLanes::default();
        let started = tokio::time::Instant::now();
        let a1 = lanes.lane("ip:192.0.2.1".into());
        let a2 = lanes.lane("ip:192.0.2.1".into());
        let b = lanes.lane("ip:192.0.2.2".into());
        assert_eq!(lanes.addresses(), 2);
        let (x, y, z) = tokio::join!(a1.run(async { 1 }), a2.run(async { 2 }), b.run(async { 3 }));
        assert_eq!((x, y, z), (1, 2, 3));
        // The same address's two lookups one after the other; the other address alongside.
        assert!(started.elapsed() >= PACED_LOOKUP_SPACING * 2);
        drop((a1, a2, b));
        assert_eq!(lanes.addresses(), 0);
    }
}
