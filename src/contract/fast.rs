//! A small JSON reader for the usual body, driving the same serde visitors as `serde_json`: strings
//! without escapes, non-negative integers of at most 18 digits, `true`, `false`, `null`, objects
//! and arrays. On anything else (an escape, a control character, a sign, a fraction or exponent,
//! a syntax error, an error from the visitor) it gives up with `Bail`, and the body is read again
//! by `serde_json` from the start, which then decides and words any error. On what it accepts it
//! makes the very calls `serde_json`'s `str` reader makes (`visit_borrowed_str`, `visit_u64`,
//! `visit_bool`, `visit_unit`, `visit_map`, `visit_seq`), so the walk finds the same violations;
//! it only skips serde_json's per-token bookkeeping (positions, scratch buffer, error paths).

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Not the usual shape: read again with serde_json.
#[derive(Debug)]
pub(crate) struct Bail;

impl fmt::Display for Bail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not read by the fast path")
    }
}

impl std::error::Error for Bail {}

impl de::Error for Bail {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Bail
    }
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of each byte of `x` that is a control character, `"` or `\` (SWAR). Exact as an
/// answer for the whole word: a borrow can only mark bytes after a byte that is one of them.
#[inline]
pub(crate) fn escapes_in(x: u64) -> u64 {
    let below_space = x.wrapping_sub(ONES * 0x20) & !x;
    let quote = x ^ (ONES * u64::from(b'"'));
    let backslash = x ^ (ONES * u64::from(b'\\'));
    (below_space
        | (quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash))
        & HIGHS
}

/// A control character, `"` or `\`.
#[inline]
pub(crate) fn is_special(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The length of the run of bytes before the first control character, `"` or `\`, eight bytes
/// at a time: the lowest marked byte of a word is the first one (a borrow only marks bytes above
/// a marked one), so no byte loop but for the document's last few bytes.
#[inline]
fn plain_run(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let marks = <[u8; 8]>::try_from(word).map_or(1, |w| escapes_in(u64::from_le_bytes(w)));
        if marks != 0 {
            return i + (marks.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    let tail = bytes.get(i..).unwrap_or_default();
    i + tail
        .iter()
        .position(|&b| is_special(b))
        .unwrap_or(tail.len())
}

/// The reader: a UTF-8 document and where it is in it.
pub(crate) struct Fast<'de> {
    text: &'de str,
    pos: usize,
}

impl<'de> Fast<'de> {
    pub(crate) fn new(text: &'de str) -> Self {
        Fast { text, pos: 0 }
    }

    /// The next byte that is not JSON whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.pos) {
            match b {
                b' ' | b'\n' | b'\t' | b'\r' => self.pos += 1,
                _ => return Some(b),
            }
        }
        None
    }

    /// Nothing but whitespace after the value.
    pub(crate) fn end(&mut self) -> Result<(), Bail> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(Bail),
        }
    }

    /// A string without escapes, at its opening quote.
    #[inline]
    fn string(&mut self) -> Result<&'de str, Bail> {
        let start = self.pos + 1;
        let rest = self.text.as_bytes().get(start..).unwrap_or_default();
        let len = plain_run(rest);
        if rest.get(len) != Some(&b'"') {
            return Err(Bail);
        }
        self.pos = start + len + 1;
        // Both ends are next to an ASCII quote: char boundaries.
        self.text.get(start..start + len).ok_or(Bail)
    }

    /// `word` exactly (`true`, `false`, `null`); what follows is the caller's to check.
    #[inline]
    fn literal(&mut self, word: &[u8]) -> Result<(), Bail> {
        let end = self.pos + word.len();
        if self.text.as_bytes().get(self.pos..end) != Some(word) {
            return Err(Bail);
        }
        self.pos = end;
        Ok(())
    }

    /// An object or array, at its opening bracket, through `visit`.
    fn container<T>(
        &mut self,
        visit: impl FnOnce(&mut Access<'_, 'de>) -> Result<T, Bail>,
    ) -> Result<T, Bail> {
        self.pos += 1;
        let mut access = Access {
            de: self,
            first: true,
            done: false,
        };
        let value = visit(&mut access)?;
        // The visitor read up to the closing bracket (ours always do).
        access.done.then_some(value).ok_or(Bail)
    }

    /// A non-negative integer of at most 18 digits without a leading zero (what serde_json
    /// hands over as a `u64`); a fraction or an exponent is left to serde_json.
    fn integer(&mut self) -> Result<u64, Bail> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut n = 0u64;
        while let Some(&b) = bytes.get(self.pos).filter(|b| b.is_ascii_digit()) {
            n = n.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            self.pos += 1;
        }
        let digits = self.pos - start;
        let leading_zero = digits > 1 && bytes.get(start) == Some(&b'0');
        if digits > 18 || leading_zero || matches!(bytes.get(self.pos), Some(b'.' | b'e' | b'E')) {
            return Err(Bail);
        }
        Ok(n)
    }
}

impl<'de> de::Deserializer<'de> for &mut Fast<'de> {
    type Error = Bail;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Bail> {
        match self.peek().ok_or(Bail)? {
            b'"' => visitor.visit_borrowed_str(self.string()?),
            b'{' => self.container(|access| visitor.visit_map(access)),
            b'[' => self.container(|access| visitor.visit_seq(access)),
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            b'0'..=b'9' => visitor.visit_u64(self.integer()?),
            _ => Err(Bail),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// An object's key, at its opening quote: a string and nothing else.
struct Key<'a, 'de>(&'a mut Fast<'de>);

impl<'de> de::Deserializer<'de> for Key<'_, 'de> {
    type Error = Bail;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Bail> {
        visitor.visit_borrowed_str(self.0.string()?)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// The members of an object or the items of an array.
struct Access<'a, 'de> {
    de: &'a mut Fast<'de>,
    first: bool,
    done: bool,
}

impl<'de> Access<'_, 'de> {
    /// Before the next member or item: `Some(byte it starts with)`, or `None` at the closing
    /// `close` (consumed). A separating comma is consumed; a trailing one bails.
    #[inline]
    fn next(&mut self, close: u8) -> Result<Option<u8>, Bail> {
        let mut b = self.de.peek().ok_or(Bail)?;
        if b == close {
            self.de.pos += 1;
            self.done = true;
            return Ok(None);
        }
        if self.first {
            self.first = false;
        } else {
            if b != b',' {
                return Err(Bail);
            }
            self.de.pos += 1;
            b = self.de.peek().ok_or(Bail)?;
            if b == close {
                return Err(Bail);
            }
        }
        Ok(Some(b))
    }
}

impl<'de> MapAccess<'de> for Access<'_, 'de> {
    type Error = Bail;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Bail> {
        match self.next(b'}')? {
            None => Ok(None),
            Some(b'"') => seed.deserialize(Key(&mut *self.de)).map(Some),
            Some(_) => Err(Bail),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Bail> {
        if self.de.peek() != Some(b':') {
            return Err(Bail);
        }
        self.de.pos += 1;
        seed.deserialize(&mut *self.de)
    }
}

impl<'de> SeqAccess<'de> for Access<'_, 'de> {
    type Error = Bail;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Bail> {
        match self.next(b']')? {
            None => Ok(None),
            Some(_) => seed.deserialize(&mut *self.de).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_run_stops_at_the_first_byte_to_escape_wherever_it_is() {
        for len in 0..40 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0u8, 0x1f, b'\n'] {
                    let mut text = vec![b'a'; len];
                    // Near misses, then bytes to escape (a space after a control character
                    // is where a borrow could mark a byte that is not one).
                    text.extend_from_slice("é \u{7f}#]![\u{0} \u{1f} \"x\\".as_bytes());
                    if at < len {
                        text[at] = special;
                        if at + 1 < len {
                            text[at + 1] = b' ';
                        }
                    }
                    // Every prefix too: words that end in the tail, and tails of every length.
                    for cut in 0..=text.len() {
                        let text = &text[..cut];
                        let want = text
                            .iter()
                            .position(|&b| is_special(b))
                            .unwrap_or(text.len());
                        assert_eq!(plain_run(text), want, "{text:?}");
                    }
                }
            }
        }
    }
}
