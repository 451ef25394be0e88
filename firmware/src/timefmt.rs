//! UTC time rendering and parsing for the command line and output formats.
//!
//! Everything inside flowwarden is UTC milliseconds since the Unix epoch; this
//! module turns those into RFC 3339 strings (`2026-11-27T18:42:55.123Z`) and
//! parses the forms users type for `--from`/`--to` (RFC 3339, `YYYY-MM-DD
//! HH:MM[:SS]`, a date, Unix seconds, or a span back from "now" such as `-2h`).
//! "Now" is always passed in, so callers decide the clock.

use thiserror::Error;

/// A time argument that could not be understood.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid time {input:?}: {why} (expected RFC 3339 like 2026-11-27T18:00:00Z, \
     'YYYY-MM-DD[ HH:MM[:SS]]' in UTC, Unix seconds, or a span back from now like -2h, -30m, -7d)"
)]
pub struct TimeParseError {
    pub input: String,
    pub why: &'static str,
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days in month `m` (1-12) of year `y`.
fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 UTC with milliseconds: `2026-11-27T18:42:55.123Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        ms % 1000
    )
}

/// `YYYY-MM-DD HH:MM:SS` (UTC, second resolution), as nfdump prints.
pub fn plain_seconds(ms: u64) -> String {
    let s = rfc3339_ms(ms);
    format!("{} {}", &s[0..10], &s[11..19])
}

fn num(s: &str, input: &str, why: &'static str) -> Result<u32, TimeParseError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TimeParseError {
            input: input.to_string(),
            why,
        });
    }
    s.parse().map_err(|_| TimeParseError {
        input: input.to_string(),
        why,
    })
}

/// Parse a user time into UTC milliseconds. `now_ms` anchors relative spans.
pub fn parse_time(input: &str, now_ms: u64) -> Result<u64, TimeParseError> {
    let s = input.trim();
    let err = |why| TimeParseError {
        input: input.to_string(),
        why,
    };
    if let Some(span) = s.strip_prefix('-') {
        let back = parse_span_ms(span).map_err(|_| err("bad relative span"))?;
        return Ok(now_ms.saturating_sub(back));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        let secs: u64 = s.parse().map_err(|_| err("number too large"))?;
        return secs.checked_mul(1000).ok_or_else(|| err("number too large"));
    }
    // Date part.
    if s.len() < 10 || s.as_bytes()[4] != b'-' || s.as_bytes()[7] != b'-' {
        return Err(err("no YYYY-MM-DD date"));
    }
    let y = num(&s[0..4], input, "bad year")? as i64;
    let mo = num(&s[5..7], input, "bad month")?;
    let d = num(&s[8..10], input, "bad day")?;
    if !(1..=12).contains(&mo) {
        return Err(err("month out of range (01-12)"));
    }
    if d == 0 || d > days_in_month(y, mo) {
        return Err(err("no such day in that month"));
    }
    let mut rest = &s[10..];
    let (mut h, mut mi, mut sec, mut frac_ms) = (0u32, 0u32, 0u32, 0u64);
    let mut offset_s: i64 = 0;
    if !rest.is_empty() {
        let sep = rest.as_bytes()[0];
        if sep != b'T' && sep != b't' && sep != b' ' {
            return Err(err("expected 'T' or ' ' after the date"));
        }
        rest = &rest[1..];
        // Split off a zone suffix.
        let (clock, zone) = match rest.find(['Z', 'z', '+']).or_else(|| rest.rfind('-')) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let mut parts = clock.splitn(3, ':');
        h = num(parts.next().unwrap_or(""), input, "bad hour")?;
        mi = num(parts.next().unwrap_or(""), input, "bad minute")?;
        if let Some(sp) = parts.next() {
            let (whole, frac) = match sp.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (sp, None),
            };
            sec = num(whole, input, "bad second")?;
            if let Some(f) = frac {
                let digits: String = f.chars().take(3).collect();
                let v = num(&digits, input, "bad fraction")? as u64;
                frac_ms = v * 10u64.pow(3 - digits.len() as u32);
            }
        }
        if h > 23 || mi > 59 || sec > 59 {
            return Err(err("clock out of range"));
        }
        match zone {
            "" | "Z" | "z" => {}
            z => {
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let (zh, zm) = z[1..].split_once(':').ok_or_else(|| err("bad zone offset"))?;
                let zh = num(zh, input, "bad zone hour")? as i64;
                let zm = num(zm, input, "bad zone minute")? as i64;
                offset_s = sign * (zh * 3600 + zm * 60);
            }
        }
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + (h as i64) * 3600 + (mi as i64) * 60 + sec as i64 - offset_s;
    if secs < 0 {
        return Err(err("before 1970"));
    }
    Ok(secs as u64 * 1000 + frac_ms)
}

/// Parse a span such as `90s`, `5m`, `2h`, `7d`, `1w` into milliseconds.
pub fn parse_span_ms(s: &str) -> Result<u64, TimeParseError> {
    let err = |why| TimeParseError { input: s.to_string(), why };
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| err("span needs a unit (s, m, h, d, w)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| err("span needs a number"))?;
    let mul = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(err("unknown span unit")),
    };
    n.checked_mul(mul).ok_or_else(|| err("span too large"))
}

/// Wall clock in UTC milliseconds (only at the edges; stages take event time).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_dates_are_refused() {
        for bad in [
            "2026-11-31",
            "2026-02-30",
            "2026-02-29",
            "2026-13-45",
            "2026-00-10",
            "2026-04-31T10:00:00Z",
            "2026-01-01 24:00",
            "2026-01-01T10:60:00Z",
        ] {
            assert!(parse_time(bad, 0).is_err(), "{bad} accepted");
        }
        assert!(parse_time("2024-02-29", 0).is_ok());
        assert!(parse_time("2000-02-29", 0).is_ok());
        assert!(parse_time("1900-02-29", 0).is_err());
        let e = parse_time("2026-11-31", 0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no such day in that month"), "{e}");
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_566_411_411_970), "2019-08-21T18:16:51.970Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(plain_seconds(1_566_411_411_970), "2019-08-21 18:16:51");
    }

    #[test]
    fn parses_user_forms() {
        let t = 1_566_411_411_000;
        assert_eq!(parse_time("2019-08-21T18:16:51Z", 0), Ok(t));
        assert_eq!(parse_time("2019-08-21 18:16:51", 0), Ok(t));
        assert_eq!(parse_time("2019-08-21T18:16:51.970Z", 0), Ok(t + 970));
        assert_eq!(parse_time("2019-08-21T20:16:51+02:00", 0), Ok(t));
        assert_eq!(parse_time("2019-08-21T16:16:51-02:00", 0), Ok(t));
        assert_eq!(parse_time("1566411411", 0), Ok(t));
        assert_eq!(parse_time("-2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert_eq!(parse_time("2019-08-21", 0), Ok(1_566_345_600_000));
    }

    #[test]
    fn rejects_garbage_with_reason() {
        let e = parse_time("yesterday", 0).unwrap_err();
        assert_eq!(e.why, "no YYYY-MM-DD date");
        assert!(parse_time("2019-13-01", 0).is_err());
        assert!(parse_time("-5x", 0).is_err());
        assert!(parse_time("2019-08-21T25:00", 0).is_err());
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in 0u64..4_102_444_800_000) {
            proptest::prop_assert_eq!(parse_time(&rfc3339_ms(ms), 0), Ok(ms));
        }
    }
}
