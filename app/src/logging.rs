//! The process's log: `tracing` events to standard error, filtered by `MESHFED_LOG`
//! (`EnvFilter` syntax: `info`, `debug`, `meshfed_peering=debug,info`…; default `info`), as
//! text or one JSON object per line. Every component runs inside a span carrying fixed field
//! names — `component`, `mesh`, `peer`, `workload` — so a line says where it comes from.
//! Nothing logs keys, join secrets or token secrets.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable holding the filter.
pub const ENV: &str = "MESHFED_LOG";

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `2026-12-07T16:00:00Z  INFO component{component="peering" mesh="alpha"}: …`
    #[default]
    Text,
    /// One JSON object per line, with the spans' fields.
    Json,
}

/// Installs the process's subscriber; call first in `main`. A `MESHFED_LOG` that does not
/// parse is reported and `info` is used. A second call does nothing.
pub fn init(format: LogFormat) {
    let (filter, problem) = match std::env::var(ENV) {
        Ok(s) if !s.trim().is_empty() => match EnvFilter::try_new(&s) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(format!("{ENV}={s:?}: {e}"))),
        },
        _ => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
    if installed.is_ok()
        && let Some(p) = problem
    {
        tracing::warn!(reason = "InvalidLogFilter", "{p}; logging at info");
    }
}

/// A component's span: `component` always, `mesh` when known.
#[macro_export]
macro_rules! component_span {
    ($component:expr, $mesh:expr) => {
        tracing::info_span!("component", component = %$component, mesh = %$mesh)
    };
    ($component:expr) => {
        tracing::info_span!("component", component = %$component)
    };
}
