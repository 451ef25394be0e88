//! Units, both ways: numbers for people (sizes, rates and durations in one
//! format everywhere a person reads them: tables, summaries, alert text, logs;
//! JSON and CSV keep exact numbers), and the sizes and spans people write in
//! the configuration ([`SizeSpec`], [`Span`]). A leaf module: every stage's
//! settings use these without importing the configuration.

use serde::Deserialize;

/// A byte count in binary units: `512 B`, `1.5 KiB`, `23.1 MiB`, `214.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// A bit rate in decimal units, as network people read them: `800 bit/s`, `12.3 Mbit/s`.
pub fn bits_per_second(bps: f64) -> String {
    const UNITS: [&str; 5] = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
    if !bps.is_finite() || bps <= 0.0 {
        return "0 bit/s".into();
    }
    let mut v = bps;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[i])
    } else if v >= 10.0 {
        format!("{v:.1} {}", UNITS[i])
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// A duration in milliseconds, two units at most: `350 ms`, `42 s`, `5m 12s`,
/// `3h 20m`, `6d 15h`.
pub fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let s = ms / 1000;
    if s < 60 {
        if ms < 10_000 && !ms.is_multiple_of(1000) {
            return format!("{:.1} s", ms as f64 / 1000.0);
        }
        return format!("{s} s");
    }
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h) {
        (0, 0) if sec == 0 => format!("{m}m"),
        (0, 0) => format!("{m}m {sec}s"),
        (0, _) if m == 0 => format!("{h}h"),
        (0, _) => format!("{h}h {m}m"),
        _ if h == 0 => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// A signed offset (clock differences): `-350 ms`, `+42 s`, `-1d 20h`.
pub fn offset_ms(ms: i64) -> String {
    if ms.unsigned_abs() < 1000 {
        return format!("{ms} ms");
    }
    let sign = if ms < 0 { "-" } else { "+" };
    format!("{sign}{}", duration_ms(ms.unsigned_abs()))
}

/// A duration in seconds (see [`duration_ms`]).
pub fn duration_s(s: f64) -> String {
    if !s.is_finite() || s <= 0.0 {
        return "0 ms".into();
    }
    duration_ms((s * 1000.0).round() as u64)
}

/// A share in percent with one decimal.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1} %", part as f64 * 100.0 / whole as f64)
}

/// Size given as bytes (`536870912`, `"512MiB"`, `"2G"`) or a share of the
/// data file system (`"85%"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeSpec {
    Bytes(u64),
    Percent(f64),
}

/// Why a size is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{0:?} is not a percentage")]
    NotPercent(String),
    #[error("{0:?}: a percentage must be in (0, 100]")]
    PercentRange(String),
    #[error("{0:?} is not a size")]
    NotSize(String),
    #[error("unknown size unit {0:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB or %)")]
    Unit(String),
}

impl SizeSpec {
    /// Resolve against the size of the file system holding the data.
    pub fn resolve(&self, filesystem_bytes: u64) -> u64 {
        match *self {
            SizeSpec::Bytes(b) => b,
            SizeSpec::Percent(p) => (filesystem_bytes as f64 * p / 100.0) as u64,
        }
    }

    pub fn parse(s: &str) -> Result<SizeSpec, SizeError> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| SizeError::NotPercent(s.into()))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(SizeError::PercentRange(s.into()));
            }
            return Ok(SizeSpec::Percent(v));
        }
        let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: f64 = n.parse().map_err(|_| SizeError::NotSize(s.into()))?;
        let mul: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1e3,
            "kib" => 1024.0,
            "m" | "mb" => 1e6,
            "mib" => 1024.0 * 1024.0,
            "g" | "gb" => 1e9,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            "t" | "tb" => 1e12,
            "tib" => 1024f64.powi(4),
            u => return Err(SizeError::Unit(u.into())),
        };
        Ok(SizeSpec::Bytes((n * mul) as u64))
    }
}

impl std::fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            SizeSpec::Bytes(b) => write!(f, "{} ({b} bytes)", bytes(b)),
            SizeSpec::Percent(p) => write!(f, "{p} % of the data file system"),
        }
    }
}

/// What a size key accepts, for error messages.
const SIZE_FORMS: &str = "a size: a number of bytes like 67108864, or a string like \"64MiB\", \"2GB\" or \"85%\"";

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SizeSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(SIZE_FORMS)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<SizeSpec, E> {
                Ok(SizeSpec::Bytes(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<SizeSpec, E> {
                u64::try_from(n)
                    .map(SizeSpec::Bytes)
                    .map_err(|_| E::custom(format!("{n} is negative; expected {SIZE_FORMS}")))
            }
            fn visit_i128<E: serde::de::Error>(self, n: i128) -> Result<SizeSpec, E> {
                Err(E::custom(format!("{n} is too large; expected {SIZE_FORMS}")))
            }
            fn visit_u128<E: serde::de::Error>(self, n: u128) -> Result<SizeSpec, E> {
                Err(E::custom(format!("{n} is too large; expected {SIZE_FORMS}")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<SizeSpec, E> {
                Err(E::custom(format!("{n} is not a whole number of bytes; expected {SIZE_FORMS}")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SizeSpec, E> {
                SizeSpec::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written as `"90s"`, `"5m"`, `"2h"`, `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub u64);

impl Span {
    pub fn ms(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::timefmt::parse_span_ms(&s)
            .map(Span)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a duration (like 90s, 5m, 2h, 30d)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_scale() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(24_000_000), "22.9 MiB");
        assert_eq!(bytes(30_130_079_602), "28.1 GiB");
        assert_eq!(bytes(229_970_197_913), "214 GiB");
        assert_eq!(bytes(u64::MAX), "16384 PiB");
    }

    #[test]
    fn rates_scale() {
        assert_eq!(bits_per_second(0.0), "0 bit/s");
        assert_eq!(bits_per_second(800.0), "800 bit/s");
        assert_eq!(bits_per_second(12_345_678.0), "12.3 Mbit/s");
        assert_eq!(bits_per_second(1_500.0), "1.50 kbit/s");
        assert_eq!(bits_per_second(f64::NAN), "0 bit/s");
    }

    #[test]
    fn durations_read_the_same_everywhere() {
        assert_eq!(duration_ms(350), "350 ms");
        assert_eq!(duration_ms(1500), "1.5 s");
        assert_eq!(duration_ms(42_000), "42 s");
        assert_eq!(duration_ms(312_000), "5m 12s");
        assert_eq!(duration_ms(1_800_000), "30m");
        assert_eq!(duration_ms(12_000_000), "3h 20m");
        assert_eq!(duration_ms(83_160_000), "23h 6m");
        assert_eq!(duration_ms(575_765_000), "6d 15h");
        assert_eq!(duration_ms(86_400_000), "1d");
        assert_eq!(duration_s(1800.0), "30m");
        assert_eq!(percent(1, 3), "33.3 %");
    }
}
