//! The `neo-sessions` command line: serve, migrate, seed, directory import/export, api-key,
//! healthcheck.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    app::{connect_store, App},
    auth::{
        api_key,
        principal::{Scope, Scopes},
    },
    config::{Config, FlagValue, Loaded, Origin, Provenance, SigningAlgorithm},
    directory,
    seed::Fixture,
    signing,
    store::NewApiKey,
};

#[derive(Debug, Parser)]
#[command(
    name = "neo-sessions",
    version,
    about = "Mints short-lived, session-bound JWTs"
)]
pub struct Cli {
    /// Config file (default: config/default.toml when it exists). NEO_* variables override it
    /// (every key and its variable: docs/operating.md, or `neo-sessions config show`).
    #[arg(long, global = true, value_name = "FILE", env = "NEO_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve {
        /// Seed the example fixture (idempotent) and print a ready-to-paste curl walk-through.
        #[arg(long)]
        demo: bool,
        /// Listen on ADDR (an IP address and a port, e.g. 0.0.0.0:8080): server.listen, over
        /// NEO_LISTEN and the config file.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Apply pending database migrations (NEO_DATABASE_URL; the embedded database by default).
    Migrate {
        /// Only show each migration and whether it is applied.
        #[arg(long)]
        status: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Upsert tenants, end companies, agents, sessions and API keys from a JSON fixture.
    Seed { file: PathBuf },
    /// The directory (tenants, end companies, agents, sessions) in bulk, as JSON Lines.
    #[command(subcommand)]
    Directory(DirectoryCommand),
    /// Manage API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Per-tenant overrides of the per-principal rate limit.
    #[command(subcommand)]
    RateLimit(RateLimitCommand),
    /// Signing keys in the database: rotate, list, import a PEM file, discard a next key.
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
    /// The effective configuration (defaults < file < NEO_* variables).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Exit 0 when the local server's /public-api/health answers 200 (for container health checks).
    Healthcheck,
    /// Work with minted tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Upsert the rows of a JSON Lines file (`-`: stdin), one `{"tenant"|"end_company"|"agent"|
    /// "session": {...}}` per line, in transactions of 5,000 lines. A line that is not
    /// understood or breaks a rule is refused (line number and reason on stdout), the rest is
    /// imported. Exit 0: every line imported; 1: some refused (or the database failed); 2: the
    /// file cannot be read.
    Import { file: PathBuf },
    /// Write every row of the directory as JSON Lines (the format `import` reads) to FILE, or to
    /// stdout.
    Export { file: Option<PathBuf> },
}

#[derive(Debug, Subcommand)]
pub enum RateLimitCommand {
    /// Give every principal of a tenant its own quota (replicas pick it up within 30 s).
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        per_minute: u32,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        burst: u32,
    },
    /// Return a tenant to the configured default.
    Clear {
        #[arg(long)]
        tenant: String,
    },
    /// Every tenant with an override.
    List {
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, secrets redacted, and where each value came from: the
    /// built-in default, the config file, an environment variable or a flag. `json` (the
    /// default): the configuration as one document on stdout, the file read and the keys not at
    /// their default on stderr; `text`: every key, its value and its origin.
    Show {
        #[arg(long, value_enum, default_value = "json")]
        output: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum SigningKeyCommand {
    /// Add a `next` key: published at once, signing after signing.lead_seconds
    /// (NEO_SIGNING_KEY_LEAD_SECONDS); the current key is then retired.
    Rotate {
        /// The new key's algorithm (default: signing.algorithm, NEO_SIGNING_ALGORITHM).
        #[arg(long, value_enum)]
        algorithm: Option<AlgorithmArg>,
    },
    /// Every key with its state (next, active, retired, removed, withdrawn) and transition times.
    List {
        /// `json` for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Import a PKCS#8 PEM key (e.g. the file NEO_SIGNING_KEY_FILE named): the first key signs
    /// at once, a later one after the lead time, like a rotation.
    Import {
        file: PathBuf,
        /// The key's algorithm (default: signing.algorithm, NEO_SIGNING_ALGORITHM).
        #[arg(long, value_enum)]
        algorithm: Option<AlgorithmArg>,
    },
    /// Delete a `next` key that has not started signing (e.g. one sealed under the wrong
    /// key-encryption key); replicas stop publishing it at their next reload. Needs no
    /// key-encryption key. Active and retired keys are refused.
    Discard {
        /// The key's kid (see `signing-key list`).
        kid: String,
    },
    /// Emergency: withdraw a (compromised) key now. In one transaction it stops signing, leaves
    /// the JWKS and every live token it signed is revoked (the revocation feed carries them);
    /// if it was the key signing, the `next` key signs from now on, or a key generated now
    /// (which needs the key-encryption key). Every replica follows at once.
    Withdraw {
        /// The key's kid (see `signing-key list`).
        kid: String,
        /// The generated successor's algorithm (default: the withdrawn key's).
        #[arg(long, value_enum)]
        algorithm: Option<AlgorithmArg>,
        /// `json` for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AlgorithmArg {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
    #[value(name = "RS256")]
    Rs256,
}

impl From<AlgorithmArg> for SigningAlgorithm {
    fn from(arg: AlgorithmArg) -> Self {
        match arg {
            AlgorithmArg::Es256 => Self::ES256,
            AlgorithmArg::EdDsa => Self::EdDSA,
            AlgorithmArg::Rs256 => Self::RS256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token's header and claims (NOT a verification: verifiers use the JWKS). Reads the
    /// token, or a whole mint response, from the argument or from stdin.
    Decode {
        token: Option<String>,
        /// `json`: one document {"header": ..., "claims": ...} (for jq).
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key; the key itself is printed once, on stdout.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// Confirms a key of the platform tenant that can mint or manage tokens (it can do so in
        /// other tenants' Neo Support sessions); refused for any other tenant.
        #[arg(long)]
        platform: bool,
        /// What the key may do, repeatable or comma-separated: sessions:mint, tokens:manage,
        /// revocations:read (a verifier's key: the feed and nothing else), directory:read,
        /// directory:write (the platform tenant only). Default: the first four.
        #[arg(long = "scope", value_name = "SCOPE", value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// List a tenant's keys (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Revoke a key by id; every replica refuses it as soon as the change notification reaches
    /// it (milliseconds on PostgreSQL, at most 0.2 s on the embedded database). Were a replica's
    /// notification connection to die unnoticed, NEO_API_KEY_CACHE_SECONDS (5 s) is the bound.
    Revoke { id: String },
}

impl Cli {
    /// The settings given as flags, the top configuration layer.
    pub fn config_flags(&self) -> Vec<FlagValue> {
        match &self.command {
            Command::Serve {
                listen: Some(listen),
                ..
            } => vec![FlagValue {
                flag: "--listen",
                key: "server.listen",
                value: listen.clone(),
            }],
            _ => Vec::new(),
        }
    }
}

pub async fn run(cli: Cli, loaded: Loaded) -> anyhow::Result<ExitCode> {
    let Loaded { config, provenance } = loaded;
    match cli.command {
        Command::Serve { demo, .. } => serve_command(config, &provenance, demo).await,
        Command::Migrate { status, output } => migrate(&config, status, output).await,
        Command::Seed { file } => seed(&config, file).await,
        Command::Directory(command) => directory_command(&config, command).await,
        Command::ApiKey(command) => api_key_command(&config, command).await,
        Command::RateLimit(command) => rate_limit_command(&config, command).await,
        Command::SigningKey(command) => signing_key_command(&config, command).await,
        Command::Config(ConfigCommand::Show { output }) => {
            config_show(&config, &provenance, output)
        }
        Command::Healthcheck => healthcheck(&config).await,
        Command::Token(TokenCommand::Decode { token, output }) => decode_token(token, output),
        Command::Completions { shell } => {
            print!("{}", completion_script(shell)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The binary's name, as shells complete it.
const BIN_NAME: &str = "neo-sessions";

/// A shell's completion script. clap_complete's bash script spells the state of a subcommand of
/// a hyphenated binary two ways (clap-rs/clap#6421): the loop that walks the words builds
/// `neo__sessions__subcmd__signing__subcmd__key`, the `case` arms it is matched against say
/// `neo__subcmd__sessions__subcmd__…`, so nothing below the top level ever completed. The arms
/// are respelled the way the loop spells them (a no-op once clap_complete is fixed).
pub fn completion_script(shell: clap_complete::Shell) -> anyhow::Result<String> {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, BIN_NAME, &mut script);
    let script = String::from_utf8(script).context("the completion script is not UTF-8")?;
    if shell != clap_complete::Shell::Bash {
        return Ok(script);
    }
    let escaped = BIN_NAME.replace('-', "__");
    let misspelled = BIN_NAME.replace('-', "__subcmd__");
    Ok(script.replace(
        &format!("{misspelled}__subcmd__"),
        &format!("{escaped}__subcmd__"),
    ))
}

/// `config show`: the configuration (secrets redacted) and where each value came from.
fn config_show(
    config: &Config,
    provenance: &Provenance,
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let file = match &provenance.file {
        Some(path) => format!("config file: {}", path.display()),
        None => format!(
            "config file: none (no --config, NEO_CONFIG or {})",
            crate::config::DEFAULT_CONFIG_FILE
        ),
    };
    let shown = serde_json::to_value(config)?;
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        // The document stays what scripts read; where it came from goes beside it.
        eprintln!("{file}");
        for (key, origin) in provenance.keys() {
            if origin != Origin::Default {
                eprintln!("{key}: from {origin}");
            }
        }
        eprintln!("every other key: its built-in default (`config show --output text` lists all)");
        return Ok(ExitCode::SUCCESS);
    }
    println!("# {file}");
    println!("{:<40} {:<44} FROM", "KEY", "VALUE");
    for (key, origin) in provenance.keys() {
        let (section, field) = key.split_once('.').unwrap_or((&key, ""));
        let value = match &shown[section][field] {
            serde_json::Value::Null => "(unset)".to_owned(),
            serde_json::Value::String(text) => format!("{text:?}"),
            other => other.to_string(),
        };
        println!("{key:<40} {value:<44} {}", origin.short());
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve_command(
    config: Config,
    provenance: &Provenance,
    demo: bool,
) -> anyhow::Result<ExitCode> {
    if demo && config.api_key.env != DEMO_KEY_ENV {
        bail!("--demo seeds keys that are published in the README; it runs only with NEO_API_KEY_ENV=test");
    }
    let open_files = crate::server::raise_open_files_limit();
    if let Some(limit) = open_files {
        // Each connection holds a descriptor; the database pool and logs need a few more.
        let headroom = u64::from(config.database.max_connections.get()) + 64;
        if (config.server.max_connections.get() as u64).saturating_add(headroom) > limit {
            tracing::warn!(
                open_files_limit = limit,
                max_connections = config.server.max_connections,
                "server.max_connections is close to the open-files limit; accepts may fail before the cap refuses them"
            );
        }
    }
    let (database_backend, database) = describe_database(&config.database_url());
    let key_encryption_key = key_encryption_key_origin(&config, provenance);
    let key_env = config.api_key.env.clone();
    let metrics_apart = config.server.metrics_listen.is_some();
    let built = if demo {
        App::build_demo(config).await
    } else {
        App::build(config).await
    };
    let app = match built {
        Ok(app) => app,
        Err(error) => {
            // Which setting chose the address, so the operator knows what to change.
            if let Some(listen) = error.downcast_ref::<crate::app::ListenError>() {
                bail!(
                    "{listen} ({} came from {})",
                    listen.key,
                    provenance.origin(listen.key)
                );
            }
            return Err(error);
        }
    };
    let address = app.address();
    let state = app.state();
    if demo {
        let prepared = Fixture::from_json(DEMO_FIXTURE)?.prepare(DEMO_KEY_ENV)?;
        state
            .store
            .apply_seed(&prepared.plan)
            .await
            .context("cannot seed the demo fixture")?;
    }
    let kid = state
        .issuer
        .ring()
        .active(chrono::Utc::now().timestamp())
        .map(|k| k.key.kid().to_owned());
    tracing::info!(
        %address,
        kid,
        database_backend,
        database,
        key_env,
        key_encryption_key,
        version = env!("CARGO_PKG_VERSION"),
        "neo-sessions listening"
    );
    if demo {
        let kek_generated = key_encryption_key.starts_with("generated");
        println!(
            "{}",
            demo_banner(&address.to_string(), metrics_apart, kek_generated)
        );
    }
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("shut down");
    Ok(ExitCode::SUCCESS)
}

/// The database backend and where it is, without credentials: `("postgres",
/// "db.internal:5432/neo_sessions")`, `("sqlite", "data/neo-sessions.db")`.
fn describe_database(url: &str) -> (&'static str, String) {
    use crate::config::DatabaseBackend;
    match DatabaseBackend::of_url(url) {
        Some(DatabaseBackend::Sqlite) => {
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            let path = path.split('?').next().unwrap_or_default();
            ("sqlite", path.to_owned())
        }
        Some(DatabaseBackend::Postgres) => {
            let location = url::Url::parse(url)
                .map(|url| {
                    let host = url.host_str().unwrap_or("(socket)");
                    let port = url.port().unwrap_or(5432);
                    format!("{host}:{port}{}", url.path())
                })
                .unwrap_or_else(|_| "(unparsable URL)".to_owned());
            ("postgres", location)
        }
        None => ("unknown", String::new()),
    }
}

/// Where the key-encryption key comes from, for the start-up line (never the key).
fn key_encryption_key_origin(config: &Config, provenance: &Provenance) -> String {
    let signing = &config.signing;
    if signing.key_file.is_some() {
        return "none: signing.key_file is the one signing key".to_owned();
    }
    if signing.key_encryption_key.is_some() {
        return provenance.origin("signing.key_encryption_key").to_string();
    }
    if let Some(path) = &signing.key_encryption_key_file {
        return format!("file {}", path.display());
    }
    format!(
        "generated in the data directory: {}",
        crate::tokens::seal::Kek::generated_path(&config.data.dir).display()
    )
}

/// The example fixture; its keys are `neo_sk_test_…`, inert unless `api_key.env` is `test`.
const DEMO_FIXTURE: &str = include_str!("../config/seed.example.json");
const DEMO_KEY_ENV: &str = "test";
const DEMO_KEY: &str = "neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd";
const DEMO_SESSION: &str = "s-acme-1";

fn demo_banner(address: &str, metrics_apart: bool, kek_generated: bool) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "neo-sessions".to_owned());
    let mint = format!(
        "curl -s http://{address}/public-api/sessions -H 'Authorization: Bearer {DEMO_KEY}' -H 'Content-Type: application/json' -d '{{\"session_id\": \"{DEMO_SESSION}\", \"end_user\": \"demo-user\"}}'"
    );
    let metrics = if metrics_apart {
        "on server.metrics_listen (NEO_METRICS_LISTEN)".to_owned()
    } else {
        format!("http://{address}/metrics")
    };
    let kek = if kek_generated {
        "\nThe signing keys are kept in the embedded database, encrypted with a key-encryption key\n\
         (KEK) generated in the data directory on the first start: fine for this demo on one\n\
         machine. In production every replica gets the same KEK from a secret:\n\
         NEO_KEY_ENCRYPTION_KEY (make one with `openssl rand -base64 32`) or\n\
         NEO_KEY_ENCRYPTION_KEY_FILE; see docs/operating.md.\n"
    } else {
        ""
    };
    format!(
        "\nneo-sessions demo is listening on http://{address}\n\
         \x20 demo API key:    {DEMO_KEY}  (tenant acme)\n\
         \x20 demo session id: {DEMO_SESSION}\n\
         \x20 API reference:   http://{address}/docs\n\
         \x20 metrics:         {metrics}\n\n\
         Mint a token:\n  {mint}\n\n\
         Mint one and decode it:\n  {mint} | {exe} token decode\n{kek}"
    )
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

async fn seed(config: &Config, file: PathBuf) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let prepared = Fixture::from_json(&text)?.prepare(&config.api_key.env)?;
    let store = connect_store(config).await?;
    let outcome = store
        .apply_seed(&prepared.plan)
        .await
        .context("cannot apply the fixture (nothing was written)")?;
    let plan = &prepared.plan;
    println!(
        "seeded {} tenants, {} end companies, {} agents, {} sessions, {} API keys",
        plan.tenants.len(),
        plan.end_companies.len(),
        plan.agents.len(),
        plan.sessions.len(),
        plan.api_keys.len()
    );
    for id in &outcome.created_api_keys {
        if let Some(secret) = prepared.generated_secrets.get(id) {
            println!("API key {id}: {secret}  (shown once; store it now)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit code of an import some of whose lines were refused, and of an unreadable file.
const EXIT_REFUSED: u8 = 1;
const EXIT_UNREADABLE: u8 = 2;

async fn directory_command(config: &Config, command: DirectoryCommand) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    match command {
        DirectoryCommand::Import { file } => {
            let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()))
            } else {
                match std::fs::File::open(&file) {
                    Ok(opened) => Box::new(std::io::BufReader::with_capacity(1 << 20, opened)),
                    Err(error) => {
                        eprintln!("neo-sessions: cannot read {}: {error}", file.display());
                        return Ok(ExitCode::from(EXIT_UNREADABLE));
                    }
                }
            };
            let store = connect_store(config).await?;
            let started = std::time::Instant::now();
            let mut stdout = std::io::stdout();
            let outcome = directory::import::import(
                &store,
                input,
                |refusal| {
                    let _ = writeln!(stdout, "line {}: {}", refusal.line, refusal.reason);
                },
                |so_far| {
                    eprintln!(
                        "directory import: {} lines read, {} rows imported, {} refused ({:.1} s)",
                        so_far.lines,
                        so_far.imported(),
                        so_far.refused(),
                        started.elapsed().as_secs_f64()
                    );
                },
            )
            .await;
            let summary = match outcome {
                Ok(summary) => summary,
                Err(error @ directory::import::ImportError::Read { .. }) => {
                    eprintln!("neo-sessions: {}: {error}", file.display());
                    return Ok(ExitCode::from(EXIT_UNREADABLE));
                }
                Err(error) => return Err(error.into()),
            };
            println!(
                "{:<14} {:>10} {:>10} {:>10} {:>10}",
                "", "created", "updated", "unchanged", "refused"
            );
            for (kind, c) in summary.kinds() {
                println!(
                    "{kind:<14} {:>10} {:>10} {:>10} {:>10}",
                    c.created, c.updated, c.unchanged, c.refused
                );
            }
            if summary.unparsed > 0 {
                println!("{:<14} {:>43}", "not understood", summary.unparsed);
            }
            println!("tokens revoked: {}", summary.tokens_revoked);
            println!(
                "{} lines in {:.1} s: {} rows imported, {} lines refused",
                summary.lines,
                started.elapsed().as_secs_f64(),
                summary.imported(),
                summary.refused()
            );
            Ok(if summary.refused() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_REFUSED)
            })
        }
        DirectoryCommand::Export { file } => {
            let store = connect_store(config).await?;
            let counts = match &file {
                Some(path) => {
                    let created = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut output = std::io::BufWriter::with_capacity(1 << 20, created);
                    directory::import::export(&store, &mut output).await?
                }
                None => {
                    let mut output = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
                    directory::import::export(&store, &mut output).await?
                }
            };
            eprintln!(
                "exported {} tenants, {} end companies, {} agents, {} sessions",
                counts.tenants, counts.end_companies, counts.agents, counts.sessions
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn api_key_command(config: &Config, command: ApiKeyCommand) -> anyhow::Result<ExitCode> {
    let store = connect_store(config).await?;
    match command {
        ApiKeyCommand::Create {
            tenant,
            name,
            platform,
            scopes,
        } => {
            let scopes = if scopes.is_empty() {
                Scopes::LEGACY
            } else {
                match Scopes::parse_names(scopes.iter().map(String::as_str)) {
                    Ok(scopes) => scopes,
                    Err(why) => bail!("--scope: {why}"),
                }
            };
            let Some(row) = store.find_tenant(&tenant).await? else {
                bail!("no tenant {tenant:?}");
            };
            if scopes.contains(Scope::WriteDirectory) && !row.platform {
                bail!(
                    "--scope directory:write is for the platform tenant's keys only; tenant {tenant:?} is not the platform"
                );
            }
            // A platform key that can mint or manage tokens acts in other tenants: confirm it.
            let reaches_other_tenants =
                scopes.contains(Scope::Mint) || scopes.contains(Scope::ManageTokens);
            match (row.platform, platform) {
                (true, false) if reaches_other_tenants => bail!(
                    "tenant {tenant:?} is the platform tenant: a key of it with {} can act in other tenants' Neo Support sessions; pass --platform to confirm",
                    scopes.to_stored()
                ),
                (false, true) => bail!("tenant {tenant:?} is not a platform tenant; drop --platform"),
                _ => {}
            }
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            let secret = api_key::generate(&config.api_key.env)?;
            let id = api_key::generate_id()?;
            store
                .create_api_key(&NewApiKey {
                    id: id.clone(),
                    tenant_id: row.id,
                    name,
                    key_hash: api_key::hash(&secret),
                    scopes,
                })
                .await?;
            eprintln!(
                "created API key {id} for tenant {tenant} with scopes {}; the key is shown once, store it now:",
                scopes.to_stored()
            );
            println!("{secret}");
            Ok(ExitCode::SUCCESS)
        }
        ApiKeyCommand::List { tenant, output } => {
            if store.find_tenant(&tenant).await?.is_none() {
                bail!("no tenant {tenant:?}");
            }
            let keys = store.list_api_keys(&tenant).await?;
            if output == OutputFormat::Json {
                let keys: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id, "tenant_id": k.tenant_id, "name": k.name,
                            "created_at": k.created_at, "last_used_at": k.last_used_at,
                            "revoked_at": k.revoked_at,
                            "scopes": k.scopes().iter().map(|s| s.name()).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&keys)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<12} {:<24} {:<20} {:<20} {:<20} SCOPES",
                "ID", "TENANT", "NAME", "CREATED", "LAST USED", "REVOKED"
            );
            for k in keys {
                println!(
                    "{:<20} {:<12} {:<24} {:<20} {:<20} {:<20} {}",
                    k.id,
                    k.tenant_id,
                    k.name,
                    time(Some(k.created_at)),
                    time(k.last_used_at),
                    time(k.revoked_at),
                    k.scopes().to_stored()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiKeyCommand::Revoke { id } => match store.revoke_api_key(&id).await? {
            None => {
                eprintln!("no API key {id:?}");
                Ok(ExitCode::FAILURE)
            }
            Some(true) => {
                println!("revoked {id}");
                Ok(ExitCode::SUCCESS)
            }
            Some(false) => {
                println!("{id} was already revoked");
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}

async fn rate_limit_command(
    config: &Config,
    command: RateLimitCommand,
) -> anyhow::Result<ExitCode> {
    let store = connect_store(config).await?;
    let (tenant, limit) = match command {
        RateLimitCommand::Set {
            tenant,
            per_minute,
            burst,
        } => (tenant, Some((per_minute, burst))),
        RateLimitCommand::Clear { tenant } => (tenant, None),
        RateLimitCommand::List { output } => {
            let limits = store.list_tenant_rate_limits().await?;
            if output == OutputFormat::Json {
                let limits: Vec<serde_json::Value> = limits
                    .iter()
                    .map(|(tenant, per_minute, burst)| {
                        serde_json::json!({"tenant_id": tenant, "per_minute": per_minute, "burst": burst})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&limits)?);
            } else {
                println!("{:<24} {:>10} {:>8}", "TENANT", "PER MINUTE", "BURST");
                for (tenant, per_minute, burst) in limits {
                    println!("{tenant:<24} {per_minute:>10} {burst:>8}");
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if !store.set_tenant_rate_limit(&tenant, limit).await? {
        bail!("no tenant {tenant:?}");
    }
    match limit {
        Some((per_minute, burst)) => println!("tenant {tenant}: {per_minute}/min, burst {burst}"),
        None => println!("tenant {tenant}: the configured default"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A time in listings, `-` for none.
fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

async fn migrate(config: &Config, status: bool, output: OutputFormat) -> anyhow::Result<ExitCode> {
    if !status {
        let store = connect_store(config).await?;
        store.migrate().await.context("cannot apply migrations")?;
        println!("migrations applied");
        return Ok(ExitCode::SUCCESS);
    }
    // Look without changing anything: no database is created, nothing migrated.
    let url = config.database_url();
    let shown = crate::config::redact_url(&url);
    let exists = crate::store::database_exists(&url)
        .await
        .with_context(|| format!("cannot reach the database server of {shown}"))?;
    let migrations = if exists {
        let store = crate::store::connect(&url, 1)
            .await
            .with_context(|| format!("cannot connect to the database {shown}"))?;
        store.migration_status().await?
    } else {
        eprintln!(
            "the database {shown} does not exist yet: every migration is pending (`migrate`, or `serve` with server.migrate_on_start, creates it)"
        );
        crate::store::migrations_of_a_new_database(&url)?
    };
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&migrations)?);
    } else {
        for m in &migrations {
            let state = if m.applied { "applied" } else { "pending" };
            println!("{:<16} {state:<8} {}", m.version, m.description);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn signing_key_command(
    config: &Config,
    command: SigningKeyCommand,
) -> anyhow::Result<ExitCode> {
    let algorithm = |arg: Option<AlgorithmArg>| arg.map_or(config.signing.algorithm, Into::into);
    // A command that seals a key reads the key-encryption key before it touches the database:
    // without one (off the embedded database) it writes nothing.
    match command {
        SigningKeyCommand::Rotate { algorithm: arg } => {
            let kek = signing::key_encryption_key(config)?;
            let store = connect_store(config).await?;
            let (kid, activates_at) =
                signing::rotate(config, store.as_ref(), &kek, algorithm(arg)).await?;
            println!(
                "added key {kid}: published now, signs from {} (replicas pick it up within {} s)",
                activates_at.format("%Y-%m-%dT%H:%M:%SZ"),
                config.signing.reload_seconds
            );
        }
        SigningKeyCommand::Import {
            file,
            algorithm: arg,
        } => {
            let kek = signing::key_encryption_key(config)?;
            let store = connect_store(config).await?;
            let (kid, activates_at) =
                signing::import(config, store.as_ref(), &kek, &file, algorithm(arg)).await?;
            println!(
                "imported {} as key {kid}: signs from {}",
                file.display(),
                activates_at.format("%Y-%m-%dT%H:%M:%SZ")
            );
        }
        SigningKeyCommand::Discard { kid } => {
            let store = connect_store(config).await?;
            let would_have_signed_from = signing::discard(config, store.as_ref(), &kid).await?;
            println!(
                "discarded key {kid} (it would have signed from {}); replicas stop publishing it within {} s",
                would_have_signed_from.format("%Y-%m-%dT%H:%M:%SZ"),
                config.signing.reload_seconds
            );
        }
        SigningKeyCommand::Withdraw {
            kid,
            algorithm: arg,
            output,
        } => {
            // Needed only when a successor must be checked or sealed (the key signs now): its
            // absence is reported then, and nothing is written.
            let kek = signing::key_encryption_key(config);
            let store = connect_store(config).await?;
            let done =
                signing::withdraw(config, store.as_ref(), kek, &kid, arg.map(Into::into)).await?;
            if output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&done)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "withdrew key {kid} (it was {}) at {}: no longer published nor signing",
                done.was,
                done.withdrawn_at.format("%Y-%m-%dT%H:%M:%SZ")
            );
            match &done.successor {
                Some(successor) if done.successor_generated => {
                    println!("key {successor} was generated and signs from now on")
                }
                Some(successor) => {
                    println!(
                        "key {successor} (the next key) was brought forward and signs from now on"
                    )
                }
                None => println!("the key signing now is unchanged"),
            }
            println!(
                "revoked {} live token(s) it had signed: they are in the revocation feed",
                done.revoked_tokens
            );
            println!(
                "replicas follow on the change feed at once (at the latest within {} s); verify: GET /.well-known/jwks.json no longer lists {kid}",
                config.signing.reload_seconds
            );
        }
        SigningKeyCommand::List { output } => {
            let store = connect_store(config).await?;
            let keys = signing::list(config, store.as_ref()).await?;
            if output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<44} {:<6} {:<8} {:<20} {:<20} {:<20} REMOVED",
                "KID", "ALG", "STATE", "CREATED", "SIGNS FROM", "RETIRED"
            );
            for k in keys {
                println!(
                    "{:<44} {:<6} {:<8} {:<20} {:<20} {:<20} {}",
                    k.kid,
                    k.algorithm,
                    k.state,
                    time(Some(k.created_at)),
                    time(Some(k.activates_at)),
                    time(k.retired_at),
                    time(k.removed_at)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn decode_token(token: Option<String>, output: OutputFormat) -> anyhow::Result<ExitCode> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let input = match token {
        Some(token) => token,
        None => std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?,
    };
    let input = input.trim();
    // A whole mint response is accepted too, so `curl … | neo-sessions token decode` works.
    let token = match serde_json::from_str::<serde_json::Value>(input) {
        Ok(response) => match response["data"]["token"].as_str() {
            Some(token) => token.to_owned(),
            None => bail!("the JSON has no data.token (is it an error response?): {response}"),
        },
        Err(_) => input.to_owned(),
    };
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not a JWT: expected three dot-separated parts");
    };
    let decode = |name: &str, part: &str| -> anyhow::Result<serde_json::Value> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .with_context(|| format!("the {name} is not base64url"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("the {name} is not JSON"))
    };
    let header = decode("header", header)?;
    let claims = decode("claims", claims)?;
    if output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"header": header, "claims": claims}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("header: {}", serde_json::to_string_pretty(&header)?);
    println!("claims: {}", serde_json::to_string_pretty(&claims)?);
    for (claim, label) in [("iat", "issued at"), ("exp", "expires at")] {
        if let Some(at) = claims[claim]
            .as_i64()
            .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        {
            println!("{label}: {}", at.format("%Y-%m-%dT%H:%M:%SZ"));
        }
    }
    println!("(decoded, not verified: verify against /.well-known/jwks.json)");
    Ok(ExitCode::SUCCESS)
}

/// A minimal HTTP/1.1 GET, so the distroless image needs no curl. It waits as long as readiness
/// may take (the request timeout, plus a margin) and says on stderr why it failed.
async fn healthcheck(config: &Config) -> anyhow::Result<ExitCode> {
    let mut address = config.server.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        stream
            .write_all(
                b"GET /public-api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .await
            .map_err(|e| format!("cannot send the request to {address}: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("cannot read the answer of {address}: {e}"))?;
        Ok::<_, String>(String::from_utf8_lossy(&response).into_owned())
    };
    let patience = std::time::Duration::from_secs(
        config
            .server
            .request_timeout_seconds
            .get()
            .saturating_add(2),
    );
    let outcome = match tokio::time::timeout(patience, check).await {
        Ok(Ok(response)) if response.starts_with("HTTP/1.1 200") => return Ok(ExitCode::SUCCESS),
        Ok(Ok(response)) => {
            let status = response.lines().next().unwrap_or_default().to_owned();
            let body = response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.trim())
                .unwrap_or_default();
            format!("{address} answered {status}: {body}")
        }
        Ok(Err(why)) => why,
        Err(_) => format!("{address} did not answer within {}s", patience.as_secs()),
    };
    eprintln!("neo-sessions healthcheck: not ready: {outcome}");
    Ok(ExitCode::FAILURE)
}

/// An error and its causes on one line, each said once: a cause whose text the line already
/// holds (libraries often repeat their source in their own message) is left out.
pub fn describe_error(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
