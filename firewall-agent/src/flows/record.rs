//! The flow record: what one flow event or policy change says, as typed fields, one JSON
//! object per event in the flow log (README: "Flow record").
//!
//! A record is cheap to make: numbers, times and identifiers stay numbers until a sink
//! encodes them, and names (zones, policies, the node, pods and their labels) are shared
//! with the enricher instead of copied. What a record says about a pod lives in an
//! [`Owner`] made once per policy generation and never changed after; its [`OwnerId`] is
//! never given to another owner, so an encoder may render an owner once and reuse the
//! text under that id.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::policy::model::Workload;

/// A name shared between the enricher and every record that mentions it.
pub type Name = Arc<str>;

/// A point in time, nanoseconds since the Unix epoch (UTC). Records write it as RFC 3339
/// with as many fractional digits as needed (`2026-01-02T03:04:05.1234Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i128);

/// Seconds of 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: RFC 3339 has four-digit
/// years; times outside are written as their number of nanoseconds.
const RFC3339_FIRST_SECOND: i64 = -62_167_219_200;
const RFC3339_LAST_SECOND: i64 = 253_402_300_799;

/// The longest RFC 3339 text a [`Timestamp`] writes, and more than its integer fallback.
pub const TIMESTAMP_MAX_LEN: usize = 48;

impl Timestamp {
    /// Nanoseconds since the epoch.
    pub fn unix_nanos(self) -> i128 {
        self.0
    }

    /// Milliseconds since the epoch, when the time has an RFC 3339 form (OCSF and CEF
    /// write milliseconds).
    pub fn unix_millis(self) -> Option<i64> {
        self.civil_seconds()?;
        Some((self.0 / 1_000_000) as i64)
    }

    fn civil_seconds(self) -> Option<(i64, u32)> {
        let seconds = self.0.div_euclid(1_000_000_000);
        let nanos = self.0.rem_euclid(1_000_000_000) as u32;
        let seconds = i64::try_from(seconds).ok()?;
        (RFC3339_FIRST_SECOND..=RFC3339_LAST_SECOND)
            .contains(&seconds)
            .then_some((seconds, nanos))
    }

    /// Writes the time into `buffer`; returns the length written.
    pub fn write_to(self, buffer: &mut [u8; TIMESTAMP_MAX_LEN]) -> usize {
        let Some((seconds, nanos)) = self.civil_seconds() else {
            return write_i128(buffer, self.0);
        };
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60,
        );
        let year = year as u32;
        buffer[0..2].copy_from_slice(&TWO_DIGITS[(year / 100) as usize]);
        buffer[2..4].copy_from_slice(&TWO_DIGITS[(year % 100) as usize]);
        buffer[4] = b'-';
        buffer[5..7].copy_from_slice(&TWO_DIGITS[month as usize]);
        buffer[7] = b'-';
        buffer[8..10].copy_from_slice(&TWO_DIGITS[day as usize]);
        buffer[10] = b'T';
        buffer[11..13].copy_from_slice(&TWO_DIGITS[hour as usize]);
        buffer[13] = b':';
        buffer[14..16].copy_from_slice(&TWO_DIGITS[minute as usize]);
        buffer[16] = b':';
        buffer[17..19].copy_from_slice(&TWO_DIGITS[second as usize]);
        let mut length = 19;
        if nanos != 0 {
            buffer[19] = b'.';
            let mut fraction = nanos;
            for index in (20..29).rev() {
                buffer[index] = b'0' + (fraction % 10) as u8;
                fraction /= 10;
            }
            length = 29;
            while buffer[length - 1] == b'0' {
                length -= 1;
            }
        }
        buffer[length] = b'Z';
        length + 1
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = [0; TIMESTAMP_MAX_LEN];
        let length = self.write_to(&mut buffer);
        // Only ASCII digits and separators were written.
        formatter.write_str(std::str::from_utf8(&buffer[..length]).map_err(|_| fmt::Error)?)
    }
}

/// `00`, `01`, ... `99`.
pub(crate) const TWO_DIGITS: [[u8; 2]; 100] = {
    let mut table = [[0; 2]; 100];
    let mut index = 0;
    while index < 100 {
        table[index] = [b'0' + (index / 10) as u8, b'0' + (index % 10) as u8];
        index += 1;
    }
    table
};

fn write_i128(buffer: &mut [u8; TIMESTAMP_MAX_LEN], value: i128) -> usize {
    let mut digits = [0u8; 40];
    let mut position = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        position -= 1;
        digits[position] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut length = 0;
    if value < 0 {
        buffer[0] = b'-';
        length = 1;
    }
    let count = digits.len() - position;
    buffer[length..length + count].copy_from_slice(&digits[position..]);
    length + count
}

/// Year, month, day of a day number counted from 1970-01-01 (proleptic Gregorian),
/// by counting 400-year eras that start on March 1st.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Unique per record: the enricher's start (hex nanoseconds) and a sequence number,
/// written `18f0c2a1b3c4d5e6-42`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordId {
    pub started_ns: u64,
    pub sequence: u64,
}

impl fmt::Display for RecordId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:x}-{}", self.started_ns, self.sequence)
    }
}

/// An IP protocol number, written by name where it has one (`tcp`), else as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Protocol(pub u8);

impl Protocol {
    /// The name of a well-known protocol (firewall-common's vocabulary).
    pub fn name(self) -> Option<&'static str> {
        firewall_common::protocol_name(self.0)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => formatter.write_str(name),
            None => write!(formatter, "{}", self.0),
        }
    }
}

pub fn protocol_name(proto: u8) -> String {
    Protocol(proto).to_string()
}

/// TCP flags seen in one direction, written `SYN,ACK` (never zero in a record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

pub(crate) use firewall_common::TCP_FLAG_NAMES;

impl TcpFlags {
    /// None when no flag was seen.
    pub fn of(bits: u8) -> Option<Self> {
        (bits != 0).then_some(Self(bits))
    }

    /// The names of the flags set, in bit order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        TCP_FLAG_NAMES
            .iter()
            .filter(move |(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| *name)
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, name) in self.names().enumerate() {
            if index > 0 {
                formatter.write_str(",")?;
            }
            formatter.write_str(name)?;
        }
        Ok(())
    }
}

pub fn tcp_flag_names(flags: u8) -> Option<String> {
    TcpFlags::of(flags).map(|flags| flags.to_string())
}

/// Ties start, updates and end of one flow together; written as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowId(pub u64);

impl fmt::Display for FlowId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:016x}", self.0)
    }
}

/// What the enricher knows about the owner of an address (a pod, a node or a service),
/// for one policy generation. Immutable (its fields are read through methods): a new
/// generation makes new owners, with new ids.
#[derive(Debug)]
pub struct Owner {
    ip: IpAddr,
    namespace: Option<String>,
    pod: Option<String>,
    node: Option<String>,
    workload: Option<Workload>,
    labels: BTreeMap<String, String>,
    id: OwnerId,
}

/// Which owner among every owner this process made: its batch (the owners of one policy
/// generation, or an owner made on its own) and its place in the batch. No two owners
/// get the same id, so an encoder may keep what it rendered of an owner under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OwnerId {
    pub batch: u64,
    pub index: u32,
}

/// Makes the owners of one batch, numbered from 0.
#[derive(Debug)]
pub struct OwnerBatch {
    batch: u64,
    next: u32,
}

impl Default for OwnerBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl OwnerBatch {
    /// A batch no other had the number of.
    pub fn new() -> Self {
        static BATCHES: AtomicU64 = AtomicU64::new(0);
        Self {
            batch: BATCHES.fetch_add(1, Ordering::Relaxed),
            next: 0,
        }
    }

    /// `owner` as the next owner of this batch.
    pub fn add(&mut self, owner: Owner) -> Owner {
        Owner {
            id: self.next_id(),
            ..owner
        }
    }

    fn next_id(&mut self) -> OwnerId {
        if self.next == u32::MAX {
            // Indexes are never handed out twice: a full batch goes on as a new one.
            *self = Self::new();
        }
        let id = OwnerId {
            batch: self.batch,
            index: self.next,
        };
        self.next += 1;
        id
    }
}

impl Owner {
    /// An owner in a batch of its own ([`OwnerBatch::add`] puts it in another).
    pub fn new(
        ip: IpAddr,
        namespace: Option<String>,
        pod: Option<String>,
        node: Option<String>,
        workload: Option<Workload>,
        labels: BTreeMap<String, String>,
    ) -> Self {
        Self {
            ip,
            namespace,
            pod,
            node,
            workload,
            labels,
            id: OwnerBatch::new().next_id(),
        }
    }

    /// The address this owner was learned for.
    #[inline]
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    #[inline]
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    #[inline]
    pub fn pod(&self) -> Option<&str> {
        self.pod.as_deref()
    }

    #[inline]
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The pod's owner: `{"kind": "Deployment", "name": "web"}`.
    #[inline]
    pub fn workload(&self) -> Option<&Workload> {
        self.workload.as_ref()
    }

    /// The pod's labels (empty for anything else).
    #[inline]
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    #[inline]
    pub fn id(&self) -> OwnerId {
        self.id
    }
}

impl PartialEq for Owner {
    /// Equal when they say the same, whichever batch they belong to.
    fn eq(&self, other: &Self) -> bool {
        self.ip == other.ip
            && self.namespace == other.namespace
            && self.pod == other.pod
            && self.node == other.node
            && self.workload == other.workload
            && self.labels == other.labels
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub ip: IpAddr,
    /// TCP/UDP/SCTP port; the identifier for ICMP echo; absent otherwise.
    pub port: Option<u16>,
    pub zone: Name,
    /// Who has this address, when the policy says.
    pub owner: Option<Arc<Owner>>,
}

impl Peer {
    pub fn namespace(&self) -> Option<&str> {
        self.owner.as_ref()?.namespace()
    }

    pub fn pod(&self) -> Option<&str> {
        self.owner.as_ref()?.pod()
    }

    pub fn node(&self) -> Option<&str> {
        self.owner.as_ref()?.node()
    }

    pub fn workload(&self) -> Option<&Workload> {
        self.owner.as_ref()?.workload()
    }

    /// The pod's labels (empty for anything else).
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.owner
            .as_ref()
            .map(|owner| owner.labels())
            .filter(|labels| !labels.is_empty())
    }
}

/// A flow event as the sinks write it, field by field what README.md's "Flow records for
/// a SIEM" lists; the encoders (`encode`) turn the typed fields into text.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRecord {
    /// RFC 3339, UTC, nanoseconds.
    pub time: Timestamp,
    /// Unique per record (agent start + sequence): lets a SIEM drop the duplicates a
    /// syslog reconnect may resend.
    pub record_id: RecordId,
    pub node: Option<Name>,
    /// start, end, deny, audit, update.
    pub event: &'static str,
    /// allow or deny: what happened to the traffic.
    pub verdict: &'static str,
    /// The policy that decided, or the default (`default-deny-inter-zone`, ...).
    pub policy: Name,
    /// For audit events: the Audit-mode policy that would have denied the flow.
    pub audit_policy: Option<Name>,
    pub protocol: Protocol,
    pub src: Peer,
    pub dst: Peer,
    /// Packets and bytes, both directions together; `*_reply` is the responder's share.
    pub packets: u64,
    pub bytes: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    pub tcp_flags: Option<TcpFlags>,
    pub tcp_flags_reply: Option<TcpFlags>,
    /// Ties start, update and end of one flow together (hex).
    pub flow_id: Option<FlowId>,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    /// Where the packet was seen: from-pod (the pod sent it) or to-pod.
    pub direction: &'static str,
    pub interface: Option<Name>,
    pub generation: u32,
    /// Deny events of this source left out by the rate limit since the previous one.
    pub suppressed: u32,
}

/// A change of the enforced policy (or a rejected attempt), as an audit record.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PolicyChangeRecord {
    pub time: String,
    pub record_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Always `policy-change`.
    pub event: &'static str,
    /// Where the policy came from (a file, the Kubernetes API).
    pub source: String,
    /// `applied`, `rejected` or `failed`.
    pub outcome: &'static str,
    pub generation_old: u32,
    pub generation_new: u32,
    /// `Kind/name` of every object added, changed or removed.
    pub changed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who made the change, when the source says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
}

impl PolicyChangeRecord {
    #[cfg(test)]
    pub fn test_record() -> Self {
        Self {
            time: "2026-01-02T03:04:05.123456789Z".into(),
            record_id: "1-1".into(),
            node: Some("node-1".into()),
            event: "policy-change",
            source: "file /etc/zonewall/policy.yaml".into(),
            outcome: "applied",
            generation_old: 1,
            generation_new: 2,
            changed: vec!["ZonePolicy/a".into()],
            message: None,
            changed_by: None,
        }
    }
}

/// What the sinks carry.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Flow(FlowRecord),
    PolicyChange(PolicyChangeRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_rfc3339(unix_ns: i128) -> String {
        let Ok(time) = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns) else {
            return unix_ns.to_string();
        };
        time.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| unix_ns.to_string())
    }

    #[test]
    fn times_are_written_as_the_time_crate_writes_rfc3339() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut cases: Vec<i128> = vec![
            0,
            1,
            -1,
            999_999_999,
            1_000_000_000,
            1_767_323_045_123_456_789,
            1_767_323_045_100_000_000,
            1_767_323_045_000_000_001,
            951_782_400_000_000_000, // 2000-02-29
            4_107_542_400_000_000_000,
            i128::from(RFC3339_FIRST_SECOND) * 1_000_000_000,
            i128::from(RFC3339_FIRST_SECOND) * 1_000_000_000 - 1,
            i128::from(RFC3339_LAST_SECOND) * 1_000_000_000 + 999_999_999,
            i128::from(RFC3339_LAST_SECOND + 1) * 1_000_000_000,
            i128::from(i64::MAX) * 1_000,
            i128::MIN / 2,
        ];
        for _ in 0..20_000 {
            // Anywhere in the four-digit years, and near now at nanosecond resolution.
            let span = (RFC3339_LAST_SECOND - RFC3339_FIRST_SECOND) as u64;
            let second = RFC3339_FIRST_SECOND + (next() % span) as i64;
            cases.push(i128::from(second) * 1_000_000_000 + i128::from(next() % 1_000_000_000));
            cases.push(1_700_000_000_000_000_000 + i128::from(next() % (1 << 62)));
            cases.push(i128::from(second) * 1_000_000_000 + i128::from(next() % 10) * 100_000);
        }
        for unix_ns in cases {
            let expected = reference_rfc3339(unix_ns);
            assert_eq!(Timestamp(unix_ns).to_string(), expected, "{unix_ns}");
            let millis = time::OffsetDateTime::parse(
                &expected,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
            .map(|time| (time.unix_timestamp_nanos() / 1_000_000) as i64);
            assert_eq!(Timestamp(unix_ns).unix_millis(), millis, "{unix_ns}");
        }
    }

    #[test]
    fn flags_protocols_and_ids_read_as_before() {
        assert_eq!(tcp_flag_names(0), None);
        assert_eq!(tcp_flag_names(0x12).as_deref(), Some("SYN,ACK"));
        assert_eq!(
            tcp_flag_names(0xff).as_deref(),
            Some("FIN,SYN,RST,PSH,ACK,URG,ECE,CWR")
        );
        assert_eq!(protocol_name(6), "tcp");
        assert_eq!(protocol_name(47), "47");
        assert_eq!(FlowId(0xab).to_string(), "00000000000000ab");
        let id = RecordId {
            started_ns: 0x18f0_c2a1,
            sequence: 42,
        };
        assert_eq!(id.to_string(), "18f0c2a1-42");
    }
}
