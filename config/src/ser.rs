//! Serialization helpers: the model written back in the SPEC JSON shape
//! (durations as `"5s"`, whole numbers without `.0`).

use std::fmt::Display;
use std::time::Duration;

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::check;

/// Largest magnitude below which every whole `f64` is an exact integer (2^53).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Writes whole numbers as integers (`100`, not `100.0`), others as floats.
pub(crate) fn number<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() <= MAX_EXACT_INTEGER {
        // Exact: whole and within the integer range of f64.
        serializer.serialize_i64(*value as i64)
    } else {
        serializer.serialize_f64(*value)
    }
}

/// A list of numbers, each written as by [`number`].
pub(crate) fn numbers<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
    struct Number(f64);

    impl Serialize for Number {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            number(&self.0, serializer)
        }
    }

    let mut seq = serializer.serialize_seq(Some(values.len()))?;
    for value in values {
        seq.serialize_element(&Number(*value))?;
    }
    seq.end()
}

/// A duration as a humantime string (`"5s"`, `"5m"`, `"250ms"`).
pub(crate) fn duration<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&check::format_duration(*value))
}

/// Serializes one of this crate's model types to a JSON value.
///
/// The model serializes only strings, booleans, numbers, sequences and
/// string-keyed structs, for which `serde_json::to_value` cannot fail.
pub(crate) fn to_value<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("model types serialize to JSON infallibly")
}

/// Turns validation errors into a serde error, for `Deserialize` impls that
/// validate.
pub(crate) fn custom_error<E: serde::de::Error>(errors: impl Display) -> E {
    E::custom(errors.to_string().replace('\n', "; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Sample {
        #[serde(serialize_with = "number")]
        n: f64,
        #[serde(serialize_with = "numbers")]
        list: Vec<f64>,
        #[serde(serialize_with = "duration")]
        d: Duration,
    }

    #[test]
    fn numbers_and_durations() {
        let sample = Sample {
            n: 2.0,
            list: vec![1.0, 2.5, -0.0, 1e300],
            d: Duration::from_secs(90),
        };
        assert_eq!(
            serde_json::to_string(&sample).unwrap(),
            r#"{"n":2,"list":[1,2.5,0,1e+300],"d":"1m 30s"}"#
        );
    }
}
