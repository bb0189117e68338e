//! Reading Prometheus text from `/metrics`: one series, or a sum over label sets.

/// The label part of `series` (`name{…}`) matches every `(key, value)`.
fn series_matches(series: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    let (n, rest) = series.split_once('{').unwrap_or((series, ""));
    n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
}

/// Every `(series, value)` line of `text` for `name` with `labels`.
fn samples<'a>(text: &'a str, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a str> + 'a {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(move |l| {
        let (series, value) = l.rsplit_once(' ')?;
        series_matches(series, name, labels).then_some(value)
    })
}

/// A metric's value from Prometheus text (first line matching name and labels).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name, labels).find_map(|v| v.parse().ok())
}

/// The sum of a metric over every label set matching `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels).filter_map(|v| v.parse::<f64>().ok()).sum()
}
