//! `DynamicValue` encoding: Terraform's msgpack form (with null, unknown and refined
//! unknown values) and the JSON form used by stored state.
//!
//! Terraform encodes an object as a map keyed by attribute name, a list or set as an
//! array, `null` as msgpack nil, and an unknown value as a msgpack extension. Plain
//! unknowns use extension type 0; Terraform 1.6+ sends *refined* unknowns (known prefix,
//! not null, ...) as other extension types. Any extension decodes to [`Value::Unknown`];
//! refinements are not needed by this provider and are dropped.

use std::collections::BTreeMap;

/// A Terraform value, as far as this provider's schemas need.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// Not known until apply.
    Unknown,
    /// A bool.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    String(String),
    /// A list, set or tuple.
    List(Vec<Value>),
    /// An object or map.
    Object(BTreeMap<String, Value>),
}

/// A value that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The msgpack bytes are malformed.
    #[error("malformed msgpack value: {0}")]
    Msgpack(String),
    /// The JSON bytes are malformed.
    #[error("malformed JSON value: {0}")]
    Json(#[source] serde_json::Error),
    /// A value of a kind this provider never uses.
    #[error("unexpected {0} in a value")]
    Unexpected(&'static str),
    /// Encoding failed (should not happen with an in-memory buffer).
    #[error("cannot encode value: {0}")]
    Encode(String),
}

/// The msgpack extension Terraform uses for a plain unknown value.
const UNKNOWN_EXT: i8 = 0;

impl Value {
    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// True for [`Value::Unknown`].
    pub fn is_unknown(&self) -> bool {
        matches!(self, Value::Unknown)
    }

    /// True when neither null nor unknown (an object counts even if fields are unknown).
    pub fn is_known(&self) -> bool {
        !self.is_null() && !self.is_unknown()
    }

    /// The string, if this is a known string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is a known bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The elements, if this is a known list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// An attribute of an object (`Null` when absent or when this is not an object).
    pub fn get(&self, name: &str) -> &Value {
        match self {
            Value::Object(m) => m.get(name).unwrap_or(&Value::Null),
            _ => &Value::Null,
        }
    }

    /// A string value, or null for `None`.
    pub fn string_or_null(s: Option<impl Into<String>>) -> Value {
        s.map_or(Value::Null, |s| Value::String(s.into()))
    }

    /// Decodes a `DynamicValue`: msgpack when present, else JSON, else null.
    pub fn from_dynamic(msgpack: &[u8], json: &[u8]) -> Result<Value, CodecError> {
        if !msgpack.is_empty() {
            Value::from_msgpack(msgpack)
        } else if !json.is_empty() {
            Value::from_json(json)
        } else {
            Ok(Value::Null)
        }
    }

    /// Decodes Terraform's msgpack encoding.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Value, CodecError> {
        let mut rd = bytes;
        let v =
            rmpv::decode::read_value(&mut rd).map_err(|e| CodecError::Msgpack(e.to_string()))?;
        from_rmpv(v)
    }

    /// Decodes the JSON encoding (no unknowns can occur in it).
    pub fn from_json(bytes: &[u8]) -> Result<Value, CodecError> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(CodecError::Json)?;
        Ok(from_serde(v))
    }

    /// Encodes as Terraform's msgpack.
    pub fn to_msgpack(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &to_rmpv(self))
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        Ok(out)
    }
}

fn from_rmpv(v: rmpv::Value) -> Result<Value, CodecError> {
    Ok(match v {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(b) => Value::Bool(b),
        rmpv::Value::Integer(i) => match i.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(i.as_f64().unwrap_or(f64::MAX)),
        },
        rmpv::Value::F32(f) => Value::Float(f64::from(f)),
        rmpv::Value::F64(f) => Value::Float(f),
        rmpv::Value::String(s) => match s.into_str() {
            Some(s) => Value::String(s),
            None => return Err(CodecError::Unexpected("non-UTF-8 string")),
        },
        rmpv::Value::Binary(_) => return Err(CodecError::Unexpected("binary")),
        rmpv::Value::Array(a) => {
            Value::List(a.into_iter().map(from_rmpv).collect::<Result<_, _>>()?)
        }
        rmpv::Value::Map(m) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let k = match k {
                    rmpv::Value::String(s) => s
                        .into_str()
                        .ok_or(CodecError::Unexpected("non-UTF-8 key"))?,
                    _ => return Err(CodecError::Unexpected("non-string map key")),
                };
                out.insert(k, from_rmpv(v)?);
            }
            Value::Object(out)
        }
        // Type 0 is a plain unknown; any other type is a refined unknown.
        rmpv::Value::Ext(_, _) => Value::Unknown,
    })
}

fn to_rmpv(v: &Value) -> rmpv::Value {
    match v {
        Value::Null => rmpv::Value::Nil,
        Value::Unknown => rmpv::Value::Ext(UNKNOWN_EXT, vec![0]),
        Value::Bool(b) => rmpv::Value::Boolean(*b),
        Value::Int(i) => rmpv::Value::from(*i),
        Value::Float(f) => rmpv::Value::F64(*f),
        Value::String(s) => rmpv::Value::from(s.as_str()),
        Value::List(l) => rmpv::Value::Array(l.iter().map(to_rmpv).collect()),
        Value::Object(m) => rmpv::Value::Map(
            m.iter()
                .map(|(k, v)| (rmpv::Value::from(k.as_str()), to_rmpv(v)))
                .collect(),
        ),
    }
}

fn from_serde(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(s),
        serde_json::Value::Array(a) => Value::List(a.into_iter().map(from_serde).collect()),
        serde_json::Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, from_serde(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(pairs: &[(&str, Value)]) -> Value {
        Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn round_trips_objects_with_null_and_unknown() {
        let v = obj(&[
            ("id", Value::Unknown),
            ("source", Value::String("a/b:1".into())),
            ("source_digest", Value::Null),
            ("delete_layers", Value::Bool(true)),
            ("list", Value::List(vec![Value::String("x".into())])),
        ]);
        let bytes = v.to_msgpack().unwrap();
        assert_eq!(Value::from_msgpack(&bytes).unwrap(), v);
    }

    #[test]
    fn unknown_is_fixext1_type_zero() {
        // cty encodes an unknown as fixext1 (0xd4), type 0, one zero byte.
        assert_eq!(Value::Unknown.to_msgpack().unwrap(), vec![0xd4, 0x00, 0x00]);
        assert_eq!(
            Value::from_msgpack(&[0xd4, 0x00, 0x00]).unwrap(),
            Value::Unknown
        );
    }

    #[test]
    fn refined_unknown_of_any_extension_type_decodes_as_unknown() {
        // Terraform 1.6+ refinements: ext type 12 wrapping a msgpack map
        // ({1: true} = "definitely not null"), as ext8.
        let payload = [0x81, 0x01, 0xc3];
        let mut bytes = vec![0xc7, payload.len() as u8, 12];
        bytes.extend_from_slice(&payload);
        assert_eq!(Value::from_msgpack(&bytes).unwrap(), Value::Unknown);
        // Inside an object, too.
        let mut m = vec![0x81, 0xa2, b'i', b'd'];
        m.extend_from_slice(&bytes);
        assert_eq!(Value::from_msgpack(&m).unwrap().get("id"), &Value::Unknown);
    }

    #[test]
    fn json_state_decodes() {
        let v = Value::from_json(br#"{"id":"r@sha256:00","delete_layers":null,"n":1.5,"l":["a"]}"#)
            .unwrap();
        assert_eq!(v.get("id").as_str(), Some("r@sha256:00"));
        assert!(v.get("delete_layers").is_null());
        assert_eq!(v.get("n"), &Value::Float(1.5));
        assert_eq!(v.get("missing"), &Value::Null);
        assert_eq!(v.get("l").as_list().map(|l| l.len()), Some(1));
    }

    #[test]
    fn dynamic_prefers_msgpack_and_defaults_to_null() {
        assert_eq!(Value::from_dynamic(&[], &[]).unwrap(), Value::Null);
        assert_eq!(
            Value::from_dynamic(&[0xc3], b"false").unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            Value::from_dynamic(&[], b"false").unwrap(),
            Value::Bool(false)
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        // A 2-element array with one element, and a string cut short.
        assert!(Value::from_msgpack(&[0x92, 0x01]).is_err());
        assert!(Value::from_msgpack(&[0xa3, b"a"[0]]).is_err());
        assert!(Value::from_json(b"{").is_err());
    }
}
