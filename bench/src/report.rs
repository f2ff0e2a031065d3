//! Results: one measure per scenario, system and metric; printed as a side-by-side table and as JSON lines
//! (`{"scenario","system","metric","value","unit"}`), with the hub's ratio to each peer.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

/// One number a scenario measured on one system.
#[derive(Clone, Debug, Serialize)]
pub struct Measure {
    /// `sessions`, `drain`, `ingest` or `online`.
    pub scenario: &'static str,
    /// `hub`, or the peer's name.
    pub system: String,
    /// What was measured, e.g. `connect_rate`.
    pub metric: &'static str,
    /// The value, in `unit`.
    pub value: f64,
    /// e.g. `sessions/s`, `bytes`, `ms`.
    pub unit: &'static str,
}

/// A fact about one system that is not a number (e.g. when its acks are durable), shown as a row of
/// its own.
#[derive(Clone, Debug, Serialize)]
pub struct Note {
    /// `hub`, or the peer's name.
    pub system: String,
    /// What it says, e.g. `durability`.
    pub metric: &'static str,
    /// The fact.
    pub note: &'static str,
}

/// Collects the measures of a run.
#[derive(Default)]
pub struct Report {
    measures: Vec<Measure>,
    notes: Vec<Note>,
}

impl Report {
    /// Records one measure.
    pub fn add(
        &mut self,
        scenario: &'static str,
        system: &str,
        metric: &'static str,
        value: f64,
        unit: &'static str,
    ) {
        self.measures.push(Measure {
            scenario,
            system: system.to_owned(),
            metric,
            value,
            unit,
        });
    }

    /// Records a fact about `system`, shown beside the measures.
    pub fn note(&mut self, system: &str, metric: &'static str, note: &'static str) {
        self.notes.push(Note {
            system: system.to_owned(),
            metric,
            note,
        });
    }

    /// Where one scenario's run on one system records its measures.
    pub fn run(&mut self, scenario: &'static str, system: &str) -> Run<'_> {
        Run {
            report: self,
            scenario,
            system: system.to_owned(),
        }
    }

    /// The side-by-side table: a row per scenario and metric, a column per system, then hub/peer ratios.
    pub fn table(&self) -> String {
        let systems: Vec<String> = {
            let mut seen = Vec::new();
            for m in &self.measures {
                if !seen.contains(&m.system) {
                    seen.push(m.system.clone());
                }
            }
            seen
        };
        // Ratios are the hub's to each peer: none when the hub did not run (e.g. `--disk-stalls`).
        let peers: Vec<&String> = if systems.iter().any(|s| s == "hub") {
            systems.iter().filter(|s| *s != "hub").collect()
        } else {
            Vec::new()
        };
        let rows: Vec<(&str, &str, &str)> = {
            let mut seen = BTreeSet::new();
            self.measures
                .iter()
                .filter(|m| seen.insert((m.scenario, m.metric)))
                .map(|m| (m.scenario, m.metric, m.unit))
                .collect()
        };
        let mut header = vec![
            "scenario".to_owned(),
            "metric".to_owned(),
            "unit".to_owned(),
        ];
        header.extend(systems.iter().cloned());
        header.extend(peers.iter().map(|p| format!("hub/{p}")));
        let mut lines = vec![header];
        for (scenario, metric, unit) in rows {
            let value = |system: &str| {
                self.measures
                    .iter()
                    .find(|m| m.scenario == scenario && m.metric == metric && m.system == system)
                    .map(|m| m.value)
            };
            let mut line = vec![scenario.to_owned(), metric.to_owned(), unit.to_owned()];
            line.extend(
                systems
                    .iter()
                    .map(|s| value(s).map_or("-".into(), format_value)),
            );
            line.extend(peers.iter().map(|p| match (value("hub"), value(p)) {
                (Some(hub), Some(peer)) if peer != 0.0 => format!("{:.2}", hub / peer),
                _ => "-".into(),
            }));
            lines.push(line);
        }
        let noted: Vec<&str> = {
            let mut seen = BTreeSet::new();
            self.notes
                .iter()
                .filter(|n| seen.insert(n.metric))
                .map(|n| n.metric)
                .collect()
        };
        for metric in noted {
            let mut line = vec!["all".to_owned(), metric.to_owned(), "-".to_owned()];
            line.extend(systems.iter().map(|s| {
                self.notes
                    .iter()
                    .find(|n| n.metric == metric && n.system == *s)
                    .map_or("-".into(), |n| n.note.to_owned())
            }));
            line.extend(peers.iter().map(|_| "-".to_owned()));
            lines.push(line);
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (n, line) in lines.iter().enumerate() {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, width))| {
                    if i < 3 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
            if n == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                let _ = writeln!(out, "{}", rule.join("  "));
            }
        }
        out
    }

    /// A JSON line per measure, then one per hub/peer ratio (system `hub/<peer>`, unit `ratio`).
    pub fn json_lines(&self) -> String {
        let mut out = String::new();
        for m in &self.measures {
            let _ = writeln!(out, "{}", serde_json::to_string(m).expect("plain data"));
        }
        for n in &self.notes {
            let _ = writeln!(out, "{}", serde_json::to_string(n).expect("plain data"));
        }
        for m in self.measures.iter().filter(|m| m.system != "hub") {
            let hub = self
                .measures
                .iter()
                .find(|h| h.system == "hub" && h.scenario == m.scenario && h.metric == m.metric);
            if let Some(hub) = hub.filter(|_| m.value != 0.0) {
                let ratio = Measure {
                    scenario: m.scenario,
                    system: format!("hub/{}", m.system),
                    metric: m.metric,
                    value: hub.value / m.value,
                    unit: "ratio",
                };
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&ratio).expect("plain data")
                );
            }
        }
        out
    }
}

/// One scenario's run on one system.
pub struct Run<'a> {
    report: &'a mut Report,
    scenario: &'static str,
    system: String,
}

impl Run<'_> {
    /// Records `metric`.
    pub fn add(&mut self, metric: &'static str, value: f64, unit: &'static str) {
        let (scenario, system) = (self.scenario, self.system.clone());
        self.report.add(scenario, &system, metric, value, unit);
    }
}

/// Microseconds as milliseconds.
pub fn millis(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Numbers as people read them: integers without decimals, small values with a few.
fn format_value(value: f64) -> String {
    if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

/// The `p`-quantile (0 < p ≤ 1) of sorted values, nearest rank.
pub fn quantile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_puts_systems_side_by_side_with_ratios() {
        let mut report = Report::default();
        report.add("drain", "hub", "pixels_per_second", 20_000.0, "pixels/s");
        report.add(
            "drain",
            "mosquitto",
            "pixels_per_second",
            8_000.0,
            "pixels/s",
        );
        report.add("drain", "hub", "seconds", 2.5, "s");
        let table = report.table();
        assert!(table.contains("hub/mosquitto"), "{table}");
        assert!(table.contains("2.50"), "{table}");
        assert!(
            table.lines().any(|l| l.starts_with("drain     seconds")),
            "{table}"
        );
        let json = report.json_lines();
        assert_eq!(
            json.lines().count(),
            4,
            "three measures and one ratio: {json}"
        );
        assert!(json.contains(r#""system":"hub/mosquitto","metric":"pixels_per_second","value":2.5,"unit":"ratio""#), "{json}");
    }

    #[test]
    fn notes_are_a_row_of_their_own_beside_the_numbers() {
        let mut report = Report::default();
        report.add("drain", "hub", "pixels_per_second", 20_000.0, "pixels/s");
        report.add("drain", "nats", "pixels_per_second", 4_000.0, "pixels/s");
        report.note("hub", "durability", "fdatasync before each 202 and ack");
        report.note("nats", "durability", "memory; fsync every 2 min");
        let table = report.table();
        let row = table
            .lines()
            .find(|l| l.starts_with("all"))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(
            row.contains("fdatasync before each 202 and ack")
                && row.contains("memory; fsync every 2 min"),
            "{table}"
        );
        assert!(report.json_lines().contains(
            r#"{"system":"nats","metric":"durability","note":"memory; fsync every 2 min"}"#
        ));
    }

    #[test]
    fn without_the_hub_there_are_no_ratio_columns() {
        let mut report = Report::default();
        report.add("disk_stalls", "appends alone", "append_p99", 0.2, "ms");
        report.add("disk_stalls", "every CPU busy", "append_p99", 9.0, "ms");
        let table = report.table();
        assert!(!table.contains("hub/"), "{table}");
        assert!(
            table.lines().next().unwrap().ends_with("every CPU busy"),
            "{table}"
        );
        assert!(!report.json_lines().contains("ratio"));
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let values: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&values, 0.5), 500);
        assert_eq!(quantile(&values, 0.99), 990);
        assert_eq!(quantile(&values, 0.999), 999);
        assert_eq!(quantile(&[7], 0.999), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
