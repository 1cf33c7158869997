//! The `alvryn` command line.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use alvryn_core::crypto::KeyMaterial;
use alvryn_core::secret::SecretBytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

use crate::AppState;
use crate::config::{Config, FieldKeys, LogFormat, Mode, Overrides};

/// Exit code for an invalid configuration or invalid arguments.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure at run time (KMS refused, port taken, ...).
pub const EXIT_FAILURE: u8 = 1;

/// Alvryn: authentication, billing and field encryption for SaaS backends.
#[derive(Debug, Parser)]
#[command(name = "alvryn", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage field-encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Data migrations (dry run unless --run).
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Stripe webhook events: list them, replay them from the archive.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Back up the store online: the embedded database (checked copy), or
    /// MongoDB with mongodump; prints the backup's path.
    Backup(BackupArgs),
    /// Replace the embedded database with a backup (refused while a
    /// server or another command has it open).
    Restore(RestoreArgs),
    /// Post-deploy check of a running server: one PASS/FAIL line per step,
    /// exit 1 on any failure.
    Smoke(SmokeArgs),
    /// Run the background jobs (archive drain, webhook retries, purge)
    /// under store leases, and serve /metrics and /healthz.
    Worker(WorkerArgs),
}

/// `alvryn backup`
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Folder for the embedded store and development secrets.
    #[arg(long, env = "ALVRYN_DATA_DIR", default_value = "./alvryn-data")]
    pub data_dir: PathBuf,
    /// Folder to write the backup to (default: `backups` in the data folder).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// `alvryn restore`
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file (`alvryn-YYYYMMDDTHHMMSSZ.db`).
    pub file: PathBuf,
    /// Folder for the embedded store and development secrets.
    #[arg(long, env = "ALVRYN_DATA_DIR", default_value = "./alvryn-data")]
    pub data_dir: PathBuf,
    /// Replace an existing database (it is kept as
    /// `alvryn.db.before-restore-<time>`).
    #[arg(long)]
    pub force: bool,
}

/// `alvryn smoke`
#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// The server's URL, e.g. `https://api.example.com`.
    #[arg(long)]
    pub url: url::Url,
    /// The Stripe webhook signing secret (whsec_...): also send a signed
    /// test event (ignored by the pipeline) and a forged one.
    #[arg(long, value_parser = parse_secret, conflicts_with = "webhook_secret_file")]
    pub webhook_secret: Option<alvryn_core::SecretString>,
    /// Read the webhook signing secret from this file's first line
    /// instead (keeps it out of the process list).
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Time allowed for each request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Only check /healthz (a container health check).
    #[arg(long)]
    pub health_only: bool,
}

/// Never fails, so clap never echoes a secret in an error message.
fn parse_secret(s: &str) -> Result<alvryn_core::SecretString, std::convert::Infallible> {
    Ok(alvryn_core::SecretString::from(s))
}

/// `alvryn worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Where to serve /metrics and /healthz (default 127.0.0.1:9091, or
    /// ALVRYN_WORKER_METRICS_BIND).
    #[arg(long)]
    pub metrics_bind: Option<SocketAddr>,
    /// Folder for the embedded store.
    #[arg(long, env = "ALVRYN_DATA_DIR", default_value = "./alvryn-data")]
    pub data_dir: PathBuf,
}

/// `alvryn events ...`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print recorded events as JSON, oldest first.
    List {
        /// Only events at this status: received, failed, dead,
        /// quarantined, ignored, applied.
        #[arg(long, value_parser = crate::events::parse_status)]
        status: Option<alvryn_core::billing::EventStatus>,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Folder for the embedded store and development secrets.
        #[arg(long, env = "ALVRYN_DATA_DIR", default_value = "./alvryn-data")]
        data_dir: PathBuf,
    },
    /// Re-apply archived events (from S3 or the database), idempotently;
    /// a dry run unless --run.
    Replay {
        /// These events (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Events received at or after this time (RFC 3339 or Unix seconds).
        #[arg(long, value_parser = crate::events::parse_time)]
        since: Option<i64>,
        /// Events received before this time.
        #[arg(long, value_parser = crate::events::parse_time)]
        until: Option<i64>,
        /// Only events at this status (with a time range).
        #[arg(long, value_parser = crate::events::parse_status)]
        status: Option<alvryn_core::billing::EventStatus>,
        /// Apply (without it, only list what would be replayed).
        #[arg(long)]
        run: bool,
        /// Folder for the embedded store and development secrets.
        #[arg(long, env = "ALVRYN_DATA_DIR", default_value = "./alvryn-data")]
        data_dir: PathBuf,
    },
}

/// `alvryn migrate ...`
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Seal the provider refresh tokens an older version stored in plaintext.
    EncryptRefreshTokens(MigrateArgs),
    /// Re-seal every provider token under the active key after a rotation,
    /// and report how many values still use each old key.
    Rewrap(MigrateArgs),
}

/// Options of every migration.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Apply the migration (without it, only count).
    #[arg(long)]
    pub run: bool,
    /// Records read per page.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Folder for the embedded store and development secrets.
    #[arg(long, env = "ALVRYN_DATA_DIR", default_value = "./alvryn-data")]
    pub data_dir: PathBuf,
}

/// Where to listen and keep data.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address.
    #[arg(long, env = "ALVRYN_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Folder for the embedded store and development secrets.
    #[arg(long, env = "ALVRYN_DATA_DIR", default_value = "./alvryn-data")]
    pub data_dir: PathBuf,
}

/// `alvryn config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (secrets redacted); exit 2 on problems.
    Check {
        /// Folder for the embedded store and development secrets.
        #[arg(long, env = "ALVRYN_DATA_DIR", default_value = "./alvryn-data")]
        data_dir: PathBuf,
        /// Do not call KMS to check that FIELD_ENCRYPTION_KEY_ENC unwraps.
        #[arg(long)]
        offline: bool,
    },
}

/// `alvryn keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a field-encryption key: raw base64, or wrapped by KMS.
    Generate {
        /// Wrap the new key with this KMS key (id, ARN or alias/...).
        #[arg(long, requires = "output")]
        kms_key_id: Option<String>,
        /// Where to write the base64 KMS blob (for FIELD_ENCRYPTION_KEY_ENC).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// The whole `alvryn` program: parses the command line, logs to stderr
/// (see [`init_logging`]), and runs the command on a multi-threaded
/// runtime.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(LogFormat::from_env());
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("alvryn: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// How this process logs, once [`init_logging`] has run.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Logs to stderr in `format` (`ALVRYN_LOG_FORMAT`), filtered by
/// `ALVRYN_LOG` (tracing `EnvFilter` syntax, default `info`).
///
/// Text: colour only on a terminal and without `NO_COLOR`. JSON: one
/// object per line, the event's fields at the top level (`timestamp`,
/// `level`, `target`, `message`, ...) and, inside a request, its span's
/// fields under `span` (`request_id`); a panic is logged as one such line
/// (`message: "panic"`) instead of the standard text, and the server's own
/// start-up failures too.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;

    let filter = tracing_subscriber::EnvFilter::try_from_env("ALVRYN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let installed = match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .try_init()
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    if installed.is_err() {
        // A logger was there already (an embedding program's): keep it.
        return;
    }
    let _ = LOG_FORMAT.set(format);
    if format == LogFormat::Json {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(not a string)");
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(panic = message, location, "panic");
        }));
    }
}

/// Reports a failure of `alvryn serve`: a JSON log line under JSON
/// logging (so that every line on stderr parses), else plain text.
fn serve_failure(message: &dyn std::fmt::Display) {
    if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        tracing::error!(error = %message, "alvryn serve failed");
    } else {
        // A configuration error's text ends its own last line.
        let text = message.to_string();
        eprint!("alvryn: {text}");
        if !text.ends_with('\n') {
            eprintln!();
        }
    }
}

/// Runs a parsed command line to completion.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Config(ConfigCommand::Check { data_dir, offline }) => {
            config_check(data_dir, offline).await
        }
        Command::Keys(KeysCommand::Generate {
            kms_key_id,
            output,
            force,
        }) => keys_generate(kms_key_id, output, force).await,
        Command::Migrate(m) => {
            let (migration, args) = match m {
                MigrateCommand::EncryptRefreshTokens(a) => {
                    (crate::migrate::Migration::EncryptRefreshTokens, a)
                }
                MigrateCommand::Rewrap(a) => (crate::migrate::Migration::Rewrap, a),
            };
            let config = match load_config(args.data_dir) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let options = alvryn_core::oauth::migrate::MigrationOptions {
                run: args.run,
                batch: args.batch as usize,
                ..Default::default()
            };
            crate::migrate::run(config, migration, options).await
        }
        Command::Events(command) => events(command).await,
        Command::Backup(args) => match load_config(args.data_dir) {
            Ok(config) => crate::backup::backup(config, args.output).await,
            Err(code) => code,
        },
        Command::Restore(args) => match load_config(args.data_dir) {
            Ok(config) => crate::backup::restore(config, args.file, args.force).await,
            Err(code) => code,
        },
        Command::Smoke(args) => smoke(args).await,
        Command::Worker(args) => worker(args).await,
    }
}

async fn worker(args: WorkerArgs) -> ExitCode {
    let config = match load_config(args.data_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let bind = args.metrics_bind.unwrap_or(config.worker.metrics_bind);
    match crate::worker::run(config, bind, crate::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("alvryn: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn smoke(args: SmokeArgs) -> ExitCode {
    let webhook_secret = match (args.webhook_secret, &args.webhook_secret_file) {
        (Some(s), _) => Some(s),
        (None, Some(path)) => match crate::smoke::read_secret_file(path) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("alvryn: --webhook-secret-file: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => None,
    };
    crate::smoke::run(crate::smoke::SmokeOptions {
        url: args.url,
        webhook_secret,
        timeout: args.timeout,
        health_only: args.health_only,
    })
    .await
}

async fn events(command: EventsCommand) -> ExitCode {
    let data_dir = match &command {
        EventsCommand::List { data_dir, .. } | EventsCommand::Replay { data_dir, .. } => {
            data_dir.clone()
        }
    };
    let config = match load_config(data_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match command {
        EventsCommand::List { status, limit, .. } => {
            crate::events::list(config, status, limit).await
        }
        EventsCommand::Replay {
            ids,
            since,
            until,
            status,
            run,
            ..
        } => {
            if ids.is_empty() && since.is_none() && until.is_none() && status.is_none() {
                eprintln!(
                    "alvryn: name the events to replay: --id ID (repeatable), or --since/--until/--status"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            let selection = alvryn_core::billing::ReplaySelection {
                ids,
                since_ms: since,
                until_ms: until,
                status,
            };
            crate::events::replay(config, selection, run).await
        }
    }
}

/// The configuration of a command that serves nothing, with its data
/// folder; a problem is printed and becomes the exit code.
fn load_config(data_dir: PathBuf) -> Result<Config, ExitCode> {
    let overrides = Overrides {
        bind: None,
        data_dir: Some(data_dir),
    };
    Config::from_env(&overrides).map_err(|e| {
        eprint!("alvryn: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
    let overrides = Overrides {
        bind: Some(args.bind),
        data_dir: Some(args.data_dir),
    };
    let config = match Config::from_env(&overrides) {
        Ok(c) => c,
        Err(e) => {
            serve_failure(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if config.mode == Mode::Development {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "DEVELOPMENT MODE: missing secrets are generated and kept in the data folder; \
             set ALVRYN_ENV=production and the full configuration before real use"
        );
    }
    // The port first: a taken port fails before KMS is called or a file
    // is created, and `--bind 127.0.0.1:0` learns its port before the
    // configuration derives BACKEND_URL from it.
    let listener = match crate::bind(config.bind).await {
        Ok(l) => l,
        Err(e) => {
            serve_failure(&e);
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let config = match listener.local_addr() {
        Ok(local) => config.bound_to(local),
        Err(e) => {
            serve_failure(&crate::StartupError::Serve(e));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // Before anything is counted.
    crate::prometheus::install();
    let state = match AppState::new(config).await {
        Ok(s) => s,
        Err(e) => {
            serve_failure(&e);
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if state.billing.is_some() {
        tracing::info!(
            "webhook events that fail to apply are retried, and raw events S3 missed are \
             uploaded, by `alvryn worker`: run at least one next to the servers"
        );
    }
    let served = crate::serve_on(listener, state, crate::shutdown_signal()).await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            serve_failure(&e);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn config_check(data_dir: PathBuf, offline: bool) -> ExitCode {
    let config = match load_config(data_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut out = String::new();
    for (var, value) in config.describe() {
        out.push_str(&format!("{var:<34} {value}\n"));
    }
    print!("{out}");
    let how = match &config.field_keys {
        FieldKeys::DevGenerated => return ExitCode::SUCCESS,
        FieldKeys::Kms { .. } if offline => {
            println!("field keys: not unwrapped (--offline)");
            return ExitCode::SUCCESS;
        }
        FieldKeys::Kms { .. } => "unwrapped with KMS; ",
        FieldKeys::Static { .. } => "",
    };
    match crate::keys::load_key_set(&config, None).await {
        Ok(set) => {
            let previous: Vec<_> = set.previous.iter().map(|k| k.id().to_string()).collect();
            println!(
                "field keys: {how}active {}, previous [{}]",
                set.active.id(),
                previous.join(", ")
            );
        }
        Err(e) => {
            eprintln!("alvryn: field-encryption keys: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    ExitCode::SUCCESS
}

async fn keys_generate(
    kms_key_id: Option<String>,
    output: Option<PathBuf>,
    force: bool,
) -> ExitCode {
    let Some(kms_key_id) = kms_key_id else {
        return match SecretBytes::random(32) {
            Ok(key) => {
                let b64 = Zeroizing::new(STANDARD.encode(key.expose()));
                eprintln!(
                    "A new field-encryption key (base64). Store it in your secret manager as FIELD_ENCRYPTION_KEY;"
                );
                eprintln!("it is shown only this once.");
                println!("{}", b64.as_str());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("alvryn: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    };
    let Some(output) = output else {
        eprintln!("alvryn: --output is required with --kms-key-id");
        return ExitCode::from(EXIT_CONFIG);
    };
    // Refuse early (before KMS is asked) when the blob exists; the final
    // step refuses again without a race.
    if !force && output.exists() {
        eprintln!(
            "alvryn: {} exists; pass --force to replace it",
            output.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let client = crate::keys::kms_client().await;
    let (key, blob) = match alvryn_core::key::kms::generate_wrapped_key(&client, &kms_key_id).await
    {
        Ok(pair) => pair,
        Err(e) => {
            // Nothing was written: an existing blob is untouched.
            eprintln!("alvryn: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let blob_b64 = STANDARD.encode(&blob);
    match write_new_blob(&output, &blob_b64, force) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "alvryn: {} exists; pass --force to replace it",
                output.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("alvryn: cannot write {}: {e}", output.display());
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    let id = KeyMaterial::fingerprinted(key.clone()).id().clone();
    let plain = Zeroizing::new(STANDARD.encode(key.expose()));
    eprintln!(
        "Wrote the KMS-encrypted key to {} (set FIELD_ENCRYPTION_KEY_ENC to its contents).",
        output.display()
    );
    eprintln!("Key id: {id}");
    eprintln!(
        "WARNING: the plaintext key follows, shown only this once. Store it offline as a recovery copy;"
    );
    eprintln!("anyone holding it can read every encrypted field.");
    println!("{}", plain.as_str());
    ExitCode::SUCCESS
}

/// Writes `blob` to `output` (mode 0600) all at once: a temporary file in
/// the same folder, synced, then renamed over `output` (`force`) or linked
/// to it only if it does not exist. A failure at any point leaves an
/// existing `output` as it was and no temporary file behind.
fn write_new_blob(output: &std::path::Path, blob: &str, force: bool) -> std::io::Result<()> {
    let folder = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = folder.join(format!(".{name}.{}.tmp", alvryn_core::random_hex(8)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(file, "{blob}")?;
        file.sync_all()?;
        if force {
            std::fs::rename(&tmp, output)?;
        } else {
            std::fs::hard_link(&tmp, output)?;
            std::fs::remove_file(&tmp)?;
        }
        // The new name is durable once the folder is.
        std::fs::File::open(&folder)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
