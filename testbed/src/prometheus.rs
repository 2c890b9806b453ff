//! Values out of the Prometheus text format the agent's `/metrics` serves, as the tests
//! read them (comments skipped, the last space separating a series from its value).

/// The value of the first series named `name` whose labels include every `labels` pair.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(body).find_map(|(series, value)| {
        if series.split('{').next()? != name {
            return None;
        }
        labels
            .iter()
            .all(|(key, label)| series.contains(&format!("{key}=\"{label}\"")))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// The value of the series written exactly `series` (its name and labels as exported,
/// e.g. `zonewall_generation` or `zonewall_x_total{kind="pods"}`).
pub fn series(body: &str, series: &str) -> Option<f64> {
    samples(body).find_map(|(name, value)| (name == series).then(|| value.parse().ok()).flatten())
}

/// Every sample line as (series, value text).
fn samples(body: &str) -> impl Iterator<Item = (&str, &str)> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(series, value)| (series, value.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total{kind=\"pods\",reason=\"x\"} 3\na_total{kind=\"zones\"} 4\nb 1.5\n";

    #[test]
    fn finds_series_by_name_and_labels() {
        assert_eq!(metric(BODY, "a_total", &[("kind", "zones")]), Some(4.0));
        assert_eq!(metric(BODY, "a_total", &[]), Some(3.0));
        assert_eq!(metric(BODY, "a_total", &[("kind", "nodes")]), None);
        assert_eq!(metric(BODY, "b", &[]), Some(1.5));
    }

    #[test]
    fn finds_series_written_exactly() {
        assert_eq!(series(BODY, "a_total{kind=\"zones\"}"), Some(4.0));
        assert_eq!(series(BODY, "a_total"), None);
        assert_eq!(series(BODY, "b"), Some(1.5));
    }
}
