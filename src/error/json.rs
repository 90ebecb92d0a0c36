//! A problem body written straight into bytes: the few JSON shapes a problem has (strings, one
//! unsigned integer, objects and one array), with serde_json's compact layout and escaping
//! byte for byte, without serde's per-field dispatch (a rejection's body cost ~5k instructions
//! through `serde_json::to_writer`).

use crate::contract::fast::{escapes_in, is_special};

/// Appends `s` as a JSON string, escaped as serde_json escapes it: `"` and `\`, the two-letter
/// escapes for backspace, form feed, newline, carriage return and tab, `\u00xx` (lowercase hex)
/// for the other control characters; everything else, DEL and non-ASCII included, as it is.
pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // The usual text has nothing to escape: checked a word at a time, then copied whole.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether `bytes` hold anything `string` escapes: eight bytes at a time, the tail as one
/// overlapping word (a byte loop only for texts under eight bytes).
#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    // A word that cannot be read counts as one to escape (never the case: chunks of eight).
    let word =
        |w: &[u8]| <[u8; 8]>::try_from(w).map_or(u64::MAX, |w| escapes_in(u64::from_ne_bytes(w)));
    let Some(tail) = bytes.len().checked_sub(8) else {
        return bytes.iter().any(|&b| is_special(b));
    };
    let mut found = word(&bytes[tail..]);
    for chunk in bytes.chunks_exact(8) {
        found |= word(chunk);
    }
    found != 0
}

/// Appends `n` in decimal.
pub(super) fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `prefix` (JSON the caller wrote by hand) and then `text`, a fixed word of the
/// gateway's own (a slug, a title, a code, a status) that has nothing to escape.
pub(super) fn plain(out: &mut Vec<u8>, prefix: &[u8], text: &str) {
    debug_assert!(!needs_escape(text.as_bytes()), "{text:?}");
    out.extend_from_slice(prefix);
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn by_serde(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    fn by_hand(s: &str) -> String {
        let mut out = Vec::new();
        string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_char_below_0x80_and_some_above_escape_as_serde_json_does() {
        for c in (0u32..0x80).chain([0x80, 0xe9, 0x2028, 0x2029, 0xfeff, 0x1f600]) {
            let s = format!("a{}b", char::from_u32(c).unwrap());
            assert_eq!(by_hand(&s), by_serde(&s), "{c:#x}");
        }
        assert_eq!(by_hand(""), "\"\"");
        assert_eq!(by_hand("\"\\\u{1}\u{1f}"), r#""\"\\\u0001\u001f""#);
    }

    #[test]
    fn one_char_to_escape_is_found_at_every_place_of_a_long_text() {
        // The word-at-a-time check: every offset, against each word boundary and the
        // overlapping tail, among plain, non-ASCII and near-miss bytes (space, DEL, 0xa0).
        for fill in ["a", "é", " ", "\u{7f}", "\u{a0}", "#]!["] {
            for len in 0..40 {
                for at in 0..len {
                    for c in ['"', '\\', '\u{0}', '\u{1f}', '\n', 'b'] {
                        let mut s: String = fill.repeat(len).chars().take(len).collect();
                        s.insert(s.char_indices().nth(at).map_or(s.len(), |(i, _)| i), c);
                        assert_eq!(by_hand(&s), by_serde(&s), "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn integers_print_as_serde_json_prints_them() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            400,
            503,
            12345,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            uint(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
    }

    proptest! {
        #[test]
        fn any_string_escapes_as_serde_json_does(s in any::<String>()) {
            prop_assert_eq!(by_hand(&s), by_serde(&s));
        }

        #[test]
        fn control_heavy_strings_escape_as_serde_json_does(s in "[\\x00-\\x20\"\\\\a-z\\x7f\u{80}-\u{10ffff}]{0,40}") {
            prop_assert_eq!(by_hand(&s), by_serde(&s));
        }
    }
}
