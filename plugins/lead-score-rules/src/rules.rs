//! The scoring rules: a pure function of the tenant's configuration ([`Rules`]) and a
//! lead's data, with no host calls, so it runs (and is tested and benchmarked) natively.
//!
//! Six factors add up to the score: lead source, budget, timeline, service, service area
//! and contact details, plus the signals a tenant weighs (other fields' values). Each factor that applies leaves one reason with its signed points.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most characters of any lead value quoted in a reason.
const MAX_QUOTED: usize = 40;
/// Characters of a free-text value (source, timeline, service) read for matching.
const MAX_MATCHED: usize = 256;
/// Longest postal code, counting letters and digits only.
const MAX_POSTAL: usize = 16;
/// Longest budget text, such as "$ 1,250,000.00".
const MAX_BUDGET_TEXT: usize = 32;
/// Most digits in a phone number (E.164 allows 15; extensions add a few).
const MAX_PHONE_DIGITS: usize = 20;
/// Most missing contact fields named in a reason.
const MAX_NAMED_MISSING: usize = 3;

/// A tenant's scoring rules: the plugin's configuration. Every field is optional (missing
/// fields take the [`Default`] values, tuned for a home-services business) and unknown
/// fields are ignored. Numbers may be written as `25` or `25.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rules {
    /// Points per lead source (`data.source`). Replaces the whole default table.
    #[serde(deserialize_with = "lenient::int_map")]
    pub sources: BTreeMap<String, i32>,
    /// Points for a source that is missing or not in `sources`.
    #[serde(deserialize_with = "lenient::int")]
    pub unknown_source_points: i32,
    /// Budget bands (`data.budget`): a budget earns the points of the band with the highest
    /// `min` it reaches, whatever the order here.
    pub budget_bands: Vec<BudgetBand>,
    /// Points per timeline (`data.timeline`).
    #[serde(deserialize_with = "lenient::int_map")]
    pub timelines: BTreeMap<String, i32>,
    /// Points for a timeline that is missing or not in `timelines`.
    #[serde(deserialize_with = "lenient::int")]
    pub unknown_timeline_points: i32,
    /// Points per service (`data.service` or `data.service_type`).
    #[serde(deserialize_with = "lenient::int_map")]
    pub services: BTreeMap<String, i32>,
    /// Points for a service that is missing or not in `services`.
    #[serde(deserialize_with = "lenient::int")]
    pub unknown_service_points: i32,
    /// Postal codes served, matched exactly (ignoring case, spaces and dashes). A code also
    /// matches its extended form: "12345" covers "12345-6789".
    pub postal_codes: Vec<String>,
    /// Beginnings of postal codes served: "SW1" covers "SW1A 1AA".
    pub postal_prefixes: Vec<String>,
    /// Points for a postal code in the service area.
    #[serde(deserialize_with = "lenient::int")]
    pub in_area_points: i32,
    /// Points (usually negative) for a postal code outside the service area.
    #[serde(deserialize_with = "lenient::int")]
    pub out_of_area_points: i32,
    /// Contact fields counted for completeness. `name`, `email`, `phone`, `address` and
    /// `postal_code` are checked for plausibility; other names (dotted paths such as
    /// `address.city` allowed) only need a non-empty value.
    pub completeness_fields: Vec<String>,
    /// Points when every completeness field is present, given pro rata.
    #[serde(deserialize_with = "lenient::int")]
    pub completeness_points: i32,
    /// Points for other fields of the lead, such as how urgent the call is: field name →
    /// value → points (`urgency = { emergency = 30, routine = 0 }`,
    /// `vulnerable_occupants = { true = 10 }`). A boolean is matched as `true` or `false`, a
    /// text like a table name above; a field that is missing, or a value not listed, adds
    /// nothing.
    pub signals: BTreeMap<String, Signal>,
    /// Lowest score that is hot.
    #[serde(deserialize_with = "lenient::int")]
    pub hot: u8,
    /// Lowest score that is warm.
    #[serde(deserialize_with = "lenient::int")]
    pub warm: u8,
}

/// The points of one signal field's values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Signal(#[serde(deserialize_with = "lenient::int_map")] pub BTreeMap<String, i32>);

/// One budget band: budgets of at least `min` earn `points`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetBand {
    #[serde(deserialize_with = "lenient::int")]
    pub min: u64,
    #[serde(deserialize_with = "lenient::int")]
    pub points: i32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            sources: table(&[
                ("referral", 25),
                ("repeat_customer", 25),
                ("phone", 15),
                ("walk_in", 15),
                ("website", 15),
                ("google_ads", 12),
                ("yelp", 10),
                ("facebook", 8),
                ("other", 5),
            ]),
            unknown_source_points: 5,
            budget_bands: vec![
                BudgetBand {
                    min: 10_000,
                    points: 25,
                },
                BudgetBand {
                    min: 5_000,
                    points: 18,
                },
                BudgetBand {
                    min: 1_000,
                    points: 10,
                },
                BudgetBand {
                    min: 250,
                    points: 4,
                },
            ],
            timelines: table(&[
                ("emergency", 25),
                ("asap", 20),
                ("this_week", 18),
                ("this_month", 12),
                ("this_quarter", 6),
                ("next_year", -5),
                ("just_browsing", -15),
            ]),
            unknown_timeline_points: 0,
            services: table(&[
                ("replacement", 15),
                ("installation", 15),
                ("repair", 12),
                ("maintenance", 6),
                ("inspection", 4),
            ]),
            unknown_service_points: 5,
            postal_codes: Vec::new(),
            postal_prefixes: Vec::new(),
            in_area_points: 10,
            out_of_area_points: -20,
            completeness_fields: ["name", "email", "phone", "address"]
                .map(String::from)
                .to_vec(),
            completeness_points: 10,
            signals: BTreeMap::new(),
            hot: 70,
            warm: 40,
        }
    }
}

fn table(entries: &[(&str, i32)]) -> BTreeMap<String, i32> {
    entries
        .iter()
        .map(|&(name, points)| (name.to_string(), points))
        .collect()
}

/// How warm a lead is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temp {
    Hot,
    Warm,
    Cold,
}

/// The result of [`score`].
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// 0 to 100.
    pub value: u8,
    pub temperature: Temp,
    /// 0.2 to 1.0: the share of the five signals (source, budget, timeline, service,
    /// postal code) the lead carries.
    pub confidence: f32,
    /// One per factor, the largest contribution first.
    pub reasons: Vec<String>,
}

/// Scores a lead's data. Never fails: data that is not an object, or fields that are
/// missing, malformed or oversized, count as absent.
pub fn score(rules: &Rules, data: &Value) -> Scored {
    let empty = Map::new();
    let data = data.as_object().unwrap_or(&empty);
    let mut parts = Vec::new();

    let source = text_field(data, &["source"]);
    let budget = Budget::read(data.get("budget"));
    let timeline = text_field(data, &["timeline"]);
    let service = text_field(data, &["service", "service_type"]);
    let postal = Postal::read(data);

    parts.extend(table_factor(
        "source",
        source.as_deref(),
        &rules.sources,
        rules.unknown_source_points,
    ));
    parts.extend(budget_factor(&budget, &rules.budget_bands));
    parts.extend(table_factor(
        "timeline",
        timeline.as_deref(),
        &rules.timelines,
        rules.unknown_timeline_points,
    ));
    parts.extend(table_factor(
        "service",
        service.as_deref(),
        &rules.services,
        rules.unknown_service_points,
    ));
    parts.extend(area_factor(&postal, rules));
    parts.extend(completeness_factor(
        data,
        matches!(postal, Postal::Code(_)),
        rules,
    ));
    parts.extend(signal_factors(data, &rules.signals));

    let total: i64 = parts.iter().map(|p| p.points).sum();
    let value = total.clamp(0, 100) as u8;
    let temperature = if value >= rules.hot {
        Temp::Hot
    } else if value >= rules.warm {
        Temp::Warm
    } else {
        Temp::Cold
    };

    let present = [
        source.is_some(),
        matches!(budget, Budget::Amount(_)),
        timeline.is_some(),
        service.is_some(),
        matches!(postal, Postal::Code(_)),
    ]
    .into_iter()
    .filter(|&p| p)
    .count();
    let confidence = ((0.2 + 0.8 * present as f64 / 5.0) * 100.0).round() / 100.0;

    parts.sort_by_key(|p| Reverse(p.points.abs()));
    Scored {
        value,
        temperature,
        confidence: confidence as f32,
        reasons: parts.into_iter().map(Part::into_reason).collect(),
    }
}

/// What one factor contributed.
struct Part {
    points: i64,
    text: String,
    /// Leave out ": +0" (for "missing ..." and "unreadable ..." reasons).
    quiet_when_zero: bool,
}

impl Part {
    fn new(points: impl Into<i64>, text: String) -> Part {
        Part {
            points: points.into(),
            text,
            quiet_when_zero: false,
        }
    }

    fn absent(points: impl Into<i64>, text: String) -> Part {
        Part {
            points: points.into(),
            text,
            quiet_when_zero: true,
        }
    }

    fn into_reason(self) -> String {
        if self.quiet_when_zero && self.points == 0 {
            self.text
        } else {
            format!("{}: {:+}", self.text, self.points)
        }
    }
}

/// A factor scored by a table of names (source, timeline, service). A table left empty
/// with zero points for unknown values turns the factor off.
fn table_factor(
    what: &str,
    value: Option<&str>,
    table: &BTreeMap<String, i32>,
    unknown: i32,
) -> Option<Part> {
    if table.is_empty() && unknown == 0 {
        return None;
    }
    let Some(value) = value else {
        return Some(Part::absent(unknown, format!("missing {what}")));
    };
    let shown = clip(value);
    Some(match lookup(table, value) {
        Some((key, points)) if key == value => Part::new(points, format!("{what} {shown}")),
        Some((key, points)) => Part::new(points, format!("{what} {shown} (as {})", clip(&key))),
        None => Part::new(unknown, format!("unknown {what} {shown}")),
    })
}

/// Fields the six factors read: a signal on one would count it twice.
pub const FACTOR_FIELDS: [&str; 9] = [
    "source",
    "budget",
    "timeline",
    "service",
    "service_type",
    "postal_code",
    "zip",
    "name",
    "email",
];

/// One part per signal field the lead has a listed value for (the same value, not a value
/// containing it: "non_emergency" is not "emergency"); a value worth no points says nothing.
fn signal_factors(data: &Map<String, Value>, signals: &BTreeMap<String, Signal>) -> Vec<Part> {
    let mut parts = Vec::new();
    for (field, Signal(table)) in signals {
        if FACTOR_FIELDS.contains(&field.as_str()) {
            continue;
        }
        let value = match data.get(field) {
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::String(s)) => normalize(&s.chars().take(MAX_MATCHED).collect::<String>()),
            _ => continue,
        };
        if value.is_empty() {
            continue;
        }
        let points = table
            .iter()
            .find(|(name, _)| normalize(name) == value)
            .map(|(_, points)| *points);
        if let Some(points) = points.filter(|p| *p != 0) {
            parts.push(Part::new(
                points,
                format!("{} {}", clip(field), clip(&value)),
            ));
        }
    }
    parts
}

/// The table entry for a normalised value: the entry with the same name, or else the
/// longest entry whose words appear together in the value ("ac_repair" is a "repair").
fn lookup(table: &BTreeMap<String, i32>, value: &str) -> Option<(String, i32)> {
    let entries = table.iter().filter_map(|(name, &points)| {
        let key = normalize(name);
        (!key.is_empty()).then_some((key, points))
    });
    let padded = format!("_{value}_");
    let mut best: Option<(String, i32)> = None;
    for (key, points) in entries {
        if key == value {
            return Some((key, points));
        }
        let longer = best.as_ref().is_none_or(|(b, _)| key.len() > b.len());
        if longer && padded.contains(&format!("_{key}_")) {
            best = Some((key, points));
        }
    }
    best
}

/// A lead's budget.
enum Budget {
    Missing,
    /// Present but not a usable amount; holds what to quote, if anything.
    Unreadable(Option<String>),
    Amount(f64),
}

impl Budget {
    fn read(value: Option<&Value>) -> Budget {
        match value {
            None | Some(Value::Null) => Budget::Missing,
            Some(Value::String(s)) if s.trim().is_empty() => Budget::Missing,
            Some(Value::String(s)) => match parse_amount(s) {
                Some(amount) => Budget::Amount(amount),
                None => Budget::Unreadable(Some(format!("\"{}\"", clip(s.trim())))),
            },
            Some(Value::Number(n)) => match n.as_f64() {
                Some(amount) if amount.is_finite() && amount >= 0.0 => Budget::Amount(amount),
                _ => Budget::Unreadable(Some(clip(&n.to_string()))),
            },
            Some(_) => Budget::Unreadable(None),
        }
    }
}

/// Reads an amount such as "12500", "12,500", "$8000", "€ 1 200.50" or "15k". Signs,
/// exponents, "NaN" and "inf" are refused.
fn parse_amount(text: &str) -> Option<f64> {
    let text = text.trim();
    if text.len() > MAX_BUDGET_TEXT {
        return None;
    }
    let text = text
        .strip_prefix(['$', '€', '£'])
        .unwrap_or(text)
        .trim_start();
    let (text, scale) = match text.strip_suffix(['k', 'K']) {
        Some(rest) => (rest.trim_end(), 1000.0),
        None => (text, 1.0),
    };
    let number: String = text
        .chars()
        .filter(|c| !matches!(c, ',' | '_' | ' '))
        .collect();
    let well_formed = number.bytes().any(|b| b.is_ascii_digit())
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|&b| b == b'.').count() <= 1;
    if !well_formed {
        return None;
    }
    let amount = number.parse::<f64>().ok()? * scale;
    amount.is_finite().then_some(amount)
}

fn budget_factor(budget: &Budget, bands: &[BudgetBand]) -> Option<Part> {
    if bands.is_empty() {
        return None;
    }
    Some(match budget {
        Budget::Missing => Part::absent(0, "missing budget".to_string()),
        Budget::Unreadable(Some(shown)) => Part::absent(0, format!("unreadable budget {shown}")),
        Budget::Unreadable(None) => Part::absent(0, "unreadable budget".to_string()),
        Budget::Amount(amount) => {
            let mut sorted: Vec<&BudgetBand> = bands.iter().collect();
            sorted.sort_by_key(|b| Reverse(b.min));
            let shown = format_amount(*amount);
            match sorted.iter().find(|b| b.min as f64 <= *amount) {
                Some(band) => Part::new(
                    band.points,
                    format!("budget {shown} in band ≥ {}", band.min),
                ),
                None => {
                    let lowest = sorted.last().map_or(0, |b| b.min);
                    Part::new(
                        0,
                        format!("budget {shown} below the lowest band ({lowest})"),
                    )
                }
            }
        }
    })
}

/// "12500", "8000.50", or "1e308" for amounts too long to print in full.
fn format_amount(amount: f64) -> String {
    if amount >= 1e15 {
        format!("{amount:e}")
    } else if amount.fract() == 0.0 {
        format!("{amount:.0}")
    } else {
        format!("{amount:.2}")
    }
}

/// A lead's postal code, from `postal_code`, `zip` or `address.postal_code`.
enum Postal {
    Missing,
    Unreadable,
    Code(PostalCode),
}

struct PostalCode {
    /// Letters (upper case) and digits only.
    full: String,
    /// The same for the part before the first dash ("12345" of "12345-6789").
    base: String,
    /// The code as written, clipped, for reasons.
    shown: String,
}

impl Postal {
    fn read(data: &Map<String, Value>) -> Postal {
        let nested = data.get("address").and_then(|a| a.get("postal_code"));
        let candidates = [data.get("postal_code"), data.get("zip"), nested];
        let Some(value) = candidates.into_iter().flatten().find(|v| is_given(v)) else {
            return Postal::Missing;
        };
        let raw = match value {
            Value::String(s) if s.len() <= 4 * MAX_POSTAL => s.trim().to_string(),
            Value::Number(n) if n.is_u64() => n.to_string(),
            _ => return Postal::Unreadable,
        };
        let full = normalize_postal(&raw);
        if full.is_empty() || full.len() > MAX_POSTAL {
            return Postal::Unreadable;
        }
        let base = raw
            .split_once('-')
            .map_or_else(|| full.clone(), |(base, _)| normalize_postal(base));
        Postal::Code(PostalCode {
            full,
            base,
            shown: clip(&raw),
        })
    }
}

fn normalize_postal(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn in_area(rules: &Rules, code: &PostalCode) -> bool {
    let exact = rules.postal_codes.iter().any(|c| {
        let c = normalize_postal(c);
        !c.is_empty() && (c == code.full || c == code.base)
    });
    exact
        || rules.postal_prefixes.iter().any(|p| {
            let p = normalize_postal(p);
            !p.is_empty() && code.full.starts_with(&p)
        })
}

/// Skipped when the tenant configured no service area.
fn area_factor(postal: &Postal, rules: &Rules) -> Option<Part> {
    if rules.postal_codes.is_empty() && rules.postal_prefixes.is_empty() {
        return None;
    }
    Some(match postal {
        Postal::Missing => Part::absent(0, "missing postal code".to_string()),
        Postal::Unreadable => Part::absent(0, "unreadable postal code".to_string()),
        Postal::Code(code) if in_area(rules, code) => Part::new(
            rules.in_area_points,
            format!("in service area ({})", code.shown),
        ),
        Postal::Code(code) => Part::new(
            rules.out_of_area_points,
            format!("outside service area ({})", code.shown),
        ),
    })
}

/// Points pro rata to the completeness fields present; skipped when there are none or
/// they are worth nothing.
fn completeness_factor(data: &Map<String, Value>, has_postal: bool, rules: &Rules) -> Option<Part> {
    let fields = &rules.completeness_fields;
    if fields.is_empty() || rules.completeness_points == 0 {
        return None;
    }
    let missing: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .filter(|f| !field_present(data, f, has_postal))
        .collect();
    let have = fields.len() - missing.len();
    let points =
        (f64::from(rules.completeness_points) * have as f64 / fields.len() as f64).round() as i64;
    let mut text = format!("contact details {have}/{}", fields.len());
    if !missing.is_empty() {
        let mut named: Vec<String> = missing
            .iter()
            .take(MAX_NAMED_MISSING)
            .map(|f| clip(f))
            .collect();
        if missing.len() > MAX_NAMED_MISSING {
            named.push("…".to_string());
        }
        text.push_str(&format!(" (missing {})", named.join(", ")));
    }
    Some(Part::new(points, text))
}

fn field_present(data: &Map<String, Value>, field: &str, has_postal: bool) -> bool {
    let given = |key: &str| data.get(key).is_some_and(is_given);
    match field {
        "email" => data
            .get("email")
            .and_then(Value::as_str)
            .is_some_and(plausible_email),
        "phone" => data.get("phone").is_some_and(plausible_phone),
        "postal_code" | "zip" => has_postal,
        "address" => has_postal || given("address"),
        "name" => given("name") || given("first_name") || given("last_name"),
        path => {
            let mut segments = path.split('.');
            let mut at = segments.next().and_then(|first| data.get(first));
            for segment in segments {
                at = at.and_then(|value| value.get(segment));
            }
            at.is_some_and(is_given)
        }
    }
}

/// Non-blank text, any number or boolean, a non-empty list or object.
fn is_given(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// One '@' with something before it and a dotted domain after it, no spaces.
fn plausible_email(email: &str) -> bool {
    let email = email.trim();
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    }
}

/// Seven to twenty digits, as text of reasonable length or as a whole number.
fn plausible_phone(phone: &Value) -> bool {
    let digits = match phone {
        Value::String(s) if s.len() <= 40 => s.bytes().filter(u8::is_ascii_digit).count(),
        Value::Number(n) if n.is_u64() => n.to_string().len(),
        _ => return false,
    };
    (7..=MAX_PHONE_DIGITS).contains(&digits)
}

/// The first non-blank text among `keys`, normalised.
fn text_field(data: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .filter_map(|k| data.get(*k).and_then(Value::as_str))
        .map(|s| normalize(&s.chars().take(MAX_MATCHED).collect::<String>()))
        .find(|s| !s.is_empty())
}

/// Lower case, with every run of other characters than letters and digits turned into one
/// '_': "Google Ads" and "google-ads" both read "google_ads".
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    if out.ends_with('_') {
        out.pop();
    }
    out
}

/// At most [`MAX_QUOTED`] characters of `text`, without control or bidirectional
/// formatting characters, for quoting lead data in a reason.
fn clip(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED)
        .map(|c| {
            let hidden = c.is_control()
                || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}');
            if hidden { ' ' } else { c }
        })
        .collect();
    if text.chars().nth(MAX_QUOTED).is_some() {
        out.push('…');
    }
    out
}

/// Whole numbers written as integers or as floats (`25.0`): JSON Schema's "integer"
/// accepts both, serde's integer types only the first.
mod lenient {
    use std::collections::BTreeMap;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer};
    use serde_json::Number;

    fn whole<T: TryFrom<i64>, E: Error>(n: &Number) -> Result<T, E> {
        let float = || {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        };
        n.as_i64()
            .or_else(float)
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| E::custom(format_args!("{n} is not a whole number in range")))
    }

    pub fn int<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<T, D::Error> {
        whole(&Number::deserialize(d)?)
    }

    pub fn int_map<'de, D: Deserializer<'de>, T: TryFrom<i64>>(
        d: D,
    ) -> Result<BTreeMap<String, T>, D::Error> {
        BTreeMap::<String, Number>::deserialize(d)?
            .into_iter()
            .map(|(k, n)| Ok((k, whole(&n)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn area_rules() -> Rules {
        Rules {
            postal_codes: vec!["12345".into(), "K1A 0B1".into()],
            postal_prefixes: vec!["SW1".into(), "981".into()],
            ..Rules::default()
        }
    }

    fn hot_lead() -> Value {
        json!({
            "source": "Referral",
            "budget": "$12,500",
            "timeline": "ASAP",
            "service": "replacement",
            "postal_code": "12345",
            "name": "Dana Smith",
            "email": "dana@example.com",
            "phone": "+1 (555) 010-2345",
            "address": "1 Main St",
        })
    }

    #[test]
    fn hot_lead_is_hot() {
        let s = score(&area_rules(), &hot_lead());
        assert!(s.value >= 70, "{s:?}");
        assert_eq!(s.value, 100);
        assert_eq!(s.temperature, Temp::Hot);
        assert_eq!(s.confidence, 1.0);
        assert!(
            s.reasons.contains(&"source referral: +25".to_string()),
            "{:?}",
            s.reasons
        );
        assert!(
            s.reasons
                .contains(&"budget 12500 in band ≥ 10000: +25".to_string()),
            "{:?}",
            s.reasons
        );
        assert!(
            s.reasons
                .contains(&"in service area (12345): +10".to_string()),
            "{:?}",
            s.reasons
        );
        assert!(
            s.reasons.contains(&"contact details 4/4: +10".to_string()),
            "{:?}",
            s.reasons
        );
        // Without a service area configured the same lead is still hot.
        let s = score(&Rules::default(), &hot_lead());
        assert_eq!((s.value, s.temperature), (95, Temp::Hot));
        assert!(
            !s.reasons.iter().any(|r| r.contains("area")),
            "{:?}",
            s.reasons
        );
    }

    #[test]
    fn cold_lead_is_cold() {
        let lead = json!({
            "source": "billboard",
            "timeline": "just browsing",
            "zip": "99999",
            "email": "not-an-email",
        });
        let s = score(&area_rules(), &lead);
        assert_eq!(s.temperature, Temp::Cold, "{s:?}");
        assert_eq!(s.value, 0);
        assert_eq!(
            s.reasons,
            [
                "outside service area (99999): -20",
                "timeline just_browsing: -15",
                "unknown source billboard: +5",
                "missing service: +5",
                // The postal code stands in for the address.
                "contact details 1/4 (missing name, email, phone): +3",
                "missing budget",
            ]
        );
        let s = score(&Rules::default(), &json!({"name": "A"}));
        assert!(
            s.reasons
                .contains(&"contact details 1/4 (missing email, phone, address): +3".into()),
            "{s:?}"
        );
    }

    #[test]
    fn middling_leads() {
        let lead =
            json!({"source": "yelp", "budget": 2000, "service": "AC repair", "phone": "5550102"});
        let s = score(&Rules::default(), &lead);
        // yelp 10 + budget 10 + unknown timeline 0 + repair 12 + contact 1/4 of 10 → 3
        assert_eq!(s.value, 35, "{s:?}");
        assert_eq!(s.temperature, Temp::Cold);
        let lead = json!({"source": "website", "budget": 6000, "service": "AC repair", "timeline": "this month"});
        let s = score(&Rules::default(), &lead);
        assert_eq!(s.value, 15 + 18 + 12 + 12, "{s:?}");
        assert_eq!(s.temperature, Temp::Warm);
        assert!(
            s.reasons
                .contains(&"service ac_repair (as repair): +12".into()),
            "{s:?}"
        );
    }

    #[test]
    fn custom_config_changes_results() {
        let lead = json!({"source": "facebook", "budget": 3000, "timeline": "this_week", "service": "repair"});
        let default = score(&Rules::default(), &lead);
        // facebook 8 + budget 10 + this_week 18 + repair 12 + no contact details
        assert_eq!((default.value, default.temperature), (48, Temp::Warm));

        let lower = Rules {
            hot: 45,
            warm: 20,
            ..Rules::default()
        };
        assert_eq!(score(&lower, &lead).temperature, Temp::Hot);

        let rules: Rules = serde_json::from_value(json!({
            "sources": {"Facebook": 40},
            "budget_bands": [{"min": 0, "points": 1}, {"min": 2500, "points": 30}],
            "hot": 90,
            "warm": 80,
            "some_future_setting": true,
        }))
        .unwrap();
        let s = score(&rules, &lead);
        assert_eq!(s.value, 40 + 30 + 18 + 12, "{s:?}");
        assert_eq!(s.temperature, Temp::Hot);
        assert_eq!(s.reasons[0], "source facebook: +40");
        assert_eq!(s.reasons[1], "budget 3000 in band ≥ 2500: +30");

        // Turning factors off.
        let off: Rules = serde_json::from_value(json!({
            "sources": {}, "unknown_source_points": 0,
            "budget_bands": [],
            "completeness_points": 0,
        }))
        .unwrap();
        let s = score(&off, &lead);
        assert_eq!(s.value, 18 + 12, "{s:?}");
        assert_eq!(
            s.reasons,
            ["timeline this_week: +18", "service repair: +12"]
        );
    }

    #[test]
    fn config_is_lenient() {
        assert_eq!(
            serde_json::from_value::<Rules>(json!({})).unwrap(),
            Rules::default()
        );
        let rules: Rules = serde_json::from_value(json!({
            "hot": 80.0,
            "sources": {"referral": 30.0},
            "budget_bands": [{"min": 1e3, "points": 5}, {"points": 1}],
            "a_setting_from_a_later_version": [1, 2],
        }))
        .unwrap();
        assert_eq!(rules.hot, 80);
        assert_eq!(rules.warm, 40);
        assert_eq!(rules.sources, table(&[("referral", 30)]));
        assert_eq!(
            rules.budget_bands,
            [
                BudgetBand {
                    min: 1000,
                    points: 5
                },
                BudgetBand { min: 0, points: 1 }
            ]
        );
        for bad in [
            json!({"hot": 80.5}),
            json!({"hot": 300}),
            json!({"hot": -1}),
            json!({"sources": {"a": "x"}}),
            json!({"in_area_points": null}),
        ] {
            assert!(
                serde_json::from_value::<Rules>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn budget_parsing() {
        for (text, amount) in [
            ("12500", 12500.0),
            ("$12,500", 12500.0),
            ("$8000", 8000.0),
            (" € 1 200.50 ", 1200.5),
            ("15k", 15000.0),
            ("2.5K", 2500.0),
            ("0", 0.0),
        ] {
            assert_eq!(parse_amount(text), Some(amount), "{text}");
        }
        for junk in [
            "abc", "-5", "NaN", "nan", "inf", "-inf", "Infinity", "1e308", "1.2.3", "$", "", "k",
            ".", "12-500",
        ] {
            assert_eq!(parse_amount(junk), None, "{junk}");
        }
        assert_eq!(parse_amount(&"9".repeat(400)), None);

        let rules = Rules::default();
        let reason = |budget: Value| {
            score(&rules, &json!({"budget": budget}))
                .reasons
                .into_iter()
                .find(|r| r.contains("budget"))
                .unwrap()
        };
        assert_eq!(reason(json!("abc")), "unreadable budget \"abc\"");
        assert_eq!(reason(json!(-5)), "unreadable budget -5");
        assert_eq!(reason(json!("NaN")), "unreadable budget \"NaN\"");
        assert_eq!(reason(json!(1e308)), "budget 1e308 in band ≥ 10000: +25");
        assert_eq!(
            reason(json!(u64::MAX)),
            "budget 1.8446744073709552e19 in band ≥ 10000: +25"
        );
        assert_eq!(
            reason(json!(100)),
            "budget 100 below the lowest band (250): +0"
        );
        assert_eq!(reason(json!(5000.75)), "budget 5000.75 in band ≥ 5000: +18");
        assert_eq!(reason(json!({"min": 1})), "unreadable budget");
        assert_eq!(reason(json!("   ")), "missing budget");
        assert_eq!(reason(Value::Null), "missing budget");
        assert_eq!(
            reason(json!("x".repeat(1000))),
            format!("unreadable budget \"{}…\"", "x".repeat(40))
        );
        assert_eq!(score(&rules, &json!({"budget": "abc"})).confidence, 0.2);
    }

    #[test]
    fn bands_are_ordered_by_min() {
        let rules = Rules {
            budget_bands: vec![
                BudgetBand { min: 0, points: 1 },
                BudgetBand {
                    min: 5000,
                    points: 20,
                },
                BudgetBand {
                    min: 1000,
                    points: 10,
                },
            ],
            ..Rules::default()
        };
        let points = |b: u64| {
            score(&rules, &json!({"budget": b}))
                .reasons
                .into_iter()
                .find(|r| r.contains("budget"))
        };
        assert_eq!(points(7000).unwrap(), "budget 7000 in band ≥ 5000: +20");
        assert_eq!(points(1000).unwrap(), "budget 1000 in band ≥ 1000: +10");
        assert_eq!(points(999).unwrap(), "budget 999 in band ≥ 0: +1");
    }

    #[test]
    fn service_area() {
        let rules = area_rules();
        let area = |data: Value| {
            score(&rules, &data)
                .reasons
                .into_iter()
                .find(|r| r.contains("postal") || r.contains("area"))
        };
        assert_eq!(
            area(json!({"postal_code": "12345-6789"})).unwrap(),
            "in service area (12345-6789): +10"
        );
        assert_eq!(
            area(json!({"zip": 12345})).unwrap(),
            "in service area (12345): +10"
        );
        assert_eq!(
            area(json!({"address": {"postal_code": "k1a0b1"}})).unwrap(),
            "in service area (k1a0b1): +10"
        );
        assert_eq!(
            area(json!({"postal_code": "sw1a 1aa"})).unwrap(),
            "in service area (sw1a 1aa): +10"
        );
        assert_eq!(
            area(json!({"zip": "98101"})).unwrap(),
            "in service area (98101): +10"
        );
        assert_eq!(
            area(json!({"zip": "123456"})).unwrap(),
            "outside service area (123456): -20"
        );
        assert_eq!(area(json!({"zip": "   "})).unwrap(), "missing postal code");
        assert_eq!(
            area(json!({"zip": "x".repeat(100)})).unwrap(),
            "unreadable postal code"
        );
        assert_eq!(
            area(json!({"zip": ["12345"]})).unwrap(),
            "unreadable postal code"
        );
        assert_eq!(
            area(json!({"zip": -12345})).unwrap(),
            "unreadable postal code"
        );
        // Blank entries in the configuration match nothing.
        let blank = Rules {
            postal_prefixes: vec![" ".into()],
            ..Rules::default()
        };
        let s = score(&blank, &json!({"zip": "55555"}));
        assert!(
            s.reasons
                .contains(&"outside service area (55555): -20".into()),
            "{s:?}"
        );
        // A postal code is a signal even when no area is configured.
        assert_eq!(
            score(&Rules::default(), &json!({"zip": "55555"})).confidence,
            0.36
        );
    }

    #[test]
    fn completeness() {
        let rules = Rules::default();
        let contact = |data: Value| {
            score(&rules, &data)
                .reasons
                .into_iter()
                .find(|r| r.starts_with("contact"))
                .unwrap()
        };
        assert_eq!(
            contact(json!({"first_name": "A", "email": "a@b.co", "phone": 5550102, "zip": "1"})),
            "contact details 4/4: +10"
        );
        assert_eq!(
            contact(json!({"name": " ", "email": "a@b", "phone": "123-45", "address": {}})),
            "contact details 0/4 (missing name, email, phone, …): +0"
        );
        for junk in ["@b.co", "a@.co", "a@b.", "a b@c.de", "a@b@c.de", "plain"] {
            assert!(!plausible_email(junk), "{junk}");
        }
        assert!(plausible_email(" dana.smith+hvac@mail.example.com "));
        assert!(!plausible_phone(&json!("1".repeat(41))));
        assert!(!plausible_phone(&json!("1".repeat(21))));
        assert!(!plausible_phone(&json!(123456)));
        assert!(plausible_phone(&json!("+44 20 7946 0958")));

        let custom = Rules {
            completeness_fields: vec![
                "company".into(),
                "address.city".into(),
                "postal_code".into(),
            ],
            completeness_points: 9,
            ..Rules::default()
        };
        let s = score(
            &custom,
            &json!({"company": "Acme", "address": {"city": "Leeds"}}),
        );
        assert!(
            s.reasons
                .contains(&"contact details 2/3 (missing postal_code): +6".into()),
            "{s:?}"
        );
    }

    #[test]
    fn reasons_are_sorted_by_weight() {
        let lead = json!({"source": "facebook", "budget": 300, "timeline": "next year", "service": "inspection"});
        let s = score(&area_rules(), &lead);
        let points: Vec<i64> = s
            .reasons
            .iter()
            .map(|r| r.rsplit_once(": ").map_or(0, |(_, p)| p.parse().unwrap()))
            .collect();
        assert!(
            points.windows(2).all(|w| w[0].abs() >= w[1].abs()),
            "{:?}",
            s.reasons
        );
        assert_eq!(s.reasons[0], "source facebook: +8");
        assert_eq!(s.reasons[4], "missing postal code");
    }

    #[test]
    fn confidence_counts_signals() {
        let rules = Rules::default();
        let confidence = |data: Value| score(&rules, &data).confidence;
        assert_eq!(confidence(json!({})), 0.2);
        assert_eq!(confidence(json!({"source": "x"})), 0.36);
        assert_eq!(confidence(json!({"source": "x", "budget": 1})), 0.52);
        assert_eq!(
            confidence(json!({"source": "x", "budget": 1, "timeline": "t"})),
            0.68
        );
        assert_eq!(
            confidence(json!({"source": "x", "budget": 1, "timeline": "t", "service_type": "s"})),
            0.84
        );
        assert_eq!(confidence(hot_lead()), 1.0);
        // Blank or non-text values are not signals.
        assert_eq!(
            confidence(json!({"source": " - ", "timeline": 5, "service": null})),
            0.2
        );
    }

    #[test]
    fn hostile_data_does_not_panic() {
        let rules = area_rules();
        let huge = "ä\u{202E}\n".repeat(200_000);
        let mut deep = json!("bottom");
        for _ in 0..100 {
            deep = json!({"address": deep});
        }
        let inputs = [
            Value::Null,
            json!(42),
            json!("text"),
            json!([1, 2, 3]),
            json!({"source": huge, "timeline": huge, "service": huge, "zip": huge, "budget": huge,
                   "email": huge, "phone": huge, "name": huge, "address": huge}),
            json!({"source": {"nested": [1, {"x": null}]}, "budget": [1e308], "zip": {"a": 1}, "phone": -1}),
            json!({"budget": f64::MAX, "postal_code": u64::MAX, "phone": 1.5e300}),
            deep,
        ];
        for data in &inputs {
            let s = score(&rules, data);
            assert!(s.value <= 100);
            assert!((0.2..=1.0).contains(&s.confidence));
            for r in &s.reasons {
                assert!(r.chars().count() < 200, "{r}");
                assert!(!r.contains('\n') && !r.contains('\u{202E}'), "{r:?}");
            }
        }
        let s = score(&rules, &inputs[4]);
        assert!(
            s.reasons
                .iter()
                .any(|r| r.starts_with("unknown source ä_ä") && r.contains('…')),
            "{s:?}"
        );

        // Extreme configuration cannot overflow either.
        let extreme = Rules {
            sources: table(&[("a", i32::MAX)]),
            budget_bands: vec![
                BudgetBand {
                    min: u64::MAX,
                    points: i32::MIN,
                },
                BudgetBand {
                    min: 0,
                    points: i32::MAX,
                },
            ],
            timelines: table(&[("a", i32::MAX)]),
            services: table(&[("a", i32::MAX)]),
            completeness_points: i32::MAX,
            ..Rules::default()
        };
        let s = score(
            &extreme,
            &json!({"source": "a", "budget": 5, "timeline": "a", "service": "a", "name": "n"}),
        );
        assert_eq!(s.value, 100);
    }

    const SCHEMA: &str = include_str!("../config.schema.json");

    #[test]
    fn schema_defaults_match_rules_default() {
        let schema: Value = serde_json::from_str(SCHEMA).expect("config.schema.json is JSON");
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["additionalProperties"], false);
        let properties = schema["properties"].as_object().expect("properties");
        let mut defaults = Map::new();
        for (name, property) in properties {
            assert!(
                property["description"].is_string(),
                "{name} has no description"
            );
            let default = property
                .get("default")
                .unwrap_or_else(|| panic!("{name} has no default"));
            defaults.insert(name.clone(), default.clone());
        }
        assert_eq!(
            Value::Object(defaults.clone()),
            serde_json::to_value(Rules::default()).unwrap()
        );
        // And the schema's defaults deserialize to the same rules.
        assert_eq!(
            serde_json::from_value::<Rules>(Value::Object(defaults)).unwrap(),
            Rules::default()
        );
    }

    #[test]
    fn readme_example_is_valid() {
        let readme = include_str!("../README.md");
        let example = readme
            .split("```json")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("example");
        let example: Value = serde_json::from_str(example).expect("example is JSON");
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        for key in example.as_object().unwrap().keys() {
            assert!(
                schema["properties"].get(key).is_some(),
                "{key} is not a setting"
            );
        }
        let rules: Rules = serde_json::from_value(example).unwrap();
        let s = score(
            &rules,
            &json!({"source": "Google Ads", "zip": "02141", "budget": "$1,500"}),
        );
        assert_eq!(
            s.reasons[..3],
            [
                "source google_ads: +20",
                "budget 1500 in band ≥ 1500: +15",
                "in service area (02141): +10"
            ]
        );
    }

    #[test]
    fn schema_is_self_contained_and_shallow() {
        fn walk(value: &Value, depth: usize) -> usize {
            if let Value::Object(map) = value {
                for key in ["$ref", "$dynamicRef", "$recursiveRef", "$id", "$anchor"] {
                    assert!(!map.contains_key(key), "{key} in config.schema.json");
                }
            }
            match value {
                Value::Object(map) => map
                    .values()
                    .map(|v| walk(v, depth + 1))
                    .max()
                    .unwrap_or(depth),
                Value::Array(items) => items
                    .iter()
                    .map(|v| walk(v, depth + 1))
                    .max()
                    .unwrap_or(depth),
                _ => depth,
            }
        }
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        assert!(walk(&schema, 0) < 10);
    }

    #[test]
    fn signals_weigh_other_fields() {
        let rules: Rules = serde_json::from_value(json!({
            "signals": {
                "urgency": {"emergency": 30, "urgent": 15, "routine": 0},
                "vulnerable_occupants": {"true": 10, "false": 0},
            }
        }))
        .unwrap();
        let calm = score(&rules, &json!({"urgency": "routine"}));
        let urgent = score(
            &rules,
            &json!({"urgency": "Emergency", "vulnerable_occupants": true}),
        );
        assert_eq!(urgent.value - calm.value, 40, "{:?}", urgent.reasons);
        assert!(
            urgent
                .reasons
                .contains(&"urgency emergency: +30".to_string()),
            "{:?}",
            urgent.reasons
        );
        assert!(
            urgent
                .reasons
                .contains(&"vulnerable_occupants true: +10".to_string())
        );
        // Unlisted values, other types, missing fields and a value containing a listed one
        // add nothing; a signal on a field a factor reads is ignored.
        let other = score(
            &rules,
            &json!({"urgency": "non-emergency", "vulnerable_occupants": 1}),
        );
        let twice: Rules =
            serde_json::from_value(json!({"signals": {"source": {"referral": 50}}})).unwrap();
        assert_eq!(
            score(&twice, &json!({"source": "referral"})).value,
            score(&Rules::default(), &json!({"source": "referral"})).value
        );
        assert_eq!(other.value, score(&rules, &json!({})).value);
        assert!(
            !other.reasons.iter().any(|r| r.contains("urgency")),
            "{:?}",
            other.reasons
        );
    }
}
