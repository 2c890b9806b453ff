//! What the demo prints: the verdicts seen next to what the policy says, a zone-to-zone
//! summary, and the flow-log lines that explain each verdict.

use std::net::IpAddr;

use serde_json::Value;

use super::scenario::{Expectation, ZONES, zone_of};

/// One probed path, over IPv4 and IPv6.
pub struct Outcome {
    pub expectation: Expectation,
    /// Source and destination address per family (IPv4 first).
    pub addresses: [(IpAddr, IpAddr); 2],
    /// Whether the probe got through, per family (IPv4 first).
    pub allowed: [bool; 2],
}

impl Outcome {
    pub fn matches(&self) -> bool {
        self.allowed
            .iter()
            .all(|allowed| *allowed == self.expectation.allowed)
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

fn endpoint(name: &str) -> String {
    format!("{name} ({})", zone_of(name))
}

/// The table of every probe: what the policy says, what IPv4 and IPv6 saw.
pub fn print_verdicts(outcomes: &[Outcome]) {
    println!();
    println!("Verdicts: what the policy says, what the probes saw");
    println!(
        "  {:<22} {:<22} {:<9} {:<56} {:<6} {:<6}",
        "from", "to", "traffic", "policy says", "IPv4", "IPv6"
    );
    for outcome in outcomes {
        let expectation = &outcome.expectation;
        let mut says = format!(
            "{:<5}  {}",
            verdict(expectation.allowed),
            expectation.policy
        );
        if let Some(audit) = expectation.audit {
            says.push_str(&format!(" + audit {audit}"));
        }
        let flag = if outcome.matches() {
            ""
        } else {
            "  <-- differs from the policy"
        };
        println!(
            "  {:<22} {:<22} {:<9} {:<56} {:<6} {:<6}{flag}",
            endpoint(expectation.from),
            endpoint(expectation.to),
            expectation.traffic.to_string(),
            says,
            verdict(outcome.allowed[0]),
            verdict(outcome.allowed[1]),
        );
    }
}

/// A zone-to-zone grid of what the probes saw: `+` got through, `-` was denied.
pub fn print_zone_matrix(outcomes: &[Outcome]) {
    println!();
    println!("Zone to zone (rows: from, columns: to; + allowed, - denied, IPv4 and IPv6 alike)");
    let cells: Vec<Vec<String>> = ZONES
        .iter()
        .map(|from| {
            ZONES
                .iter()
                .map(|to| zone_cell(outcomes, from, to))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..ZONES.len())
        .map(|column| {
            cells
                .iter()
                .map(|row| row[column].len())
                .chain([ZONES[column].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let first = ZONES.iter().map(|zone| zone.len()).max().unwrap_or(0);
    print!("  {:<first$}", "");
    for (zone, width) in ZONES.iter().zip(&widths) {
        print!("  {zone:<width$}");
    }
    println!();
    for (from, row) in ZONES.iter().zip(&cells) {
        print!("  {from:<first$}");
        for (cell, width) in row.iter().zip(&widths) {
            print!("  {cell:<width$}");
        }
        println!();
    }
}

fn zone_cell(outcomes: &[Outcome], from: &str, to: &str) -> String {
    let entries: Vec<String> = outcomes
        .iter()
        .filter(|outcome| {
            zone_of(outcome.expectation.from) == from && zone_of(outcome.expectation.to) == to
        })
        .map(|outcome| {
            let sign = match outcome.allowed {
                [true, true] => "+",
                [false, false] => "-",
                _ => "?",
            };
            format!("{sign}{}", outcome.expectation.traffic)
        })
        .collect();
    if entries.is_empty() {
        ".".to_string()
    } else {
        entries.join(" ")
    }
}

/// The flow-log lines of every probe, shortened. Returns how many probes have none.
pub fn print_flows(outcomes: &[Outcome], records: &[Value]) -> usize {
    println!();
    println!("Flow log: the records behind each verdict");
    let mut without = 0;
    for outcome in outcomes {
        let expectation = &outcome.expectation;
        println!(
            "  {} -> {} {}:",
            endpoint(expectation.from),
            endpoint(expectation.to),
            expectation.traffic
        );
        let mut any = false;
        for (family, (source, destination)) in outcome.addresses.iter().enumerate() {
            let protocol = expectation.traffic.protocol(family == 1);
            let port = expectation.traffic.port();
            let lines: Vec<String> = records
                .iter()
                .filter(|record| is_flow_of(record, protocol, *source, *destination, port))
                .map(short_record)
                .collect();
            // A resent datagram gives the same record again: show it once, with a count.
            for run in lines.chunk_by(|a, b| same_but_time(a, b)) {
                let count = if run.len() > 1 {
                    format!("  (x{})", run.len())
                } else {
                    String::new()
                };
                println!("    {}{count}", run[0]);
                any = true;
            }
        }
        if !any {
            without += 1;
            let why = if expectation.allowed {
                "(no record)"
            } else {
                "(no record: deny events are rate-limited per source)"
            };
            println!("    {why}");
        }
    }
    without
}

/// Whether two short records differ only in their time (the first 12 characters).
fn same_but_time(a: &str, b: &str) -> bool {
    a.get(12..) == b.get(12..)
}

/// Whether `record` is about traffic `source -> destination[:port]` of `protocol`.
pub fn is_flow_of(
    record: &Value,
    protocol: &str,
    source: IpAddr,
    destination: IpAddr,
    port: Option<u16>,
) -> bool {
    let ip = |side: &str| {
        record[side]["ip"]
            .as_str()
            .and_then(|text| text.parse::<IpAddr>().ok())
    };
    record["protocol"].as_str() == Some(protocol)
        && ip("src") == Some(source)
        && ip("dst") == Some(destination)
        && port.is_none_or(|port| record["dst"]["port"].as_u64() == Some(u64::from(port)))
}

/// One line for a flow record: time, event, verdict, protocol, both ends, the deciding
/// (and auditing) policy, and the counters of end and update records.
pub fn short_record(record: &Value) -> String {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    // `2026-05-19T12:34:56.789012Z` -> `12:34:56.789`
    let time = text(&record["time"]);
    let time = time
        .split_once('T')
        .map_or(time.as_str(), |(_, clock)| clock)
        .chars()
        .take(12)
        .collect::<String>();
    let protocol = text(&record["protocol"]);
    // ICMP records carry the echo identifier as their "port": not worth showing.
    let ports = !protocol.starts_with("icmp");
    let mut line = format!(
        "{time:<12} {:<6} {:<5} {protocol:<6} {} -> {}",
        text(&record["event"]),
        text(&record["verdict"]),
        short_endpoint(&record["src"], ports),
        short_endpoint(&record["dst"], ports),
    );
    if !record["policy"].is_null() {
        line.push_str(&format!("  policy={}", text(&record["policy"])));
    }
    if !record["audit_policy"].is_null() {
        line.push_str(&format!(" audit={}", text(&record["audit_policy"])));
    }
    if matches!(record["event"].as_str(), Some("end" | "update")) {
        line.push_str(&format!(
            "  sent {}p/{}B, replies {}p/{}B",
            text(&record["packets"]),
            text(&record["bytes"]),
            text(&record["packets_reply"]),
            text(&record["bytes_reply"]),
        ));
    }
    line
}

/// `shop-frontend/web 198.18.1.10:41234 <dmz>`, or `203.0.113.10:443 <partner>`.
fn short_endpoint(side: &Value, with_port: bool) -> String {
    let mut text = String::new();
    if let (Some(namespace), Some(pod)) = (side["namespace"].as_str(), side["pod"].as_str()) {
        text.push_str(&format!("{namespace}/{pod} "));
    }
    let ip = side["ip"].as_str().unwrap_or("?");
    match side["port"].as_u64().filter(|_| with_port) {
        Some(port) if ip.contains(':') => text.push_str(&format!("[{ip}]:{port}")),
        Some(port) => text.push_str(&format!("{ip}:{port}")),
        None => text.push_str(ip),
    }
    if let Some(zone) = side["zone"].as_str() {
        text.push_str(&format!(" <{zone}>"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortens_an_end_record_with_counters() {
        let record: Value = serde_json::from_str(
            r#"{"time":"2026-05-19T12:34:56.789012Z","event":"end","verdict":"allow","policy":"app-to-db",
                "protocol":"icmp","src":{"ip":"198.18.1.11","port":7,"zone":"trusted"},
                "dst":{"ip":"198.18.1.12","port":7,"zone":"restricted"},
                "packets":2,"bytes":196,"packets_reply":2,"bytes_reply":196}"#,
        )
        .expect("valid JSON");
        assert_eq!(
            short_record(&record),
            "12:34:56.789 end    allow icmp   198.18.1.11 <trusted> -> 198.18.1.12 <restricted>  policy=app-to-db  sent 2p/196B, replies 2p/196B"
        );
    }

    #[test]
    fn shortens_a_record() {
        let record: Value = serde_json::from_str(
            r#"{"time":"2026-05-19T12:34:56.789012Z","event":"deny","verdict":"deny","policy":"default",
                "protocol":"tcp","src":{"ip":"198.18.1.10","port":41234,"zone":"dmz","namespace":"shop-frontend","pod":"web"},
                "dst":{"ip":"2001:db8:1::12","port":5432,"zone":"restricted","namespace":"shop-data","pod":"db"}}"#,
        )
        .expect("valid JSON");
        assert_eq!(
            short_record(&record),
            "12:34:56.789 deny   deny  tcp    shop-frontend/web 198.18.1.10:41234 <dmz> -> shop-data/db [2001:db8:1::12]:5432 <restricted>  policy=default"
        );
        assert!(is_flow_of(
            &record,
            "tcp",
            "198.18.1.10".parse().unwrap(),
            "2001:db8:1::12".parse().unwrap(),
            Some(5432)
        ));
        assert!(!is_flow_of(
            &record,
            "tcp",
            "198.18.1.10".parse().unwrap(),
            "2001:db8:1::12".parse().unwrap(),
            Some(443)
        ));
    }
}
