//! A tenant's configuration of a plugin: defaults from the manifest's schema, validation
//! with every error's path, and the split between plain fields and secrets.

use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::records::{MAX_DATA_DEPTH, check_json, compile_schema};

/// Errors reported at most per validation.
const MAX_REPORTED_ERRORS: usize = 50;

/// A validated configuration: what plugins and people may see, and the secret fields
/// (JSON pointer → value) that are stored encrypted and never shown.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedConfig {
    pub public: Value,
    pub secrets: Map<String, Value>,
}

/// Fills in defaults, validates against `schema` and splits off the `secret_fields`.
/// `kept_secrets` are the stored secrets: a secret the input leaves out keeps its value, so
/// changing one setting does not mean re-entering every credential. Error paths start with
/// `/config`.
pub fn prepare(
    schema: &Value,
    secret_fields: &[String],
    input: Value,
    kept_secrets: &Map<String, Value>,
) -> Result<PreparedConfig, Vec<FieldError>> {
    // The same rule the package check applies, for schemas stored before it existed: a
    // secret the host cannot place would be stored and shown in plain text.
    let placement = streamflow_runtime::config_schema::scan(schema).problems;
    if !placement.is_empty() {
        return Err(placement
            .into_iter()
            .map(|p| {
                FieldError::new(
                    "/config",
                    format!("the plugin's config schema is unusable: {p}"),
                )
            })
            .collect());
    }
    if !input.is_object() {
        return Err(vec![FieldError::new("/config", "must be a JSON object")]);
    }
    check_json(&input, "/config", MAX_DATA_DEPTH).map_err(|e| vec![e])?;
    let mut config = input;
    // A secret left out keeps its stored value; one given as null is removed.
    let cleared: Vec<&String> = secret_fields
        .iter()
        .filter(|p| config.pointer(p).is_some_and(Value::is_null))
        .collect();
    for pointer in &cleared {
        take_pointer(&mut config, pointer);
    }
    for (pointer, value) in kept_secrets {
        if config.pointer(pointer).is_none() && !cleared.contains(&pointer) {
            set_pointer(&mut config, pointer, value.clone());
        }
    }
    apply_defaults(schema, &mut config, 0);
    let validator = compile_schema(schema).map_err(|e| {
        vec![FieldError::new(
            "/config",
            format!("the plugin's config schema is unusable: {e}"),
        )]
    })?;
    let errors: Vec<FieldError> = validator
        .iter_errors(&config)
        .take(MAX_REPORTED_ERRORS)
        .map(|e| {
            let at = e.instance_path().to_string();
            let message = if holds_secret(&at, &config, secret_fields) {
                without_value(&e)
            } else {
                e.to_string()
            };
            FieldError::new(format!("/config{at}"), message)
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut secrets = Map::new();
    for pointer in secret_fields {
        if let Some(value) = take_pointer(&mut config, pointer) {
            secrets.insert(pointer.clone(), value);
        }
    }
    Ok(PreparedConfig {
        public: config,
        secrets,
    })
}

/// Whether the value at `at` is, lies inside or contains a secret that the configuration
/// holds. Messages about such a value are built without quoting it: the rule is where the
/// value sits, not whether its text happens to appear in the message.
fn holds_secret(at: &str, config: &Value, secret_fields: &[String]) -> bool {
    secret_fields.iter().any(|secret| {
        config.pointer(secret).is_some()
            && (at == secret
                || at.is_empty()
                || secret.starts_with(&format!("{at}/"))
                || at.starts_with(&format!("{secret}/")))
    })
}

/// What a validation error says without its instance (the crate's masked form, which
/// puts a placeholder where the value would be quoted).
fn without_value(e: &jsonschema::ValidationError<'_>) -> String {
    format!(
        "{} (the value is secret and not shown)",
        e.masked_with("the value")
    )
}

/// Inserts each missing property that has a `default` in the schema, recursing into
/// objects that exist (or were just defaulted).
pub fn apply_defaults(schema: &Value, value: &mut Value, depth: usize) {
    if depth > 32 {
        return;
    }
    let (Some(props), Some(object)) = (
        schema.get("properties").and_then(|p| p.as_object()),
        value.as_object_mut(),
    ) else {
        return;
    };
    for (name, sub) in props {
        if !object.contains_key(name)
            && let Some(default) = sub.get("default")
        {
            object.insert(name.clone(), default.clone());
        }
        if let Some(child) = object.get_mut(name) {
            apply_defaults(sub, child, depth + 1);
        }
    }
}

/// Sets the value at `pointer`, making the objects on the way (nothing when a parent is
/// not an object).
pub(crate) fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    let tokens = streamflow_runtime::pointer::tokens(pointer);
    let Some((last, parents)) = tokens.split_last() else {
        return;
    };
    let mut at = root;
    for token in parents {
        let Some(object) = at.as_object_mut() else {
            return;
        };
        at = object
            .entry(token.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(object) = at.as_object_mut() {
        object.insert(last.clone(), value);
    }
}

/// Removes and returns the value at `pointer`, if there is one.
pub(crate) fn take_pointer(root: &mut Value, pointer: &str) -> Option<Value> {
    let tokens = streamflow_runtime::pointer::tokens(pointer);
    let (last, parents) = tokens.split_last()?;
    let mut at = root;
    for token in parents {
        at = at.as_object_mut()?.get_mut(token)?;
    }
    at.as_object_mut()?.remove(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_with_unplaceable_secrets_are_unusable() {
        let schema = json!({
            "type": "object",
            "properties": {"keys": {"type": "array", "items": {"type": "string", "writeOnly": true}}}
        });
        let errors = prepare(&schema, &[], json!({"keys": ["sk-live"]}), &Map::new()).unwrap_err();
        assert_eq!(errors[0].path, "/config");
        assert!(
            errors[0]
                .message
                .contains("config.schema/properties/keys/items"),
            "{errors:?}"
        );
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["api_key"],
            "properties": {
                "api_key": {"type": "string", "writeOnly": true, "minLength": 8},
                "thresholds": {
                    "type": "object",
                    "properties": {"hot": {"type": "integer", "default": 70, "maximum": 100}},
                    "default": {}
                },
                "region": {"type": "string", "default": "us"}
            }
        })
    }

    #[test]
    fn defaults_validation_and_secrets() {
        let secrets = vec!["/api_key".to_string()];
        let prepared = prepare(
            &schema(),
            &secrets,
            json!({"api_key": "sk-12345678"}),
            &Map::new(),
        )
        .unwrap();
        assert_eq!(
            prepared.public,
            json!({"thresholds": {"hot": 70}, "region": "us"})
        );
        assert_eq!(prepared.secrets["/api_key"], "sk-12345678");

        // A later change that leaves the secret out keeps it.
        let again = prepare(
            &schema(),
            &secrets,
            json!({"region": "eu"}),
            &prepared.secrets,
        )
        .unwrap();
        assert_eq!(again.secrets, prepared.secrets);
        assert_eq!(again.public["region"], "eu");

        // Given as null, it is removed, not kept: here the schema requires it.
        let cleared = prepare(
            &schema(),
            &secrets,
            json!({"api_key": null}),
            &prepared.secrets,
        )
        .unwrap_err();
        assert_eq!(cleared[0].message, "\"api_key\" is a required property");
    }

    #[test]
    fn every_error_has_its_path_and_secrets_are_not_quoted() {
        let secrets = vec!["/api_key".to_string()];
        let errors = prepare(
            &schema(),
            &secrets,
            json!({"api_key": "tiny1", "thresholds": {"hot": 300}, "colour": "red"}),
            &Map::new(),
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"/config/api_key"), "{errors:?}");
        assert!(paths.contains(&"/config/thresholds/hot"), "{errors:?}");
        assert!(paths.contains(&"/config"), "{errors:?}");
        assert!(
            errors.iter().all(|e| !e.message.contains("tiny1")),
            "{errors:?}"
        );
        // However short the secret, and whatever rule it breaks, its value is not quoted:
        // neither at its own path nor in an error about an object that contains it.
        let short = json!({
            "type": "object",
            "properties": {
                "creds": {
                    "type": "object",
                    "properties": {"pin": {"type": "string", "writeOnly": true, "minLength": 8}},
                    "maxProperties": 1,
                    "not": {"required": ["other"]}
                }
            }
        });
        for (input, path) in [
            (json!({"creds": {"pin": "qz"}}), "/config/creds/pin"),
            (json!({"creds": {"pin": "qz", "other": 1}}), "/config/creds"),
            (json!({"creds": {"pin": 7}}), "/config/creds/pin"),
        ] {
            let errors =
                prepare(&short, &["/creds/pin".to_string()], input, &Map::new()).unwrap_err();
            assert!(errors.iter().any(|e| e.path == path), "{errors:?}");
            for e in &errors {
                assert!(
                    !e.message.contains("qz") && !e.message.contains('7'),
                    "{errors:?}"
                );
            }
        }
        let missing = prepare(&schema(), &secrets, json!({}), &Map::new()).unwrap_err();
        assert!(missing[0].message.contains("api_key"), "{missing:?}");
        assert_eq!(
            prepare(&schema(), &secrets, json!([1]), &Map::new()).unwrap_err()[0].path,
            "/config"
        );
    }
}
