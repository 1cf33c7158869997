//! `alvryn events list|replay`: the webhook events the pipeline recorded,
//! and re-applying archived events (from S3 or the database) for recovery
//! beyond Stripe's retry window.

use std::process::ExitCode;
use std::sync::Arc;

use alvryn_core::auth::{Clock as _, SystemClock};
use alvryn_core::billing::{EventStatus, ReplaySelection, WebhookPipeline};

use crate::cli::{EXIT_CONFIG, EXIT_FAILURE};
use crate::config::Config;

/// The pipeline of the configuration, or the exit code to leave with.
async fn pipeline(config: &Config) -> Result<WebhookPipeline, ExitCode> {
    let Some(stripe) = &config.stripe else {
        eprintln!(
            "alvryn: billing is not configured (STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, STRIPE_PRICE_MAP)"
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    };
    let store = crate::open_store(config).await.map_err(|e| {
        eprintln!("alvryn: {e}");
        ExitCode::from(EXIT_FAILURE)
    })?;
    let client = crate::billing::stripe_client(stripe).map_err(|e| {
        eprintln!("alvryn: Stripe: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let archive = crate::billing::archive(config, stripe, &store).await;
    Ok(crate::billing::pipeline(
        stripe,
        Arc::clone(&store),
        client,
        archive,
    ))
}

/// Parses a status name for the command line.
///
/// # Errors
/// The list of valid names.
pub fn parse_status(s: &str) -> Result<EventStatus, String> {
    EventStatus::parse(s)
        .ok_or_else(|| "one of: received, failed, dead, quarantined, ignored, applied".to_owned())
}

/// Parses a time: RFC 3339 (`2026-11-30T12:00:00Z`) or Unix seconds;
/// returns Unix milliseconds.
///
/// # Errors
/// What is accepted.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let why = || "an RFC 3339 time (2026-11-30T12:00:00Z) or Unix seconds".to_owned();
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1000).ok_or_else(why);
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| why())?;
    let d = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| why())?;
    i64::try_from(d.as_millis()).map_err(|_| why())
}

/// `alvryn events list`: prints the events as a JSON array, oldest first.
pub async fn list(config: Config, status: Option<EventStatus>, limit: usize) -> ExitCode {
    let pipeline = match pipeline(&config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    match pipeline.list(status, limit, SystemClock.now_ms()).await {
        Ok(events) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&events).unwrap_or_else(|_| "[]".into())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("alvryn: the events could not be listed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `alvryn events replay`: re-applies the selected archived events
/// (a dry run unless `run`), then prints a JSON report. Exits 1 when an
/// event failed again or was missing from the archive.
pub async fn replay(config: Config, selection: ReplaySelection, run: bool) -> ExitCode {
    let pipeline = match pipeline(&config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    match pipeline
        .replay(&selection, !run, SystemClock.now_ms())
        .await
    {
        Ok(report) => {
            let out = serde_json::json!({ "dry_run": !run, "report": report });
            println!(
                "{}",
                serde_json::to_string_pretty(&out).unwrap_or_else(|_| "{}".into())
            );
            if !run {
                eprintln!("alvryn: dry run; add --run to apply");
            }
            if report.failed > 0 || report.missing > 0 {
                ExitCode::from(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("alvryn: the archive could not be read: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
