//! Progress on long commands, drawn with indicatif on stderr when it is a terminal; off a
//! terminal nothing is drawn (indicatif hides a bar nobody watches) and the commands' own
//! summary lines are all there is.

use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::AsyncWrite;
use vega_repository::ImportProgress;

/// How often a bar polls what it shows.
const TICK: Duration = Duration::from_millis(100);

/// A bar on stderr, or a hidden one when stderr is not a terminal.
fn on_stderr(bar: ProgressBar) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A spinner for a step of unknown length (a maintenance job).
pub fn spinner(message: &'static str) -> ProgressBar {
    let bar = on_stderr(ProgressBar::new_spinner());
    bar.set_style(style("{spinner} {msg} {elapsed}"));
    bar.set_message(message);
    bar.enable_steady_tick(TICK);
    bar
}

/// Bytes written to `inner`, with the rate (export-sarif, events export); for JSON-lines
/// output, whose lines are the items, the lines too.
pub struct Counted<W> {
    inner: W,
    bar: ProgressBar,
    what: &'static str,
    /// Lines written so far, when they are counted.
    lines: Option<u64>,
}

impl<W> Counted<W> {
    pub fn new(inner: W, what: &'static str, count_lines: bool) -> Self {
        let bar = on_stderr(ProgressBar::new_spinner());
        bar.set_style(style(
            "{spinner} {msg}: {bytes} ({bytes_per_sec}) {elapsed}",
        ));
        bar.set_message(what);
        bar.enable_steady_tick(TICK);
        Self {
            inner,
            bar,
            what,
            lines: count_lines.then_some(0),
        }
    }

    /// Stops drawing and clears the line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counted<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.bar.inc(*n as u64);
            let this = &mut *self;
            if let Some(lines) = this.lines.as_mut() {
                *lines += buf[..*n].iter().filter(|&&b| b == b'\n').count() as u64;
                this.bar
                    .set_message(format!("{}: {lines} lines", this.what));
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A bar that follows a SARIF import: results ingested of the log's, with rate and ETA. Stops
/// when dropped.
pub struct Import {
    bar: ProgressBar,
    poller: tokio::task::JoinHandle<()>,
}

impl Import {
    pub fn follow(progress: Arc<ImportProgress>) -> Self {
        let bar = on_stderr(ProgressBar::new(0));
        bar.set_style(style(
            "{spinner} importing: {pos}/{len} results ({per_sec}, {eta} left) {elapsed}",
        ));
        bar.enable_steady_tick(TICK);
        let shown = bar.clone();
        let poller = tokio::spawn(async move {
            loop {
                if let Some(total) = progress.total() {
                    shown.set_length(total);
                }
                shown.set_position(progress.done());
                tokio::time::sleep(TICK).await;
            }
        });
        Self { bar, poller }
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        self.poller.abort();
        self.bar.finish_and_clear();
    }
}
