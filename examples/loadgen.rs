//! For the load benchmark (`bench/load.sh`): a load generator for the realistic workload, which
//! oha cannot make (its body is one fixed string). Each request picks a session by Zipf
//! popularity over a plan of sessions, a credential of that session's tenant (API keys and Entra
//! tokens mixed), and, for a share of requests, the tenant's agents as `allowed_agent_ids`.
//! Writes a JSON summary shaped like oha's (`summary.requestsPerSec`, `latencyPercentiles`,
//! `statusCodeDistribution`), so the same report reads both.
//!
//! ```sh
//! loadgen --plan plan.json --url http://127.0.0.1:18180/public-api/sessions \
//!   --duration 10 --connections 32 [--rate 4000] > out.json
//! loadgen --get http://127.0.0.1:18180/public-api/sessions/<jti> --bearer neo_sk_... --duration 10
//! loadgen --plan plan.json --url ... --requests 1000000   # stop after that many instead
//! loadgen --plan plan.json --url ... --sweep               # each session of the plan once, in order
//! loadgen --plan plan.json --url ... --idempotency-keys run1 # request n sends `Idempotency-Key: run1-n`
//! ```
//!
//! The plan: `{"sessions": [["s-1", "acme"], ...]` (most popular first), `"credentials":
//! {"acme": ["neo_sk_...", "eyJ..."]}`, `"agents": {"acme": [101, 102]}`, `"zipf_s": 1.1`,
//! `"agents_share": 0.2}`. With `--rate`, requests are scheduled at that rate and each latency
//! is measured from its scheduled time (no coordinated omission). Each second of the run also
//! counts its outcomes (status codes, and `connection`/`timeout` for requests that got no
//! answer), so a run that loses a replica midway shows when requests failed and how.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Plan {
    sessions: Vec<(String, String)>,
    credentials: HashMap<String, Vec<String>>,
    #[serde(default)]
    agents: HashMap<String, Vec<i64>>,
    zipf_s: f64,
    agents_share: f64,
}

/// What a worker needs to build requests: the plan, with the Zipf CDF over its sessions.
struct Workload {
    plan: Plan,
    cdf: Vec<f64>,
}

impl Workload {
    fn new(plan: Plan) -> anyhow::Result<Self> {
        anyhow::ensure!(!plan.sessions.is_empty(), "the plan has no sessions");
        let weights: Vec<f64> = (1..=plan.sessions.len())
            .map(|rank| 1.0 / (rank as f64).powf(plan.zipf_s))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        for (_, tenant) in &plan.sessions {
            anyhow::ensure!(
                plan.credentials.get(tenant).is_some_and(|c| !c.is_empty()),
                "no credential for tenant {tenant}"
            );
        }
        Ok(Self { plan, cdf })
    }

    /// The credential and body of request `n`: the session by Zipf rank (or the `n`th session,
    /// sweeping), the rest by uniform draws.
    fn request(&self, rng: &mut Rng, n: u64, sweep: bool) -> (&str, String) {
        let rank = if sweep {
            (n as usize).min(self.cdf.len() - 1)
        } else {
            let u = rng.next_f64();
            self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
        };
        let (session, tenant) = &self.plan.sessions[rank];
        let credentials = &self.plan.credentials[tenant];
        let credential = &credentials[(rng.next_u64() % credentials.len() as u64) as usize];
        let mut body = json!({"session_id": session, "end_user": format!("u-{}", n % 1000)});
        if rng.next_f64() < self.plan.agents_share {
            if let Some(agents) = self.plan.agents.get(tenant) {
                body["allowed_agent_ids"] = json!(agents);
            }
        }
        (credential, body.to_string())
    }
}

/// xorshift64*: enough for picking requests, and no dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Args {
    plan: Option<String>,
    url: String,
    get: bool,
    duration: Duration,
    connections: usize,
    rate: Option<f64>,
    bearer: Option<String>,
    requests: Option<u64>,
    sweep: bool,
    idempotency_prefix: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        plan: None,
        url: String::new(),
        get: false,
        duration: Duration::from_secs(10),
        connections: 32,
        rate: None,
        bearer: None,
        requests: None,
        sweep: false,
        idempotency_prefix: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--plan" => args.plan = Some(value()?),
            "--url" => args.url = value()?,
            "--get" => {
                args.url = value()?;
                args.get = true;
            }
            "--duration" => args.duration = Duration::from_secs_f64(value()?.parse()?),
            "--connections" => args.connections = value()?.parse()?,
            "--rate" => args.rate = Some(value()?.parse()?),
            "--bearer" => args.bearer = Some(value()?),
            "--requests" => args.requests = Some(value()?.parse()?),
            "--sweep" => args.sweep = true,
            "--idempotency-keys" => args.idempotency_prefix = Some(value()?),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(!args.url.is_empty(), "--url or --get is required");
    anyhow::ensure!(
        args.get || args.plan.is_some(),
        "--plan is required to mint"
    );
    Ok(args)
}

/// One answered request: when it was due (from the start), how long it took, and whether its
/// credential was an API key (else an Entra token; `--get` counts as a key).
struct Sample {
    due: Duration,
    latency: Duration,
    api_key: bool,
}

#[derive(Default)]
struct Tally {
    samples: Vec<Sample>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    /// Outcomes per second of the schedule: status code or error kind → count.
    outcomes: BTreeMap<u64, BTreeMap<String, u64>>,
}

/// p50, p99 and p99.9 of `latencies` (sorted here), in seconds.
fn percentiles(latencies: &mut [Duration]) -> serde_json::Value {
    latencies.sort_unstable();
    let n = latencies.len();
    let at = |p: f64| {
        (n > 0).then(|| {
            let index = ((p / 100.0) * n as f64).ceil() as usize;
            latencies[index.clamp(1, n) - 1].as_secs_f64()
        })
    };
    json!({"p50": at(50.0), "p99": at(99.0), "p99.9": at(99.9)})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(args()?);
    let workload = match &args.plan {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
            Some(Arc::new(Workload::new(serde_json::from_str(&text)?)?))
        }
        None => None,
    };
    neo_sessions_verify::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(10))
        .build()?;
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    // A count of requests (or a sweep) runs until done; otherwise the duration bounds the run.
    let limit = match (&workload, args.sweep) {
        (Some(workload), true) => Some(workload.plan.sessions.len() as u64),
        _ => args.requests,
    };
    let deadline = match limit {
        Some(_) => started + Duration::from_secs(24 * 3600),
        None => started + args.duration,
    };
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut workers = Vec::new();
    for worker in 0..args.connections {
        let (args, workload, client, next, tally) = (
            Arc::clone(&args),
            workload.clone(),
            client.clone(),
            Arc::clone(&next),
            Arc::clone(&tally),
        );
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(
                0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9)
            );
            let mut local = Tally::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|limit| n >= limit) {
                    break;
                }
                // With a rate, request n is due at n / rate; latency counts from then.
                let due = match args.rate {
                    Some(rate) => started + Duration::from_secs_f64(n as f64 / rate),
                    None => Instant::now(),
                };
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let mut api_key = true;
                let request = match &workload {
                    Some(workload) => {
                        let (credential, body) = workload.request(&mut rng, n, args.sweep);
                        api_key = credential.starts_with("neo_sk_");
                        let request = client
                            .post(&args.url)
                            .bearer_auth(credential)
                            .header("content-type", "application/json")
                            .body(body);
                        match &args.idempotency_prefix {
                            Some(prefix) => {
                                request.header("idempotency-key", format!("{prefix}-{n}"))
                            }
                            None => request,
                        }
                    }
                    None => match &args.bearer {
                        Some(bearer) => client.get(&args.url).bearer_auth(bearer),
                        None => client.get(&args.url),
                    },
                };
                match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        *local.statuses.entry(status).or_default() += 1;
                        *local
                            .outcomes
                            .entry((due - started).as_secs())
                            .or_default()
                            .entry(status.to_string())
                            .or_default() += 1;
                        local.samples.push(Sample {
                            due: due - started,
                            latency: due.elapsed(),
                            api_key,
                        });
                    }
                    Err(error) => {
                        let kind = if error.is_timeout() {
                            "timeout"
                        } else {
                            "connection"
                        };
                        *local.errors.entry(kind.to_owned()).or_default() += 1;
                        *local
                            .outcomes
                            .entry((due - started).as_secs())
                            .or_default()
                            .entry(kind.to_owned())
                            .or_default() += 1;
                    }
                }
            }
            let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
            tally.samples.extend(local.samples);
            for (status, count) in local.statuses {
                *tally.statuses.entry(status).or_default() += count;
            }
            for (error, count) in local.errors {
                *tally.errors.entry(error).or_default() += count;
            }
            for (second, outcomes) in local.outcomes {
                let into = tally.outcomes.entry(second).or_default();
                for (outcome, count) in outcomes {
                    *into.entry(outcome).or_default() += count;
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    let latencies = |keep: &dyn Fn(&Sample) -> bool| -> Vec<Duration> {
        tally
            .samples
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.latency)
            .collect()
    };
    // Where the tail comes from: each credential kind alone, and each second of the run alone
    // (a tail spread evenly is the service's; one in a few seconds is a stall).
    let by_credential = json!({
        "api_key": percentiles(&mut latencies(&|s| s.api_key)),
        "entra": percentiles(&mut latencies(&|s| !s.api_key)),
    });
    let seconds = tally
        .samples
        .iter()
        .map(|s| s.due.as_secs())
        .chain(tally.outcomes.keys().copied())
        .max()
        .map_or(0, |m| m + 1);
    let by_second: Vec<_> = (0..seconds)
        .map(|second| {
            let mut in_second = latencies(&|s| s.due.as_secs() == second);
            let count = in_second.len();
            let mut p = percentiles(&mut in_second);
            p["count"] = json!(count);
            p["outcomes"] = json!(tally.outcomes.get(&second).cloned().unwrap_or_default());
            p
        })
        .collect();
    let total: u64 = tally.statuses.values().sum();
    let ok: u64 = tally
        .statuses
        .iter()
        .filter(|(status, _)| (200..300).contains(*status))
        .map(|(_, count)| count)
        .sum();
    let summary = json!({
        "summary": {
            "requestsPerSec": total as f64 / elapsed,
            "successRate": if total > 0 { ok as f64 / total as f64 } else { 0.0 },
            "total": elapsed,
            // When second 0 of the per-second figures began (Unix time), to line them up
            // with events outside the run.
            "startedUnix": started_unix,
        },
        "latencyPercentiles": percentiles(&mut latencies(&|_| true)),
        "latencyPercentilesByCredential": by_credential,
        "latencyPercentilesBySecond": by_second,
        "statusCodeDistribution": tally.statuses.iter()
            .map(|(status, count)| (status.to_string(), json!(count)))
            .collect::<serde_json::Map<_, _>>(),
        "errorDistribution": tally.errors,
    });
    println!("{summary}");
    Ok(())
}
