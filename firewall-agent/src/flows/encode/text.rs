//! Text primitives of the encoders: JSON strings escaped as `serde_json` escapes them,
//! integers, hex, times, addresses and object keys, all appended to the caller's buffer
//! without allocating. They are `#[inline]`: each encoder calls them a few dozen times a
//! record, and a call across modules is not inlined otherwise.

use std::io::Write as _;
use std::net::IpAddr;

use crate::flows::record::{
    FlowRecord, RecordId, TIMESTAMP_MAX_LEN, TWO_DIGITS, TcpFlags, Timestamp,
};

/// How each byte is written inside a JSON string, as `serde_json` does: 0 as itself,
/// `u` as `\u00XX`, anything else after a backslash.
const JSON_ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The inside of a JSON string (no quotes).
#[inline]
pub(super) fn push_escaped(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape = JSON_ESCAPES[byte as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[plain_from..index]);
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX_DIGITS[(byte >> 4) as usize]);
            out.push(HEX_DIGITS[(byte & 0xf) as usize]);
        } else {
            out.push(b'\\');
            out.push(escape);
        }
        plain_from = index + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
}

/// A JSON string.
#[inline]
pub(super) fn push_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    push_escaped(out, text);
    out.push(b'"');
}

#[inline]
pub(super) fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut position = digits.len();
    while value >= 100 {
        position -= 2;
        digits[position..position + 2].copy_from_slice(&TWO_DIGITS[(value % 100) as usize]);
        value /= 100;
    }
    if value >= 10 {
        position -= 2;
        digits[position..position + 2].copy_from_slice(&TWO_DIGITS[value as usize]);
    } else {
        position -= 1;
        digits[position] = b'0' + value as u8;
    }
    out.extend_from_slice(&digits[position..]);
}

#[inline]
pub(super) fn push_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    push_u64(out, value.unsigned_abs());
}

#[inline]
pub(super) fn push_hex(out: &mut Vec<u8>, value: u64, min_digits: usize) {
    let mut digits = [0u8; 16];
    let mut position = digits.len();
    let mut rest = value;
    while rest != 0 || digits.len() - position < min_digits.max(1) {
        position -= 1;
        digits[position] = HEX_DIGITS[(rest & 0xf) as usize];
        rest >>= 4;
    }
    out.extend_from_slice(&digits[position..]);
}

/// RFC 3339 text (or the nanoseconds of a time it cannot write), without quotes.
#[inline]
pub(super) fn push_time(out: &mut Vec<u8>, time: Timestamp) {
    let mut buffer = [0u8; TIMESTAMP_MAX_LEN];
    let length = time.write_to(&mut buffer);
    out.extend_from_slice(&buffer[..length]);
}

#[inline]
pub(super) fn push_record_id(out: &mut Vec<u8>, id: RecordId) {
    push_hex(out, id.started_ns, 1);
    out.push(b'-');
    push_u64(out, id.sequence);
}

#[inline]
pub(super) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[inline]
pub(super) fn push_protocol(out: &mut Vec<u8>, record: &FlowRecord) {
    match record.protocol.name() {
        Some(name) => out.extend_from_slice(name.as_bytes()),
        None => push_u64(out, u64::from(record.protocol.0)),
    }
}

#[inline]
pub(super) fn push_tcp_flags(out: &mut Vec<u8>, flags: TcpFlags) {
    for (index, name) in flags.names().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
    }
}

/// Starts a field of an object: a comma unless it is the first, then `"name":`.
#[inline]
pub(super) fn key(out: &mut Vec<u8>, first: &mut bool, name: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A nested object field, written only if at least one of its fields is (a selection
/// may leave none). `write` returns whether it wrote any field.
#[inline]
pub(super) fn nested(
    out: &mut Vec<u8>,
    first: &mut bool,
    name: &str,
    write: impl FnOnce(&mut Vec<u8>) -> bool,
) {
    let (mark, was_first) = (out.len(), *first);
    key(out, first, name);
    out.push(b'{');
    if write(out) {
        out.push(b'}');
    } else {
        out.truncate(mark);
        *first = was_first;
    }
}

/// Milliseconds since the epoch of an RFC 3339 text (policy changes carry their time as
/// text).
pub(super) fn unix_ms(rfc3339: &str) -> Option<i64> {
    let time = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((time.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_hex_are_written_like_std() {
        let mut buffer = Vec::new();
        let mut cases = vec![0, 1, 9, 10, 99, 100, 101, 999, 1000, u64::MAX, u64::MAX - 1];
        // A linear congruential sequence, cut to every length: reproducible values of
        // one to twenty digits.
        let mut state = 0x5eed_0005u64;
        for _ in 0..10_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            cases.push(state >> (state >> 58));
        }
        for value in cases {
            buffer.clear();
            push_u64(&mut buffer, value);
            assert_eq!(String::from_utf8_lossy(&buffer), value.to_string());
            buffer.clear();
            push_i64(&mut buffer, value as i64);
            assert_eq!(String::from_utf8_lossy(&buffer), (value as i64).to_string());
            buffer.clear();
            push_hex(&mut buffer, value, 16);
            assert_eq!(String::from_utf8_lossy(&buffer), format!("{value:016x}"));
            buffer.clear();
            push_hex(&mut buffer, value, 1);
            assert_eq!(String::from_utf8_lossy(&buffer), format!("{value:x}"));
        }
        buffer.clear();
        push_i64(&mut buffer, i64::MIN);
        assert_eq!(String::from_utf8_lossy(&buffer), i64::MIN.to_string());
    }
}
