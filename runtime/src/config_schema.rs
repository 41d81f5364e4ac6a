//! Where a plugin's configuration schema puts its secrets.
//!
//! A field is secret when its schema says `"writeOnly": true`. The host must find every
//! such field *by position in the configuration* (a JSON pointer), because it takes those
//! values out, seals them and never shows them. That is only reliable when the field's
//! place is fixed by the schema: reached from the root through `properties` (by name), and
//! through the applicators that always apply at the same place, `allOf` and local `$ref`.
//!
//! Everywhere else a `writeOnly` cannot be placed: under `items`, `prefixItems`,
//! `additionalProperties` or `patternProperties` the value sits at a position the schema
//! does not name; under `anyOf`, `oneOf`, `not`, `if`/`then`/`else` or `dependentSchemas`
//! whether it applies depends on the data. Rather than guess (and store a credential in
//! plain text when the guess is wrong), a schema with `writeOnly` in such a place is
//! refused, naming the schema path. A `$ref` cycle is followed once: a secret inside a
//! recursive part would sit at unboundedly many places, so it is refused the same way.

use serde_json::Value;

/// Deepest schema nesting walked (schemas nest at most 32 levels; `$ref` adds a few).
const MAX_DEPTH: usize = 64;
/// Most subschemas one scan visits. `$ref`s that share targets (`allOf: [{$ref: a}, {$ref:
/// a}]`, with `a` built the same way, level after level) would make the walk exponential
/// in the schema's size; a schema that needs more than this is refused as too complex.
const MAX_VISITS: usize = 20_000;
/// Most problems one scan reports.
const MAX_PROBLEMS: usize = 20;

/// What a configuration schema says about secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretScan {
    /// JSON pointers (into the configuration) of the secret fields, in schema order.
    pub fields: Vec<String>,
    /// Every `writeOnly` the host could not place, each a sentence naming its schema path
    /// (`config.schema/properties/...`).
    pub problems: Vec<String>,
}

/// Finds the secret fields of `schema`, or the reasons it cannot.
pub fn scan(schema: &Value) -> SecretScan {
    let mut out = SecretScan::default();
    let mut walker = Walker {
        root: schema,
        stack: Vec::new(),
        visits: 0,
        out: &mut out,
    };
    walker.walk(schema, String::new(), Place::At(String::new()), 0);
    out
}

/// Where in the configuration a schema node applies.
#[derive(Clone)]
enum Place {
    /// At this JSON pointer, always.
    At(String),
    /// Somewhere the host cannot name, because of this keyword.
    Unknown(&'static str),
}

struct Walker<'a> {
    root: &'a Value,
    /// `$ref` targets being followed, with whether the place was known there.
    stack: Vec<(String, bool)>,
    /// Subschemas visited so far (see [`MAX_VISITS`]).
    visits: usize,
    out: &'a mut SecretScan,
}

use crate::pointer::escape;

/// Single subschemas whose instance location is not fixed, or that apply conditionally.
const UNKNOWN_ONE: &[&str] = &[
    "additionalProperties",
    "items",
    "additionalItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
];
/// Arrays of subschemas of the same kind.
const UNKNOWN_MANY: &[&str] = &["anyOf", "oneOf", "prefixItems", "items"];
/// Maps of subschemas of the same kind.
const UNKNOWN_MAP: &[&str] = &["patternProperties", "dependentSchemas", "dependencies"];

impl Walker<'_> {
    fn problem(&mut self, path: &str, message: impl std::fmt::Display) {
        // Enough to fix the schema by; a pathological one must not fill memory.
        if self.out.problems.len() >= MAX_PROBLEMS {
            return;
        }
        let at = if path.is_empty() { "" } else { path };
        self.out
            .problems
            .push(format!("config.schema{at}: {message}"));
    }

    fn walk(&mut self, node: &Value, path: String, place: Place, depth: usize) {
        let Some(object) = node.as_object() else {
            return; // `true`/`false` schemas carry no keywords
        };
        self.visits += 1;
        if self.visits > MAX_VISITS {
            if self.visits == MAX_VISITS + 1 {
                self.out.problems.truncate(MAX_PROBLEMS - 1);
                self.problem(
                    "",
                    format!(
                        "is too complex to be checked for secret fields (its \"$ref\"s reach more \
                         than {MAX_VISITS} subschemas); share fewer references"
                    ),
                );
            }
            return;
        }
        if depth > MAX_DEPTH {
            self.problem(&path, "nests too deeply to be checked for secret fields");
            return;
        }
        match object.get("writeOnly") {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => match &place {
                Place::At(pointer) if pointer.is_empty() => {
                    self.problem(
                        &path,
                        "\"writeOnly\" on the whole configuration: mark the secret fields instead",
                    );
                    return;
                }
                Place::At(pointer) => {
                    if !self.out.fields.contains(pointer) {
                        self.out.fields.push(pointer.clone());
                    }
                    // Everything beneath is part of the secret.
                    return;
                }
                Place::Unknown(keyword) => {
                    self.problem(
                        &path,
                        format!(
                            "\"writeOnly\" under \"{keyword}\" is refused: the host finds secret fields only \
                             where the schema fixes their place (through \"properties\" from the root, \
                             \"allOf\" and local \"$ref\"), and would otherwise store and show this one in plain text"
                        ),
                    );
                }
            },
            Some(_) => self.problem(&path, "\"writeOnly\" must be true or false"),
        }
        for keyword in ["$dynamicRef", "$recursiveRef"] {
            if object.contains_key(keyword) {
                self.problem(
                    &path,
                    format!("\"{keyword}\" is not supported in configuration schemas"),
                );
            }
        }
        if let Some(Value::Object(props)) = object.get("properties") {
            for (name, sub) in props {
                let here = match &place {
                    Place::At(p) => Place::At(format!("{p}/{}", escape(name))),
                    unknown => unknown.clone(),
                };
                self.walk(
                    sub,
                    format!("{path}/properties/{}", escape(name)),
                    here,
                    depth + 1,
                );
            }
        }
        if let Some(Value::Array(all)) = object.get("allOf") {
            for (i, sub) in all.iter().enumerate() {
                self.walk(sub, format!("{path}/allOf/{i}"), place.clone(), depth + 1);
            }
        }
        if let Some(reference) = object.get("$ref") {
            self.follow(reference, &path, place.clone(), depth);
        }
        let unknown = |keyword: &'static str| match &place {
            Place::At(_) => Place::Unknown(keyword),
            Place::Unknown(k) => Place::Unknown(k),
        };
        for &keyword in UNKNOWN_ONE {
            if let Some(sub) = object.get(keyword).filter(|s| s.is_object()) {
                self.walk(
                    sub,
                    format!("{path}/{keyword}"),
                    unknown(keyword),
                    depth + 1,
                );
            }
        }
        for &keyword in UNKNOWN_MANY {
            if let Some(Value::Array(subs)) = object.get(keyword) {
                for (i, sub) in subs.iter().enumerate() {
                    self.walk(
                        sub,
                        format!("{path}/{keyword}/{i}"),
                        unknown(keyword),
                        depth + 1,
                    );
                }
            }
        }
        for &keyword in UNKNOWN_MAP {
            if let Some(Value::Object(subs)) = object.get(keyword) {
                for (name, sub) in subs {
                    self.walk(
                        sub,
                        format!("{path}/{keyword}/{}", escape(name)),
                        unknown(keyword),
                        depth + 1,
                    );
                }
            }
        }
        // `$defs` / `definitions` apply only where a `$ref` leads to them.
    }

    fn follow(&mut self, reference: &Value, path: &str, place: Place, depth: usize) {
        let at = format!("{path}/$ref");
        let Some(text) = reference.as_str() else {
            self.problem(&at, "must be a string");
            return;
        };
        let Some(fragment) = text.strip_prefix('#') else {
            self.problem(
                &at,
                format!("{text:?}: only local references (\"#/...\") are supported"),
            );
            return;
        };
        let pointer = percent_decode(fragment);
        let Some(target) = self.root.pointer(&pointer) else {
            self.problem(&at, format!("{text:?} points at nothing in this schema"));
            return;
        };
        let known = matches!(place, Place::At(_));
        let place = if self.stack.iter().any(|(t, k)| *t == pointer && *k == known) {
            if !known {
                return; // walked already in this cycle
            }
            // A cycle: the same fields again one level down, without end.
            Place::Unknown("a recursive $ref")
        } else {
            place
        };
        let known = matches!(place, Place::At(_));
        self.stack.push((pointer.clone(), known));
        self.walk(target, format!("{at} → {pointer}"), place, depth + 1);
        self.stack.pop();
    }
}

/// `%XX` escapes of a URI fragment, decoded (invalid escapes are kept as written).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_references_cannot_make_the_scan_exponential() {
        // a0 -> a1 twice -> a2 twice ... : 2^24 paths through 24 definitions.
        let mut defs = serde_json::Map::new();
        for i in 0..24 {
            let next = format!("#/$defs/a{}", i + 1);
            defs.insert(
                format!("a{i}"),
                json!({"allOf": [{"$ref": next}, {"$ref": next}]}),
            );
        }
        defs.insert("a24".into(), json!({"type": "object"}));
        let schema = json!({"$defs": defs, "allOf": [{"$ref": "#/$defs/a0"}]});
        let scan = scan(&schema);
        assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
        assert!(
            scan.problems[0].contains("too complex"),
            "{:?}",
            scan.problems
        );
    }

    fn fields(schema: Value) -> Vec<String> {
        let s = scan(&schema);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        s.fields
    }

    fn refused(schema: Value, needle: &str) {
        let s = scan(&schema);
        let all = s.problems.join("\n");
        assert!(
            all.contains(needle) && all.contains("writeOnly"),
            "{needle} not in {all:?}"
        );
    }

    const SECRET: fn() -> Value = || json!({"type": "string", "writeOnly": true});

    #[test]
    fn secrets_reached_through_properties_allof_and_local_refs_are_found() {
        assert_eq!(
            fields(json!({"type": "object", "properties": {
                "a": SECRET(),
                "nested": {"type": "object", "properties": {"b~/c": SECRET()}},
                "by_ref": {"$ref": "#/$defs/secret"},
                "obj_ref": {"$ref": "#/$defs/creds"},
                "plain": {"type": "string", "writeOnly": false}
            }, "allOf": [{"properties": {"d": SECRET()}}],
               "$defs": {"secret": SECRET(), "creds": {"type": "object", "properties": {"token": SECRET()}}}})),
            // Properties in key order (serde_json's map), then allOf.
            vec!["/a", "/by_ref", "/nested/b~0~1c", "/obj_ref/token", "/d"]
        );
        // A root that is itself a reference, and a percent-encoded pointer.
        assert_eq!(
            fields(
                json!({"$ref": "#/$defs/c%20fg", "$defs": {"c fg": {"type": "object", "properties": {"k": SECRET()}}}})
            ),
            vec!["/k"]
        );
        // An unreferenced definition applies nowhere.
        assert!(fields(json!({"type": "object", "$defs": {"unused": SECRET()}})).is_empty());
    }

    #[test]
    fn each_unplaceable_position_is_refused_with_its_path() {
        let cases = [
            (json!({"items": SECRET()}), "/items", "items"),
            (
                json!({"prefixItems": [SECRET()]}),
                "/prefixItems/0",
                "prefixItems",
            ),
            (
                json!({"additionalProperties": SECRET()}),
                "/additionalProperties",
                "additionalProperties",
            ),
            (
                json!({"patternProperties": {"^k": SECRET()}}),
                "/patternProperties/^k",
                "patternProperties",
            ),
            (
                json!({"anyOf": [{"properties": {"k": SECRET()}}]}),
                "/anyOf/0/properties/k",
                "anyOf",
            ),
            (
                json!({"oneOf": [{}, {"properties": {"k": SECRET()}}]}),
                "/oneOf/1/properties/k",
                "oneOf",
            ),
            (
                json!({"not": {"properties": {"k": SECRET()}}}),
                "/not/properties/k",
                "not",
            ),
            (
                json!({"if": {"properties": {"k": SECRET()}}}),
                "/if/properties/k",
                "if",
            ),
            (
                json!({"if": {}, "then": {"properties": {"k": SECRET()}}}),
                "/then/properties/k",
                "then",
            ),
            (
                json!({"if": {}, "else": {"properties": {"k": SECRET()}}}),
                "/else/properties/k",
                "else",
            ),
            (
                json!({"dependentSchemas": {"x": {"properties": {"k": SECRET()}}}}),
                "/dependentSchemas/x/properties/k",
                "dependentSchemas",
            ),
            (
                json!({"properties": {"list": {"type": "array", "items": {"$ref": "#/$defs/s"}}}, "$defs": {"s": SECRET()}}),
                "/properties/list/items/$ref → /$defs/s",
                "items",
            ),
            (
                json!({"properties": {"a": {"anyOf": [{"$ref": "#/$defs/o"}]}}, "$defs": {"o": {"properties": {"k": SECRET()}}}}),
                "/properties/a/anyOf/0/$ref → /$defs/o/properties/k",
                "anyOf",
            ),
        ];
        for (properties, path, keyword) in cases {
            let mut schema = json!({"type": "object"});
            for (k, v) in properties.as_object().unwrap() {
                schema[k] = v.clone();
            }
            refused(
                schema,
                &format!("config.schema{path}: \"writeOnly\" under \"{keyword}\""),
            );
        }
    }

    #[test]
    fn recursion_bad_values_and_the_root_are_refused() {
        refused(
            json!({"type": "object", "properties": {"token": SECRET(), "child": {"$ref": "#"}}}),
            "a recursive $ref",
        );
        refused(
            json!({"type": "object", "writeOnly": true}),
            "whole configuration",
        );
        let s = scan(&json!({"properties": {"k": {"writeOnly": "yes"}}}));
        assert!(s.problems[0].contains("true or false"), "{s:?}");
        let s = scan(&json!({"properties": {"k": {"$ref": "https://x.test/s.json"}}}));
        assert!(s.problems[0].contains("only local references"), "{s:?}");
        let s = scan(&json!({"properties": {"k": {"$ref": "#/nowhere"}}}));
        assert!(s.problems[0].contains("points at nothing"), "{s:?}");
        // A recursive schema without secrets terminates and is fine.
        assert!(
            fields(json!({"properties": {"child": {"$ref": "#"}, "n": {"type": "integer"}}}))
                .is_empty()
        );
    }
}
