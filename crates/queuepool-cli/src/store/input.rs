//! What a client sends: the item body and the page query, checked field by field.
//!
//! Bodies are read as JSON values and checked here rather than deserialized into a
//! struct, so that a 422 lists every invalid field at once, each once, in words a
//! client understands (`must be a string`), never a deserializer's
//! (`expected struct ItemIn with 3 elements`, `Cannot parse "abc" to a i64`).

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Longest item name, in characters.
pub const NAME_MAX_CHARS: usize = 200;
/// Largest page of `GET /items`.
pub const LIST_MAX_LIMIT: i64 = 100;

/// The body of `POST /items` and `PUT /items/{id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ItemIn {
    /// 1 to 200 characters, no NUL character.
    #[schema(example = "Widget", min_length = 1, max_length = 200)]
    pub name: String,
    /// Free text, optional, no NUL character.
    #[serde(default)]
    #[schema(example = "A small widget")]
    pub description: Option<String>,
    /// Zero or more.
    #[schema(example = 9.99, minimum = 0.0)]
    pub price: f64,
}

/// A field that failed validation, as listed in a 422 response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's name (`name`, `price`, `limit`...), or `body` for the body as a whole.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A validated item, ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// 1 to 200 characters.
    pub name: String,
    /// Optional.
    pub description: Option<String>,
    /// Finite and >= 0.
    pub price: f64,
    /// Creation time, set by the service so that every backend stores the same value.
    pub created_at: DateTime<Utc>,
}

/// The text checks every backend needs: PostgreSQL rejects a NUL in text (`invalid
/// byte sequence for encoding "UTF8": 0x00`, a 500 if it reached the database), SQLite
/// and MySQL would store it; so no backend gets one.
fn check_text(text: &str) -> Result<(), String> {
    if text.contains('\0') {
        Err("must not contain the NUL character (\\u0000)".to_owned())
    } else {
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), String> {
    check_text(name)?;
    let chars = name.chars().count();
    if chars == 0 || chars > NAME_MAX_CHARS {
        return Err(format!(
            "must be 1 to {NAME_MAX_CHARS} characters long (got {chars})"
        ));
    }
    Ok(())
}

fn check_price(price: f64) -> Result<(), String> {
    if price.is_finite() && price >= 0.0 {
        Ok(())
    } else {
        Err("must be a number >= 0".to_owned())
    }
}

/// Collects at most one error per field.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.0.push(FieldError::new(field, message));
                None
            }
        }
    }
}

/// Microseconds: what every backend's timestamp type keeps.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl ItemIn {
    /// Checks every field; the error lists each invalid one once.
    pub fn validate(self) -> Result<NewItem, Vec<FieldError>> {
        let mut errors = Errors::default();
        errors.check("name", check_name(&self.name));
        if let Some(description) = &self.description {
            errors.check("description", check_text(description));
        }
        errors.check("price", check_price(self.price));
        if !errors.0.is_empty() {
            return Err(errors.0);
        }
        Ok(NewItem {
            name: self.name,
            description: self.description,
            price: self.price,
            created_at: now(),
        })
    }

    /// Checks a JSON body: its shape (an object; `name` a string, `description` a
    /// string or null, `price` a number) and then the values, every field at once.
    /// Keys other than these three are ignored.
    pub fn from_json(body: &Value) -> Result<NewItem, Vec<FieldError>> {
        let Some(object) = body.as_object() else {
            return Err(vec![FieldError::new(
                "body",
                format!(
                    "must be a JSON object with \"name\", \"price\" and optionally \
                     \"description\" (got {})",
                    kind(body)
                ),
            )]);
        };
        let mut errors = Errors::default();
        let name = errors.check(
            "name",
            match object.get("name") {
                None => Err("is required".to_owned()),
                Some(Value::String(s)) => check_name(s).map(|()| s.clone()),
                Some(other) => Err(format!("must be a string (got {})", kind(other))),
            },
        );
        let description = errors.check(
            "description",
            match object.get("description") {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => check_text(s).map(|()| Some(s.clone())),
                Some(other) => Err(format!("must be a string or null (got {})", kind(other))),
            },
        );
        let price = errors.check(
            "price",
            match object.get("price") {
                None => Err("is required".to_owned()),
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(p) => check_price(p).map(|()| p),
                    None => Err("must be a number >= 0".to_owned()),
                },
                Some(other) => Err(format!("must be a number (got {})", kind(other))),
            },
        );
        match (name, description, price) {
            (Some(name), Some(description), Some(price)) if errors.0.is_empty() => Ok(NewItem {
                name,
                description,
                price,
                created_at: now(),
            }),
            _ => Err(errors.0),
        }
    }
}

/// A JSON value's kind, as a client would name it.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The query string of `GET /items` (for the OpenAPI document; requests are read by
/// [`Page::from_query`]).
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1 to 100 (default 100).
    pub limit: Option<i64>,
    /// Items to skip, >= 0 (default 0).
    pub offset: Option<i64>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1..=100.
    pub limit: i64,
    /// >= 0.
    pub offset: i64,
}

/// An integer given as text (a query parameter, a path segment), or why not.
pub fn parse_integer(text: &str) -> Result<i64, String> {
    text.parse::<i64>().map_err(|_| {
        let shown: String = text.chars().take(40).collect();
        format!("must be a whole number (got {shown:?})")
    })
}

impl Page {
    /// Reads `limit` and `offset` from a raw query string (other parameters are
    /// ignored), applies the defaults and checks the bounds; every bad one is listed.
    pub fn from_query(query: Option<&str>) -> Result<Page, Vec<FieldError>> {
        let (mut limit, mut offset) = (Vec::new(), Vec::new());
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "limit" => limit.push(value.into_owned()),
                "offset" => offset.push(value.into_owned()),
                _ => {}
            }
        }
        let one = |values: Vec<String>| -> Result<Option<i64>, String> {
            match values.as_slice() {
                [] => Ok(None),
                [value] => parse_integer(value).map(Some),
                _ => Err("must be given once".to_owned()),
            }
        };
        let mut errors = Errors::default();
        let limit = errors.check("limit", one(limit));
        let offset = errors.check("offset", one(offset));
        let params = ListParams {
            limit: limit.flatten(),
            offset: offset.flatten(),
        };
        match params.validate() {
            Ok(page) if errors.0.is_empty() => Ok(page),
            Ok(_) => Err(errors.0),
            Err(range) => {
                // A parameter that did not parse has no range error to add.
                let named: Vec<String> = errors.0.iter().map(|e| e.field.clone()).collect();
                errors
                    .0
                    .extend(range.into_iter().filter(|e| !named.contains(&e.field)));
                errors.0.sort_by_key(|e| e.field != "limit");
                Err(errors.0)
            }
        }
    }
}

impl ListParams {
    /// Applies the defaults and checks the bounds.
    pub fn validate(self) -> Result<Page, Vec<FieldError>> {
        let mut errors = Vec::new();
        let limit = self.limit.unwrap_or(LIST_MAX_LIMIT);
        if !(1..=LIST_MAX_LIMIT).contains(&limit) {
            errors.push(FieldError::new(
                "limit",
                format!("must be between 1 and {LIST_MAX_LIMIT} (got {limit})"),
            ));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            errors.push(FieldError::new(
                "offset",
                format!("must be >= 0 (got {offset})"),
            ));
        }
        if errors.is_empty() {
            Ok(Page { limit, offset })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn item(name: &str, price: f64) -> ItemIn {
        ItemIn {
            name: name.to_owned(),
            description: None,
            price,
        }
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn name_length_is_counted_in_characters() {
        assert!(item(&"é".repeat(200), 0.0).validate().is_ok());
        let errors = item(&"é".repeat(201), 0.0).validate().unwrap_err();
        assert_eq!(errors[0].field, "name");
        assert_eq!(item("", 1.0).validate().unwrap_err()[0].field, "name");
    }

    #[test]
    fn negative_price_is_rejected_and_every_bad_field_is_listed() {
        assert!(item("free", 0.0).validate().is_ok());
        let errors = item("", -0.01).validate().unwrap_err();
        assert_eq!(fields(&errors), ["name", "price"]);
    }

    #[test]
    fn nul_in_name_or_description_is_rejected_naming_the_field() {
        let errors = ItemIn::from_json(&json!({"name": "a\u{0}b", "price": 1})).unwrap_err();
        assert_eq!(fields(&errors), ["name"]);
        assert!(errors[0].message.contains("NUL"), "{errors:?}");
        let errors = ItemIn::from_json(&json!({"name": "ok", "description": "\u{0}", "price": 1}))
            .unwrap_err();
        assert_eq!(fields(&errors), ["description"]);
        let mut typed = item("ok", 1.0);
        typed.description = Some("x\0".to_owned());
        assert_eq!(fields(&typed.validate().unwrap_err()), ["description"]);
    }

    #[test]
    fn every_wrong_field_of_a_body_is_listed_once_without_rust_words() {
        let errors =
            ItemIn::from_json(&json!({"name": 5, "description": [], "price": "x"})).unwrap_err();
        assert_eq!(fields(&errors), ["name", "description", "price"]);
        for e in &errors {
            assert!(!e.message.contains(&e.field), "field repeated: {e:?}");
            for word in ["struct", "ItemIn", "i64", "f64", "invalid type"] {
                assert!(!e.message.contains(word), "{word} in {e:?}");
            }
        }
        assert_eq!(
            fields(&ItemIn::from_json(&json!({})).unwrap_err()),
            ["name", "price"]
        );
        let array = ItemIn::from_json(&json!(["a", 1])).unwrap_err();
        assert_eq!(fields(&array), ["body"]);
        assert!(array[0].message.contains("an array"), "{array:?}");
        let ok = ItemIn::from_json(&json!({"name": "w", "price": 2, "extra": true})).unwrap();
        assert_eq!(
            (ok.name.as_str(), ok.description, ok.price),
            ("w", None, 2.0)
        );
    }

    #[test]
    fn page_defaults_bounds_and_unparsable_values() {
        assert_eq!(
            Page::from_query(None).unwrap(),
            Page {
                limit: 100,
                offset: 0
            }
        );
        assert_eq!(
            Page::from_query(Some("limit=5&offset=2&x=y")).unwrap(),
            Page {
                limit: 5,
                offset: 2
            }
        );
        let errors = Page::from_query(Some("limit=101&offset=-1")).unwrap_err();
        assert_eq!(fields(&errors), ["limit", "offset"]);
        let errors = Page::from_query(Some("limit=abc&offset=-1")).unwrap_err();
        assert_eq!(fields(&errors), ["limit", "offset"]);
        assert_eq!(errors[0].message, "must be a whole number (got \"abc\")");
        let errors = Page::from_query(Some("offset=x&limit=0")).unwrap_err();
        assert_eq!(fields(&errors), ["limit", "offset"]);
        let errors = Page::from_query(Some("limit=1&limit=2")).unwrap_err();
        assert_eq!(fields(&errors), ["limit"]);
    }
}
