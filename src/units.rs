//! Durations and sizes as people write them in flags and config files: `30s`, `24h`, `250ms`, `500MB`, `20GiB`.
//!
//! A leaf: pure parsing, used by the config, the proxy's settings and the node proxy's flags. It must not import
//! anything of berth; what a value is for (its key, its bounds) is the caller's business.

use std::time::Duration;

/// Why a duration or size was refused. Each message carries the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// A duration that does not start with a number.
    #[error("invalid duration {0:?}: expected e.g. 30s, 5m, 24h")]
    DurationSyntax(String),
    /// A duration with a unit other than ms, s, m, h, d.
    #[error("invalid duration {text:?}: unknown unit {unit:?} (ms, s, m, h, d)")]
    DurationUnit {
        /// The duration as given.
        text: String,
        /// The unit that is not known.
        unit: String,
    },
    /// A duration that does not fit in 64-bit seconds.
    #[error("duration {0:?} is too large")]
    DurationTooLarge(String),
    /// A size that does not start with a number.
    #[error("invalid size {0:?}: expected e.g. 500MB or 20GiB")]
    SizeSyntax(String),
    /// A size with a unit other than B, KB…TB, KiB…TiB.
    #[error("invalid size {text:?}: unknown unit {unit:?}")]
    SizeUnit {
        /// The size as given.
        text: String,
        /// The unit that is not known.
        unit: String,
    },
    /// A size that does not fit in 64-bit bytes.
    #[error("size {0:?} is too large")]
    SizeTooLarge(String),
}

/// Splits `500MB` into `(500, "MB")`: leading digits, then the (trimmed) unit. `None` without digits.
fn split_quantity(text: &str) -> Option<(u64, &str)> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// Parses durations like `90s`, `30m`, `24h`, `7d`, `500ms` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let text = text.trim();
    let (value, unit) =
        split_quantity(text).ok_or_else(|| UnitError::DurationSyntax(text.to_owned()))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(value)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(UnitError::DurationUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    value
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| UnitError::DurationTooLarge(text.to_owned()))
}

/// Parses sizes like `500MB`, `20GiB`, `1024` (bytes). KB/MB/GB/TB are powers of 1000, KiB…TiB of 1024.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let text = text.trim();
    let (value, unit) =
        split_quantity(text).ok_or_else(|| UnitError::SizeSyntax(text.to_owned()))?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(UnitError::SizeUnit {
                text: text.to_owned(),
                unit: other.to_owned(),
            })
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| UnitError::SizeTooLarge(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: PartialEq + std::fmt::Debug>(
        parse: fn(&str) -> Result<T, UnitError>,
        text: &str,
        expected: Result<T, &str>,
    ) {
        let got = parse(text).map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "{text:?}");
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Result<Duration, &str>)] = &[
            ("30", Ok(Duration::from_secs(30))),
            ("30s", Ok(Duration::from_secs(30))),
            (" 30s ", Ok(Duration::from_secs(30))),
            ("5m", Ok(Duration::from_secs(300))),
            ("24h", Ok(Duration::from_secs(86_400))),
            ("2d", Ok(Duration::from_secs(172_800))),
            ("250ms", Ok(Duration::from_millis(250))),
            ("0s", Ok(Duration::ZERO)),
            (
                "",
                Err(r#"invalid duration "": expected e.g. 30s, 5m, 24h"#),
            ),
            (
                "m",
                Err(r#"invalid duration "m": expected e.g. 30s, 5m, 24h"#),
            ),
            (
                "-5s",
                Err(r#"invalid duration "-5s": expected e.g. 30s, 5m, 24h"#),
            ),
            (
                "5w",
                Err(r#"invalid duration "5w": unknown unit "w" (ms, s, m, h, d)"#),
            ),
            (
                "10q",
                Err(r#"invalid duration "10q": unknown unit "q" (ms, s, m, h, d)"#),
            ),
            (
                "99999999999999999999d",
                Err(r#"invalid duration "99999999999999999999d": expected e.g. 30s, 5m, 24h"#),
            ),
            (
                "9999999999999999999d",
                Err(r#"duration "9999999999999999999d" is too large"#),
            ),
        ];
        for (text, expected) in cases {
            check(parse_duration, text, *expected);
        }
    }

    #[test]
    fn sizes() {
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("1024", Ok(1024)),
            ("7B", Ok(7)),
            ("500MB", Ok(500_000_000)),
            ("2KB", Ok(2000)),
            ("20GiB", Ok(20 << 30)),
            ("1 KiB", Ok(1024)),
            ("1TiB", Ok(1 << 40)),
            ("", Err(r#"invalid size "": expected e.g. 500MB or 20GiB"#)),
            (
                "GB",
                Err(r#"invalid size "GB": expected e.g. 500MB or 20GiB"#),
            ),
            ("5XB", Err(r#"invalid size "5XB": unknown unit "XB""#)),
            ("5mb", Err(r#"invalid size "5mb": unknown unit "mb""#)),
            (
                "99999999999TiB",
                Err(r#"size "99999999999TiB" is too large"#),
            ),
        ];
        for (text, expected) in cases {
            check(parse_size, text, *expected);
        }
    }
}
