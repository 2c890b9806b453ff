//! What a sink is: its URL (`syslog+tls://siem.example:6514?format=ocsf&ca=/ca.pem`)
//! parsed into a [`SinkSpec`], validated at start so that a bad URL stops the agent with
//! a message instead of losing records later.

use std::path::PathBuf;

use crate::flows::encode::Format;
use crate::flows::record::Record;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {url}: {reason}")]
    Spec { url: String, reason: String },
    #[error("flow log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Where a sink writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Stdout,
    File(PathBuf),
    SyslogUdp(String),
    SyslogTcp(String),
    SyslogTls(String),
}

/// Sampling of allowed flows by zone pair: (from, to, kept fraction), first match wins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling(Vec<(String, String, f64)>);

impl Sampling {
    fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for entry in text.split(',').filter(|entry| !entry.is_empty()) {
            let (pair, rate) = entry
                .split_once('=')
                .ok_or_else(|| format!("sample entry {entry:?}: write FROM/TO=RATE"))?;
            let (from, to) = pair
                .split_once('/')
                .ok_or_else(|| format!("sample entry {entry:?}: write FROM/TO=RATE"))?;
            let rate: f64 = rate
                .parse()
                .map_err(|_| format!("sample entry {entry:?}: rate must be a number"))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "sample entry {entry:?}: rate must be between 0 and 1"
                ));
            }
            rules.push((from.to_owned(), to.to_owned(), rate));
        }
        Ok(Sampling(rules))
    }

    /// Whether a record is kept. Denials, audits and policy changes always are; the flows
    /// of a pair are kept or dropped whole (by flow id), so start, updates and end agree.
    pub fn keeps(&self, record: &Record) -> bool {
        let Record::Flow(flow) = record else {
            return true;
        };
        if flow.verdict == "deny" || flow.event == "audit" || flow.event == "deny" {
            return true;
        }
        if self.0.is_empty() {
            return true;
        }
        let matches = |pattern: &str, zone: &str| pattern == "*" || pattern == zone;
        let Some((_, _, rate)) = self
            .0
            .iter()
            .find(|(from, to, _)| matches(from, &flow.src.zone) && matches(to, &flow.dst.zone))
        else {
            return true;
        };
        let id = flow.flow_id.map(|id| id.0).unwrap_or_default();
        // A multiplicative hash spreads sequential ids over [0, 1).
        let fraction = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
        fraction < *rate
    }
}

/// TLS settings of a `syslog+tls` sink.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsSettings {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// One configured sink.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkSpec {
    /// The URL as given (for logs and metrics labels).
    pub url: String,
    pub target: Target,
    pub format: Format,
    pub fields: Vec<String>,
    pub sampling: Sampling,
    pub queue: usize,
    pub rotate_bytes: Option<u64>,
    pub keep: usize,
    pub tls: TlsSettings,
    pub replay_bytes: usize,
}

fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((index, _)) => text.split_at(index),
        None => (text, ""),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("size {text:?}: a number, optionally with K, M or G"))?;
    let factor = match unit.trim_end_matches(['i', 'B']) {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return Err(format!("size {text:?}: unit must be K, M or G")),
    };
    Ok(number * factor)
}

impl SinkSpec {
    /// A JSON-lines sink for `--flow-log FILE|-`.
    pub fn flow_log(target: &str) -> Self {
        let mut spec =
            Self::parse(if target == "-" { "stdout:" } else { "file:" }).expect("static URL");
        spec.url = target.to_owned();
        if target != "-" {
            spec.target = Target::File(PathBuf::from(target));
        }
        spec
    }

    pub fn parse(url: &str) -> Result<Self, SinkError> {
        let error = |reason: String| SinkError::Spec {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = url.split_once(':').ok_or_else(|| {
            error(
                "no scheme: use stdout:, file:PATH, syslog+udp://, syslog+tcp:// or syslog+tls://"
                    .into(),
            )
        })?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let location = location.strip_prefix("//").unwrap_or(location);
        let target = match scheme {
            "stdout" => Target::Stdout,
            "file" => {
                if location.is_empty() && !url.starts_with("file:") {
                    return Err(error("file: needs a path".into()));
                }
                Target::File(PathBuf::from(location))
            }
            "syslog+udp" | "syslog+tcp" | "syslog+tls" => {
                if location.is_empty() || !location.contains(':') {
                    return Err(error("syslog needs HOST:PORT".into()));
                }
                match scheme {
                    "syslog+udp" => Target::SyslogUdp(location.to_owned()),
                    "syslog+tcp" => Target::SyslogTcp(location.to_owned()),
                    _ => Target::SyslogTls(location.to_owned()),
                }
            }
            other => {
                return Err(error(format!(
                    "unknown scheme {other:?}: use stdout:, file:PATH, syslog+udp://, syslog+tcp:// or syslog+tls://"
                )));
            }
        };
        let mut spec = SinkSpec {
            url: url.to_owned(),
            target,
            format: Format::Json,
            fields: Vec::new(),
            sampling: Sampling::default(),
            queue: 65_536,
            rotate_bytes: None,
            keep: 5,
            tls: TlsSettings::default(),
            replay_bytes: 4 << 20,
        };
        for parameter in query.split('&').filter(|parameter| !parameter.is_empty()) {
            let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            match name {
                "format" => spec.format = Format::parse(value).map_err(error)?,
                "fields" => {
                    spec.fields = value
                        .split(',')
                        .filter(|f| !f.is_empty())
                        .map(String::from)
                        .collect()
                }
                "sample" => spec.sampling = Sampling::parse(value).map_err(error)?,
                "queue" => {
                    spec.queue = value
                        .parse()
                        .ok()
                        .filter(|queue| *queue > 0)
                        .ok_or_else(|| error(format!("queue {value:?}: a positive number")))?
                }
                "max-size" => spec.rotate_bytes = Some(parse_size(value).map_err(error)?),
                "keep" => {
                    spec.keep = value
                        .parse()
                        .map_err(|_| error(format!("keep {value:?}: a number")))?
                }
                "replay" => spec.replay_bytes = parse_size(value).map_err(error)? as usize,
                "ca" => spec.tls.ca = Some(PathBuf::from(value)),
                "cert" => spec.tls.cert = Some(PathBuf::from(value)),
                "key" => spec.tls.key = Some(PathBuf::from(value)),
                "server-name" => spec.tls.server_name = Some(value.to_owned()),
                other => return Err(error(format!("unknown parameter {other:?}"))),
            }
        }
        if !spec.fields.is_empty() && spec.format != Format::Json {
            return Err(error("fields= applies to format=json only".into()));
        }
        if spec.rotate_bytes.is_some() && !matches!(spec.target, Target::File(_)) {
            return Err(error("max-size= applies to file sinks only".into()));
        }
        if matches!(spec.target, Target::SyslogTls(_))
            && spec.tls.cert.is_some() != spec.tls.key.is_some()
        {
            return Err(error(
                "a client certificate needs both cert= and key=".into(),
            ));
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_urls_parse_and_bad_ones_say_why() {
        let spec =
            SinkSpec::parse("syslog+tls://siem.example:6514?format=ocsf&ca=/ca.pem&queue=10")
                .unwrap();
        assert_eq!(spec.target, Target::SyslogTls("siem.example:6514".into()));
        assert_eq!(spec.format, Format::Ocsf);
        assert_eq!(spec.queue, 10);
        assert_eq!(spec.tls.ca, Some(PathBuf::from("/ca.pem")));
        let spec =
            SinkSpec::parse("file:/var/log/flows.jsonl?max-size=10M&keep=3&fields=time,src.ip")
                .unwrap();
        assert_eq!(spec.target, Target::File("/var/log/flows.jsonl".into()));
        assert_eq!(spec.rotate_bytes, Some(10 << 20));
        assert_eq!(spec.keep, 3);
        assert_eq!(spec.fields, ["time", "src.ip"]);
        let spec =
            SinkSpec::parse("syslog+udp://127.0.0.1:514?sample=dmz/trusted=0.1,*/*=1").unwrap();
        assert_eq!(spec.sampling.0.len(), 2);
        for (url, reason) in [
            ("kafka://x:1", "unknown scheme"),
            ("syslog+tcp://nohostport", "HOST:PORT"),
            ("stdout:?format=xml", "format \"xml\""),
            (
                "stdout:?fields=a&format=cef",
                "fields= applies to format=json only",
            ),
            (
                "stdout:?max-size=1M",
                "max-size= applies to file sinks only",
            ),
            ("stdout:?sample=dmz=0.5", "FROM/TO=RATE"),
            ("stdout:?sample=a/b=2", "between 0 and 1"),
            ("stdout:?queue=0", "positive"),
            ("stdout:?colour=red", "unknown parameter"),
            ("syslog+tls://h:1?ca=/c&cert=/x", "both cert= and key="),
        ] {
            let error = SinkSpec::parse(url).unwrap_err().to_string();
            assert!(error.contains(reason), "{url}: {error}");
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert!(parse_size("1T").is_err());
        assert!(parse_size("x").is_err());
    }
}
