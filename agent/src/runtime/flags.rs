//! Flag values spelled as upstream's Go flags accept them, so a command line
//! written for upstream's agent works here too: booleans as `--flag`,
//! `--flag=true` or `--flag=false` (Go's `strconv.ParseBool`), durations as
//! Go's `time.ParseDuration` reads them (`90s`, `1h30m`, `1.5h`).

use std::time::Duration;

/// A boolean as Go's `strconv.ParseBool` reads it.
pub fn boolean(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{text:?} is not a boolean; give true or false")),
    }
}

/// A non-negative duration as Go's `time.ParseDuration` reads it: numbers
/// with optional fractions, each followed by a unit (`ns`, `us`, `µs`, `ms`,
/// `s`, `m`, `h`), like `1h30m` or `2.5s`; `0` alone is zero.
pub fn duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration; give one like 90s, 45m or 1h30m");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let mut part = whole.checked_mul(per_unit).ok_or_else(invalid)?;
        let mut scale = per_unit;
        for digit in fraction.chars() {
            let digit = u128::from(digit.to_digit(10).ok_or_else(invalid)?);
            scale /= 10;
            part += digit * scale;
        }
        nanos = nanos.checked_add(part).ok_or_else(invalid)?;
        rest = tail;
    }
    let nanos = u64::try_from(nanos).map_err(|_| invalid())?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_read_as_go_reads_them() {
        for yes in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(boolean(yes), Ok(true), "{yes}");
        }
        for no in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(boolean(no), Ok(false), "{no}");
        }
        for bad in ["", "yes", "on", "tRuE"] {
            assert!(boolean(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_read_as_go_reads_them() {
        let cases = [
            ("0", Duration::ZERO),
            ("90s", Duration::from_secs(90)),
            ("45m", Duration::from_secs(45 * 60)),
            ("24h", Duration::from_secs(24 * 3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h30m15s", Duration::from_secs(5415)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("300ms", Duration::from_millis(300)),
            ("2us", Duration::from_micros(2)),
            ("2µs", Duration::from_micros(2)),
            ("7ns", Duration::from_nanos(7)),
            ("+10m", Duration::from_secs(600)),
        ];
        for (text, want) in cases {
            assert_eq!(duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_durations_are_refused_with_an_example() {
        for bad in [
            "",
            "10",
            "h",
            "1x",
            "-5m",
            "1h30",
            ".s",
            "1..5s",
            "99999999999h",
        ] {
            let error = duration(bad).expect_err(bad);
            assert!(error.contains("1h30m"), "{bad}: {error}");
        }
    }
}
