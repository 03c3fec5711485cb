//! Timestamps as the product writes them: RFC 3339, millisecond precision, UTC (`...Z`).
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch to `2026-11-23T16:06:42.123Z`.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        return String::from("invalid-time");
    };
    let year = match u32::try_from(t.year()) {
        Ok(y) if y <= 9999 => y,
        _ => {
            return format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            );
        }
    };
    // Every audit record's timestamp: written digit by digit (the formatting machinery cost
    // more than the rest of the record's set-up).
    let mut out = [0u8; 24];
    let digits = |buf: &mut [u8], mut v: u32| {
        for b in buf.iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    digits(&mut out[0..4], year);
    out[4] = b'-';
    digits(&mut out[5..7], u32::from(u8::from(t.month())));
    out[7] = b'-';
    digits(&mut out[8..10], u32::from(t.day()));
    out[10] = b'T';
    digits(&mut out[11..13], u32::from(t.hour()));
    out[13] = b':';
    digits(&mut out[14..16], u32::from(t.minute()));
    out[16] = b':';
    digits(&mut out[17..19], u32::from(t.second()));
    out[19] = b'.';
    digits(&mut out[20..23], u32::from(t.millisecond()));
    out[23] = b'Z';
    // Only ASCII digits and separators were written: the conversion cannot fail.
    std::str::from_utf8(&out).map(str::to_owned).unwrap_or_default()
}

/// `YYYY-MM-DD` (UTC) of a timestamp: the audit file a record belongs to.
pub fn utc_date(unix_ms: i64) -> String {
    let s = rfc3339_ms(unix_ms);
    s.chars().take(10).collect()
}

/// Unix ms of the next UTC midnight after `unix_ms`.
pub fn next_utc_midnight_ms(unix_ms: i64) -> i64 {
    (unix_ms.div_euclid(86_400_000) + 1) * 86_400_000
}

/// `YYYY-MM` (UTC) of a timestamp, and the Unix ms when the next month starts.
pub fn utc_month(unix_ms: i64) -> (String, i64) {
    let date = utc_date(unix_ms);
    let month: String = date.chars().take(7).collect();
    let (y, m) =
        (date.get(0..4).and_then(|y| y.parse::<i32>().ok()), date.get(5..7).and_then(|m| m.parse::<u8>().ok()));
    let next = match (y, m) {
        (Some(y), Some(12)) => format!("{:04}-01-01T00:00:00Z", y + 1),
        (Some(y), Some(m)) => format!("{y:04}-{:02}-01T00:00:00Z", m + 1),
        _ => String::new(),
    };
    (month, parse_rfc3339_ms(&next).unwrap_or_else(|| next_utc_midnight_ms(unix_ms)))
}

/// Parses RFC 3339 into Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Parses a duration like `30d`, `12h`, `15m`, `45s` into seconds.
pub fn parse_duration_secs(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 =
        num.parse().map_err(|_| format!("invalid duration `{s}`: expected a number and a unit (s, m, h, d)"))?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration `{s}`: unit must be one of s, m, h, d")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("invalid duration `{s}`: must be positive and not overflow"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn formats_and_parses() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(-62_135_596_800_000), "0001-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_764_000_000_123), "2025-11-24T16:00:00.123Z");
        assert_eq!(parse_rfc3339_ms("2025-11-24T16:00:00.123Z"), Some(1_764_000_000_123));
        assert_eq!(utc_date(1_764_000_000_123), "2025-11-24");
        assert_eq!(parse_duration_secs("30d"), Ok(2_592_000));
        assert!(parse_duration_secs("-1d").is_err());
        assert!(parse_duration_secs("5y").is_err());
    }

    #[test]
    fn windows_end_at_the_next_utc_midnight_and_month() {
        let t = parse_rfc3339_ms("2025-11-24T16:00:00Z").unwrap_or(0);
        assert_eq!(rfc3339_ms(next_utc_midnight_ms(t)), "2025-11-25T00:00:00.000Z");
        assert_eq!(utc_month(t), (String::from("2025-11"), parse_rfc3339_ms("2025-12-01T00:00:00Z").unwrap_or(0)));
        let dec = parse_rfc3339_ms("2025-12-31T23:59:59Z").unwrap_or(0);
        assert_eq!(utc_month(dec).1, parse_rfc3339_ms("2026-01-01T00:00:00Z").unwrap_or(0));
    }
}
