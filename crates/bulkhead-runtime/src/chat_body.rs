//! A Chat Completions request body as the client sent it, held as its top-level fields with
//! each value's JSON text untouched.
//!
//! Why: the plain gateway forwards the client's body to an OpenAI-compatible upstream with only
//! `model` replaced. Parsing it into a `serde_json::Value` built every message as a tree (and,
//! with `preserve_order`, which cedar-policy turns on for the whole build, hashed every key with
//! SipHash) only to write it back out: the request path's largest piece of JSON work. Here a
//! message is scanned once and copied as text. A value also reaches the upstream exactly as the
//! client wrote it (a number keeps its spelling). Providers that need the request translated
//! get the whole tree from [`ChatBody::to_value`].

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// Why a body is not a Chat Completions request.
#[derive(Debug, thiserror::Error)]
pub enum ChatBodyError {
    /// Not JSON at all.
    #[error("{0}")]
    Malformed(serde_json::Error),
    /// JSON, but not a request: the message says what is wrong.
    #[error("{0}")]
    Invalid(&'static str),
}

/// The top-level fields of a request object, in the client's order. A key given twice keeps its
/// first place and its last value, as `serde_json::Map` does.
#[derive(Debug, Clone)]
pub struct ChatBody {
    fields: Fields,
    model: String,
}

impl ChatBody {
    /// Reads a request body: an object whose `model` is a string and whose `messages` is an
    /// array.
    pub fn parse(body: &[u8]) -> Result<Self, ChatBodyError> {
        let fields = match serde_json::from_slice::<Fields>(body) {
            Ok(fields) => fields,
            // Valid JSON of another shape is a request without a model, as it always answered;
            // otherwise the syntax error is the one to report.
            Err(_) => {
                return Err(match serde_json::from_slice::<de::IgnoredAny>(body) {
                    Ok(_) => ChatBodyError::Invalid("model must be a string"),
                    Err(syntax) => ChatBodyError::Malformed(syntax),
                });
            }
        };
        let model = as_string(fields.get("model"))
            .ok_or(ChatBodyError::Invalid("model must be a string"))?;
        if !fields
            .get("messages")
            .is_some_and(|text| text.starts_with('['))
        {
            return Err(ChatBodyError::Invalid("messages must be an array"));
        }
        Ok(Self { fields, model })
    }

    /// The `model` the client asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The JSON text of field `key`, if the client sent it.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.fields.get(key)
    }

    /// Whether the client asked for a stream (`"stream": true`).
    pub fn wants_stream(&self) -> bool {
        self.raw("stream") == Some("true")
    }

    /// Sets field `key` to `value`, in its place if the client sent it, else at the end.
    pub fn set(&mut self, key: &str, value: &Value) -> Result<(), serde_json::Error> {
        self.fields
            .put(key, serde_json::value::to_raw_value(value)?);
        if key == "model"
            && let Some(model) = as_string(self.raw("model"))
        {
            self.model = model;
        }
        Ok(())
    }

    /// The JSON text to send on: the client's fields, in its order, as it wrote them but for
    /// those [`set`](Self::set) since.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// The whole request as a tree, for a provider whose request is translated from it.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        let mut map = serde_json::Map::with_capacity(self.fields.0.len());
        for (key, value) in &self.fields.0 {
            map.insert(key.clone(), serde_json::from_str(value.get())?);
        }
        Ok(Value::Object(map))
    }
}

/// The string a field's JSON text spells, if it is one.
fn as_string(text: Option<&str>) -> Option<String> {
    text.and_then(|text| serde_json::from_str::<String>(text).ok())
}

impl Serialize for ChatBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.0.len()))?;
        for (key, value) in &self.fields.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// The fields of a JSON object, each value kept as its text.
#[derive(Debug, Clone)]
struct Fields(Vec<(String, Box<RawValue>)>);

impl Fields {
    /// The JSON text of field `key`.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.get())
    }

    /// Gives field `key` the value `value`: in its place if present, else at the end.
    fn put<K: AsRef<str> + Into<String>>(&mut self, key: K, value: Box<RawValue>) {
        match self.0.iter_mut().find(|(name, _)| name == key.as_ref()) {
            Some((_, old)) => *old = value,
            None => self.0.push((key.into(), value)),
        }
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;

        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Fields(Vec::with_capacity(map.size_hint().unwrap_or(8)));
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<Box<RawValue>>()?;
                    fields.put(key, value);
                }
                Ok(fields)
            }
        }

        deserializer.deserialize_map(FieldsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_set_field_changes_and_every_other_value_passes_as_written() {
        let sent = br#"{"model":"fast","temperature":1.50,"messages":[{"role":"user","content":"a \"b\" {{ c }}"}],"n":1e0,"x-extra":{"k":[1, 2]}}"#;
        let mut body = ChatBody::parse(sent).unwrap();
        assert_eq!(body.model(), "fast");
        body.set("model", &json!("gpt-4o-mini")).unwrap();
        assert_eq!(body.model(), "gpt-4o-mini");
        assert_eq!(
            String::from_utf8(body.to_json().unwrap()).unwrap(),
            r#"{"model":"gpt-4o-mini","temperature":1.50,"messages":[{"role":"user","content":"a \"b\" {{ c }}"}],"n":1e0,"x-extra":{"k":[1, 2]}}"#
        );
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_its_last_value_as_a_parsed_value_would() {
        let sent = br#"{"model":"a","messages":[],"model":"b","stream":false}"#;
        let body = ChatBody::parse(sent).unwrap();
        assert_eq!(body.model(), "b");
        let parsed: Value = serde_json::from_slice(sent).unwrap();
        assert_eq!(body.to_value().unwrap(), parsed);
        assert_eq!(
            serde_json::to_string(&parsed).unwrap(),
            String::from_utf8(body.to_json().unwrap()).unwrap()
        );
    }

    #[test]
    fn a_set_of_a_field_the_client_left_out_goes_at_the_end() {
        let mut body = ChatBody::parse(br#"{"model":"m","messages":[]}"#).unwrap();
        assert!(!body.wants_stream());
        body.set("stream", &json!(true)).unwrap();
        body.set("stream_options", &json!({"include_usage": true}))
            .unwrap();
        assert!(body.wants_stream());
        assert_eq!(
            String::from_utf8(body.to_json().unwrap()).unwrap(),
            r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn what_is_not_a_request_is_refused_with_the_reason() {
        let invalid = |sent: &[u8]| match ChatBody::parse(sent) {
            Err(ChatBodyError::Invalid(reason)) => reason,
            other => panic!("{:?} answered {other:?}", String::from_utf8_lossy(sent)),
        };
        assert_eq!(invalid(b"[1, 2]"), "model must be a string");
        assert_eq!(invalid(b"\"fast\""), "model must be a string");
        assert_eq!(invalid(br#"{"messages":[]}"#), "model must be a string");
        assert_eq!(
            invalid(br#"{"model":7,"messages":[]}"#),
            "model must be a string"
        );
        assert_eq!(invalid(br#"{"model":"m"}"#), "messages must be an array");
        assert_eq!(
            invalid(br#"{"model":"m","messages":"hi"}"#),
            "messages must be an array"
        );
        assert!(matches!(
            ChatBody::parse(br#"{"model":"m","messages":[}"#),
            Err(ChatBodyError::Malformed(_))
        ));
        assert!(matches!(
            ChatBody::parse(b"not json"),
            Err(ChatBodyError::Malformed(_))
        ));
    }

    #[test]
    fn whitespace_around_values_does_not_hide_them() {
        let body =
            ChatBody::parse(b"{ \"model\" : \"m\" ,\n \"messages\" :\t[ ] , \"stream\" : true }")
                .unwrap();
        assert!(body.wants_stream());
        assert_eq!(body.raw("messages"), Some("[ ]"));
    }
}
