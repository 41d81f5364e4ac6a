//! Bid/no-bid assessment of a government contracting opportunity: a pure function of the
//! company's profile (the plugin's configuration, [`Profile`]), the opportunity's data and
//! the record's `updated_at`, with no host calls, so it runs (and is tested) natively.
//!
//! Seven factors each earn a share (0 to 1) of their weight: NAICS code, set-aside,
//! estimated value, time to respond, agency, place of performance and notice type. The
//! score is the weighted share, 0 to 100. Two findings are hard no-bids whatever the rest:
//! a set-aside the company is not certified for (score at most 10) and a response deadline
//! that has passed (score 0). A factor whose input is missing or unreadable earns half its
//! weight and lowers the confidence.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::states;
use streamflow_plugin_sdk::text::lenient;

/// Most characters of any record value quoted in a reason.
const MAX_QUOTED: usize = 40;
/// Most NAICS codes read from one opportunity.
const MAX_CODES: usize = 20;
/// Highest score of an opportunity with a set-aside the company cannot bid on.
pub const SET_ASIDE_CAP: u8 = 10;

/// The company's profile: the plugin's configuration. Every field is optional; unknown
/// fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    /// NAICS codes the company mainly works in.
    pub naics_primary: Vec<String>,
    /// NAICS codes it also works in.
    pub naics_secondary: Vec<String>,
    /// Set-aside certifications held: small_business, 8a, hubzone, sdvosb, wosb, edwosb.
    pub certifications: Vec<String>,
    /// Smallest contract worth bidding on, USD.
    pub value_min: Option<f64>,
    /// Largest contract the company can take on, USD.
    pub value_max: Option<f64>,
    /// Days a proposal takes.
    #[serde(deserialize_with = "lenient::int")]
    pub min_days_to_respond: u32,
    /// Agencies the company prefers (any part of the agency's name, any case).
    pub preferred_agencies: Vec<String>,
    /// State codes the company works in; empty for anywhere.
    pub states: Vec<String>,
    pub weights: Weights,
    pub thresholds: Thresholds,
    /// Bid only when every factor the profile compares is known and fully met (a primary
    /// code, a set-aside held, the value in range, time enough, a solicitation out, ...);
    /// anything short of that, a missing input included, is at most a review, however high
    /// the score.
    pub strict_bid: bool,
    /// Factors (by name, as in `weights`) whose share below this (0 to 1) is a hard no-bid,
    /// like a set-aside the company cannot bid on: `{naics = 0.01, deadline = 0.5}`.
    pub no_bid_below: std::collections::BTreeMap<String, f64>,
}

/// The factors' names, in the order [`assess`] weighs them.
pub const FACTORS: [&str; 7] = [
    "naics",
    "set_aside",
    "value",
    "deadline",
    "agency",
    "place",
    "notice_type",
];

/// Points of each factor. They need not add up to 100: the score is the share earned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Weights {
    pub naics: f64,
    pub set_aside: f64,
    pub value: f64,
    pub deadline: f64,
    pub agency: f64,
    pub place: f64,
    pub notice_type: f64,
}

/// Lowest scores of a bid and of a review; below `review` is no-bid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    #[serde(deserialize_with = "lenient::int")]
    pub bid: u8,
    #[serde(deserialize_with = "lenient::int")]
    pub review: u8,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            naics_primary: Vec::new(),
            naics_secondary: Vec::new(),
            certifications: Vec::new(),
            value_min: None,
            value_max: None,
            min_days_to_respond: 14,
            preferred_agencies: Vec::new(),
            states: Vec::new(),
            weights: Weights::default(),
            thresholds: Thresholds::default(),
            strict_bid: false,
            no_bid_below: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            naics: 30.0,
            set_aside: 20.0,
            value: 15.0,
            deadline: 15.0,
            agency: 10.0,
            place: 5.0,
            notice_type: 5.0,
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            bid: 65,
            review: 40,
        }
    }
}

impl Profile {
    /// What the schema cannot say, checked.
    pub fn check(&self) -> Result<(), String> {
        let w = &self.weights;
        let weights = [
            ("naics", w.naics),
            ("set_aside", w.set_aside),
            ("value", w.value),
            ("deadline", w.deadline),
            ("agency", w.agency),
            ("place", w.place),
            ("notice_type", w.notice_type),
        ];
        for (name, weight) in weights {
            if !(weight.is_finite() && (0.0..=100.0).contains(&weight)) {
                return Err(format!("weights.{name}: from 0 to 100, not {weight}"));
            }
        }
        if weights.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err("weights: give at least one factor some weight".into());
        }
        for (name, bound) in [("value_min", self.value_min), ("value_max", self.value_max)] {
            if bound.is_some_and(|b| !(b.is_finite() && b >= 0.0)) {
                return Err(format!("{name}: a number of dollars from 0"));
            }
        }
        if let (Some(min), Some(max)) = (self.value_min, self.value_max)
            && min > max
        {
            return Err(format!("value_min ({min}) is above value_max ({max})"));
        }
        let t = &self.thresholds;
        if t.bid > 100 || t.review > t.bid {
            return Err(format!(
                "thresholds: review ({}) must be from 0 to bid ({}), and bid at most 100",
                t.review, t.bid
            ));
        }
        for (name, floor) in &self.no_bid_below {
            if !FACTORS.contains(&name.as_str()) {
                return Err(format!(
                    "no_bid_below: {:?} is not a factor ({})",
                    clip(name),
                    FACTORS.join(", ")
                ));
            }
            if !(floor.is_finite() && (0.0..=1.0).contains(floor)) {
                return Err(format!(
                    "no_bid_below.{name}: a share from 0 to 1, not {floor}"
                ));
            }
        }
        for c in &self.certifications {
            match SetAside::parse(c) {
                Some(SetAside::Unrestricted) | None => {
                    return Err(format!(
                        "certifications: {:?} is not small_business, 8a, hubzone, sdvosb, wosb or edwosb",
                        clip(c)
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The answer: hot is bid, warm is review, cold is no-bid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Bid,
    Review,
    NoBid,
}

/// The result of [`assess`].
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// 0 to 100.
    pub value: u8,
    pub verdict: Verdict,
    /// 0 to 1: the share of the seven inputs present and readable.
    pub confidence: f32,
    /// Hard no-bids first, then by the factors' weight.
    pub reasons: Vec<String>,
}

/// What one factor found.
struct Factor {
    weight: f64,
    /// 0 to 1.
    share: f64,
    /// The input was there and readable.
    present: bool,
    reason: String,
    /// A hard no-bid: the highest score allowed.
    cap: Option<u8>,
    /// The profile compares this input (an agency with no preferred agencies is not).
    compared: bool,
}

impl Factor {
    fn new(weight: f64, share: f64, reason: String) -> Factor {
        Factor {
            weight,
            share,
            present: true,
            reason,
            cap: None,
            compared: true,
        }
    }

    /// An input the profile does not compare: half the weight, never short of a bid.
    fn not_compared(weight: f64, reason: String) -> Factor {
        Factor {
            compared: false,
            ..Factor::new(weight, 0.5, reason)
        }
    }

    /// A missing or unreadable input: half the weight.
    fn unknown(weight: f64, reason: String) -> Factor {
        Factor {
            weight,
            share: 0.5,
            present: false,
            reason,
            cap: None,
            compared: true,
        }
    }
}

/// Assesses an opportunity's data; `updated_at` (micros since the Unix epoch) is the "now"
/// the deadline is measured from. Never fails: data that is not an object, or fields that
/// are missing, malformed or out of range, count as unknown.
pub fn assess(profile: &Profile, data: &Value, updated_at: i64) -> Assessment {
    let empty = Map::new();
    let data = data.as_object().unwrap_or(&empty);
    let w = &profile.weights;
    let mut factors = [
        naics_factor(profile, data.get("naics"), w.naics),
        set_aside_factor(profile, data.get("set_aside"), w.set_aside),
        value_factor(profile, data.get("estimated_value"), w.value),
        deadline_factor(
            profile,
            data.get("response_deadline"),
            updated_at,
            w.deadline,
        ),
        agency_factor(profile, data.get("agency"), w.agency),
        place_factor(profile, data.get("place_of_performance"), w.place),
        notice_factor(data.get("notice_type"), w.notice_type),
    ];

    let total: f64 = factors.iter().map(|f| f.weight).sum();
    let earned: f64 = factors
        .iter()
        .map(|f| f.weight * f.share.clamp(0.0, 1.0))
        .sum();
    let mut value = if total > 0.0 {
        (100.0 * earned / total).round().clamp(0.0, 100.0) as u8
    } else {
        0
    };
    for (factor, name) in factors.iter_mut().zip(FACTORS) {
        if let Some(floor) = profile.no_bid_below.get(name)
            && factor.present
            && factor.compared
            && factor.cap.is_none()
            && factor.share < *floor
        {
            factor.cap = Some(SET_ASIDE_CAP);
            factor.reason.push_str(": a no-bid");
        }
    }
    let cap = factors.iter().filter_map(|f| f.cap).min();
    if let Some(cap) = cap {
        value = value.min(cap);
    }
    // Strict: the first compared factor not fully met keeps it from being a bid.
    let short = factors
        .iter()
        .find(|f| profile.strict_bid && f.compared && (!f.present || f.share < 0.999))
        .map(|f| f.reason.clone());
    let verdict = if cap.is_some() {
        Verdict::NoBid
    } else if value >= profile.thresholds.bid && short.is_none() {
        Verdict::Bid
    } else if value >= profile.thresholds.review {
        Verdict::Review
    } else {
        Verdict::NoBid
    };
    let present = factors.iter().filter(|f| f.present).count();
    let confidence = (present as f64 / factors.len() as f64 * 100.0).round() / 100.0;

    let mut order: Vec<&Factor> = factors.iter().collect();
    let held_back = (verdict == Verdict::Review && value >= profile.thresholds.bid)
        .then(|| short.map(|r| format!("A review, not a bid: {r}")))
        .flatten();
    // Stable: equal weights keep the order above.
    order.sort_by(|a, b| {
        b.cap
            .is_some()
            .cmp(&a.cap.is_some())
            .then(b.weight.total_cmp(&a.weight))
    });
    Assessment {
        value,
        verdict,
        confidence: confidence as f32,
        reasons: held_back
            .into_iter()
            .chain(order.into_iter().map(|f| f.reason.clone()))
            .collect(),
    }
}

// ---- NAICS ------------------------------------------------------------------------------

/// A NAICS code: 2 to 6 digits.
fn naics_code(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        _ => return None,
    };
    ((2..=6).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

/// The codes of an opportunity: one code, a list, or a text listing several.
enum Codes {
    Missing,
    Unreadable(String),
    Read(Vec<String>),
}

fn read_codes(value: Option<&Value>) -> Codes {
    let items: Vec<Value> = match value {
        None | Some(Value::Null) => return Codes::Missing,
        Some(Value::String(s)) if s.trim().is_empty() => return Codes::Missing,
        Some(Value::String(s)) => s
            .split([',', ';', '/', ' '])
            .filter(|p| !p.trim().is_empty())
            .map(|p| Value::String(p.to_string()))
            .collect(),
        Some(Value::Array(a)) if a.is_empty() => return Codes::Missing,
        Some(Value::Array(a)) => a.clone(),
        Some(other) => vec![other.clone()],
    };
    let mut codes: Vec<String> = Vec::new();
    for code in items.iter().take(MAX_CODES).filter_map(naics_code) {
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    if codes.is_empty() {
        Codes::Unreadable(quote(value.unwrap_or(&Value::Null)))
    } else {
        Codes::Read(codes)
    }
}

fn naics_factor(profile: &Profile, value: Option<&Value>, weight: f64) -> Factor {
    let primary: Vec<String> = profile
        .naics_primary
        .iter()
        .filter_map(|c| naics_code(&Value::String(c.clone())))
        .collect();
    let secondary: Vec<String> = profile
        .naics_secondary
        .iter()
        .filter_map(|c| naics_code(&Value::String(c.clone())))
        .collect();
    let codes = match read_codes(value) {
        Codes::Missing => return Factor::unknown(weight, "NAICS code not given".into()),
        Codes::Unreadable(shown) => {
            return Factor::unknown(weight, format!("NAICS {shown} is not a NAICS code"));
        }
        Codes::Read(codes) => codes,
    };
    if primary.is_empty() && secondary.is_empty() {
        return Factor::not_compared(
            weight,
            format!(
                "NAICS {} not compared: no NAICS codes configured",
                codes.join(", ")
            ),
        );
    }
    let group = |code: &str| {
        code.get(..4)
            .filter(|_| code.len() >= 4)
            .map(str::to_string)
    };
    let in_group = |code: &str| {
        group(code).is_some_and(|g| {
            primary
                .iter()
                .chain(&secondary)
                .any(|c| group(c).as_deref() == Some(g.as_str()))
        })
    };
    let mut best: Option<(f64, String)> = None;
    for code in &codes {
        let found = if primary.contains(code) {
            (1.0, format!("NAICS {code} is a primary code"))
        } else if secondary.contains(code) {
            (0.5, format!("NAICS {code} is a secondary code"))
        } else if in_group(code) {
            (
                0.25,
                format!(
                    "NAICS {code} shares industry group {} with your codes",
                    &code[..4]
                ),
            )
        } else {
            continue;
        };
        if best.as_ref().is_none_or(|(share, _)| found.0 > *share) {
            best = Some(found);
        }
    }
    match best {
        Some((share, reason)) => Factor::new(weight, share, reason),
        None if codes.len() == 1 => Factor::new(
            weight,
            0.0,
            format!("NAICS {} is not one of your codes", codes[0]),
        ),
        None => Factor::new(
            weight,
            0.0,
            format!("NAICS {} are not among your codes", codes.join(", ")),
        ),
    }
}

// ---- Set-aside --------------------------------------------------------------------------

/// A set-aside, or a certification (every kind but `Unrestricted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetAside {
    Unrestricted,
    SmallBusiness,
    EightA,
    Hubzone,
    Sdvosb,
    Wosb,
    Edwosb,
}

impl SetAside {
    /// The kinds as the records and the configuration write them ("none", "small_business",
    /// "8a", "hubzone", "sdvosb", "wosb", "edwosb"), and common spellings from SAM.gov
    /// ("Total Small Business", "8(a) Set-Aside", "HUBZone", "Service-Disabled
    /// Veteran-Owned Small Business", "Full and open").
    pub fn parse(text: &str) -> Option<SetAside> {
        let key: String = text
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let key = key
            .strip_suffix("setaside")
            .or_else(|| key.strip_suffix("solesource"))
            .unwrap_or(&key);
        Some(match key {
            "none"
            | "unrestricted"
            | "fullandopen"
            | "fullandopencompetition"
            | "no"
            | "na"
            | "nosetasideused" => SetAside::Unrestricted,
            "smallbusiness" | "totalsmallbusiness" | "partialsmallbusiness" | "sb" | "sba" => {
                SetAside::SmallBusiness
            }
            "8a" | "8acompeted" => SetAside::EightA,
            "hubzone" => SetAside::Hubzone,
            "sdvosb" | "sdvosbc" | "servicedisabledveteranownedsmallbusiness" => SetAside::Sdvosb,
            "wosb" | "womenownedsmallbusiness" => SetAside::Wosb,
            "edwosb" | "economicallydisadvantagedwomenownedsmallbusiness" => SetAside::Edwosb,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            SetAside::Unrestricted => "unrestricted",
            SetAside::SmallBusiness => "small business",
            SetAside::EightA => "8(a)",
            SetAside::Hubzone => "HUBZone",
            SetAside::Sdvosb => "SDVOSB",
            SetAside::Wosb => "WOSB",
            SetAside::Edwosb => "EDWOSB",
        }
    }

    /// Whether a company holding `certifications` may bid. Every certification is a small
    /// business one, and an EDWOSB is also a WOSB.
    pub fn open_to(self, certifications: &[SetAside]) -> bool {
        let holds = |c: SetAside| certifications.contains(&c);
        match self {
            SetAside::Unrestricted => true,
            SetAside::SmallBusiness => certifications.iter().any(|c| *c != SetAside::Unrestricted),
            SetAside::Wosb => holds(SetAside::Wosb) || holds(SetAside::Edwosb),
            other => holds(other),
        }
    }
}

fn set_aside_factor(profile: &Profile, value: Option<&Value>, weight: f64) -> Factor {
    let text = match value {
        None | Some(Value::Null) => {
            return Factor::unknown(weight, "Set-aside not given; scored as unrestricted".into());
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Factor::unknown(weight, "Set-aside not given; scored as unrestricted".into());
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return Factor::unknown(
                weight,
                format!(
                    "Set-aside {} not recognised; scored as unrestricted",
                    quote(other)
                ),
            );
        }
    };
    let Some(kind) = SetAside::parse(text) else {
        return Factor::unknown(
            weight,
            format!(
                "Set-aside \"{}\" not recognised; scored as unrestricted",
                clip(text)
            ),
        );
    };
    let held: Vec<SetAside> = profile
        .certifications
        .iter()
        .filter_map(|c| SetAside::parse(c))
        .collect();
    if kind == SetAside::Unrestricted {
        return Factor::new(
            weight,
            0.5,
            "Unrestricted competition (no set-aside)".into(),
        );
    }
    if kind.open_to(&held) {
        return Factor::new(
            weight,
            1.0,
            format!("Set-aside {} matches your certifications", kind.label()),
        );
    }
    Factor {
        weight,
        share: 0.0,
        present: true,
        reason: format!(
            "Set-aside {} requires a certification you do not hold",
            kind.label()
        ),
        cap: Some(SET_ASIDE_CAP),
        compared: true,
    }
}

// ---- Estimated value --------------------------------------------------------------------

/// Dollars: a number, or text such as "1200000", "$1,200,000", "250k", "1.5M".
fn amount(value: &Value) -> Option<f64> {
    let number = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) if s.len() <= 32 => {
            let s = s.trim().trim_start_matches('$').trim();
            let (s, scale) = match s.char_indices().last() {
                Some((i, 'k' | 'K')) => (&s[..i], 1e3),
                Some((i, 'm' | 'M')) => (&s[..i], 1e6),
                Some((i, 'b' | 'B')) => (&s[..i], 1e9),
                _ => (s, 1.0),
            };
            let digits: String = s.chars().filter(|c| *c != ',' && *c != ' ').collect();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return None;
            }
            digits.parse::<f64>().ok()? * scale
        }
        _ => return None,
    };
    (number.is_finite() && number >= 0.0).then_some(number)
}

/// "$1,200,000" (whole dollars).
fn dollars(amount: f64) -> String {
    if amount >= 1e15 {
        return format!("${amount:e}");
    }
    let whole = format!("{:.0}", amount);
    let mut out = String::with_capacity(whole.len() + whole.len() / 3 + 1);
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("${out}")
}

fn value_factor(profile: &Profile, value: Option<&Value>, weight: f64) -> Factor {
    let v = match value {
        None | Some(Value::Null) => {
            return Factor::unknown(weight, "Estimated value not given".into());
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Factor::unknown(weight, "Estimated value not given".into());
        }
        Some(raw) => match amount(raw) {
            Some(v) => v,
            None => {
                return Factor::unknown(
                    weight,
                    format!("Estimated value {} is not a valid amount", quote(raw)),
                );
            }
        },
    };
    let shown = dollars(v);
    match (profile.value_min, profile.value_max) {
        (Some(min), _) if v < min => Factor::new(
            weight,
            if min > 0.0 { v / min } else { 1.0 },
            format!(
                "Estimated value {shown} is below your minimum of {}",
                dollars(min)
            ),
        ),
        (_, Some(max)) if v > max => Factor::new(
            weight,
            if v > 0.0 { max / v } else { 1.0 },
            format!(
                "Estimated value {shown} is above your maximum of {}",
                dollars(max)
            ),
        ),
        (None, None) => Factor::new(
            weight,
            1.0,
            format!("Estimated value {shown}; no value range set"),
        ),
        _ => Factor::new(
            weight,
            1.0,
            format!("Estimated value {shown} is within your range"),
        ),
    }
}

// ---- Deadline ---------------------------------------------------------------------------

/// A response deadline: a whole day (`YYYY-MM-DD`, UTC) or an instant (RFC 3339).
enum Deadline {
    Day(Date),
    Instant(OffsetDateTime),
}

fn read_deadline(text: &str) -> Option<Deadline> {
    let text = text.trim();
    if text.len() > 64 {
        return None;
    }
    if let Ok(day) = Date::parse(text, format_description!("[year]-[month]-[day]")) {
        return Some(Deadline::Day(day));
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(Deadline::Instant)
}

fn deadline_factor(
    profile: &Profile,
    value: Option<&Value>,
    updated_at: i64,
    weight: f64,
) -> Factor {
    let text = match value {
        None | Some(Value::Null) => {
            return Factor::unknown(weight, "Response deadline not given".into());
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Factor::unknown(weight, "Response deadline not given".into());
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return Factor::unknown(
                weight,
                format!("Response deadline {} is not a date", quote(other)),
            );
        }
    };
    let Some(deadline) = read_deadline(text) else {
        return Factor::unknown(
            weight,
            format!("Response deadline \"{}\" is not a date", clip(text)),
        );
    };
    let Ok(now) = OffsetDateTime::from_unix_timestamp_nanos(updated_at as i128 * 1000) else {
        return Factor::unknown(
            weight,
            "Response deadline not compared: no record time".into(),
        );
    };
    let now = now.to_offset(UtcOffset::UTC);
    // Whole days left; negative once the deadline has passed.
    let days = match deadline {
        Deadline::Day(day) => (day - now.date()).whole_days(),
        Deadline::Instant(at) if at < now => -1,
        Deadline::Instant(at) => (at - now).whole_days(),
    };
    if days < 0 {
        return Factor {
            weight,
            share: 0.0,
            present: true,
            reason: format!("Response deadline {} has passed", clip(text.trim())),
            cap: Some(0),
            compared: true,
        };
    }
    let due = match days {
        0 => "Due today".to_string(),
        1 => "Due in 1 day".to_string(),
        n => format!("Due in {n} days"),
    };
    let need = i64::from(profile.min_days_to_respond);
    if days >= need {
        Factor::new(weight, 1.0, due)
    } else {
        Factor::new(
            weight,
            days as f64 / need as f64,
            format!("{due}; you need {need}"),
        )
    }
}

// ---- Agency, place, notice type ---------------------------------------------------------

fn agency_factor(profile: &Profile, value: Option<&Value>, weight: f64) -> Factor {
    let Some(agency) = value
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
    else {
        return match value {
            None | Some(Value::Null) | Some(Value::String(_)) => {
                Factor::unknown(weight, "Agency not given".into())
            }
            Some(other) => {
                Factor::unknown(weight, format!("Agency {} is not a name", quote(other)))
            }
        };
    };
    let preferred: Vec<String> = profile
        .preferred_agencies
        .iter()
        .map(|a| a.trim().to_lowercase())
        .filter(|a| !a.is_empty())
        .collect();
    if preferred.is_empty() {
        return Factor::not_compared(
            weight,
            format!("Agency {}; no preferred agencies set", clip(agency)),
        );
    }
    let lower = agency.to_lowercase();
    if preferred.iter().any(|p| lower.contains(p.as_str())) {
        Factor::new(
            weight,
            1.0,
            format!("Agency {} is a preferred agency", clip(agency)),
        )
    } else {
        Factor::new(
            weight,
            0.0,
            format!("Agency {} is not a preferred agency", clip(agency)),
        )
    }
}

fn place_factor(profile: &Profile, value: Option<&Value>, weight: f64) -> Factor {
    let text = match value {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        // {"state": "VA", "city": "Norfolk"} or {"state_code": "VA"}
        Some(Value::Object(o)) => o
            .get("state")
            .or_else(|| o.get("state_code"))
            .and_then(Value::as_str),
        Some(_) => None,
    };
    let Some(text) = text.map(str::trim).filter(|s| !s.is_empty()) else {
        return match value {
            None | Some(Value::Null) | Some(Value::String(_)) => {
                Factor::unknown(weight, "Place of performance not given".into())
            }
            Some(other) => Factor::unknown(
                weight,
                format!("Place of performance {} is not a US state", quote(other)),
            ),
        };
    };
    let Some(state) = states::state_code(text) else {
        return Factor::unknown(
            weight,
            format!("Place of performance \"{}\" is not a US state", clip(text)),
        );
    };
    let served: Vec<&str> = profile
        .states
        .iter()
        .filter_map(|s| states::state_code(s))
        .collect();
    if served.is_empty() {
        Factor::new(
            weight,
            1.0,
            format!("Place of performance {state}; you work in any state"),
        )
    } else if served.contains(&state) {
        Factor::new(
            weight,
            1.0,
            format!("Place of performance {state} is a state you serve"),
        )
    } else {
        Factor::new(
            weight,
            0.0,
            format!("Place of performance {state} is outside the states you serve"),
        )
    }
}

fn notice_factor(value: Option<&Value>, weight: f64) -> Factor {
    let text = match value {
        None | Some(Value::Null) => {
            return Factor::unknown(weight, "Notice type not given".into());
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Factor::unknown(weight, "Notice type not given".into());
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return Factor::unknown(
                weight,
                format!("Notice type {} not recognised", quote(other)),
            );
        }
    };
    let key: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let (share, reason) = match key.as_str() {
        "solicitation" => (1.0, "Notice is a solicitation"),
        "combined" | "combinedsynopsissolicitation" | "combinedsynopsis" => {
            (1.0, "Notice is a combined synopsis/solicitation")
        }
        "presolicitation" => (
            0.5,
            "Notice is a presolicitation: the solicitation is not out yet",
        ),
        "sourcessought" | "rfi" | "requestforinformation" => (
            0.25,
            "Notice is sources sought: market research, no award from it",
        ),
        _ => {
            return Factor::unknown(
                weight,
                format!("Notice type \"{}\" not recognised", clip(text)),
            );
        }
    };
    Factor::new(weight, share, reason.to_string())
}

// ---- Helpers ----------------------------------------------------------------------------

/// A JSON value as quoted in a reason: text in quotes, anything else as JSON, clipped.
fn quote(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{}\"", clip(s.trim())),
        other => clip(&other.to_string()),
    }
}

/// At most [`MAX_QUOTED`] characters of quoted input (and `…` when it was cut).
fn clip(text: &str) -> String {
    streamflow_plugin_sdk::text::clip(text, MAX_QUOTED + 1)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// 2026-03-02T14:00:00Z.
    const NOW: i64 = 1_772_460_000_000_000;
    const DAY: i64 = 86_400_000_000;

    fn company() -> Profile {
        serde_json::from_value(json!({
            "naics_primary": ["238220"],
            "naics_secondary": ["238210", "541330"],
            "certifications": ["small_business", "sdvosb"],
            "value_min": 100000,
            "value_max": 5000000,
            "min_days_to_respond": 14,
            "preferred_agencies": ["Army", "Veterans Affairs"],
            "states": ["VA", "MD", "DC"],
        }))
        .unwrap()
    }

    fn great() -> Value {
        json!({
            "title": "HVAC replacement, Building 12",
            "solicitation_number": "W91236-26-R-0001",
            "agency": "Department of the Army",
            "naics": "238220",
            "set_aside": "sdvosb",
            "estimated_value": 1200000,
            "response_deadline": "2026-04-01",
            "place_of_performance": "VA",
            "notice_type": "solicitation",
        })
    }

    fn with(field: &str, value: Value) -> Value {
        let mut data = great();
        data[field] = value;
        data
    }

    fn without(field: &str) -> Value {
        let mut data = great();
        data.as_object_mut().unwrap().remove(field);
        data
    }

    fn has(a: &Assessment, reason: &str) -> bool {
        a.reasons.iter().any(|r| r == reason)
    }

    /// The configuration the host hands over when the tenant sets nothing: the schema's
    /// defaults, filled in as the host does (recursively into objects).
    fn schema_defaults() -> Value {
        let schema: Value = serde_json::from_str(include_str!("../config.schema.json")).unwrap();
        streamflow_plugin_sdk::schema::defaults(&schema)
    }

    #[test]
    fn schema_defaults_are_the_code_defaults() {
        let config = schema_defaults();
        assert_eq!(
            serde_json::from_value::<Profile>(config.clone()).unwrap(),
            Profile::default()
        );
        // Every setting is in both, and nothing else.
        let code = serde_json::to_value(Profile::default()).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&code), keys(&config));
    }

    #[test]
    fn a_perfect_fit_is_a_bid() {
        let a = assess(&company(), &great(), NOW);
        assert_eq!(a.value, 100, "{a:?}");
        assert_eq!(a.verdict, Verdict::Bid);
        assert_eq!(a.confidence, 1.0);
        assert_eq!(
            a.reasons,
            [
                "NAICS 238220 is a primary code",
                "Set-aside SDVOSB matches your certifications",
                "Estimated value $1,200,000 is within your range",
                "Due in 30 days",
                "Agency Department of the Army is a preferred agency",
                "Place of performance VA is a state you serve",
                "Notice is a solicitation",
            ]
        );
    }

    #[test]
    fn defaults() {
        let p: Profile = serde_json::from_value(json!({})).unwrap();
        assert_eq!(p, Profile::default());
        assert!(p.check().is_ok());
        let w = &p.weights;
        assert_eq!(
            w.naics + w.set_aside + w.value + w.deadline + w.agency + w.place + w.notice_type,
            100.0
        );
        assert_eq!((p.thresholds.bid, p.thresholds.review), (65, 40));
        assert_eq!(p.min_days_to_respond, 14);
        // Partial weights keep the other defaults.
        let p: Profile = serde_json::from_value(json!({"weights": {"naics": 50}})).unwrap();
        assert_eq!(p.weights.naics, 50.0);
        assert_eq!(p.weights.set_aside, 20.0);
        // An unconfigured company: every factor neutral or open.
        let a = assess(&Profile::default(), &great(), NOW);
        assert_eq!(a.verdict, Verdict::NoBid, "{a:?}");
        assert!(has(
            &a,
            "Set-aside SDVOSB requires a certification you do not hold"
        ));
    }

    #[test]
    fn naics_rules() {
        let p = company();
        let score = |naics: Value| assess(&p, &with("naics", naics), NOW);
        let a = score(json!("238210"));
        assert_eq!(a.value, 85, "{a:?}");
        assert_eq!(a.reasons[0], "NAICS 238210 is a secondary code");
        let a = score(json!("238290"));
        // A quarter of 30 is 7.5: 70 + 7.5 = 77.5 → 78.
        assert_eq!(a.value, 78, "{a:?}");
        assert_eq!(
            a.reasons[0],
            "NAICS 238290 shares industry group 2382 with your codes"
        );
        let a = score(json!("561720"));
        assert_eq!(a.value, 70, "{a:?}");
        assert_eq!(a.reasons[0], "NAICS 561720 is not one of your codes");
        assert_eq!(a.verdict, Verdict::Bid);
        let a = score(json!(238220));
        assert_eq!(a.reasons[0], "NAICS 238220 is a primary code");
    }

    #[test]
    fn naics_as_a_list() {
        let p = company();
        let a = assess(
            &p,
            &with("naics", json!(["561720", "238210", "238220"])),
            NOW,
        );
        assert_eq!(a.reasons[0], "NAICS 238220 is a primary code");
        assert_eq!(a.value, 100);
        let a = assess(&p, &with("naics", json!("561720, 238290")), NOW);
        assert_eq!(
            a.reasons[0],
            "NAICS 238290 shares industry group 2382 with your codes"
        );
        let a = assess(&p, &with("naics", json!(["561720", "561730"])), NOW);
        assert_eq!(
            a.reasons[0],
            "NAICS 561720, 561730 are not among your codes"
        );
        // Unreadable entries are skipped; a list of nothing readable is unknown.
        let a = assess(&p, &with("naics", json!(["x", "238210"])), NOW);
        assert_eq!(a.reasons[0], "NAICS 238210 is a secondary code");
        let a = assess(&p, &with("naics", json!(["x", true])), NOW);
        assert!(a.reasons[0].ends_with("is not a NAICS code"), "{a:?}");
        assert!(a.confidence < 1.0);
    }

    #[test]
    fn naics_missing_or_garbage() {
        let p = company();
        let a = assess(&p, &without("naics"), NOW);
        assert!(has(&a, "NAICS code not given"));
        // Half of 30.
        assert_eq!(a.value, 85);
        assert_eq!(a.confidence, 0.86);
        let a = assess(&p, &with("naics", json!("plumbing")), NOW);
        assert!(has(&a, "NAICS \"plumbing\" is not a NAICS code"), "{a:?}");
        let a = assess(&p, &with("naics", json!(12345678)), NOW);
        assert!(has(&a, "NAICS 12345678 is not a NAICS code"), "{a:?}");
        let a = assess(&p, &with("naics", json!([])), NOW);
        assert!(has(&a, "NAICS code not given"), "{a:?}");
        // No codes configured: neutral.
        let p = Profile {
            naics_primary: vec![],
            naics_secondary: vec![],
            ..company()
        };
        let a = assess(&p, &great(), NOW);
        assert!(
            has(&a, "NAICS 238220 not compared: no NAICS codes configured"),
            "{a:?}"
        );
        assert_eq!(a.value, 85);
        assert_eq!(a.confidence, 1.0);
    }

    #[test]
    fn set_aside_without_certification_is_a_hard_no_bid() {
        let p = company();
        for (kind, label) in [
            ("8a", "8(a)"),
            ("8(a)", "8(a)"),
            ("hubzone", "HUBZone"),
            ("wosb", "WOSB"),
            ("edwosb", "EDWOSB"),
        ] {
            let a = assess(&p, &with("set_aside", json!(kind)), NOW);
            assert_eq!(a.verdict, Verdict::NoBid, "{kind}");
            assert!(a.value <= SET_ASIDE_CAP, "{kind}: {a:?}");
            assert_eq!(
                a.reasons[0],
                format!("Set-aside {label} requires a certification you do not hold")
            );
        }
        // Small business is open to any small-business certification.
        let eight_a = Profile {
            certifications: vec!["8a".into()],
            ..company()
        };
        let a = assess(
            &eight_a,
            &with("set_aside", json!("Total Small Business")),
            NOW,
        );
        assert_eq!(a.verdict, Verdict::Bid, "{a:?}");
        assert!(has(
            &a,
            "Set-aside small business matches your certifications"
        ));
        let none = Profile {
            certifications: vec![],
            ..company()
        };
        let a = assess(&none, &with("set_aside", json!("small_business")), NOW);
        assert_eq!(a.verdict, Verdict::NoBid);
        assert_eq!(
            a.reasons[0],
            "Set-aside small business requires a certification you do not hold"
        );
        // An EDWOSB may bid on WOSB set-asides, not the other way round.
        let ed = Profile {
            certifications: vec!["edwosb".into()],
            ..company()
        };
        assert_eq!(
            assess(&ed, &with("set_aside", json!("WOSB")), NOW).verdict,
            Verdict::Bid
        );
        let w = Profile {
            certifications: vec!["wosb".into()],
            ..company()
        };
        assert_eq!(
            assess(&w, &with("set_aside", json!("EDWOSB")), NOW).verdict,
            Verdict::NoBid
        );
    }

    #[test]
    fn unrestricted_gets_part_of_the_weight() {
        let p = company();
        let a = assess(&p, &with("set_aside", json!("none")), NOW);
        assert_eq!(a.value, 90, "{a:?}");
        assert!(has(&a, "Unrestricted competition (no set-aside)"));
        assert_eq!(a.confidence, 1.0);
        let a = assess(&p, &without("set_aside"), NOW);
        assert_eq!(a.value, 90);
        assert!(has(&a, "Set-aside not given; scored as unrestricted"));
        assert!(a.confidence < 1.0);
        let a = assess(&p, &with("set_aside", json!("VIP")), NOW);
        assert!(
            has(
                &a,
                "Set-aside \"VIP\" not recognised; scored as unrestricted"
            ),
            "{a:?}"
        );
        let a = assess(&p, &with("set_aside", json!(8)), NOW);
        assert!(
            has(&a, "Set-aside 8 not recognised; scored as unrestricted"),
            "{a:?}"
        );
    }

    #[test]
    fn value_rules() {
        let p = company();
        // Half the minimum: half of 15.
        let a = assess(&p, &with("estimated_value", json!(50000)), NOW);
        assert!(
            has(
                &a,
                "Estimated value $50,000 is below your minimum of $100,000"
            ),
            "{a:?}"
        );
        assert_eq!(a.value, 93); // 85 + 7.5 → 92.5 → 93
        // Twice the maximum: half of 15.
        let a = assess(&p, &with("estimated_value", json!("$10,000,000")), NOW);
        assert!(
            has(
                &a,
                "Estimated value $10,000,000 is above your maximum of $5,000,000"
            ),
            "{a:?}"
        );
        assert_eq!(a.value, 93);
        let a = assess(&p, &with("estimated_value", json!("250k")), NOW);
        assert!(
            has(&a, "Estimated value $250,000 is within your range"),
            "{a:?}"
        );
        let a = assess(&p, &with("estimated_value", json!(0)), NOW);
        assert!(
            has(&a, "Estimated value $0 is below your minimum of $100,000"),
            "{a:?}"
        );
        assert_eq!(a.value, 85);
        // Bounds are inclusive.
        let a = assess(&p, &with("estimated_value", json!(5000000)), NOW);
        assert_eq!(a.value, 100);
        // No range configured.
        let open = Profile {
            value_min: None,
            value_max: None,
            ..company()
        };
        let a = assess(&open, &great(), NOW);
        assert!(
            has(&a, "Estimated value $1,200,000; no value range set"),
            "{a:?}"
        );
        assert_eq!(a.value, 100);
    }

    #[test]
    fn value_negative_or_garbage() {
        let p = company();
        let a = assess(&p, &with("estimated_value", json!(-5)), NOW);
        assert!(has(&a, "Estimated value -5 is not a valid amount"), "{a:?}");
        assert_eq!(a.value, 93); // half of 15
        assert!(a.confidence < 1.0);
        let a = assess(&p, &with("estimated_value", json!("a lot")), NOW);
        assert!(
            has(&a, "Estimated value \"a lot\" is not a valid amount"),
            "{a:?}"
        );
        let a = assess(&p, &with("estimated_value", json!("-$5")), NOW);
        assert!(
            has(&a, "Estimated value \"-$5\" is not a valid amount"),
            "{a:?}"
        );
        let a = assess(&p, &without("estimated_value"), NOW);
        assert!(has(&a, "Estimated value not given"));
    }

    #[test]
    fn deadline_rules() {
        let p = company();
        let a = assess(&p, &with("response_deadline", json!("2026-03-07")), NOW);
        assert_eq!(a.reasons[0], "NAICS 238220 is a primary code");
        assert!(has(&a, "Due in 5 days; you need 14"), "{a:?}");
        // 5/14 of 15 = 5.36: 85 + 5.36 → 90.
        assert_eq!(a.value, 90);
        let a = assess(&p, &with("response_deadline", json!("2026-03-02")), NOW);
        assert!(has(&a, "Due today; you need 14"), "{a:?}");
        assert_eq!(a.value, 85);
        let a = assess(&p, &with("response_deadline", json!("2026-03-16")), NOW);
        assert!(has(&a, "Due in 14 days"), "{a:?}");
        assert_eq!(a.value, 100);
        let a = assess(
            &p,
            &with("response_deadline", json!("2026-03-03T13:59:00Z")),
            NOW,
        );
        assert!(has(&a, "Due today; you need 14"), "{a:?}");
        let a = assess(
            &p,
            &with("response_deadline", json!("2026-03-03T10:00:00-05:00")),
            NOW,
        );
        assert!(has(&a, "Due in 1 day; you need 14"), "{a:?}");
        // Measured from updated_at, not from a clock.
        let a = assess(
            &p,
            &with("response_deadline", json!("2026-03-07")),
            NOW - 30 * DAY,
        );
        assert!(has(&a, "Due in 35 days"), "{a:?}");
        let p0 = Profile {
            min_days_to_respond: 0,
            ..company()
        };
        let a = assess(&p0, &with("response_deadline", json!("2026-03-02")), NOW);
        assert!(has(&a, "Due today"), "{a:?}");
        assert_eq!(a.value, 100);
    }

    #[test]
    fn past_deadline_is_a_hard_no_bid() {
        let p = company();
        let a = assess(&p, &with("response_deadline", json!("2026-03-01")), NOW);
        assert_eq!((a.value, a.verdict), (0, Verdict::NoBid));
        assert_eq!(a.reasons[0], "Response deadline 2026-03-01 has passed");
        let a = assess(
            &p,
            &with("response_deadline", json!("2026-03-02T13:59:59Z")),
            NOW,
        );
        assert_eq!((a.value, a.verdict), (0, Verdict::NoBid));
        // Both hard no-bids: 0, both reasons first.
        let mut data = with("response_deadline", json!("2025-12-31"));
        data["set_aside"] = json!("8a");
        let a = assess(&p, &data, NOW);
        assert_eq!(a.value, 0);
        assert_eq!(
            a.reasons[..2],
            [
                "Set-aside 8(a) requires a certification you do not hold",
                "Response deadline 2025-12-31 has passed"
            ]
        );
    }

    #[test]
    fn deadline_garbage() {
        let p = company();
        for garbage in [
            json!("next Tuesday"),
            json!("2026-02-30"),
            json!("03/15/2026"),
            json!(20260315),
        ] {
            let a = assess(&p, &with("response_deadline", garbage.clone()), NOW);
            assert!(
                a.reasons
                    .iter()
                    .any(|r| r.starts_with("Response deadline") && r.ends_with("is not a date")),
                "{garbage}: {a:?}"
            );
            assert_eq!(a.value, 93, "{garbage}"); // half of 15
            assert!(a.confidence < 1.0);
        }
        let a = assess(&p, &without("response_deadline"), NOW);
        assert!(has(&a, "Response deadline not given"));
    }

    #[test]
    fn agency_rules() {
        let p = company();
        let a = assess(&p, &with("agency", json!("DEPT OF VETERANS AFFAIRS")), NOW);
        assert!(
            has(&a, "Agency DEPT OF VETERANS AFFAIRS is a preferred agency"),
            "{a:?}"
        );
        let a = assess(
            &p,
            &with("agency", json!("General Services Administration")),
            NOW,
        );
        assert!(has(
            &a,
            "Agency General Services Administration is not a preferred agency"
        ));
        assert_eq!(a.value, 90);
        let a = assess(&p, &without("agency"), NOW);
        assert!(has(&a, "Agency not given"));
        assert_eq!(a.value, 95);
        let none = Profile {
            preferred_agencies: vec![],
            ..company()
        };
        let a = assess(&none, &great(), NOW);
        assert!(
            has(
                &a,
                "Agency Department of the Army; no preferred agencies set"
            ),
            "{a:?}"
        );
        assert_eq!(a.value, 95);
    }

    #[test]
    fn place_rules() {
        let p = company();
        let a = assess(&p, &with("place_of_performance", json!("TX")), NOW);
        assert!(has(
            &a,
            "Place of performance TX is outside the states you serve"
        ));
        assert_eq!(a.value, 95);
        let a = assess(
            &p,
            &with("place_of_performance", json!("Bethesda, Maryland")),
            NOW,
        );
        assert!(
            has(&a, "Place of performance MD is a state you serve"),
            "{a:?}"
        );
        let a = assess(
            &p,
            &with("place_of_performance", json!({"state": "dc"})),
            NOW,
        );
        assert!(
            has(&a, "Place of performance DC is a state you serve"),
            "{a:?}"
        );
        let a = assess(&p, &with("place_of_performance", json!("Atlantis")), NOW);
        assert!(
            has(&a, "Place of performance \"Atlantis\" is not a US state"),
            "{a:?}"
        );
        assert!(a.confidence < 1.0);
        let anywhere = Profile {
            states: vec![],
            ..company()
        };
        let a = assess(&anywhere, &with("place_of_performance", json!("TX")), NOW);
        assert!(
            has(&a, "Place of performance TX; you work in any state"),
            "{a:?}"
        );
        assert_eq!(a.value, 100);
    }

    #[test]
    fn notice_type_rules() {
        let p = company();
        let score = |t: &str| assess(&p, &with("notice_type", json!(t)), NOW);
        assert_eq!(score("Combined Synopsis/Solicitation").value, 100);
        let a = score("presolicitation");
        assert_eq!(a.value, 98); // 95 + 2.5 → 97.5 → 98
        assert!(has(
            &a,
            "Notice is a presolicitation: the solicitation is not out yet"
        ));
        let a = score("Sources Sought");
        assert_eq!(a.value, 96); // 95 + 1.25
        assert!(has(
            &a,
            "Notice is sources sought: market research, no award from it"
        ));
        let a = score("award");
        assert!(has(&a, "Notice type \"award\" not recognised"), "{a:?}");
    }

    #[test]
    fn thresholds_decide() {
        let p = company();
        // NAICS outside (0/30), unrestricted (10/20), sources sought (1.25/5): 100-30-10-3.75
        let mut data = with("naics", json!("561720"));
        data["set_aside"] = json!("none");
        data["notice_type"] = json!("sources_sought");
        let a = assess(&p, &data, NOW);
        assert_eq!(a.value, 56, "{a:?}");
        assert_eq!(a.verdict, Verdict::Review);
        data["agency"] = json!("GSA");
        let a = assess(&p, &data, NOW);
        assert_eq!(a.value, 46);
        assert_eq!(a.verdict, Verdict::Review);
        data["place_of_performance"] = json!("AK");
        data["estimated_value"] = json!(25000);
        let a = assess(&p, &data, NOW);
        // 46 - 5 - 15 * 0.75 = 29.75
        assert_eq!(a.value, 30);
        assert_eq!(a.verdict, Verdict::NoBid);
        let strict = Profile {
            thresholds: Thresholds {
                bid: 95,
                review: 90,
            },
            ..company()
        };
        assert_eq!(
            assess(&strict, &with("naics", json!("238210")), NOW).verdict,
            Verdict::NoBid
        );
        let lenient = Profile {
            thresholds: Thresholds {
                bid: 50,
                review: 20,
            },
            ..company()
        };
        assert_eq!(assess(&lenient, &data, NOW).verdict, Verdict::Review);
    }

    #[test]
    fn weights_are_shares() {
        // Doubling every weight changes nothing.
        let mut p = company();
        let data = with("naics", json!("238210"));
        let before = assess(&p, &data, NOW);
        let w = &mut p.weights;
        for x in [
            &mut w.naics,
            &mut w.set_aside,
            &mut w.value,
            &mut w.deadline,
            &mut w.agency,
            &mut w.place,
            &mut w.notice_type,
        ] {
            *x *= 2.0;
        }
        assert_eq!(assess(&p, &data, NOW), before);
        // Only NAICS counts.
        let p: Profile = serde_json::from_value(json!({
            "naics_primary": ["238220"],
            "naics_secondary": ["238210"],
            "weights": {"naics": 100, "set_aside": 0, "value": 0, "deadline": 0, "agency": 0, "place": 0, "notice_type": 0},
        }))
        .unwrap();
        assert_eq!(assess(&p, &json!({"naics": "238210"}), NOW).value, 50);
        // Reasons follow the weights.
        let p = Profile {
            weights: Weights {
                notice_type: 60.0,
                ..Weights::default()
            },
            ..company()
        };
        assert_eq!(
            assess(&p, &great(), NOW).reasons[0],
            "Notice is a solicitation"
        );
    }

    #[test]
    fn empty_and_odd_records() {
        let p = company();
        let a = assess(&p, &json!({}), NOW);
        assert_eq!(a.value, 50);
        assert_eq!(a.verdict, Verdict::Review);
        assert_eq!(a.confidence, 0.0);
        assert_eq!(a.reasons.len(), 7);
        assert_eq!(assess(&p, &json!([1, 2]), NOW), a);
        assert_eq!(assess(&p, &Value::Null, NOW), a);
        let long = "x".repeat(500);
        let a = assess(&p, &with("agency", json!(long)), NOW);
        assert!(a.reasons.iter().all(|r| r.chars().count() < 120), "{a:?}");
        // Deterministic.
        assert_eq!(assess(&p, &great(), NOW), assess(&p, &great(), NOW));
    }

    #[test]
    fn bad_profiles() {
        let bad = |v: Value| {
            serde_json::from_value::<Profile>(v)
                .unwrap()
                .check()
                .unwrap_err()
        };
        assert!(bad(json!({"value_min": 10, "value_max": 5})).starts_with("value_min"));
        assert!(bad(json!({"value_min": -1})).starts_with("value_min"));
        assert!(bad(json!({"certifications": ["gold"]})).starts_with("certifications"));
        assert!(bad(json!({"certifications": ["none"]})).starts_with("certifications"));
        assert!(bad(json!({"thresholds": {"bid": 30, "review": 50}})).starts_with("thresholds"));
        assert!(bad(json!({"weights": {"naics": -1}})).starts_with("weights.naics"));
        assert!(
            bad(
                json!({"weights": {"naics": 0, "set_aside": 0, "value": 0, "deadline": 0,
                                   "agency": 0, "place": 0, "notice_type": 0}})
            )
            .starts_with("weights:")
        );
        assert!(serde_json::from_value::<Profile>(json!({"min_days_to_respond": -3})).is_err());
        assert!(company().check().is_ok());
    }

    #[test]
    fn set_aside_spellings() {
        for (text, kind) in [
            ("8(a) Set-Aside", SetAside::EightA),
            ("8(a) Sole Source", SetAside::EightA),
            ("HUBZone Set-Aside", SetAside::Hubzone),
            (
                "Service-Disabled Veteran-Owned Small Business",
                SetAside::Sdvosb,
            ),
            ("Women-Owned Small Business", SetAside::Wosb),
            ("Full and Open", SetAside::Unrestricted),
            ("Total Small Business Set-Aside", SetAside::SmallBusiness),
        ] {
            assert_eq!(SetAside::parse(text), Some(kind), "{text}");
        }
        assert_eq!(SetAside::parse("platinum"), None);
    }

    #[test]
    fn money() {
        assert_eq!(dollars(0.0), "$0");
        assert_eq!(dollars(999.0), "$999");
        assert_eq!(dollars(1000.0), "$1,000");
        assert_eq!(dollars(1234567.8), "$1,234,568");
        assert_eq!(amount(&json!("1.5M")), Some(1_500_000.0));
        assert_eq!(amount(&json!("$ 2,000")), Some(2000.0));
        assert_eq!(amount(&json!("k")), None);
        assert_eq!(amount(&json!(-1)), None);
    }

    #[test]
    fn strict_bids_need_every_factor_and_floors_are_no_bids() {
        let mut strict = company();
        strict.strict_bid = true;
        strict.preferred_agencies.clear();
        strict
            .no_bid_below
            .extend([("naics".to_string(), 0.01), ("deadline".to_string(), 0.5)]);
        // Everything met (an agency not compared does not count): a bid.
        assert_eq!(assess(&strict, &great(), NOW).verdict, Verdict::Bid);
        // A secondary code scores high but is a review, saying why.
        let secondary = assess(&strict, &with("naics", json!("541330")), NOW);
        assert!(secondary.value >= strict.thresholds.bid, "{secondary:?}");
        assert_eq!(secondary.verdict, Verdict::Review);
        assert!(
            secondary.reasons[0].starts_with("A review, not a bid: NAICS 541330"),
            "{secondary:?}"
        );
        // A missing input is not a fit either.
        assert_eq!(
            assess(&strict, &without("estimated_value"), NOW).verdict,
            Verdict::Review
        );
        // Below a floor: a hard no-bid.
        let foreign = assess(&strict, &with("naics", json!("325412")), NOW);
        assert_eq!(foreign.verdict, Verdict::NoBid);
        assert!(foreign.value <= SET_ASIDE_CAP, "{foreign:?}");
        assert!(foreign.reasons[0].ends_with(": a no-bid"), "{foreign:?}");
        let rushed = assess(
            &strict,
            &with("response_deadline", json!("2026-03-05")),
            NOW,
        );
        assert_eq!(rushed.verdict, Verdict::NoBid, "{rushed:?}");
        // Off by default.
        let mut lenient = company();
        lenient.preferred_agencies.clear();
        assert_ne!(
            assess(&lenient, &with("naics", json!("325412")), NOW).verdict,
            Verdict::NoBid
        );
        let mut bad = company();
        bad.no_bid_below.insert("budget".into(), 0.5);
        assert!(
            bad.check()
                .unwrap_err()
                .contains("\"budget\" is not a factor")
        );
    }
}
