//! An object's key matched against a schema's property names without a `memcmp` call per name.
//! A name is kept as its length and two overlapping fixed-size loads covering its first and last
//! bytes, so a comparison is three integer compares, inlined; only names over 16 bytes, whose
//! middle those loads do not cover, are compared in full once the three agree.

/// One property name, as compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Name {
    len: usize,
    head: u64,
    tail: u64,
}

/// The bytes the loads cover: all of them up to 16 bytes.
const COVERED: usize = 16;

impl Name {
    pub(crate) fn of(text: &str) -> Name {
        let (head, tail) = words(text.as_bytes());
        Name {
            len: text.len(),
            head,
            tail,
        }
    }
}

/// The first and the last eight bytes (four for a text of 4-7 bytes; the first, middle and last
/// byte below that), read as integers: with the length, the whole text up to 16 bytes.
#[inline]
fn words(b: &[u8]) -> (u64, u64) {
    let n = b.len();
    let u64_at = |i: usize| {
        b.get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map_or(0, |w| u64::from(u32::from_le_bytes(w)))
    };
    let byte = |i: usize| b.get(i).map_or(0, |&x| u64::from(x));
    match n {
        8.. => (u64_at(0), u64_at(n - 8)),
        4..=7 => (u32_at(0), u32_at(n - 4)),
        1..=3 => (byte(0) | byte(n / 2) << 8, byte(n - 1)),
        0 => (0, 0),
    }
}

/// Where `key` is among `names`; `same(i)` compares it in full with the text of name `i`, and is
/// asked only about a name over 16 bytes whose length and loads agree.
#[inline]
pub(crate) fn position(names: &[Name], key: &str, same: impl Fn(usize) -> bool) -> Option<usize> {
    let want = Name::of(key);
    names
        .iter()
        .enumerate()
        .position(|(i, name)| *name == want && (want.len <= COVERED || same(i)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every pair of texts from a small alphabet up to 20 bytes long, plus near misses that differ
    /// in one byte at each position.
    #[test]
    fn a_name_matches_exactly_the_equal_texts() {
        let mut texts: Vec<String> = vec![String::new()];
        for len in 1..=20 {
            let base: String = (0..len).map(|i| char::from(b'a' + (i % 7) as u8)).collect();
            texts.push(base.clone());
            for at in 0..len {
                let mut bytes = base.clone().into_bytes();
                bytes[at] = b'Z';
                texts.push(String::from_utf8(bytes).unwrap_or_default());
            }
        }
        let names: Vec<Name> = texts.iter().map(|t| Name::of(t)).collect();
        for key in &texts {
            let want = texts.iter().position(|t| t == key);
            assert_eq!(position(&names, key, |i| texts[i] == *key), want, "{key:?}");
        }
    }

    proptest! {
        #[test]
        fn position_is_the_first_equal_text(
            texts in proptest::collection::vec("[a-c\u{e9}]{0,20}", 0..8),
            key in "[a-c\u{e9}]{0,20}",
        ) {
            let names: Vec<Name> = texts.iter().map(|t| Name::of(t)).collect();
            prop_assert_eq!(
                position(&names, &key, |i| texts[i] == key),
                texts.iter().position(|t| *t == key)
            );
        }
    }
}
