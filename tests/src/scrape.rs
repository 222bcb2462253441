//! Prometheus scrapes, fetched over HTTP and parsed with a text-format parser.

use prometheus_parse::{Sample, Scrape, Value};

/// Fetches `url` (a `/metrics` endpoint) and parses it.
///
/// # Panics
///
/// When the endpoint does not answer 200 with a parseable body: this is a test helper.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub async fn scrape(url: &str) -> Metrics {
    let response = reqwest::get(url)
        .await
        .expect("the metrics endpoint answers");
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a valid scrape");
    Metrics { text, scrape }
}

/// A parsed scrape, and its text for failure messages.
#[derive(Debug)]
pub struct Metrics {
    /// The body as served.
    pub text: String,
    /// The parsed samples and help texts.
    pub scrape: Scrape,
}

impl Metrics {
    /// The samples of `metric` whose labels include every `(name, value)` of `labels`.
    pub fn samples<'a>(
        &'a self,
        metric: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.scrape.samples.iter().filter(move |s| {
            s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The value of a counter or gauge sample, or a histogram's count (its `+Inf` bucket).
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(metric, labels)
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            })
            .reduce(|a, b| a + b)
    }
}
