//! An action's parameters as a JSON object, read field by field.
//!
//! Each accessor removes the field it reads; [`Input::finish`] then refuses whatever is left,
//! so a misspelt parameter is an `UnknownParameter` error instead of being silently ignored.
//! Values that came from a query string or form body are strings: numbers and booleans are
//! parsed from them.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The parameters of one action.
pub struct Input {
    fields: Map<String, Value>,
}

impl Input {
    /// Wraps an object.
    pub fn new(fields: Map<String, Value>) -> Input {
        Input { fields }
    }

    /// Removes and returns a raw field.
    pub fn value(&mut self, name: &str) -> Option<Value> {
        self.fields.remove(name).filter(|v| !v.is_null())
    }

    /// A string field (a number is taken as its decimal text).
    ///
    /// # Errors
    /// `InvalidParameterValue.<name>` for an object, array or boolean.
    pub fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.value(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(_) => Err(invalid(name, format!("{name} must be a string"))),
        }
    }

    /// A required, non-empty string field.
    ///
    /// # Errors
    /// `MissingParameter` or as [`Input::string`].
    pub fn required(&mut self, name: &str) -> Result<String, ApiError> {
        self.string(name)?
            .filter(|text| !text.is_empty())
            .ok_or_else(|| ApiError::MissingParameter(name.to_owned()))
    }

    /// An unsigned integer field, from a number or a numeric string.
    ///
    /// # Errors
    /// `InvalidParameterValue.<name>` when it is not a non-negative integer below 2^32.
    pub fn u32(&mut self, name: &str) -> Result<Option<u32>, ApiError> {
        let bad = || invalid(name, format!("{name} must be a non-negative integer"));
        match self.value(name) {
            None => Ok(None),
            Some(Value::Number(number)) => {
                let n = number.as_u64().ok_or_else(bad)?;
                u32::try_from(n).map(Some).map_err(|_| bad())
            }
            Some(Value::String(text)) => text.trim().parse().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    /// A `TRUE`/`FALSE` field (also JSON booleans).
    ///
    /// # Errors
    /// `InvalidParameterValue.<name>` for anything else.
    pub fn flag(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.value(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(Value::String(text)) if text.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(text)) if text.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(_) => Err(invalid(name, format!("{name} must be TRUE or FALSE"))),
        }
    }

    /// A nested object, as its own `Input`.
    ///
    /// # Errors
    /// `InvalidParameterValue.<name>` when it is not an object.
    pub fn object(&mut self, name: &str) -> Result<Option<Input>, ApiError> {
        match self.value(name) {
            None => Ok(None),
            Some(Value::Object(fields)) => Ok(Some(Input::new(fields))),
            Some(_) => Err(invalid(name, format!("{name} must be an object"))),
        }
    }

    /// A list of objects, each as its own `Input`.
    ///
    /// # Errors
    /// `InvalidParameterValue.<name>` when it is not a list of objects.
    pub fn objects(&mut self, name: &str) -> Result<Vec<Input>, ApiError> {
        let bad = || invalid(name, format!("{name} must be a list of objects"));
        match self.value(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::Object(fields) => Ok(Input::new(fields)),
                    _ => Err(bad()),
                })
                .collect(),
            Some(_) => Err(bad()),
        }
    }

    /// A list of strings.
    ///
    /// # Errors
    /// `InvalidParameterValue.<name>` when it is not a list of strings.
    pub fn strings(&mut self, name: &str) -> Result<Vec<String>, ApiError> {
        let bad = || invalid(name, format!("{name} must be a list of strings"));
        match self.value(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text),
                    _ => Err(bad()),
                })
                .collect(),
            Some(_) => Err(bad()),
        }
    }

    /// Drops fields that this node accepts and has no use for.
    pub fn ignore(&mut self, names: &[&str]) {
        for name in names {
            self.fields.remove(*name);
        }
    }

    /// Refuses fields this node does not support, when they carry a value.
    ///
    /// # Errors
    /// `UnsupportedOperation` naming the field.
    pub fn unsupported(&mut self, names: &[&str]) -> Result<(), ApiError> {
        for name in names {
            let given = self.value(name).is_some_and(|v| match v {
                Value::Array(items) => !items.is_empty(),
                Value::Object(fields) => !fields.is_empty(),
                Value::String(text) => !text.is_empty(),
                _ => true,
            });
            if given {
                return Err(ApiError::Unsupported(format!(
                    "{name} is not supported by Nimbus"
                )));
            }
        }
        Ok(())
    }

    /// Checks that every field was read.
    ///
    /// # Errors
    /// `UnknownParameter` naming the first field left.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.fields.keys().next() {
            None => Ok(()),
            Some(name) => Err(ApiError::UnknownParameter(name.clone())),
        }
    }
}

fn invalid(name: &str, message: String) -> ApiError {
    ApiError::InvalidParameter {
        code: invalid_code(name),
        message,
    }
}

/// `InvalidParameterValue.<Name>` for the fields SCF names in its codes, else the general code.
fn invalid_code(name: &str) -> &'static str {
    match name {
        "FunctionName" => "InvalidParameterValue.FunctionName",
        "MemorySize" => "InvalidParameterValue.MemorySize",
        "Timeout" => "InvalidParameterValue.Timeout",
        "Limit" => "InvalidParameterValue.Limit",
        "Offset" => "InvalidParameterValue.Offset",
        "Environment" | "Variables" => "InvalidParameterValue.Environment",
        "Code" | "ZipFile" => "InvalidParameterValue.Code",
        "Filter" | "Filters" => "InvalidParameterValue.Filters",
        _ => "InvalidParameterValue",
    }
}

/// Builds a JSON object from flattened `a.b.0.c=v` pairs (the GET and form encodings).
/// Numeric path segments make lists.
///
/// # Errors
/// `InvalidParameterValue` when two names disagree on a field's shape.
pub fn unflatten(pairs: &[(String, String)]) -> Result<Map<String, Value>, ApiError> {
    let mut root = Value::Object(Map::new());
    for (name, value) in pairs {
        let segments: Vec<&str> = name.split('.').collect();
        insert(&mut root, &segments, value).ok_or_else(|| {
            ApiError::invalid(
                "InvalidParameterValue",
                format!("parameter {name} conflicts with another"),
            )
        })?;
    }
    match root {
        Value::Object(fields) => Ok(fields),
        _ => Ok(Map::new()),
    }
}

fn insert(node: &mut Value, segments: &[&str], value: &str) -> Option<()> {
    let (first, rest) = segments.split_first()?;
    if rest.is_empty() {
        return set(node, first, Value::String(value.to_owned()));
    }
    let next_is_index = rest[0].parse::<usize>().is_ok();
    let child = child(node, first, next_is_index)?;
    insert(child, rest, value)
}

fn set(node: &mut Value, key: &str, value: Value) -> Option<()> {
    match node {
        Value::Object(fields) => {
            fields.insert(key.to_owned(), value);
            Some(())
        }
        Value::Array(items) => {
            let index: usize = key.parse().ok()?;
            if items.len() <= index {
                items.resize(index + 1, Value::Null);
            }
            items[index] = value;
            Some(())
        }
        _ => None,
    }
}

fn child<'a>(node: &'a mut Value, key: &str, wants_list: bool) -> Option<&'a mut Value> {
    let empty = if wants_list {
        Value::Array(Vec::new())
    } else {
        Value::Object(Map::new())
    };
    match node {
        Value::Object(fields) => Some(fields.entry(key.to_owned()).or_insert(empty)),
        Value::Array(items) => {
            let index: usize = key.parse().ok()?;
            // Bound the list a query string can make: SCF's lists are short.
            if index > 1000 {
                return None;
            }
            if items.len() <= index {
                items.resize(index + 1, Value::Null);
            }
            if items[index].is_null() {
                items[index] = empty;
            }
            Some(&mut items[index])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unflattens_nested_lists_and_objects() {
        let fields = unflatten(&pairs(&[
            ("FunctionName", "f"),
            ("Environment.Variables.0.Key", "A"),
            ("Environment.Variables.0.Value", "1"),
            ("Environment.Variables.1.Key", "B"),
            ("Code.ZipFile", "UEs="),
        ]))
        .expect("valid");
        assert_eq!(
            Value::Object(fields),
            json!({
                "FunctionName": "f",
                "Environment": {"Variables": [{"Key": "A", "Value": "1"}, {"Key": "B"}]},
                "Code": {"ZipFile": "UEs="},
            })
        );
        assert!(unflatten(&pairs(&[("A", "1"), ("A.B", "2")])).is_err());
    }

    #[test]
    fn reads_typed_fields_and_refuses_leftovers() {
        let fields =
            json!({"Limit": "20", "Offset": 3, "ShowCode": "TRUE", "Name": "x", "Bogus": 1});
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        let mut input = Input::new(fields);
        assert_eq!(input.u32("Limit").expect("valid"), Some(20));
        assert_eq!(input.u32("Offset").expect("valid"), Some(3));
        assert_eq!(input.flag("ShowCode").expect("valid"), Some(true));
        assert_eq!(input.required("Name").expect("valid"), "x");
        assert!(input.required("Missing").is_err());
        match input.finish() {
            Err(ApiError::UnknownParameter(name)) => assert_eq!(name, "Bogus"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn refuses_wrong_types() {
        let Value::Object(fields) = json!({"Limit": "x", "MemorySize": -1, "Code": "text"}) else {
            unreachable!()
        };
        let mut input = Input::new(fields);
        assert!(input.u32("Limit").is_err());
        assert!(matches!(
            input.u32("MemorySize"),
            Err(ApiError::InvalidParameter {
                code: "InvalidParameterValue.MemorySize",
                ..
            })
        ));
        assert!(input.object("Code").is_err());
    }
}
