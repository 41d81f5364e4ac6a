//! JSON pointers (RFC 6901): the one escaping and splitting the host uses, in the runtime's
//! schema checks and in the kernel (error paths, secret and personal fields).

/// One reference token, escaped: `~` as `~0`, `/` as `~1`.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Appends `/` and the escaped `token` to `pointer`.
pub fn push(pointer: &mut String, token: &str) {
    pointer.push('/');
    pointer.push_str(&escape(token));
}

/// The unescaped reference tokens of `pointer` (none for `""`, the whole document).
pub fn tokens(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_escaping() {
        for token in ["plain", "a/b", "~", "~1", "[é", ""] {
            let mut pointer = String::new();
            push(&mut pointer, token);
            push(&mut pointer, "next");
            assert_eq!(tokens(&pointer), [token, "next"]);
        }
        assert!(tokens("").is_empty());
        assert_eq!(escape("~/"), "~0~1");
    }
}
