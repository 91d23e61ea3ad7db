//! GCRA buckets in Redis, one atomic Lua script per check, timed by Redis's own clock so that
//! replicas with skewed clocks share one budget.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{BackendError, Decision, LimitBackend, Quota};

/// KEYS[1] bucket; ARGV[1] period in µs; ARGV[2] burst; ARGV[3] 1 = take one, 0 = only look.
/// The bucket holds its theoretical arrival time (TAT). Returns {allowed, remaining, retry µs, reset µs}.
const GCRA: &str = r#"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local period = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local take = ARGV[3] == '1'
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + period
local limit = period * burst
if new_tat - now > limit then
  return {0, 0, new_tat - now - limit, tat - now}
end
if take then
  redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
  return {1, math.floor((limit - (new_tat - now)) / period), 0, new_tat - now}
end
return {1, math.floor((limit - (tat - now)) / period), 0, tat - now}
"#;

pub struct RedisLimits {
    /// Set by the background connector once the first connection is made; until then every
    /// check goes to memory at once (a Redis that was never reachable must cost a mint nothing).
    connection: Arc<OnceLock<ConnectionManager>>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    /// After a failure Redis is not tried again before this instant.
    retry_at: Mutex<Option<Instant>>,
    /// `host:port` of the URL, for log lines (never its password).
    pub host: String,
}

/// `host:port` of a Redis URL: what a log line may say of it.
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|url| {
            let host = url.host_str()?.to_owned();
            Some(format!("{host}:{}", url.port().unwrap_or(6379)))
        })
        .unwrap_or_else(|| "(unparsable URL)".to_owned())
}

impl RedisLimits {
    /// Parses `url` and starts connecting in the background (so this runs inside a Tokio
    /// runtime); `rediss://` URLs connect over TLS with the web PKI roots.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, BackendError> {
        // rustls (for rediss://) needs the process-wide crypto provider.
        neo_sessions_verify::install_crypto_provider();
        let client = redis::Client::open(url).map_err(|e| BackendError(e.to_string()))?;
        let connection = Arc::new(OnceLock::new());
        let host = host_of(url);
        tokio::spawn(connect_in_background(
            client,
            Arc::downgrade(&connection),
            timeout,
            host.clone(),
        ));
        Ok(Self {
            connection,
            script: redis::Script::new(GCRA),
            prefix: prefix.to_owned(),
            timeout,
            retry_at: Mutex::new(None),
            host,
        })
    }

    /// Waits up to `within` for the first connection (so a replica that starts next to a
    /// healthy Redis shares budgets from its first request); true once connected.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.connection.get().is_none() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// False for a second after a failure: requests then go to memory without waiting on Redis.
    pub fn available(&self) -> bool {
        let retry_at = self.retry_at.lock().unwrap_or_else(|p| p.into_inner());
        retry_at.is_none_or(|at| Instant::now() >= at)
    }

    pub fn back_off(&self) {
        let mut retry_at = self.retry_at.lock().unwrap_or_else(|p| p.into_inner());
        *retry_at = Some(Instant::now() + Duration::from_secs(1));
    }

    async fn run(&self, key: &str, quota: Quota, take: bool) -> Result<Decision, BackendError> {
        let Some(connection) = self.connection.get() else {
            return Err(BackendError("not connected to Redis yet".into()));
        };
        let mut connection = connection.clone();
        // The script counts in whole microseconds: a quota above one request per microsecond
        // (60,000,000 a minute) would cost 0 µs per request, and Redis refuses the expiry of 0
        // ms the script then sets (which sent every principal to memory for a second). Such a
        // quota is one per microsecond on Redis.
        let period_us = i64::try_from(quota.period().as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let mut invocation = self.script.key(format!("{}{key}", self.prefix));
        invocation
            .arg(period_us)
            .arg(quota.burst)
            .arg(if take { "1" } else { "0" });
        let invocation = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut connection);
        let (allowed, remaining, retry_us, reset_us) =
            tokio::time::timeout(self.timeout, invocation)
                .await
                .map_err(|_| BackendError("Redis did not answer in time".into()))?
                .map_err(|e| BackendError(e.to_string()))?;
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Ok(if allowed == 1 {
            Decision::Allowed {
                remaining: u32::try_from(remaining).unwrap_or(0),
                reset: micros(reset_us),
            }
        } else {
            Decision::Limited {
                retry_after: micros(retry_us),
            }
        })
    }
}

/// Makes the first connection, retrying with a logged back-off (1 s, doubling to 30 s) until it
/// succeeds or the limits are dropped. After that the connection manager reconnects by itself.
async fn connect_in_background(
    client: redis::Client,
    slot: std::sync::Weak<OnceLock<ConnectionManager>>,
    timeout: Duration,
    host: String,
) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(timeout.max(Duration::from_secs(1)))
        .set_response_timeout(timeout)
        .set_number_of_retries(0);
    let mut delay = Duration::from_secs(1);
    loop {
        if slot.strong_count() == 0 {
            return;
        }
        let attempt = tokio::time::timeout(
            timeout.max(Duration::from_secs(2)),
            ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await;
        match attempt {
            Ok(Ok(connection)) => {
                if let Some(slot) = slot.upgrade() {
                    let _ = slot.set(connection);
                    tracing::info!(redis = %host, "connected to Redis; rate limits are shared across replicas");
                }
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(redis = %host, %error, retry_in_seconds = delay.as_secs(), "cannot connect to Redis at {host}; rate limits use this process's memory meanwhile");
            }
            Err(_) => {
                tracing::warn!(redis = %host, retry_in_seconds = delay.as_secs(), "Redis at {host} did not accept a connection in time; rate limits use this process's memory meanwhile");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[async_trait]
impl LimitBackend for RedisLimits {
    async fn acquire(&self, key: &str, quota: Quota) -> Result<Decision, BackendError> {
        self.run(key, quota, true).await
    }

    async fn peek(&self, key: &str, quota: Quota) -> Result<Decision, BackendError> {
        self.run(key, quota, false).await
    }
}
