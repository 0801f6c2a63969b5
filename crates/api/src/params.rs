//! Request parameters: decoding a query string or form body, and typed, lenient lookup.

use crate::error::ApiError;

/// Decoded `name=value` pairs in the order received.
pub fn decode_form(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Read access to a request's parameters. Names match exactly first, then ignoring ASCII case
/// (callers write `functionName` and `FunctionName` alike).
pub struct Params<'a>(pub &'a [(String, String)]);

impl<'a> Params<'a> {
    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        let exact = self.0.iter().find(|(k, _)| k == name);
        exact
            .or_else(|| self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`.
    ///
    /// # Errors
    /// `MissingParameter` when absent or empty.
    pub fn required(&self, name: &str) -> Result<&'a str, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::MissingParameter(name.to_owned()))
    }

    /// An optional unsigned integer; `code` names the error for a value that is not one.
    ///
    /// # Errors
    /// `InvalidParameter` with `code`.
    pub fn u32(&self, name: &str, code: &'static str) -> Result<Option<u32>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => text.trim().parse().map(Some).map_err(|_| {
                ApiError::invalid(
                    code,
                    format!("{name} must be a non-negative integer, got {text:?}"),
                )
            }),
        }
    }

    /// An optional value from a fixed set (compared ignoring ASCII case); returns the index of
    /// the match.
    ///
    /// # Errors
    /// `InvalidParameter` with `code`, listing the accepted values.
    pub fn choice(
        &self,
        name: &str,
        choices: &[&str],
        code: &'static str,
    ) -> Result<Option<usize>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(text) => choices
                .iter()
                .position(|c| c.eq_ignore_ascii_case(text))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::invalid(
                        code,
                        format!(
                            "{name} {text:?} is invalid; use one of: {}",
                            choices.join(", ")
                        ),
                    )
                }),
        }
    }

    /// Environment variables from dotted parameters
    /// (`environment.variables.0.key=K&environment.variables.0.value=V`) or from a JSON value
    /// of `environment` (`{"variables":[{"key":"K","value":"V"}]}`). `None` when not given.
    ///
    /// # Errors
    /// `InvalidParameterValue.Environment` for a malformed list.
    pub fn environment(&self, prefix: &str) -> Result<Option<Vec<(String, String)>>, ApiError> {
        if let Some(json) = self.get(prefix) {
            return parse_environment_json(json).map(Some);
        }
        let mut slots: std::collections::BTreeMap<u32, (Option<String>, Option<String>)> =
            Default::default();
        let dotted = format!("{prefix}.variables.").to_ascii_lowercase();
        for (name, value) in self.0 {
            let lower = name.to_ascii_lowercase();
            let Some(rest) = lower.strip_prefix(&dotted) else {
                continue;
            };
            let (index, field) = rest.split_once('.').ok_or_else(|| bad_environment(name))?;
            let index: u32 = index.parse().map_err(|_| bad_environment(name))?;
            let slot = slots.entry(index).or_default();
            match field {
                "key" => slot.0 = Some(value.clone()),
                "value" => slot.1 = Some(value.clone()),
                _ => return Err(bad_environment(name)),
            }
        }
        if slots.is_empty() {
            return Ok(None);
        }
        slots
            .into_iter()
            .map(|(index, (key, value))| match key {
                Some(key) => Ok((key, value.unwrap_or_default())),
                None => Err(ApiError::invalid(
                    "InvalidParameterValue.Environment",
                    format!("environment variable {index} has a value but no key"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn bad_environment(name: &str) -> ApiError {
    ApiError::invalid(
        "InvalidParameterValue.Environment",
        format!(
            "parameter {name} is not understood; use environment.variables.N.key and \
             environment.variables.N.value"
        ),
    )
}

fn parse_environment_json(json: &str) -> Result<Vec<(String, String)>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "InvalidParameterValue.Environment",
            "environment must be {\"variables\": [{\"key\": ..., \"value\": ...}]}",
        )
    };
    let value: serde_json::Value = serde_json::from_str(json).map_err(|_| bad())?;
    let field = |object: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        object
            .as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let variables = field(&value, "variables").ok_or_else(bad)?;
    let list = variables.as_array().ok_or_else(bad)?;
    list.iter()
        .map(|entry| {
            let key = field(entry, "key").and_then(|k| k.as_str().map(str::to_owned));
            let value = field(entry, "value").map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
            Ok((key.ok_or_else(bad)?, value.unwrap_or_default()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn looks_up_names_ignoring_case() {
        let list = pairs(&[("FunctionName", "a"), ("functionName", "b")]);
        let params = Params(&list);
        assert_eq!(params.get("functionName"), Some("b"));
        assert_eq!(params.get("FUNCTIONNAME"), Some("a"));
        assert!(params.required("missing").is_err());
    }

    #[test]
    fn reads_dotted_and_json_environments() {
        let list = pairs(&[
            ("environment.variables.1.key", "B"),
            ("environment.variables.1.value", "2"),
            ("environment.variables.0.key", "A"),
            ("environment.variables.0.value", "1"),
        ]);
        let env = Params(&list)
            .environment("environment")
            .expect("valid")
            .expect("given");
        assert_eq!(
            env,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );

        let list = pairs(&[("environment", r#"{"Variables":[{"Key":"K","Value":"V"}]}"#)]);
        let env = Params(&list)
            .environment("environment")
            .expect("valid")
            .expect("given");
        assert_eq!(env, vec![("K".into(), "V".into())]);

        let list = pairs(&[("environment.variables.0.value", "1")]);
        assert!(Params(&list).environment("environment").is_err());
        let none = pairs(&[]);
        assert!(
            Params(&none)
                .environment("environment")
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn decodes_plus_and_percent() {
        let decoded = decode_form(b"a=1+2&b=%7B%22x%22%3A1%7D");
        assert_eq!(decoded, pairs(&[("a", "1 2"), ("b", "{\"x\":1}")]));
    }
}
