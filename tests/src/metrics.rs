//! `/metrics` as a test reads it: one scrape's text, and the value of one series in it.

/// `GET URL` (an address's `/metrics`), as text; panics when it does not answer 200.
pub fn scrape(url: &str) -> String {
    let mut resp = ureq::get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    resp.body_mut().read_to_string().unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The value of `series` (the name with its labels, exactly as exposed) in `text`.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
