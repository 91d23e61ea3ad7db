//! GCRA buckets in Redis, one atomic Lua script per check, timed by Redis's own clock so that
//! replicas with skewed clocks share one budget.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

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
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    /// After a failure Redis is not tried again before this instant.
    retry_at: Mutex<Option<Instant>>,
}

impl RedisLimits {
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, BackendError> {
        let client = redis::Client::open(url).map_err(|e| BackendError(e.to_string()))?;
        Ok(Self {
            client,
            connection: OnceCell::new(),
            script: redis::Script::new(GCRA),
            prefix: prefix.to_owned(),
            timeout,
            retry_at: Mutex::new(None),
        })
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

    async fn connection(&self) -> Result<ConnectionManager, BackendError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        self.connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
            .map_err(|e| BackendError(e.to_string()))
    }

    async fn run(&self, key: &str, quota: Quota, take: bool) -> Result<Decision, BackendError> {
        let mut connection = self.connection().await?;
        let period_us = i64::try_from(quota.period().as_micros()).unwrap_or(i64::MAX);
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

#[async_trait]
impl LimitBackend for RedisLimits {
    async fn acquire(&self, key: &str, quota: Quota) -> Result<Decision, BackendError> {
        self.run(key, quota, true).await
    }

    async fn peek(&self, key: &str, quota: Quota) -> Result<Decision, BackendError> {
        self.run(key, quota, false).await
    }
}
