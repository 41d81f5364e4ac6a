//! Helpers most plugins need when they quote input back or read a tenant's config: text
//! clipped for messages, and serde helpers that accept what JSON Schema accepts.

/// At most `max` characters of `text` (the last one `…` when it was cut), with control and
/// invisible formatting characters (zero-width, bidirectional overrides) shown as spaces,
/// so quoted input cannot hide or reorder text in a message.
pub fn clip(text: &str, max: usize) -> String {
    let clean = |c: char| {
        let hidden = c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}');
        if hidden { ' ' } else { c }
    };
    if text.chars().nth(max).is_none() {
        return text.chars().map(clean).collect();
    }
    let mut out: String = text
        .chars()
        .take(max.saturating_sub(1))
        .map(clean)
        .collect();
    out.push('…');
    out
}

/// Serde helpers for config values written the ways JSON Schema allows.
pub mod lenient {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};
    use serde_json::Number;

    /// A whole number written as an integer or as a float (`14.0`): JSON Schema's
    /// "integer" accepts both, serde's integer types only the first. Use with
    /// `#[serde(deserialize_with = "lenient::int")]`.
    pub fn int<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<T, D::Error> {
        let n = Number::deserialize(d)?;
        let float = || {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        };
        n.as_i64()
            .or_else(float)
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| D::Error::custom(format_args!("{n} is not a whole number in range")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_cuts_and_cleans() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdefghij", 10), "abcdefghij");
        assert_eq!(clip("abcdefghijk", 10), "abcdefghi…");
        assert_eq!(clip("a\nb\u{202E}c", 10), "a b c");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn whole_numbers_as_floats_are_integers() {
        #[derive(serde::Deserialize)]
        struct S {
            #[serde(deserialize_with = "lenient::int")]
            n: u32,
        }
        let n = |v: serde_json::Value| serde_json::from_value::<S>(serde_json::json!({ "n": v }));
        assert_eq!(n(serde_json::json!(14)).unwrap().n, 14);
        assert_eq!(n(serde_json::json!(14.0)).unwrap().n, 14);
        assert!(n(serde_json::json!(14.5)).is_err());
        assert!(n(serde_json::json!(-1)).is_err());
    }
}

/// `text` percent-encoded as one URL query value or path segment (RFC 3986: everything but
/// unreserved characters is encoded), for building request URLs such as a QuickBooks query.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A short stable digest of `text` (32 hex digits: two 64-bit FNV-1a hashes), for kv keys
/// made from names of any length and for telling whether a payload changed. Not a
/// cryptographic hash: nothing secret or adversarial should depend on it.
pub fn digest(text: &str) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for byte in text.bytes() {
        a = (a ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ byte as u64)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(5);
    }
    format!("{a:016x}{b:016x}")
}

#[cfg(test)]
mod url_tests {
    #[test]
    fn encodes_all_but_unreserved() {
        assert_eq!(
            super::url_encode("select * from Customer where DisplayName = 'Amy\\'s'"),
            "select%20%2A%20from%20Customer%20where%20DisplayName%20%3D%20%27Amy%5C%27s%27"
        );
        assert_eq!(super::url_encode("é&="), "%C3%A9%26%3D");
    }

    #[test]
    fn digests_are_stable_and_distinct() {
        assert_eq!(
            super::digest("king's groceries"),
            super::digest("king's groceries")
        );
        assert_ne!(super::digest("a"), super::digest("b"));
        assert_eq!(super::digest("x").len(), 32);
    }
}
