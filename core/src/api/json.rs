//! `JsonBody<T>`: the JSON extractor every handler uses, so malformed input goes through the
//! same error type as everything else.
//!
//! - a declared `Content-Length` over the limit is refused with 413 before a byte is read,
//!   and a chunked body is cut off at the limit (also 413);
//! - a body that is not JSON is 400 with the line and column;
//! - JSON of the wrong shape is 422 with the JSON pointer of the offending field.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::json;

use streamflow_runtime::pointer::push as push_token;

use super::AppState;
use super::error::ApiError;
use crate::error::FieldError;

pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.body_limit;
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !(essence.eq_ignore_ascii_case("application/json")
            || essence.to_ascii_lowercase().ends_with("+json"))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large(limit));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large(limit)
            } else {
                ApiError::bad_request("unreadable_body", rejection.body_text())
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses JSON text into `T`, mapping syntax errors to 400 and shape errors to 422.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let inner = err.inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            malformed(inner)
        } else {
            let mut path = pointer(err.path());
            if let Some(field) = inner
                .to_string()
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                push_token(&mut path, field);
            }
            // serde's message ends with its own "at line x column y"; the path says more.
            let message = inner.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map(|(m, _)| m.to_string())
                .unwrap_or(message);
            ApiError::validation(vec![FieldError::new(path, message)])
        }
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

fn malformed(err: &serde_json::Error) -> ApiError {
    ApiError::bad_request(
        "malformed_json",
        format!("the body is not valid JSON: {err}"),
    )
    .with_details(json!({ "line": err.line(), "column": err.column() }))
}

/// The RFC 6901 JSON pointer of the place serde stopped at, built from the path's segments
/// (never from its display form, which does not escape keys): `/items/1/count`, `""` for the
/// whole body. Segments after one serde could not name are left off, so the pointer names the
/// deepest place known.
pub fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => push_token(&mut out, &index.to_string()),
            Segment::Map { key } => push_token(&mut out, key),
            Segment::Enum { variant } => push_token(&mut out, variant),
            Segment::Unknown => break,
        }
    }
    out
}

pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than the {limit}-byte limit"),
    )
    .with_details(json!({ "limit_bytes": limit }))
}

/// The layer that makes axum's body reader stop at the configured limit.
pub fn body_limit(limit: usize) -> DefaultBodyLimit {
    DefaultBodyLimit::max(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        items: Vec<Item>,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Item {
        count: u32,
    }

    /// Undoes RFC 6901 escaping of a pointer; `None` when it is not a valid pointer.
    fn tokens(pointer: &str) -> Option<Vec<String>> {
        if pointer.is_empty() {
            return Some(vec![]);
        }
        let rest = pointer.strip_prefix('/')?;
        rest.split('/')
            .map(|t| {
                let mut out = String::new();
                let mut chars = t.chars();
                while let Some(c) = chars.next() {
                    if c == '~' {
                        match chars.next()? {
                            '0' => out.push('~'),
                            '1' => out.push('/'),
                            _ => return None,
                        }
                    } else {
                        out.push(c);
                    }
                }
                Some(out)
            })
            .collect()
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        email: Option<String>,
    }

    #[test]
    fn keys_with_brackets_dots_and_escapes_are_pointed_at_exactly() {
        // The inputs that used to panic the pointer formatting, and the RFC 6901 escapes.
        for key in [
            "[", "[é", "]", "a[1]", "a.b", "~", "/", "~1", "é[", "[0]x", "",
        ] {
            let body = serde_json::to_vec(&json!({ key: 1 })).unwrap();
            let e = parse::<Strict>(&body).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{key:?}");
            let path = e.details["errors"][0]["path"].as_str().unwrap().to_string();
            assert_eq!(
                tokens(&path),
                Some(vec![key.to_string()]),
                "{key:?} -> {path:?}"
            );

            let body = serde_json::to_vec(&json!({ "m": { key: "x" } })).unwrap();
            let e = parse::<
                std::collections::HashMap<String, std::collections::HashMap<String, u32>>,
            >(&body)
            .unwrap_err();
            let path = e.details["errors"][0]["path"].as_str().unwrap();
            let value: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                value.pointer(path),
                Some(&json!("x")),
                "{key:?} -> {path:?}"
            );
        }
        let e = parse::<Body>(br#"{"items":[]}"#).unwrap_err();
        assert_eq!(
            e.details["errors"][0]["path"], "/name",
            "a missing field is named"
        );
    }

    use proptest::prelude::*;
    use serde_json::Value;
    use std::collections::HashMap;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the key, a wrong value under it is a 422 whose path is a valid RFC 6901
        /// pointer that resolves, in the body sent, to that very value.
        #[test]
        fn any_key_gets_a_pointer_that_round_trips(
            outer in any::<String>(),
            inner in any::<String>(),
            index in 0usize..4,
        ) {
            let mut list = vec![json!(1); index + 1];
            list[index] = json!("wrong");
            let body = serde_json::to_vec(&json!({ &outer: { &inner: list } })).unwrap();
            let e = parse::<HashMap<String, HashMap<String, Vec<u32>>>>(&body).unwrap_err();
            prop_assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
            let path = e.details["errors"][0]["path"].as_str().unwrap().to_string();
            let expected = vec![outer.clone(), inner.clone(), index.to_string()];
            prop_assert_eq!(tokens(&path), Some(expected));
            let value: Value = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(value.pointer(&path), Some(&json!("wrong")));
        }

        /// An unknown key, whatever it is, is a 422 naming it.
        #[test]
        fn any_unknown_key_is_named(key in any::<String>()) {
            prop_assume!(key != "email");
            let body = serde_json::to_vec(&json!({ &key: 1 })).unwrap();
            let e = parse::<Strict>(&body).unwrap_err();
            prop_assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
            let path = e.details["errors"][0]["path"].as_str().unwrap().to_string();
            prop_assert_eq!(tokens(&path), Some(vec![key]));
        }

        /// Arbitrary bytes never panic the extractor: they parse, or are 400 / 422 with a
        /// valid pointer.
        #[test]
        fn any_bytes_are_parsed_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for result in [
                parse::<Body>(&bytes).map(|_| ()),
                parse::<Strict>(&bytes).map(|_| ()),
                parse::<Value>(&bytes).map(|_| ()),
            ] {
                if let Err(e) = result {
                    prop_assert!(
                        e.status == StatusCode::BAD_REQUEST
                            || e.status == StatusCode::UNPROCESSABLE_ENTITY
                    );
                    if e.status == StatusCode::UNPROCESSABLE_ENTITY {
                        let path = e.details["errors"][0]["path"].as_str().unwrap();
                        prop_assert!(tokens(path).is_some(), "{:?}", path);
                    }
                }
            }
        }

        /// JSON-looking text built from arbitrary keys and scalars, often nearly right.
        #[test]
        fn any_json_object_is_parsed_or_refused(
            entries in proptest::collection::vec((any::<String>(), prop_oneof![
                Just(json!(null)), any::<i64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from), Just(json!([{"count": "x"}])),
            ]), 0..4),
        ) {
            let object: serde_json::Map<String, Value> = entries.into_iter().collect();
            let body = serde_json::to_vec(&object).unwrap();
            for result in [parse::<Body>(&body).map(|_| ()), parse::<Strict>(&body).map(|_| ())] {
                if let Err(e) = result {
                    prop_assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
                    let path = e.details["errors"][0]["path"].as_str().unwrap();
                    prop_assert!(tokens(path).is_some(), "{:?}", path);
                }
            }
        }
    }

    #[test]
    fn syntax_is_400_shape_is_422_with_path() {
        let e = parse::<Body>(b"{\"name\": ").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e =
            parse::<Body>(br#"{"name":"x","items":[{"count":1},{"count":"two"}]}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.details["errors"][0]["path"], "/items/1/count");
        let e = parse::<Body>(br#"{"name":"x","items":[]} trailing"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
