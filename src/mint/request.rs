//! Rule 1: the body of a mint request, from JSON to a [`MintRequest`] or the reasons it is not
//! one, per field. A pure function: no database, no HTTP.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::TokenConfig;

/// Longest id (`session_id`, `client_id`, `end_company_id`, `end_user`), in characters.
const MAX_ID_LEN: usize = 255;
/// Longest `end_user_email`, in characters.
const MAX_EMAIL_LEN: usize = 254;
/// Most `allowed_agent_ids` one request may list.
const MAX_AGENT_IDS: usize = 256;

/// The token lifetimes a mint honours, in seconds: `ttl_seconds` must lie in `min..=max`, and
/// `default` is used when it is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlBounds {
    pub default: u32,
    pub min: u32,
    pub max: u32,
}

impl TtlBounds {
    /// The shipped bounds (docs/api.md, "The endpoint"): what the configuration holds unless an operator changes it,
    /// and what the OpenAPI schema of `ttl_seconds` shows.
    pub const SHIPPED: Self = Self {
        default: 900,
        min: 60,
        max: 3600,
    };
}

impl From<&TokenConfig> for TtlBounds {
    fn from(config: &TokenConfig) -> Self {
        Self {
            default: config.default_ttl,
            min: config.min_ttl.get(),
            max: config.max_ttl,
        }
    }
}

/// A well-formed mint request. Unknown fields of the body are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MintRequest {
    pub session_id: String,
    pub allowed_agent_ids: Vec<i64>,
    pub client_id: Option<String>,
    pub end_company_id: Option<String>,
    pub end_user: Option<String>,
    pub end_user_email: Option<String>,
    pub ttl_seconds: Option<u32>,
}

/// Why a body is not a mint request: a message per field (`body` when it is not a JSON object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(BTreeMap<&'static str, String>);

impl FieldErrors {
    fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.insert(field, message.into());
    }

    /// The fields and their messages, in field-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0
            .iter()
            .map(|(field, message)| (*field, message.as_str()))
    }
}

impl std::fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut separator = "";
        for (field, message) in self.iter() {
            write!(f, "{separator}{field} {message}")?;
            separator = "; ";
        }
        Ok(())
    }
}

impl MintRequest {
    /// Checks every field and reports all failures at once, per field. Built field by field (no
    /// `Deserialize`) for exactly that.
    pub fn from_json(body: Value, ttl: TtlBounds) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::default();
        let Value::Object(mut body) = body else {
            errors.add("body", "must be a JSON object");
            return Err(errors);
        };
        let mut request = Self::default();

        match body.remove("session_id") {
            None | Some(Value::Null) => errors.add("session_id", "is required"),
            Some(value) => {
                if let Some(id) = text_field(&mut errors, "session_id", value, MAX_ID_LEN) {
                    request.session_id = id;
                }
            }
        }
        request.client_id = optional_text(&mut errors, &mut body, "client_id", MAX_ID_LEN);
        request.end_company_id =
            optional_text(&mut errors, &mut body, "end_company_id", MAX_ID_LEN);
        request.end_user = optional_text(&mut errors, &mut body, "end_user", MAX_ID_LEN);
        request.end_user_email =
            optional_text(&mut errors, &mut body, "end_user_email", MAX_EMAIL_LEN);
        if let Some(email) = &request.end_user_email {
            if !is_plausible_email(email) {
                errors.add("end_user_email", "must be an email address");
            }
        }

        match body.remove("allowed_agent_ids") {
            None => {}
            Some(Value::Array(items)) if items.len() > MAX_AGENT_IDS => errors.add(
                "allowed_agent_ids",
                format!("must list at most {MAX_AGENT_IDS} agents"),
            ),
            Some(Value::Array(items)) => {
                match items.iter().map(integral).collect::<Option<Vec<i64>>>() {
                    Some(ids) => request.allowed_agent_ids = ids,
                    None => errors.add("allowed_agent_ids", "must be an array of 64-bit integers"),
                }
            }
            Some(_) => errors.add("allowed_agent_ids", "must be an array of 64-bit integers"),
        }

        match body.remove("ttl_seconds") {
            None | Some(Value::Null) => {}
            Some(value) => match integral(&value).and_then(|ttl| u32::try_from(ttl).ok()) {
                Some(seconds) if (ttl.min..=ttl.max).contains(&seconds) => {
                    request.ttl_seconds = Some(seconds);
                }
                _ => errors.add(
                    "ttl_seconds",
                    format!("must be an integer from {} to {}", ttl.min, ttl.max),
                ),
            },
        }

        if errors.0.is_empty() {
            Ok(request)
        } else {
            Err(errors)
        }
    }
}

/// A JSON integer, as JSON Schema counts them: `92` and `92.0` alike (a number with no
/// fractional part, exactly representable); never `92.5` or a string.
fn integral(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    // 2^53: beyond it a float no longer names one integer.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    (f.fract() == 0.0 && f.abs() <= EXACT).then_some(f as i64)
}

fn optional_text(
    errors: &mut FieldErrors,
    body: &mut Map<String, Value>,
    field: &'static str,
    max_len: usize,
) -> Option<String> {
    match body.remove(field) {
        None | Some(Value::Null) => None,
        Some(value) => text_field(errors, field, value, max_len),
    }
}

/// A non-empty string of at most `max_len` characters without control characters.
fn text_field(
    errors: &mut FieldErrors,
    field: &'static str,
    value: Value,
    max_len: usize,
) -> Option<String> {
    let Value::String(text) = value else {
        errors.add(field, "must be a string");
        return None;
    };
    if text.is_empty() {
        errors.add(field, "must not be empty");
    } else if text.chars().count() > max_len {
        errors.add(field, format!("must be at most {max_len} characters"));
    } else if text.chars().any(char::is_control) {
        errors.add(field, "must not contain control characters");
    } else {
        return Some(text);
    }
    None
}

/// `local@domain.tld` without spaces: enough to catch mistakes, without pretending to be RFC 5322.
fn is_plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !email.chars().any(char::is_whitespace)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The body as the HTTP layer hands it over: parsed from the text.
    fn parse(text: &str) -> Result<MintRequest, FieldErrors> {
        let body: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        MintRequest::from_json(body, TtlBounds::SHIPPED)
    }

    /// The fields a refused body names, with their messages.
    fn refusal(text: &str) -> Vec<(&'static str, String)> {
        match parse(text) {
            Ok(request) => panic!("{text} was accepted: {request:?}"),
            Err(errors) => errors.iter().map(|(f, m)| (f, m.to_owned())).collect(),
        }
    }

    const STRING: &str = "must be a string";
    const EMPTY: &str = "must not be empty";
    const CONTROL: &str = "must not contain control characters";
    const TOO_LONG: &str = "must be at most 255 characters";
    const AGENTS: &str = "must be an array of 64-bit integers";
    const TTL: &str = "must be an integer from 60 to 3600";
    const NOT_AN_OBJECT: &str = "must be a JSON object";

    /// One row per refused body: the body, the one field named, its message.
    #[test]
    fn each_bad_body_is_refused_naming_its_field() {
        let long = |n: usize, c: &str| c.repeat(n);
        let body = |field: &str, value: &str| {
            format!(r#"{{"session_id": "s-acme-1", "{field}": {value}}}"#)
        };
        let session = |value: &str| format!(r#"{{"session_id": {value}}}"#);
        let mut cases: Vec<(String, &str, String)> = vec![
            // JSON that is not an object.
            ("[]".into(), "body", NOT_AN_OBJECT.into()),
            (r#"["s-acme-1"]"#.into(), "body", NOT_AN_OBJECT.into()),
            (
                r#"[{"session_id": "s-acme-1"}]"#.into(),
                "body",
                NOT_AN_OBJECT.into(),
            ),
            (r#""s-acme-1""#.into(), "body", NOT_AN_OBJECT.into()),
            ("42".into(), "body", NOT_AN_OBJECT.into()),
            ("true".into(), "body", NOT_AN_OBJECT.into()),
            ("null".into(), "body", NOT_AN_OBJECT.into()),
            // session_id: missing, null, wrong type, empty, too long (in characters).
            ("{}".into(), "session_id", "is required".into()),
            (
                r#"{"allowed_agent_ids": [101]}"#.into(),
                "session_id",
                "is required".into(),
            ),
            (session("null"), "session_id", "is required".into()),
            (session("5"), "session_id", STRING.into()),
            (session("[]"), "session_id", STRING.into()),
            (session("{}"), "session_id", STRING.into()),
            (session("true"), "session_id", STRING.into()),
            (session(r#"["s-acme-1"]"#), "session_id", STRING.into()),
            (session(r#""""#), "session_id", EMPTY.into()),
            (
                json!({"session_id": long(256, "s")}).to_string(),
                "session_id",
                TOO_LONG.into(),
            ),
            (
                json!({"session_id": long(256, "é")}).to_string(),
                "session_id",
                TOO_LONG.into(),
            ),
            (
                json!({"session_id": long(10_000, "u")}).to_string(),
                "session_id",
                TOO_LONG.into(),
            ),
            // ttl_seconds: out of range, fractional, beyond i64, wrong type.
            (body("ttl_seconds", r#""900""#), "ttl_seconds", TTL.into()),
            (body("ttl_seconds", "true"), "ttl_seconds", TTL.into()),
            (body("ttl_seconds", "[900]"), "ttl_seconds", TTL.into()),
            (body("ttl_seconds", "{}"), "ttl_seconds", TTL.into()),
            // allowed_agent_ids: not an array of 64-bit integers, or too many.
            (
                body("allowed_agent_ids", "null"),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", r#""1""#),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", r#"[1, "2"]"#),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", r#"[101, "102"]"#),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", "[1.5]"),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", "[null]"),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", "[[101]]"),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", r#"{"0": 101}"#),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", "101"),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", "true"),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", "[99999999999999999999]"),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", "[1e30]"),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", "[9223372036854775808]"),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body("allowed_agent_ids", "[101, 18446744073709551616]"),
                "allowed_agent_ids",
                AGENTS.into(),
            ),
            (
                body(
                    "allowed_agent_ids",
                    &json!((0..=256).collect::<Vec<i64>>()).to_string(),
                ),
                "allowed_agent_ids",
                "must list at most 256 agents".into(),
            ),
            // end_user_email: not an address.
            (
                body("end_user_email", r#""pat""#),
                "end_user_email",
                "must be an email address".into(),
            ),
            (
                body("end_user_email", r#""a@b""#),
                "end_user_email",
                "must be an email address".into(),
            ),
            (
                body("end_user_email", &json!(long(255, "u")).to_string()),
                "end_user_email",
                "must be at most 254 characters".into(),
            ),
        ];
        for ttl in [
            "-1",
            "-900",
            "0",
            "59",
            "3601",
            "900.5",
            "60.5",
            "-0.5",
            "1e30",
            "99999999999999999999",
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
        ] {
            cases.push((body("ttl_seconds", ttl), "ttl_seconds", TTL.into()));
        }
        // The other text fields: wrong types, overlong.
        for field in ["client_id", "end_company_id", "end_user", "end_user_email"] {
            for value in ["5", "true", "[]", "{}", r#"["acme"]"#] {
                cases.push((body(field, value), field, STRING.into()));
            }
            let message = if field == "end_user_email" {
                "must be at most 254 characters"
            } else {
                TOO_LONG
            };
            let overlong = json!(long(10_000, "u")).to_string();
            cases.push((body(field, &overlong), field, message.into()));
            cases.push((body(field, r#""""#), field, EMPTY.into()));
        }
        // Control characters, in the session id and the other ids: never reach the database
        // (PostgreSQL refuses NUL, SQLite would store it).
        for id in [
            "s-acme-1\u{0}",
            "s-acme\u{0}-1",
            "\u{0}",
            "s-acme-1\n",
            "s-acme-1\r\nX-Injected: 1",
            "\u{1b}[2Js-acme-1",
            "s-acme-1\u{7f}",
            "s-acme-1\u{85}",
            "\t",
        ] {
            cases.push((
                json!({ "session_id": id }).to_string(),
                "session_id",
                CONTROL.into(),
            ));
        }
        cases.push((
            body("end_user", r#""alice\u0000""#),
            "end_user",
            CONTROL.into(),
        ));

        for (text, field, message) in cases {
            assert_eq!(refusal(&text), [(field, message)], "{text}");
        }
    }

    /// One row per accepted body: the body, and the request it is.
    #[test]
    fn each_good_body_is_the_request_it_says() {
        let session = |id: &str| MintRequest {
            session_id: id.to_owned(),
            ..MintRequest::default()
        };
        let cases: Vec<(Value, MintRequest)> = vec![
            (json!({"session_id": "s-acme-1"}), session("s-acme-1")),
            // 255 characters is a valid id, also when they take 510 bytes.
            (
                json!({"session_id": "a".repeat(255)}),
                session(&"a".repeat(255)),
            ),
            (
                json!({"session_id": "é".repeat(255)}),
                session(&"é".repeat(255)),
            ),
            // Nulls are absent values; unknown fields are ignored.
            (
                json!({"session_id": "s", "client_id": null, "end_company_id": null, "end_user": null,
                       "end_user_email": null, "ttl_seconds": null}),
                session("s"),
            ),
            (
                json!({"session_id": "s", "is_admin": true, "scope": "mint", "iss": "evil"}),
                session("s"),
            ),
            // The TTL bounds are inclusive; JSON Schema's integers: 120.0 is one.
            (
                json!({"session_id": "s", "ttl_seconds": 60}),
                MintRequest {
                    ttl_seconds: Some(60),
                    ..session("s")
                },
            ),
            (
                json!({"session_id": "s", "ttl_seconds": 3600}),
                MintRequest {
                    ttl_seconds: Some(3600),
                    ..session("s")
                },
            ),
            (
                json!({"session_id": "s", "ttl_seconds": 120.0}),
                MintRequest {
                    ttl_seconds: Some(120),
                    ..session("s")
                },
            ),
            // Agents as given (duplicates are rule 6's), at most 256 of them.
            (
                json!({"session_id": "s", "allowed_agent_ids": [101.0, 102, 101]}),
                MintRequest {
                    allowed_agent_ids: vec![101, 102, 101],
                    ..session("s")
                },
            ),
            (
                json!({"session_id": "s", "allowed_agent_ids": (1..=256).collect::<Vec<i64>>()}),
                MintRequest {
                    allowed_agent_ids: (1..=256).collect(),
                    ..session("s")
                },
            ),
            (
                json!({"session_id": "s-acme-1", "client_id": "acme", "end_company_id": "contoso",
                       "end_user": "29:1a-teams-user", "end_user_email": "pat@contoso.com"}),
                MintRequest {
                    client_id: Some("acme".into()),
                    end_company_id: Some("contoso".into()),
                    end_user: Some("29:1a-teams-user".into()),
                    end_user_email: Some("pat@contoso.com".into()),
                    ..session("s-acme-1")
                },
            ),
        ];
        for (body, expected) in cases {
            let text = body.to_string();
            assert_eq!(parse(&text).as_ref(), Ok(&expected), "{text}");
        }
    }

    #[test]
    fn every_bad_field_of_one_request_is_listed() {
        let fields = |text: &str| -> Vec<&'static str> {
            refusal(text).into_iter().map(|(field, _)| field).collect()
        };
        let all_wrong = json!({
            "session_id": 5,
            "allowed_agent_ids": "1",
            "client_id": true,
            "end_company_id": [],
            "end_user": {},
            "end_user_email": 5,
            "ttl_seconds": "900",
        });
        assert_eq!(
            fields(&all_wrong.to_string()),
            [
                "allowed_agent_ids",
                "client_id",
                "end_company_id",
                "end_user",
                "end_user_email",
                "session_id",
                "ttl_seconds"
            ]
        );
        let some_wrong = json!({
            "session_id": "",
            "client_id": 5,
            "end_user_email": "not-an-email",
            "allowed_agent_ids": [1, "2"],
            "ttl_seconds": 59,
        });
        assert_eq!(
            fields(&some_wrong.to_string()),
            [
                "allowed_agent_ids",
                "client_id",
                "end_user_email",
                "session_id",
                "ttl_seconds"
            ]
        );
    }

    #[test]
    fn the_ttl_bounds_are_the_ones_given() {
        let bounds = TtlBounds {
            default: 45,
            min: 30,
            max: 120,
        };
        let ttl = |seconds: i64| {
            MintRequest::from_json(json!({"session_id": "s", "ttl_seconds": seconds}), bounds)
        };
        assert_eq!(ttl(30).map(|r| r.ttl_seconds), Ok(Some(30)));
        assert_eq!(ttl(120).map(|r| r.ttl_seconds), Ok(Some(120)));
        let refused = ttl(121).unwrap_err();
        assert_eq!(
            refused.iter().collect::<Vec<_>>(),
            [("ttl_seconds", "must be an integer from 30 to 120")]
        );
        assert!(ttl(29).is_err());
    }

    /// The bounds the schema shows are the configuration's defaults.
    #[test]
    fn the_shipped_configuration_has_the_shipped_bounds() {
        let config = crate::config::Config::load(None, Vec::new()).expect("shipped config");
        assert_eq!(TtlBounds::from(&config.token), TtlBounds::SHIPPED);
    }

    #[test]
    fn emails() {
        assert!(is_plausible_email("a@b.co"));
        assert!(!is_plausible_email("a@b"));
        assert!(!is_plausible_email("@b.co"));
        assert!(!is_plausible_email("a b@c.co"));
        assert!(!is_plausible_email("a@b@c.co"));
        assert!(!is_plausible_email("a@.b.co"));
        assert!(!is_plausible_email("a@b.co."));
    }
}
