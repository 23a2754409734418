//! A non-allocating MessagePack structure walker.
//!
//! rmp-serde sizes its buffers from the lengths a value *declares*, so a 5-byte
//! `array32(4 294 967 295)` would ask for gigabytes. Every MessagePack input is walked here
//! first: the walk finds the value's end (which is how frames are split), checks every
//! declared length against the bytes actually present, bounds nesting, and validates str
//! payloads as UTF-8, all without allocating. Only then does rmp-serde see the bytes.

use crate::error::DecodeError;
use crate::MAX_NESTING_DEPTH;

fn take(input: &[u8], pos: &mut usize, n: usize) -> Result<usize, DecodeError> {
    let end = pos.checked_add(n).ok_or(DecodeError::Truncated)?;
    if end > input.len() {
        return Err(DecodeError::Truncated);
    }
    let start = *pos;
    *pos = end;
    Ok(start)
}

fn read_len(input: &[u8], pos: &mut usize, width: usize) -> Result<usize, DecodeError> {
    let start = take(input, pos, width)?;
    let mut v: usize = 0;
    for &b in &input[start..start + width] {
        v = (v << 8) | usize::from(b);
    }
    Ok(v)
}

fn skip_payload(input: &[u8], pos: &mut usize, len: usize) -> Result<usize, DecodeError> {
    let available = input.len() - *pos;
    if len > available {
        return Err(DecodeError::DeclaredLengthExceedsInput {
            declared: len,
            available,
        });
    }
    let start = *pos;
    *pos += len;
    Ok(start)
}

fn str_payload(input: &[u8], pos: &mut usize, len: usize) -> Result<(), DecodeError> {
    let start = skip_payload(input, pos, len)?;
    std::str::from_utf8(&input[start..start + len]).map_err(|_| DecodeError::InvalidUtf8)?;
    Ok(())
}

/// Returns the length in bytes of the first complete MessagePack value of `input`.
///
/// Errors: [`DecodeError::Empty`] for no input, [`DecodeError::Truncated`] when the value
/// ends early, [`DecodeError::DeclaredLengthExceedsInput`] when a length or element count is
/// more than the bytes left, [`DecodeError::TooDeep`] beyond [`MAX_NESTING_DEPTH`] nested
/// containers, [`DecodeError::InvalidUtf8`] for a bad str, [`DecodeError::Malformed`] for
/// the reserved marker 0xc1.
pub fn value_len(input: &[u8]) -> Result<usize, DecodeError> {
    if input.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut pos = 0usize;
    // Items still to read at the current level, and saved counts of the enclosing levels.
    let mut pending: usize = 1;
    let mut depth = 0usize;
    let mut stack = [0usize; MAX_NESTING_DEPTH];
    loop {
        let marker = input[take(input, &mut pos, 1)?];
        let container: Option<usize> = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => None,
            0xcc | 0xd0 => {
                take(input, &mut pos, 1)?;
                None
            }
            0xcd | 0xd1 => {
                take(input, &mut pos, 2)?;
                None
            }
            0xce | 0xd2 | 0xca => {
                take(input, &mut pos, 4)?;
                None
            }
            0xcf | 0xd3 | 0xcb => {
                take(input, &mut pos, 8)?;
                None
            }
            0xa0..=0xbf => {
                str_payload(input, &mut pos, usize::from(marker & 0x1f))?;
                None
            }
            0xd9..=0xdb => {
                let width = 1 << (marker - 0xd9);
                let len = read_len(input, &mut pos, width)?;
                str_payload(input, &mut pos, len)?;
                None
            }
            0xc4..=0xc6 => {
                let width = 1 << (marker - 0xc4);
                let len = read_len(input, &mut pos, width)?;
                skip_payload(input, &mut pos, len)?;
                None
            }
            0xd4..=0xd8 => {
                // fixext 1/2/4/8/16: type byte + data
                take(input, &mut pos, 1 + (1 << (marker - 0xd4)))?;
                None
            }
            0xc7..=0xc9 => {
                let width = 1 << (marker - 0xc7);
                let len = read_len(input, &mut pos, width)?;
                take(input, &mut pos, 1)?; // ext type
                skip_payload(input, &mut pos, len)?;
                None
            }
            0x90..=0x9f => Some(usize::from(marker & 0x0f)),
            0xdc => Some(read_len(input, &mut pos, 2)?),
            0xdd => Some(read_len(input, &mut pos, 4)?),
            0x80..=0x8f => Some(usize::from(marker & 0x0f) * 2),
            0xde => Some(read_len(input, &mut pos, 2)? * 2),
            0xdf => Some(read_len(input, &mut pos, 4)?.saturating_mul(2)),
            0xc1 => return Err(DecodeError::Malformed("reserved marker 0xc1".into())),
        };
        pending -= 1;
        if let Some(items) = container {
            if depth == MAX_NESTING_DEPTH {
                return Err(DecodeError::TooDeep {
                    max: MAX_NESTING_DEPTH,
                });
            }
            // Every item takes at least one byte: a count beyond the bytes left is a lie.
            let available = input.len() - pos;
            if items > available {
                let is_map = matches!(marker, 0x80..=0x8f | 0xde | 0xdf);
                return Err(DecodeError::DeclaredLengthExceedsInput {
                    declared: if is_map { items / 2 } else { items },
                    available,
                });
            }
            if items > 0 {
                stack[depth] = pending;
                depth += 1;
                pending = items;
                continue;
            }
        }
        while pending == 0 {
            if depth == 0 {
                return Ok(pos);
            }
            depth -= 1;
            pending = stack[depth];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_and_containers() {
        assert_eq!(value_len(&[0x01, 0xff]), Ok(1));
        assert_eq!(value_len(&[0xcd, 0x01, 0x02]), Ok(3));
        assert_eq!(value_len(&[0xa2, b'h', b'i', 0x00]), Ok(3));
        assert_eq!(value_len(&[0x92, 0x01, 0x91, 0xc0, 0x05]), Ok(4));
        assert_eq!(value_len(&[0x81, 0xa1, b'a', 0x90, 0x07]), Ok(4));
        assert_eq!(value_len(&[0x80]), Ok(1));
        assert_eq!(value_len(&[0xd4, 0x01, 0x02]), Ok(3));
        assert_eq!(value_len(&[0xc7, 0x01, 0x05, 0xaa]), Ok(4));
        assert_eq!(value_len(&[0xc4, 0x02, 0xaa, 0xbb]), Ok(4));
    }

    #[test]
    fn hostile_lengths() {
        assert_eq!(value_len(&[]), Err(DecodeError::Empty));
        assert_eq!(value_len(&[0xcd, 0x01]), Err(DecodeError::Truncated));
        assert_eq!(value_len(&[0x92, 0x01, 0xcd]), Err(DecodeError::Truncated));
        assert_eq!(
            value_len(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']),
            Err(DecodeError::DeclaredLengthExceedsInput {
                declared: u32::MAX as usize,
                available: 1
            })
        );
        assert_eq!(
            value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::DeclaredLengthExceedsInput {
                declared: u32::MAX as usize,
                available: 0
            })
        );
        assert_eq!(
            value_len(&[0xdf, 0x00, 0x00, 0x00, 0x02, 0xc0, 0xc0, 0xc0]),
            Err(DecodeError::DeclaredLengthExceedsInput {
                declared: 2,
                available: 3
            })
        );
        assert_eq!(
            value_len(&[0xa2, 0xff, 0xfe]),
            Err(DecodeError::InvalidUtf8)
        );
        assert!(matches!(value_len(&[0xc1]), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn depth_limit_is_exact() {
        let mut ok = vec![0x91; MAX_NESTING_DEPTH - 1];
        ok.push(0x90);
        assert_eq!(value_len(&ok), Ok(MAX_NESTING_DEPTH));
        let mut deep = vec![0x91; MAX_NESTING_DEPTH];
        deep.push(0x90);
        assert_eq!(
            value_len(&deep),
            Err(DecodeError::TooDeep {
                max: MAX_NESTING_DEPTH
            })
        );
    }
}
