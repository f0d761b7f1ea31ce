//! The reloader's log, through `tracing`: every line is an event; a reload,
//! a rollback, a hold cut short by its limit and a SIGKILL at the drain
//! deadline carry fields (`event`, `number`, `held_ms`, ...).
//!
//! `--log-format text` (the default) prints `reloader: MESSAGE` for a
//! person (the fields are in the message already); `--log-format json`
//! prints one JSON object per line, fields flattened, for a log pipeline.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// One line for the operator (an event without fields).
pub fn log(msg: &str) {
    tracing::info!("{msg}");
}

/// A duration as the log writes it: `12.3ms`.
pub fn ms(d: std::time::Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

/// An optional one: `-` when there was none (nothing held).
pub fn opt_ms(d: Option<std::time::Duration>) -> String {
    d.map_or("-".into(), ms)
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.event_format(Text).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// `reloader: MESSAGE`, as the reloader always printed.
struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut message = Message(String::new());
        event.record(&mut message);
        writeln!(writer, "reloader: {}", message.0)
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
