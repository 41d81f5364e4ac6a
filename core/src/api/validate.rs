//! Checks of request fields shared by the realms, each reporting the field's JSON pointer.

use crate::error::{ApiError, ApiResult};

/// Shortest and longest password accepted. The upper bound keeps argon2 from being handed
/// megabytes to hash.
const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 10..=256;

/// Trims and lowercases an email address and checks its shape.
pub fn email(raw: &str, path: &str) -> ApiResult<String> {
    let email = raw.trim().to_lowercase();
    let shape_ok = email.chars().count() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            // A domain of two or more non-empty labels: `a@b.c`, not `a@b`, `a@.` or `a@b..c`.
            !local.is_empty()
                && !domain.contains('@')
                && domain.split('.').count() >= 2
                && domain.split('.').all(|label| !label.is_empty())
        });
    if shape_ok {
        Ok(email)
    } else {
        Err(ApiError::field(
            path,
            "must be an email address such as name@example.com",
        ))
    }
}

pub fn password(raw: &str, path: &str) -> ApiResult<()> {
    let len = raw.chars().count();
    if PASSWORD_LEN.contains(&len) {
        Ok(())
    } else {
        Err(ApiError::field(
            path,
            format!(
                "must be {} to {} characters long",
                PASSWORD_LEN.start(),
                PASSWORD_LEN.end()
            ),
        ))
    }
}

/// A tenant slug: 2-63 lowercase letters, digits and inner hyphens (usable in a hostname).
pub fn slug(raw: &str, path: &str) -> ApiResult<()> {
    let ok = (2..=63).contains(&raw.len())
        && raw
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
        && !raw.starts_with('-')
        && !raw.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            path,
            "must be 2-63 characters of lowercase letters, digits and inner hyphens",
        ))
    }
}

/// A display name: not blank, at most `max` characters.
pub fn name(raw: &str, path: &str, max: usize) -> ApiResult<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ApiError::field(path, "must not be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::field(path, "must not contain control characters"));
    }
    if name.chars().count() > max {
        return Err(ApiError::field(
            path,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            email(" Ana@Example.COM ", "/email").unwrap(),
            "ana@example.com"
        );
        assert!(email("no-at-sign", "/email").is_err());
        assert!(email("a@b", "/email").is_err());
        assert!(email("a b@c.d", "/email").is_err());
        assert!(email("0@.", "/email").is_err());
        assert!(email("a@b..c", "/email").is_err());
        assert!(email("a@.b", "/email").is_err());
        assert!(email("a@b.", "/email").is_err());
        assert!(email("a@b.c.d", "/email").is_ok());
    }

    #[test]
    fn slugs() {
        assert!(slug("acme-hvac", "/slug").is_ok());
        assert!(slug("-acme", "/slug").is_err());
        assert!(slug("Acme", "/slug").is_err());
        assert!(slug("a", "/slug").is_err());
        assert!(slug("acme'; drop table tenants;--", "/slug").is_err());
    }
}
