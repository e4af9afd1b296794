//! `[log]`: format and filter.

use super::Problems;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    format: Option<String>,
    level: Option<String>,
    audit_file: Option<std::path::PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[log]`, validated.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Log format.
    pub format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax).
    pub level: String,
    /// Where the audit events (target `audit`) go instead of stdout: JSON lines appended to
    /// this file.
    pub audit_file: Option<std::path::PathBuf>,
}

impl LogConfig {
    pub(super) fn build(raw: RawLog, errs: &mut Problems) -> Self {
        let format = match raw.format.as_deref().unwrap_or("pretty") {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            o => {
                errs.push(format!("log.format: `{o}` must be pretty or json"));
                LogFormat::Pretty
            }
        };
        let level = raw.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            errs.push(format!("log.level: `{level}` is not a valid filter"));
        }
        if let Some(f) = &raw.audit_file {
            let dir = f.parent().filter(|d| !d.as_os_str().is_empty());
            if f.as_os_str().is_empty() || dir.is_some_and(|d| !d.is_dir()) {
                errs.push(format!(
                    "log.audit_file: `{}` must be a file in an existing directory",
                    f.display()
                ));
            }
        }
        Self {
            format,
            level,
            audit_file: raw.audit_file,
        }
    }
}
