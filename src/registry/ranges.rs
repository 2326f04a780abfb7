//! Parsing of the byte-range headers the registry API uses: `Range` on blob reads, `Content-Range` on upload
//! chunks. Pure functions, no I/O.

use super::error::RegistryError;
use super::storage::ByteRange;

/// Resolves a `Range` request header (RFC 9110 §14.2) against a blob of `size` bytes:
/// - `Ok(Some(range))`: one satisfiable range (`a-b`, `a-`, `-n`; the unit is case-insensitive, an end past the
///   blob is cut to the blob);
/// - `Ok(None)`: send the whole blob. HTTP lets a server ignore a `Range` it cannot use, and berth ignores an
///   unknown unit (which it must), a malformed range (`bytes=abc`, `bytes=-`, signs, spaces inside numbers) and
///   several ranges (it does not answer `multipart/byteranges`);
/// - `Err(RangeNotSatisfiable)` (416): one well-formed range that selects nothing of this blob (it starts at or
///   past the end, or is `-0`), or a reversed one (`bytes=5-2`). RFC 9110 lets a server ignore or reject a
///   reversed range; berth rejects it because the OCI conformance suite counts a 200 there as a failure.
pub fn parse_range(header: &str, size: u64) -> Result<Option<ByteRange>, RegistryError> {
    let unsatisfiable = || RegistryError::RangeNotSatisfiable {
        range: header.to_owned(),
        size,
    };
    let Some((unit, set)) = header.trim().split_once('=') else {
        return Ok(None);
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(None);
    }
    let set = set.trim();
    if set.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = set.split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.is_empty(), last.is_empty()) {
        (true, true) => return Ok(None),
        // bytes=-n: the last n bytes.
        (true, false) => {
            let Some(n) = position(last) else {
                return Ok(None);
            };
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            ByteRange {
                first: size.saturating_sub(n),
                last: size - 1,
            }
        }
        // bytes=a-: from a to the end.
        (false, true) => {
            let Some(first) = position(first) else {
                return Ok(None);
            };
            if first >= size {
                return Err(unsatisfiable());
            }
            ByteRange {
                first,
                last: size - 1,
            }
        }
        (false, false) => {
            let (Some(first), Some(last)) = (position(first), position(last)) else {
                return Ok(None);
            };
            if last < first || first >= size {
                return Err(unsatisfiable());
            }
            ByteRange {
                first,
                last: last.min(size - 1),
            }
        }
    };
    Ok(Some(range))
}

/// A byte position (`1*DIGIT`). One too large for 64 bits is past the end of any blob, so it saturates.
fn position(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse::<u64>().unwrap_or(u64::MAX))
}

/// Why a `Content-Range` on an upload chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidContentRange(pub String);

/// Parses an upload chunk's `Content-Range`: `<first>-<last>`, inclusive, digits only (the spec's
/// `^[0-9]+-[0-9]+$`). Clients derived from docker send `bytes <first>-<last>/<total>` or `bytes=<first>-<last>`;
/// those are accepted too, with a total of digits or `*` that must cover the chunk. Anything else is refused: a
/// sign, a space inside a number, a reversed range, a number beyond 64 bits, a chunk whose length does not fit in
/// 64 bits. Returns `(first, last)`; `last - first + 1` cannot overflow.
pub fn parse_content_range(header: &str) -> Result<(u64, u64), InvalidContentRange> {
    let invalid = |why: &str| InvalidContentRange(format!("{why}; expected <first>-<last>"));
    let spec = header.trim();
    let spec = spec
        .strip_prefix("bytes=")
        .or_else(|| spec.strip_prefix("bytes "))
        .unwrap_or(spec)
        .trim_start();
    let (range, total) = match spec.split_once('/') {
        Some((range, total)) => (range, Some(total)),
        None => (spec, None),
    };
    let (first, last) = range
        .split_once('-')
        .ok_or_else(|| invalid("no '-' between first and last byte"))?;
    let number = |digits: &str, what: &str| -> Result<u64, InvalidContentRange> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(&format!("{what} {digits:?} is not a number")));
        }
        digits
            .parse::<u64>()
            .map_err(|_| invalid(&format!("{what} {digits} does not fit in 64 bits")))
    };
    let first = number(first, "first byte")?;
    let last = number(last, "last byte")?;
    if last < first {
        return Err(invalid(&format!(
            "last byte {last} is before first byte {first}"
        )));
    }
    let length = (last - first).checked_add(1).ok_or_else(|| {
        invalid(&format!(
            "a chunk of {first}-{last} is longer than 64 bits can count"
        ))
    })?;
    match total {
        None | Some("*") => {}
        Some(total) => {
            let total = number(total, "total length")?;
            // `last < total`, written without `last + 1`.
            if last >= total {
                return Err(invalid(&format!(
                    "chunk {first}-{last} ({length} bytes) ends past the total length {total}"
                )));
            }
        }
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One expected outcome of `parse_range`.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Partial(u64, u64),
        Whole,
        NotSatisfiable,
    }

    /// Issue 9: invalid or unsupported `Range` headers got 416; a unit is case-insensitive, and what cannot be
    /// used is ignored (the whole blob), while a well-formed range outside the blob (or a reversed one) is 416.
    #[test]
    fn range_headers_invalid_ones_are_ignored_unsatisfiable_ones_refused() {
        use Outcome::*;
        let check = |header: &str, size: u64, expected: Outcome| {
            let got = match parse_range(header, size) {
                Ok(Some(range)) => Partial(range.first, range.last),
                Ok(None) => Whole,
                Err(RegistryError::RangeNotSatisfiable { .. }) => NotSatisfiable,
                Err(other) => panic!("{header:?} size {size}: unexpected error {other:?}"),
            };
            assert_eq!(got, expected, "{header:?} against a blob of {size} bytes");
        };
        check("bytes=0-9", 100, Partial(0, 9));
        check("bytes=10-", 100, Partial(10, 99));
        check("bytes=-10", 100, Partial(90, 99));
        check("bytes=-1000", 100, Partial(0, 99));
        check("bytes=50-1000", 100, Partial(50, 99));
        check("bytes=99-99", 100, Partial(99, 99));
        check(" bytes=0-1 ", 100, Partial(0, 1));
        // The unit is case-insensitive.
        check("Bytes=0-1", 100, Partial(0, 1));
        check("BYTES=5-", 100, Partial(5, 99));
        // A position beyond 64 bits is past any end.
        check("bytes=0-99999999999999999999999", 100, Partial(0, 99));
        check("bytes=-99999999999999999999999", 100, Partial(0, 99));
        check("bytes=99999999999999999999999-", 100, NotSatisfiable);
        // Well-formed, but nothing of the blob: 416.
        check("bytes=100-", 100, NotSatisfiable);
        check("bytes=100-200", 100, NotSatisfiable);
        check("bytes=-0", 100, NotSatisfiable);
        check("bytes=0-0", 0, NotSatisfiable);
        check("bytes=-5", 0, NotSatisfiable);
        // Reversed: RFC 9110 allows rejecting it, and the OCI conformance suite requires a 416.
        check("bytes=5-2", 100, NotSatisfiable);
        check("bytes=500-0", 2048, NotSatisfiable);
        // Not usable: ignored, the whole blob.
        check("bytes=abc", 100, Whole);
        check("bytes=a-b", 100, Whole);
        check("bytes=1-b", 100, Whole);
        check("bytes=-", 100, Whole);
        check("bytes=", 100, Whole);
        check("bytes=+1-2", 100, Whole);
        check("bytes=1-+2", 100, Whole);
        check("bytes=--1", 100, Whole);
        check("bytes=1 2-3", 100, Whole);
        check("bytes 0-1", 100, Whole);
        check("items=0-1", 100, Whole);
        check("=0-1", 100, Whole);
        check("", 100, Whole);
        // Several ranges (berth does not answer multipart/byteranges), even unsatisfiable ones: ignored.
        check("bytes=0-1,5-6", 100, Whole);
        check("bytes=0-1, 200-300", 100, Whole);
        check("bytes=200-300,400-", 100, Whole);
    }

    /// Issue 9: `Content-Range: 0-18446744073709551615` overflowed the chunk length, and `+0-+0` and `0-1/abc`
    /// were accepted.
    #[test]
    fn content_range_headers_refuse_signs_overflow_and_bad_totals() {
        let check = |header: &str, expected: Option<(u64, u64)>| match (
            parse_content_range(header),
            expected,
        ) {
            (Ok(got), Some(want)) => assert_eq!(got, want, "{header:?}"),
            (Err(_), None) => {}
            (got, want) => panic!("{header:?}: got {got:?}, want {want:?}"),
        };
        check("0-99", Some((0, 99)));
        check("100-199", Some((100, 199)));
        check("bytes 0-9/10", Some((0, 9)));
        check("bytes 0-9/*", Some((0, 9)));
        check("bytes=5-5", Some((5, 5)));
        check("0-18446744073709551614", Some((0, u64::MAX - 1)));
        check("1-18446744073709551615", Some((1, u64::MAX)));
        check("0-18446744073709551615", None);
        check("0-18446744073709551616", None);
        check("+0-+0", None);
        check("+0-1", None);
        check("0-+1", None);
        check("0-1/abc", None);
        check("0-1/", None);
        check("0-9/9", None);
        check("0-9/-10", None);
        check("0 -1", None);
        check("0- 1", None);
        check("5-4", None);
        check("-5", None);
        check("abc", None);
        check("", None);
        check("0-", None);
    }
}
