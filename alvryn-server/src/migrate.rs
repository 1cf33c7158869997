//! `alvryn migrate ...`: the data migrations of a deploy, over the
//! configured store and keys.
//!
//! Each is a dry run unless `--run` is given, shows a progress bar on a
//! terminal and a log line every few seconds otherwise, and prints a JSON
//! summary on stdout at the end. See
//! [`alvryn_core::oauth::migrate`] for what each does and why a crash at
//! any moment loses nothing.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alvryn_core::auth::{Clock as _, SystemClock};
use alvryn_core::oauth::migrate::{
    MigrationOptions, MigrationProgress, MigrationReport, encrypt_refresh_tokens, rewrap,
};

use crate::cli::{EXIT_CONFIG, EXIT_FAILURE};
use crate::config::{Config, FieldKeys};
use crate::dev::{DevSecrets, secrets_path};

/// Which migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migration {
    /// Seal plaintext provider refresh tokens.
    EncryptRefreshTokens,
    /// Re-seal provider tokens under the active key.
    Rewrap,
}

impl Migration {
    fn name(self) -> &'static str {
        match self {
            Migration::EncryptRefreshTokens => "encrypt-refresh-tokens",
            Migration::Rewrap => "rewrap",
        }
    }
}

/// Shows progress: a bar on a terminal, a log line at most every
/// `every` otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_line: Mutex<Option<Instant>>,
    every: Duration,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(what);
            bar
        });
        Self {
            bar,
            last_line: Mutex::new(None),
            every: Duration::from_secs(5),
        }
    }

    fn update(&self, p: MigrationProgress) {
        if let Some(bar) = &self.bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
            return;
        }
        let mut last = self
            .last_line
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.is_none_or(|t| t.elapsed() >= self.every) || p.done == p.total;
        if due {
            tracing::info!(done = p.done, total = p.total, "migration progress");
            *last = Some(Instant::now());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// Runs `migration` over the configured store and keys.
pub async fn run(config: Config, migration: Migration, options: MigrationOptions) -> ExitCode {
    // A key is required: a development data folder that never generated
    // one has no encrypted data and must not invent a key now.
    let dev_key = match &config.field_keys {
        FieldKeys::DevGenerated => {
            if !secrets_path(&config.data_dir).exists() {
                eprintln!(
                    "alvryn: no field-encryption key: set FIELD_ENCRYPTION_KEY or \
                     FIELD_ENCRYPTION_KEY_ENC (or point --data-dir at the development data folder)"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            match DevSecrets::load_or_create(&config.data_dir) {
                Ok(d) => Some(d.field_key),
                Err(e) => {
                    eprintln!("alvryn: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            }
        }
        _ => None,
    };
    let store = match crate::open_store(&config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("alvryn: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let cipher = match crate::keys::load_key_set(&config, dev_key.as_ref()).await {
        Ok(keys) => crate::keys::field_cipher(keys, Arc::clone(&store) as _).await,
        Err(e) => Err(e),
    };
    let cipher = match cipher {
        Ok(c) => c,
        Err(e) => {
            eprintln!("alvryn: field-encryption keys: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if options.run {
        eprintln!(
            "alvryn: migrate {}: writing. Take a backup first if you have not \
             (alvryn backup, or mongodump); each record is rewritten atomically, \
             so an interrupted run is finished by running it again.",
            migration.name()
        );
    } else {
        eprintln!(
            "alvryn: migrate {}: dry run, nothing is written (add --run to apply, \
             after taking a backup).",
            migration.name()
        );
    }
    let progress = Progress::new(migration.name());
    let on_progress = |p: MigrationProgress| progress.update(p);
    let now = || SystemClock.now_ms();
    let result = match migration {
        Migration::EncryptRefreshTokens => {
            encrypt_refresh_tokens(store.as_ref(), &cipher, options, &now, &on_progress).await
        }
        Migration::Rewrap => rewrap(store.as_ref(), &cipher, options, &now, &on_progress).await,
    };
    progress.finish();
    match result {
        Ok(report) => {
            print_summary(&report);
            if report.failed > 0 {
                eprintln!(
                    "alvryn: {} record(s) could not be migrated (damaged, or under a key \
                     that is not configured); they were left as they were",
                    report.failed
                );
                ExitCode::from(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!(
                "alvryn: migrate {} stopped: {e}; what was written stays, run it again",
                migration.name()
            );
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn print_summary(report: &MigrationReport) {
    match serde_json::to_string_pretty(report) {
        Ok(json) => println!("{json}"),
        Err(e) => eprintln!("alvryn: cannot print the summary: {e}"),
    }
}
