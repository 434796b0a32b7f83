//! `/metrics` for every daemon, written once: an [`Exposition`] built fresh from a role's counters
//! at each scrape (OpenMetrics text, which Prometheus reads), and [`serve`], the HTTP listener
//! (`--metrics-listen ADDR`) that answers `GET /metrics` with it.
//!
//! Counts live where the work happens (plain integers behind the role's own lock, or
//! [`Histogram`]s, which are shared handles); a scrape copies them into a new registry, so no
//! role keeps a second set of counters in step. Names follow Prometheus' conventions: the
//! `discomy_` prefix, the role next (`agent`, `worker`, `builder`, `coordinator`), base units
//! (`_seconds`, `_bytes`), counters ending in `_total` (added by the encoder).

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Latency buckets in seconds, from a cache hit (1 ms) to a long LTO unit (2 min).
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0];

/// Package-build durations in seconds, from a trivial spec (1 s) to a large package (4 h).
pub const BUILD_BUCKETS: [f64; 12] =
    [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0, 7200.0, 14400.0];

/// A latency histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Label pairs of one series.
pub type Labels = Vec<(String, String)>;

/// Histograms by label set, kept by the code that observes them.
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// A [`HistogramFamily`] of latencies ([`LATENCY_BUCKETS`]).
pub fn latency_histograms() -> HistogramFamily {
    Family::new_with_constructor(latency_histogram)
}

/// A [`HistogramFamily`] of build durations ([`BUILD_BUCKETS`]).
pub fn build_histograms() -> HistogramFamily {
    Family::new_with_constructor(|| Histogram::new(BUILD_BUCKETS))
}

/// One label pair.
pub fn label(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_string(), value.into())
}

/// One scrape's metrics, added from the role's counters and then encoded.
#[derive(Default)]
pub struct Exposition {
    registry: Registry,
}

/// Help text as the encoder wants it: it adds the final period itself.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// A counter (`NAME_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.registry.register(name, help_text(help), c);
    }

    /// A gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        g.set(value);
        self.registry.register(name, help_text(help), g);
    }

    /// A counter with one series per label set (`NAME_total{…}`).
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Counter>::default();
        for (labels, value) in series {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help_text(help), family);
    }

    /// A gauge with one series per label set.
    pub fn gauges(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (labels, value) in series {
            family.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help_text(help), family);
    }

    /// A histogram (shared with the code that observes it; `NAME_bucket`, `_sum`, `_count`).
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.registry.register(name, help_text(help), histogram.clone());
    }

    /// Histograms by label set (shared with the code that observes them).
    pub fn histogram_family(&mut self, name: &str, help: &str, family: &HistogramFamily) {
        self.registry.register(name, help_text(help), family.clone());
    }

    /// The OpenMetrics text (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a metric's name.
        if let Err(err) = encode(&mut text, &self.registry) {
            tracing::error!(%err, "metrics could not be encoded");
        }
        text
    }
}

/// Makes one scrape's text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The content type of [`Exposition::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` for [`serve`] (the error names the address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("failed to listen on {addr} (metrics): {e}"))
    })
}

/// `GET /metrics` answering `render()`'s text, rendered on a blocking thread: a farm of
/// thousands of nodes makes megabytes of text (33 ms for 5,000 nodes), which would stall a
/// current-thread daemon's placements. Merged into the coordinator's API; served alone by
/// [`serve`].
pub fn router(render: Render) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = Arc::clone(&render);
            async move {
                let text = tokio::task::spawn_blocking(move || render()).await.unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text)
            }
        }),
    )
}

/// Answers `GET /metrics` on `listener` ([`router`]) until `shutdown`. Metrics carry no secrets
/// (counts, host names, addresses) and are read-only, as node exporters are.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Render,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    axum::serve(listener, router(render)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let mut e = Exposition::new();
        e.counter("discomy_test_units", "Units.", 3);
        e.counters(
            "discomy_test_local_units",
            "Local units by reason.",
            [(vec![label("reason", "conftest")], 2)],
        );
        e.gauge("discomy_test_slots", "Slots.", 4.0);
        let h = latency_histogram();
        h.observe(0.003);
        e.histogram("discomy_test_compile_seconds", "Compile time.", &h);
        let text = e.encode();
        assert!(text.contains("discomy_test_units_total 3\n"), "{text}");
        assert!(text.contains("discomy_test_local_units_total{reason=\"conftest\"} 2\n"), "{text}");
        assert!(text.contains("discomy_test_slots 4.0\n"), "{text}");
        assert!(text.contains("discomy_test_compile_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("discomy_test_compile_seconds_count 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# HELP discomy_test_units Units.\n"), "{text}");
    }
}
