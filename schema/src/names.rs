//! Names: case conversion for `rename_all` and the table default, and "did you mean".

/// The case conventions `#[d1(rename_all = "...")]` accepts, as serde spells them.
pub const RENAME_RULES: &[&str] = &[
    "lowercase",
    "UPPERCASE",
    "PascalCase",
    "camelCase",
    "snake_case",
    "SCREAMING_SNAKE_CASE",
    "kebab-case",
    "SCREAMING-KEBAB-CASE",
];

/// Splits an identifier (`snake_case`, `PascalCase` or `camelCase`) into lower-case words.
fn words(ident: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = ident.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' || c == '-' {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let boundary = c.is_uppercase()
            && !cur.is_empty()
            && (chars[i - 1].is_lowercase()
                || chars[i - 1].is_ascii_digit()
                || chars.get(i + 1).is_some_and(|n| n.is_lowercase()));
        if boundary {
            out.push(std::mem::take(&mut cur));
        }
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn capitalize(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `MessageRow` → `message_row`; used for the default table name.
pub fn snake_case(ident: &str) -> String {
    words(ident).join("_")
}

/// Applies a `rename_all` rule to a field name; `None` for a rule not in [`RENAME_RULES`].
///
/// ```
/// use d1_sync_schema::names::apply_rename_rule;
/// assert_eq!(apply_rename_rule("camelCase", "raw_text").as_deref(), Some("rawText"));
/// assert_eq!(apply_rename_rule("SCREAMING_SNAKE_CASE", "raw_text").as_deref(), Some("RAW_TEXT"));
/// assert_eq!(apply_rename_rule("Title Case", "raw_text"), None);
/// ```
pub fn apply_rename_rule(rule: &str, field: &str) -> Option<String> {
    let w = words(field);
    Some(match rule {
        "lowercase" => w.concat(),
        "UPPERCASE" => w.concat().to_uppercase(),
        "PascalCase" => w.iter().map(|s| capitalize(s)).collect(),
        "camelCase" => {
            let mut s = String::new();
            for (i, part) in w.iter().enumerate() {
                if i == 0 {
                    s.push_str(part);
                } else {
                    s.push_str(&capitalize(part));
                }
            }
            s
        }
        "snake_case" => w.join("_"),
        "SCREAMING_SNAKE_CASE" => w.join("_").to_uppercase(),
        "kebab-case" => w.join("-"),
        "SCREAMING-KEBAB-CASE" => w.join("-").to_uppercase(),
        _ => return None,
    })
}

/// Edit distance between two strings (case-insensitive), counting a swap of two neighbouring
/// letters as one edit (optimal string alignment), for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 {
                j
            } else if j == 0 {
                i
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut v = (d[(i - 1) * w + j] + 1)
                    .min(d[i * w + j - 1] + 1)
                    .min(d[(i - 1) * w + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    v = v.min(d[(i - 2) * w + j - 2] + 1);
                }
                v
            };
        }
    }
    d[a.len() * w + b.len()]
}

/// The candidate closest to `name`, if it is near enough to be a likely typo
/// (at most a third of the name's length in edits, and at least one).
///
/// ```
/// use d1_sync_schema::names::did_you_mean;
/// assert_eq!(did_you_mean("primay_key", ["primary_key", "rename", "skip"]), Some("primary_key"));
/// assert_eq!(did_you_mean("zzz", ["primary_key", "rename"]), None);
/// ```
pub fn did_you_mean<'a, I>(name: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_splits_words_and_acronyms() {
        assert_eq!(snake_case("Message"), "message");
        assert_eq!(
            snake_case("BrowserRequestPolicyState"),
            "browser_request_policy_state"
        );
        assert_eq!(snake_case("HTTPStatus"), "http_status");
        assert_eq!(snake_case("already_snake"), "already_snake");
    }

    #[test]
    fn every_rule_applies() {
        let got: Vec<_> = RENAME_RULES
            .iter()
            .map(|r| apply_rename_rule(r, "last_error_at").unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "lasterrorat",
                "LASTERRORAT",
                "LastErrorAt",
                "lastErrorAt",
                "last_error_at",
                "LAST_ERROR_AT",
                "last-error-at",
                "LAST-ERROR-AT"
            ]
        );
    }

    #[test]
    fn suggestions_are_case_insensitive_and_bounded() {
        assert_eq!(
            did_you_mean("RAW_TXT", ["raw_text", "summary"]),
            Some("raw_text")
        );
        assert_eq!(did_you_mean("id", ["idx", "role"]), Some("idx"));
        assert_eq!(
            did_you_mean("emial", ["email", "name"]),
            Some("email"),
            "a swap is one edit"
        );
        assert_eq!(did_you_mean("platform", ["summary", "role"]), None);
    }
}
