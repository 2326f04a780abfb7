//! Parsing of the byte-range headers the registry API uses: `Range` on blob reads, `Content-Range` on upload
//! chunks. Pure functions, no I/O.

use super::error::RegistryError;
use super::storage::ByteRange;

/// Resolves a `Range: bytes=…` request header against a blob of `size` bytes. `Ok(None)` means "send it all".
/// One range is supported (`a-b`, `a-`, `-n`); anything else, or a range outside the blob, is a 416.
pub fn parse_range(header: &str, size: u64) -> Result<Option<ByteRange>, RegistryError> {
    let unsatisfiable = || RegistryError::RangeNotSatisfiable {
        range: header.to_owned(),
        size,
    };
    let spec = header
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(unsatisfiable)?
        .trim();
    if spec.contains(',') {
        return Err(unsatisfiable());
    }
    let (first, last) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| unsatisfiable());
    let range = match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => {
            let n = number(last)?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            ByteRange {
                first: size.saturating_sub(n),
                last: size - 1,
            }
        }
        // bytes=a-: from a to the end.
        (false, true) => ByteRange {
            first: number(first)?,
            last: size.saturating_sub(1),
        },
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            if last < first {
                return Err(unsatisfiable());
            }
            ByteRange {
                first,
                last: last.min(size.saturating_sub(1)),
            }
        }
        (true, true) => return Err(unsatisfiable()),
    };
    if range.first >= size {
        return Err(unsatisfiable());
    }
    Ok(Some(range))
}

/// Parses an upload chunk's `Content-Range`: `<first>-<last>`, inclusive (docker and some clients prefix `bytes `
/// or `bytes=`). Returns `(first, last)`.
pub fn parse_content_range(header: &str) -> Result<(u64, u64), RegistryError> {
    let invalid = || {
        RegistryError::BlobUploadInvalid(format!(
            "malformed Content-Range {header:?}; expected <first>-<last>"
        ))
    };
    let spec = header.trim();
    let spec = spec
        .strip_prefix("bytes=")
        .or_else(|| spec.strip_prefix("bytes "))
        .unwrap_or(spec);
    // `bytes 0-9/10` carries a total; the part before `/` is the range.
    let spec = spec.split('/').next().unwrap_or(spec);
    let (first, last) = spec.split_once('-').ok_or_else(invalid)?;
    let first: u64 = first.trim().parse().map_err(|_| invalid())?;
    let last: u64 = last.trim().parse().map_err(|_| invalid())?;
    if last < first {
        return Err(invalid());
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers() {
        let r = |first, last| Some(ByteRange { first, last });
        let cases: &[(&str, u64, Option<Option<ByteRange>>)] = &[
            ("bytes=0-9", 100, Some(r(0, 9))),
            ("bytes=10-", 100, Some(r(10, 99))),
            ("bytes=-10", 100, Some(r(90, 99))),
            ("bytes=-1000", 100, Some(r(0, 99))),
            ("bytes=50-1000", 100, Some(r(50, 99))),
            ("bytes=99-99", 100, Some(r(99, 99))),
            ("bytes=100-", 100, None),
            ("bytes=100-200", 100, None),
            ("bytes=9-0", 100, None),
            ("bytes=0-1,5-6", 100, None),
            ("bytes=a-b", 100, None),
            ("bytes=-", 100, None),
            ("bytes=-0", 100, None),
            ("items=0-1", 100, None),
            ("bytes=0-0", 0, None),
        ];
        for (header, size, expected) in cases {
            match (parse_range(header, *size), expected) {
                (Ok(got), Some(want)) => assert_eq!(&got, want, "{header}"),
                (Err(RegistryError::RangeNotSatisfiable { .. }), None) => {}
                (got, want) => panic!("{header} size {size}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn content_range_headers() {
        let cases: &[(&str, Option<(u64, u64)>)] = &[
            ("0-99", Some((0, 99))),
            ("100-199", Some((100, 199))),
            ("bytes 0-9/10", Some((0, 9))),
            ("bytes=5-5", Some((5, 5))),
            ("5-4", None),
            ("-5", None),
            ("abc", None),
            ("", None),
            ("0-", None),
        ];
        for (header, expected) in cases {
            match (parse_content_range(header), expected) {
                (Ok(got), Some(want)) => assert_eq!(&got, want, "{header}"),
                (Err(RegistryError::BlobUploadInvalid(_)), None) => {}
                (got, want) => panic!("{header}: got {got:?}, want {want:?}"),
            }
        }
    }
}
