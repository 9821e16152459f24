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
    labels: Vec<String>,
    /// For each label in the caller's order, its place in `labels`.
    place: Vec<usize>,
    samples: BTreeMap<Vec<String>, f64>,
}

/// The families of one exposition. Only gauges: every number the exporter gives is a reading of now.
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
        // `make test-breaks` (`series`): tuples that join alike taken for one, as the `prometheus` crate took them.
        if blockjobinfo::environment::broken("series") {
            let joined = |k: &Vec<String>| family.place.iter().map(|&at| k[at].as_str()).collect::<String>();
            if let Some(first) = family.samples.keys().find(|k| joined(k) == values.concat()) {
                key = first.clone();
            }
        }
        family.samples.insert(key, value);
    }

    /// The text: families by name, each sample once, a family without samples left out.
    pub fn render(&self) -> String {
        let mut families: Vec<&Family> = self.families.iter().filter(|f| !f.samples.is_empty()).collect();
        families.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::new();
        for f in families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape(&f.help, false));
            let _ = writeln!(out, "# TYPE {} gauge", f.name);
            for (values, v) in &f.samples {
                out.push_str(&f.name);
                if !values.is_empty() {
                    out.push('{');
                    for (i, (l, v)) in f.labels.iter().zip(values).enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{l}=\"{}\"", escape(v, true));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", number(*v));
            }
        }
        out
    }
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
