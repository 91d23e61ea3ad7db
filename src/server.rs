//! The connection loop: HTTP/1.1 over hyper with the timers `axum::serve` does not have. A
//! connection may wait at most `header_timeout` for a request head once its first byte (or the
//! connection itself) arrived, and at most `idle_timeout` between requests; at most
//! `max_connections` are open at once, and at most `max_connections_per_address` from one client
//! address (more are answered 503 and closed); a request head may take at most `max_header_bytes`
//! of buffer (hyper answers a larger one 431 and closes); on shutdown every connection finishes
//! its request and closes, and whatever is still open after `shutdown_grace` is cut.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{extract::ConnectInfo, Router};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tower::ServiceExt;

use crate::config::{ServerConfig, MIN_MAX_HEADER_BYTES};

/// The connection-level limits, from `server.*` in the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 /64) at most; 0: no such cap.
    pub max_connections_per_address: usize,
    /// hyper's read buffer, which must hold a whole request head: at least
    /// [`MIN_MAX_HEADER_BYTES`] (the configuration refuses less; hyper would panic).
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
}

impl ConnectionLimits {
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            header_timeout: Duration::from_secs(server.header_timeout_seconds.get()),
            idle_timeout: Duration::from_secs(server.idle_timeout_seconds.get()),
            max_connections: server.max_connections.get(),
            max_connections_per_address: server.max_connections_per_address,
            max_header_bytes: server.max_header_bytes,
            shutdown_grace: Duration::from_secs(server.shutdown_grace_seconds),
        }
    }
}

/// Connections over the cap that are still being answered 503; past this many they are dropped
/// at once (an attacker must not make the refusals themselves a resource).
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Serves `router` on `listener` until `shutdown` resolves, then drains connections for at most
/// `limits.shutdown_grace`.
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(AddressSlots::new(limits.max_connections_per_address));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors (or a connection reset before accept): back off
                    // briefly instead of spinning; established connections keep being served.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        // The client address's slot first: a client at its own cap takes none of the shared ones.
        let Some(address_slot) = AddressSlots::try_acquire(&per_address, peer.ip()) else {
            refuse_over_cap(stream, &refusals);
            tracing::warn!(
                %peer,
                max_connections_per_address = limits.max_connections_per_address,
                "connection refused: too many open connections from this address"
            );
            continue;
        };
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                let router = router.clone();
                let stop = stop_rx.clone();
                connections.spawn(async move {
                    serve_connection(stream, peer, router, limits, stop).await;
                    drop(slot);
                    drop(address_slot);
                });
            }
            Err(_) => {
                drop(address_slot);
                refuse_over_cap(stream, &refusals);
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection refused: too many open connections"
                );
            }
        }
    }

    drop(listener);
    let open = connections.len();
    tracing::info!(
        open_connections = open,
        grace_seconds = limits.shutdown_grace.as_secs(),
        "stopped accepting; finishing open connections"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            cut = connections.len(),
            "shutdown grace period over; closing the remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Answers a connection over a cap in the background, unless too many refusals are in flight
/// already (then it is just closed).
fn refuse_over_cap(stream: TcpStream, refusals: &Arc<Semaphore>) {
    if let Ok(permit) = Arc::clone(refusals).try_acquire_owned() {
        tokio::spawn(async move {
            refuse(stream).await;
            drop(permit);
        });
    }
}

/// Open connections per client address, for `max_connections_per_address`. An address has an
/// entry only while it has open connections, so the map is bounded by the open connections;
/// one lock per accepted and per closed connection, nothing per request.
struct AddressSlots {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressSlots {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The address a cap counts: an IPv4 address (also when IPv4-mapped), an IPv6 /64 (one
    /// subscriber holds a whole /64), as the failed-authentication budget counts them.
    fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !u128::from(u64::MAX);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
            v4 => v4,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        match self.open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// One slot of `ip`'s address, or `None` when it has `max` open already. With no cap
    /// (`max` 0) nothing is counted.
    fn try_acquire(this: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        if this.max == 0 {
            return Some(AddressSlot(None));
        }
        let key = Self::key(ip);
        let mut open = this.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= this.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot(Some((Arc::clone(this), key))))
    }

    fn release(&self, key: IpAddr) {
        let mut open = self.lock();
        if let Some(count) = open.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

/// A connection's slot of its address; given back when dropped.
struct AddressSlot(Option<(Arc<AddressSlots>, IpAddr)>);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((slots, key)) = &self.0 {
            slots.release(*key);
        }
    }
}

/// The answer to a connection over a cap: a complete 503 in the envelope, then close.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":{"code":"too_many_connections","message":"The server has too many open connections; retry shortly."},"meta":{"request_id":null}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(response.as_bytes()).await?;
        // Half-close and let the client read it: closing with its request unread would reset
        // the connection and could destroy the response in flight.
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        loop {
            use tokio::io::AsyncReadExt;
            if stream.read(&mut sink).await? == 0 {
                return Ok::<_, io::Error>(());
            }
        }
    })
    .await;
}

/// Where a connection is between requests, for the watchdog.
const WAITING_FOR_HEAD: u8 = 0;
const IN_REQUEST: u8 = 1;
const IDLE: u8 = 2;

/// Shared by a connection's socket wrapper, its service and its watchdog. Phase changes are two
/// relaxed stores (no wake-up per request): the watchdog looks at a coarse interval instead.
struct ConnectionClock {
    phase: AtomicU8,
    /// When the current phase began, in milliseconds since `origin`.
    since_ms: AtomicU64,
    origin: Instant,
}

impl ConnectionClock {
    fn new() -> Self {
        Self {
            phase: AtomicU8::new(WAITING_FOR_HEAD),
            since_ms: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    fn enter(&self, phase: u8) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since_ms.store(now, Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
    }

    /// The phase, and when its timeout runs out (`None`: no timeout while a request runs; the
    /// request timeout bounds it).
    fn deadline(&self, limits: &ConnectionLimits) -> (u8, Option<Instant>) {
        let phase = self.phase.load(Ordering::Acquire);
        let since = self.origin + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        let deadline = match phase {
            WAITING_FOR_HEAD => Some(since + limits.header_timeout),
            IDLE => Some(since + limits.idle_timeout),
            _ => None,
        };
        (phase, deadline)
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let clock = Arc::new(ConnectionClock::new());
    let io = TokioIo::new(TimedStream {
        inner: stream,
        clock: Arc::clone(&clock),
    });
    let service_clock = Arc::clone(&clock);
    let service = service_fn(move |mut request: Request<Incoming>| {
        service_clock.enter(IN_REQUEST);
        // The peer address feeds the per-IP limit on failed authentications.
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        let clock = Arc::clone(&service_clock);
        async move {
            let response = router.oneshot(request).await;
            clock.enter(IDLE);
            Ok::<_, Infallible>(match response {
                Ok(response) => response,
                Err(never) => match never {},
            })
        }
    });
    let mut builder = http1::Builder::new();
    // Our watchdog does the header and idle timeouts; hyper's own header timer (which would
    // also cut idle keep-alive connections at the header timeout) is off.
    // A request head larger than `max_header_bytes` is answered 431 by hyper (without a body)
    // and the connection closed as soon as that much is buffered, so an unauthenticated client
    // holds at most about twice that per connection (the read buffer grows by doubling). The
    // buffer's own cap stays hyper's (~400 KB): capping it at the head's size cost a fifth of
    // the mint throughput under `bench/load.sh` (smaller reads and writes per request).
    let header_bytes = limits.max_header_bytes.max(MIN_MAX_HEADER_BYTES);
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_header_size(header_bytes)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);

    // How often the watchdog looks: a quarter of the shorter timeout, between 50 ms and 1 s, so
    // a connection is cut at most that much late.
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(tick);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if closing_since.is_none() => {
                if changed.is_err() || *stop.borrow() {
                    connection.as_mut().graceful_shutdown();
                    closing_since = Some(Instant::now());
                }
            }
            _ = watchdog.tick() => {
                let now = Instant::now();
                if let Some(at) = closing_since {
                    // Once asked to close, a connection gets one more header timeout to finish.
                    if now >= at + limits.header_timeout {
                        return;
                    }
                    continue;
                }
                let (phase, deadline) = clock.deadline(&limits);
                if deadline.is_none_or(|deadline| now < deadline) {
                    continue;
                }
                if phase == WAITING_FOR_HEAD {
                    // A request head that did not arrive in time: nothing to finish, cut it.
                    tracing::debug!(%peer, "closing a connection whose request head did not arrive in time");
                    return;
                }
                // An idle keep-alive connection closes cleanly.
                connection.as_mut().graceful_shutdown();
                closing_since = Some(now);
            }
        }
    }
}

/// The socket, noticing the first byte of the next request head after an idle period.
struct TimedStream {
    inner: TcpStream,
    clock: Arc<ConnectionClock>,
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.clock.phase.load(Ordering::Acquire) == IDLE {
            self.clock.enter(WAITING_FOR_HEAD);
        }
        result
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises the soft open-files limit to the hard limit, so that the connection cap (not the
/// process's descriptor table) decides when connections are refused. Returns the limit now in
/// force, if it can be read.
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_cap_and_its_entry_only_while_open() {
        let slots = Arc::new(AddressSlots::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let first = AddressSlots::try_acquire(&slots, a).unwrap();
        let second = AddressSlots::try_acquire(&slots, mapped).unwrap();
        assert!(AddressSlots::try_acquire(&slots, a).is_none());
        assert!(AddressSlots::try_acquire(&slots, "192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        let third = AddressSlots::try_acquire(&slots, a).unwrap();
        drop((second, third));
        assert!(slots.lock().is_empty());

        // One IPv6 /64 is one address.
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let _x = AddressSlots::try_acquire(&slots, x).unwrap();
        let _y = AddressSlots::try_acquire(&slots, y).unwrap();
        assert!(AddressSlots::try_acquire(&slots, x).is_none());
        assert!(AddressSlots::try_acquire(&slots, "2001:db8:1:3::1".parse().unwrap()).is_some());
    }

    #[test]
    fn no_cap_counts_nothing() {
        let slots = Arc::new(AddressSlots::new(0));
        let held: Vec<_> = (0..10)
            .map(|_| AddressSlots::try_acquire(&slots, "192.0.2.1".parse().unwrap()).unwrap())
            .collect();
        assert!(slots.lock().is_empty());
        drop(held);
    }
}
