//! US states, the District of Columbia and the territories: postal codes and names.

/// `(code, name)`, by code.
const STATES: [(&str, &str); 56] = [
    ("AK", "Alaska"),
    ("AL", "Alabama"),
    ("AR", "Arkansas"),
    ("AS", "American Samoa"),
    ("AZ", "Arizona"),
    ("CA", "California"),
    ("CO", "Colorado"),
    ("CT", "Connecticut"),
    ("DC", "District of Columbia"),
    ("DE", "Delaware"),
    ("FL", "Florida"),
    ("GA", "Georgia"),
    ("GU", "Guam"),
    ("HI", "Hawaii"),
    ("IA", "Iowa"),
    ("ID", "Idaho"),
    ("IL", "Illinois"),
    ("IN", "Indiana"),
    ("KS", "Kansas"),
    ("KY", "Kentucky"),
    ("LA", "Louisiana"),
    ("MA", "Massachusetts"),
    ("MD", "Maryland"),
    ("ME", "Maine"),
    ("MI", "Michigan"),
    ("MN", "Minnesota"),
    ("MO", "Missouri"),
    ("MP", "Northern Mariana Islands"),
    ("MS", "Mississippi"),
    ("MT", "Montana"),
    ("NC", "North Carolina"),
    ("ND", "North Dakota"),
    ("NE", "Nebraska"),
    ("NH", "New Hampshire"),
    ("NJ", "New Jersey"),
    ("NM", "New Mexico"),
    ("NV", "Nevada"),
    ("NY", "New York"),
    ("OH", "Ohio"),
    ("OK", "Oklahoma"),
    ("OR", "Oregon"),
    ("PA", "Pennsylvania"),
    ("PR", "Puerto Rico"),
    ("RI", "Rhode Island"),
    ("SC", "South Carolina"),
    ("SD", "South Dakota"),
    ("TN", "Tennessee"),
    ("TX", "Texas"),
    ("UM", "U.S. Minor Outlying Islands"),
    ("UT", "Utah"),
    ("VA", "Virginia"),
    ("VI", "U.S. Virgin Islands"),
    ("VT", "Vermont"),
    ("WA", "Washington"),
    ("WI", "Wisconsin"),
    ("WV", "West Virginia"),
];

/// The postal code of a state written as its code ("va"), its name ("Virginia",
/// "district of columbia"), or at the end of a place ("Norfolk, VA", "Norfolk, VA 23510",
/// "Austin, Texas"). `None` for anything else.
pub fn state_code(text: &str) -> Option<&'static str> {
    let text = text.trim();
    if text.is_empty() || text.len() > 200 {
        return None;
    }
    if let Some(code) = exact(text) {
        return Some(code);
    }
    let country = |p: &str| {
        matches!(
            p.to_ascii_uppercase().as_str(),
            "USA" | "US" | "U.S." | "U.S.A." | "UNITED STATES" | "UNITED STATES OF AMERICA"
        )
    };
    // The last comma-separated part that is not the country, without a ZIP code.
    let last = text
        .split(',')
        .map(str::trim)
        .rev()
        .find(|p| !p.is_empty() && !country(p))?;
    let mut words: Vec<&str> = last.split_whitespace().collect();
    while words
        .last()
        .is_some_and(|w| w.chars().all(|c| c.is_ascii_digit() || c == '-'))
    {
        words.pop();
    }
    exact(&words.join(" "))
}

fn exact(text: &str) -> Option<&'static str> {
    let upper = text.trim().trim_end_matches('.').to_ascii_uppercase();
    STATES
        .iter()
        .find(|(code, name)| *code == upper || name.to_ascii_uppercase() == upper)
        .map(|(code, _)| *code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names() {
        assert_eq!(state_code("VA"), Some("VA"));
        assert_eq!(state_code(" va "), Some("VA"));
        assert_eq!(state_code("Virginia"), Some("VA"));
        assert_eq!(state_code("district of columbia"), Some("DC"));
        assert_eq!(state_code("Norfolk, VA"), Some("VA"));
        assert_eq!(state_code("Norfolk, VA 23510"), Some("VA"));
        assert_eq!(state_code("Austin, Texas"), Some("TX"));
        assert_eq!(state_code("Norfolk, VA, USA"), Some("VA"));
        assert_eq!(state_code("San Juan, PR 00901-1234"), Some("PR"));
        assert_eq!(state_code("Mars"), None);
        assert_eq!(state_code("XX"), None);
        assert_eq!(state_code(""), None);
        assert_eq!(state_code(","), None);
        assert_eq!(state_code("23510"), None);
    }
}
