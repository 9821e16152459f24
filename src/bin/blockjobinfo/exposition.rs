//! Prometheus's text exposition format (version 0.0.4), written from samples keyed by their exact label values.
//!
//! The `prometheus` crate (0.13) told a vector's children apart by a hash of their label values joined with no
//! separator, and took equal hashes for one child: ("a", "bjob1") and ("ab", "job1") were one series, and
//! anyone who can name a domain or a QMP job could aim at another's. Here a sample's key is the tuple of its
//! values itself, so two series are one only where every value is equal.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One metric family: its samples by their label values, in the order of `labels`, which are sorted by name
/// (as the `prometheus` crate wrote them, and the tests and dashboards read them).
struct Family {
    name: String,
    help: String,
    kind: Kind,
    labels: Vec<String>,
    /// For each label in the caller's order, its place in `labels`.
    place: Vec<usize>,
    samples: BTreeMap<Vec<String>, f64>,
    /// A histogram's, by the same keys.
    histograms: BTreeMap<Vec<String>, Histogram>,
}

/// A histogram's series: (upper bound, cumulative count) for each bucket but `+Inf`, the sum, the count.
type Histogram = (Vec<(f64, u64)>, f64, u64);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// The families of one exposition: gauges (readings of now), and the endings' counters and histogram.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

/// A family added to an [`Exposition`].
#[derive(Clone, Copy)]
pub struct Gauge(usize);

impl Exposition {
    /// A gauge `name` with `labels` (names Prometheus accepts: the callers' are fixed).
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> Gauge {
        self.family(name, help, labels, Kind::Gauge)
    }

    /// A counter (its name ends in `_total`), set as a gauge is, from counts kept by the caller.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> Gauge {
        self.family(name, help, labels, Kind::Counter)
    }

    /// A histogram, set whole with [`Exposition::set_histogram`].
    pub fn histogram(&mut self, name: &str, help: &str, labels: &[&str]) -> Gauge {
        self.family(name, help, labels, Kind::Histogram)
    }

    fn family(&mut self, name: &str, help: &str, labels: &[&str], kind: Kind) -> Gauge {
        let mut sorted: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        sorted.sort();
        let place = labels
            .iter()
            .map(|l| sorted.iter().position(|s| s == l).expect("a label of its own"))
            .collect();
        self.families.push(Family {
            name: name.to_string(),
            help: help.to_string(),
            labels: sorted,
            place,
            samples: BTreeMap::new(),
            histograms: BTreeMap::new(),
            kind,
        });
        Gauge(self.families.len() - 1)
    }

    /// Sets the sample of `gauge` whose label values (in the order its labels were given) are exactly
    /// `values`.
    pub fn set(&mut self, gauge: Gauge, values: &[&str], value: f64) {
        let family = &mut self.families[gauge.0];
        assert_eq!(values.len(), family.place.len(), "{}", family.name);
        let mut key = vec![String::new(); values.len()];
        for (v, &at) in values.iter().zip(&family.place) {
            key[at] = v.to_string();
        }
        if blockjobinfo::environment::broken("series") {
            if let Some(first) =
                crate::series_break::taken_as_the_crate_took_it(family.samples.keys(), &family.place, values)
            {
                key = first;
            }
        }
        family.samples.insert(key, value);
    }

    /// Sets a histogram's series for `values`: `buckets` holds (upper bound, cumulative count) in ascending
    /// order, without `+Inf` (which is `count`).
    pub fn set_histogram(&mut self, h: Gauge, values: &[&str], buckets: &[(f64, u64)], sum: f64, count: u64) {
        let family = &mut self.families[h.0];
        assert_eq!(values.len(), family.place.len(), "{}", family.name);
        let mut key = vec![String::new(); values.len()];
        for (v, &at) in values.iter().zip(&family.place) {
            key[at] = v.to_string();
        }
        family.histograms.insert(key, (buckets.to_vec(), sum, count));
    }

    /// The text: families by name, each sample once, a family without samples left out.
    pub fn render(&self) -> String {
        let mut families: Vec<&Family> = self
            .families
            .iter()
            .filter(|f| !f.samples.is_empty() || !f.histograms.is_empty())
            .collect();
        families.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::new();
        for f in families {
            let kind = match f.kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, escape(&f.help, false));
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            for (values, v) in &f.samples {
                sample(&mut out, &f.name, &f.labels, values, None, *v);
            }
            for (values, (buckets, sum, count)) in &f.histograms {
                let bucket = format!("{}_bucket", f.name);
                for (le, n) in buckets {
                    sample(&mut out, &bucket, &f.labels, values, Some(&number(*le)), *n as f64);
                }
                sample(&mut out, &bucket, &f.labels, values, Some("+Inf"), *count as f64);
                sample(&mut out, &format!("{}_sum", f.name), &f.labels, values, None, *sum);
                sample(
                    &mut out,
                    &format!("{}_count", f.name),
                    &f.labels,
                    values,
                    None,
                    *count as f64,
                );
            }
        }
        out
    }
}

/// One sample's line; `le` (a histogram's bucket) last among its labels, as Prometheus's own clients write it.
fn sample(out: &mut String, name: &str, labels: &[String], values: &[String], le: Option<&str>, v: f64) {
    out.push_str(name);
    let mut pairs: Vec<(&str, &str)> = labels
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(String::as_str))
        .collect();
    if let Some(le) = le {
        pairs.push(("le", le));
    }
    if !pairs.is_empty() {
        out.push('{');
        for (i, (l, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{l}=\"{}\"", escape(v, true));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(v));
}

/// A HELP text or (`quoted`) a label value, escaped as the format requires: `\` and newline, and `"` in a value.
fn escape(s: &str, quoted: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quoted => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as Prometheus's parser reads it: `NaN`, `+Inf`, `-Inf`, or Rust's shortest decimal (never an
/// exponent, where Go would write one: the same number).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_join_alike_are_two_series() {
        let mut e = Exposition::default();
        let g = e.gauge("m", "h", &["socket", "device"]);
        e.set(g, &["/run/qsd/a", "bjob1"], 10.0);
        e.set(g, &["/run/qsd/ab", "job1"], 70.0);
        let text = e.render();
        assert!(
            text.contains("m{device=\"bjob1\",socket=\"/run/qsd/a\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("m{device=\"job1\",socket=\"/run/qsd/ab\"} 70\n"),
            "{text}"
        );
    }

    proptest::proptest! {
        /// However the values are chosen (crafted to join or hash alike included), each distinct tuple is a
        /// series of its own, holding its own value.
        #[test]
        fn each_distinct_tuple_is_its_own_series(
            tuples in proptest::collection::vec(("[ab\\\\\"\n]{0,4}", "[ab]{0,4}"), 1..12)
        ) {
            let mut e = Exposition::default();
            let g = e.gauge("m", "h", &["x", "y"]);
            let mut want = BTreeMap::new();
            for (i, (x, y)) in tuples.iter().enumerate() {
                e.set(g, &[x, y], i as f64);
                want.insert((x.clone(), y.clone()), i);
            }
            let text = e.render();
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("m{")).collect();
            proptest::prop_assert_eq!(lines.len(), want.len(), "{}", text);
            for ((x, y), i) in want {
                let line = format!("m{{x=\"{}\",y=\"{}\"}} {i}", escape(&x, true), escape(&y, true));
                proptest::prop_assert!(lines.contains(&line.as_str()), "{} not in {}", line, text);
            }
        }
    }

    #[test]
    fn counters_and_histograms_are_typed_and_bucketed() {
        let mut e = Exposition::default();
        let c = e.counter("c_total", "h", &["type", "outcome"]);
        e.set(c, &["copy", "failed"], 2.0);
        let h = e.histogram("d_seconds", "h", &["type"]);
        e.set_histogram(h, &["copy"], &[(1.0, 1), (60.0, 3)], 70.5, 4);
        assert_eq!(
            e.render(),
            "# HELP c_total h\n# TYPE c_total counter\nc_total{outcome=\"failed\",type=\"copy\"} 2\n\
             # HELP d_seconds h\n# TYPE d_seconds histogram\nd_seconds_bucket{type=\"copy\",le=\"1\"} 1\n\
             d_seconds_bucket{type=\"copy\",le=\"60\"} 3\nd_seconds_bucket{type=\"copy\",le=\"+Inf\"} 4\n\
             d_seconds_sum{type=\"copy\"} 70.5\nd_seconds_count{type=\"copy\"} 4\n"
        );
    }

    #[test]
    fn escaping_and_numbers() {
        let mut e = Exposition::default();
        let g = e.gauge("m", "a \\ \"help\"\nline", &["l"]);
        e.set(g, &["q\"b\\n\nx"], 0.5);
        let h = e.gauge("n", "h", &[]);
        e.set(h, &[], f64::INFINITY);
        assert_eq!(
            e.render(),
            "# HELP m a \\\\ \"help\"\\nline\n# TYPE m gauge\nm{l=\"q\\\"b\\\\n\\nx\"} 0.5\n\
             # HELP n h\n# TYPE n gauge\nn +Inf\n"
        );
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(1e21), "1000000000000000000000");
    }
}
