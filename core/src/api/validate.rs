//! Checks of request fields shared by the realms, each reporting the field's JSON pointer.

use super::error::{ApiError, ApiResult};

/// Shortest password accepted; the longest is [`crate::auth::MAX_PASSWORD_CHARS`].
const MIN_PASSWORD_CHARS: usize = 10;

/// `?limit=&cursor=` of the paged lists (users, API keys, record types, tenants), as the
/// record lists take them.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1-200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]*$")]
    pub cursor: Option<String>,
}

/// Page size when `limit` is absent, and the largest allowed (as for records).
pub const DEFAULT_PAGE_LIMIT: i64 = 50;
pub const MAX_PAGE_LIMIT: i64 = 200;

impl PageQuery {
    /// The page size (an empty `limit=` is absent); 400 naming `limit` when out of range.
    pub fn limit(&self) -> ApiResult<i64> {
        match self.limit.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(DEFAULT_PAGE_LIMIT),
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_LIMIT).contains(n))
                .ok_or_else(|| bad_parameter("limit", "must be a whole number from 1 to 200")),
        }
    }

    /// The position after which the page starts, for lists keyed by a tuple of values
    /// (see [`json_cursor`]).
    pub fn after<T: serde::de::DeserializeOwned>(&self) -> ApiResult<Option<T>> {
        use base64::Engine;
        self.cursor()
            .map(|c| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .ok_or_else(invalid_cursor)
            })
            .transpose()
    }

    /// The position after which the page starts, for lists keyed by a UUID.
    pub fn after_id(&self) -> ApiResult<Option<uuid::Uuid>> {
        self.cursor()
            .map(|c| crate::records::decode_cursor(c).ok_or_else(invalid_cursor))
            .transpose()
    }

    /// The position after which the page starts, for lists keyed by a text id (a slug, a
    /// record type id); `valid` is that id's shape, so only an id the list could hold is
    /// ever bound into a query.
    pub fn after_key(&self, valid: impl Fn(&str) -> bool) -> ApiResult<Option<String>> {
        use base64::Engine;
        self.cursor()
            .map(|c| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .filter(|key| valid(key))
                    .ok_or_else(invalid_cursor)
            })
            .transpose()
    }

    fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref().filter(|s| !s.is_empty())
    }
}

/// Deserialises an integer also when it is written with a zero fraction (`3.0`): JSON Schema
/// counts that as an integer, so a client generated from the description may send it.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(de: D) -> Result<i64, D::Error> {
    use serde::Deserialize;
    let number = serde_json::Number::deserialize(de)?;
    number
        .as_i64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        })
        .ok_or_else(|| serde::de::Error::custom(format!("expected a whole number, got {number}")))
}

/// 400 for a query parameter that is not what the route takes.
pub fn bad_parameter(parameter: &str, message: &str) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("{parameter}: {message}"))
        .with_details(serde_json::json!({ "parameter": parameter }))
}

fn invalid_cursor() -> ApiError {
    ApiError::bad_request("invalid_cursor", "cursor is not one this server returned")
        .with_details(serde_json::json!({ "parameter": "cursor" }))
}

/// The cursor of a text-keyed list (see [`PageQuery::after_key`]).
pub fn key_cursor(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// The cursor of a list keyed by a tuple of values (see [`PageQuery::after`]).
pub fn json_cursor(key: &impl serde::Serialize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(key).expect("a cursor serialises"))
}

/// Cuts one page from `rows`, fetched with `limit + 1` so the extra row tells whether a
/// next page exists; returns the page and the cursor of its last row when there is one.
pub fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let next = rows.last().map(cursor);
        (rows, next)
    } else {
        (rows, None)
    }
}

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

/// A new password (user creation, reset, developer accounts): 10 to 256 characters.
pub fn password(raw: &str, path: &str) -> ApiResult<()> {
    // The cap first: it looks at the byte length before counting characters.
    if crate::auth::password_within_cap(raw) && raw.chars().count() >= MIN_PASSWORD_CHARS {
        Ok(())
    } else {
        Err(ApiError::field(
            path,
            format!(
                "must be {MIN_PASSWORD_CHARS} to {} characters long",
                crate::auth::MAX_PASSWORD_CHARS
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
    fn whole_numbers_may_carry_a_zero_fraction() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(deserialize_with = "whole_number")]
            version: i64,
        }
        let parse = |text: &str| serde_json::from_str::<Body>(text).map(|b| b.version);
        assert_eq!(parse(r#"{"version": 3}"#).unwrap(), 3);
        assert_eq!(parse(r#"{"version": -159.0}"#).unwrap(), -159);
        for bad in [
            r#"{"version": 1.5}"#,
            r#"{"version": "3"}"#,
            r#"{"version": 1e300}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

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
