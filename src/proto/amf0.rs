//! An iterative AMF0 scanner with explicit depth, count and size limits (sans-IO).
//!
//! rml_amf0 (used by rml_rtmp's sessions) decodes objects and arrays by recursion, so one message
//! nesting a strict array 10,000 deep (48 KiB) overflows a tokio worker's stack and aborts the
//! process; `catch_unwind` cannot catch that. Every AMF0 message a peer sends is walked here first,
//! with an explicit stack, and refused if it nests deeper than [`Amf0Limits::max_depth`], holds more
//! than [`Amf0Limits::max_values`] values (each becomes a heap value when decoded) or is malformed.
//!
//! The grammar is rml_amf0's (AMF0 spec §2, the markers it knows), so what passes here decodes
//! there with the same structure:
//! - a top-level sequence of values ends at the end of the data or at an object-end marker (0x09);
//! - an object / ECMA array (its count ignored) is `(u16 label, value)*` ended by `00 00 09`;
//! - a strict array reads up to its count of values and ends early at an object-end marker;
//! - any other marker is refused (rml_amf0 refuses it too).

/// AMF0 markers (AMF0 spec §2.1).
const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0a;

#[derive(Debug, Clone, Copy)]
pub struct Amf0Limits {
    /// Objects and arrays nested inside each other (a command's object is depth 1).
    pub max_depth: usize,
    /// Values in one message, at every depth.
    pub max_values: usize,
    /// Bytes of one AMF0 message.
    pub max_bytes: usize,
}

impl Default for Amf0Limits {
    fn default() -> Self {
        // Real commands nest 2 deep (the connect object may hold one more); onMetaData with a
        // keyframe index holds a few thousand numbers.
        Amf0Limits { max_depth: 32, max_values: 65_536, max_bytes: 1024 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Amf0Error {
    #[error("AMF0 nesting deeper than {0}")]
    TooDeep(usize),
    #[error("AMF0 message with more than {0} values")]
    TooManyValues(usize),
    #[error("AMF0 message of {len} bytes (limit {limit})")]
    TooLarge { len: usize, limit: usize },
    #[error("AMF0 value truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown AMF0 marker {marker:#04x} at byte {at}")]
    UnknownMarker { marker: u8, at: usize },
    #[error("AMF0 object property with an empty name not followed by the end marker at byte {0}")]
    BadObjectEnd(usize),
}

enum Frame {
    /// Inside an object or ECMA array: next is a property name or the end.
    Object,
    /// Inside a strict array with this many values still to read.
    Strict(u32),
}

/// Walks `data` as rml_amf0 would decode it, without recursion; returns the number of top-level
/// values (a command needs three: name, transaction id, command object).
pub fn scan(data: &[u8], limits: &Amf0Limits) -> Result<usize, Amf0Error> {
    if data.len() > limits.max_bytes {
        return Err(Amf0Error::TooLarge { len: data.len(), limit: limits.max_bytes });
    }
    let mut pos = 0usize;
    let mut stack: Vec<Frame> = Vec::new();
    let mut top = 0usize;
    let mut values = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<usize, Amf0Error> {
        let start = *pos;
        let end = start.checked_add(n).filter(|&e| e <= data.len()).ok_or(Amf0Error::Truncated(start))?;
        *pos = end;
        Ok(start)
    };
    loop {
        // Where the next value (if any) is read from, given the innermost container.
        match stack.last_mut() {
            None => {
                if pos == data.len() {
                    return Ok(top);
                }
            }
            Some(Frame::Object) => {
                let at = take(&mut pos, 2)?;
                let label = u16::from_be_bytes([data[at], data[at + 1]]) as usize;
                if label == 0 {
                    let at = take(&mut pos, 1)?;
                    if data[at] != OBJECT_END {
                        return Err(Amf0Error::BadObjectEnd(at));
                    }
                    stack.pop();
                    continue;
                }
                take(&mut pos, label)?;
                // A property's value must be there: an end marker here is an error in rml_amf0.
                if data.get(pos) == Some(&OBJECT_END) {
                    return Err(Amf0Error::BadObjectEnd(pos));
                }
            }
            Some(Frame::Strict(left)) => {
                if *left == 0 || pos == data.len() {
                    stack.pop();
                    continue;
                }
                *left -= 1;
            }
        }
        let at = take(&mut pos, 1)?;
        let marker = data[at];
        if marker == OBJECT_END {
            // Ends the top-level sequence or a strict array early (as rml_amf0 reads it).
            match stack.pop() {
                None => return Ok(top),
                Some(_) => continue,
            }
        }
        values += 1;
        if values > limits.max_values {
            return Err(Amf0Error::TooManyValues(limits.max_values));
        }
        if stack.is_empty() {
            top += 1;
        }
        match marker {
            NUMBER => {
                take(&mut pos, 8)?;
            }
            BOOLEAN => {
                take(&mut pos, 1)?;
            }
            STRING => {
                let at = take(&mut pos, 2)?;
                take(&mut pos, u16::from_be_bytes([data[at], data[at + 1]]) as usize)?;
            }
            NULL | UNDEFINED => {}
            OBJECT | ECMA_ARRAY | STRICT_ARRAY => {
                if stack.len() >= limits.max_depth {
                    return Err(Amf0Error::TooDeep(limits.max_depth));
                }
                if marker == OBJECT {
                    stack.push(Frame::Object);
                } else {
                    let at = take(&mut pos, 4)?;
                    let count = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
                    stack.push(if marker == ECMA_ARRAY { Frame::Object } else { Frame::Strict(count) });
                }
            }
            marker => return Err(Amf0Error::UnknownMarker { marker, at }),
        }
    }
}

/// `depth` strict arrays nested in each other, each holding the next (the hole 1 attack: 10,000
/// deep is 50 KB), after a command name and transaction id. For tests and the fuzz corpus.
pub fn nested_strict_arrays(depth: usize) -> Vec<u8> {
    let mut v = vec![STRING, 0, 7];
    v.extend_from_slice(b"connect");
    v.push(NUMBER);
    v.extend_from_slice(&1f64.to_be_bytes());
    for _ in 0..depth {
        v.push(STRICT_ARRAY);
        v.extend_from_slice(&1u32.to_be_bytes());
    }
    v.push(NULL);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::rml_amf0::{self, Amf0Value};
    use std::collections::HashMap;

    fn ser(values: Vec<Amf0Value>) -> Vec<u8> {
        rml_amf0::serialize(&values).unwrap()
    }

    #[test]
    fn counts_top_level_values_as_rml_amf0_decodes_them() {
        let mut props = HashMap::new();
        props.insert("app".to_string(), Amf0Value::Utf8String("live".into()));
        let mut inner = HashMap::new();
        inner.insert("x".to_string(), Amf0Value::StrictArray(vec![Amf0Value::Number(1.0), Amf0Value::Null]));
        props.insert("nested".to_string(), Amf0Value::Object(inner));
        let cases = vec![
            vec![Amf0Value::Utf8String("connect".into()), Amf0Value::Number(1.0), Amf0Value::Object(props)],
            vec![Amf0Value::Utf8String("x".into())],
            vec![Amf0Value::Null, Amf0Value::Undefined, Amf0Value::Boolean(true), Amf0Value::StrictArray(vec![])],
            vec![],
        ];
        let limits = Amf0Limits::default();
        for values in cases {
            let bytes = ser(values.clone());
            let decoded = rml_amf0::deserialize(&mut std::io::Cursor::new(&bytes)).unwrap();
            assert_eq!(scan(&bytes, &limits), Ok(decoded.len()), "{values:?}");
        }
        // An ECMA array (onMetaData) reads as an object; an end marker ends the top level early.
        let mut ecma = vec![ECMA_ARRAY, 0, 0, 0, 1, 0, 1, b'w', NUMBER];
        ecma.extend_from_slice(&[0; 8]);
        ecma.extend_from_slice(&[0, 0, OBJECT_END, OBJECT_END, NULL]);
        assert_eq!(rml_amf0::deserialize(&mut std::io::Cursor::new(&ecma)).unwrap().len(), 1);
        assert_eq!(scan(&ecma, &limits), Ok(1));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let limits = Amf0Limits::default();
        assert_eq!(scan(&nested_strict_arrays(32), &limits), Ok(3));
        assert_eq!(scan(&nested_strict_arrays(33), &limits), Err(Amf0Error::TooDeep(32)));
        // The 48 KiB message of hole 1, and far deeper: refused, no stack used.
        let deep = nested_strict_arrays(10_000);
        assert!(deep.len() >= 48 * 1024);
        assert_eq!(scan(&deep, &limits), Err(Amf0Error::TooDeep(32)));
        let limits = Amf0Limits { max_bytes: 16 << 20, ..limits };
        assert_eq!(scan(&nested_strict_arrays(1_000_000), &limits), Err(Amf0Error::TooDeep(32)));
        // Objects count as nesting too.
        let mut obj = vec![];
        for _ in 0..40 {
            obj.extend_from_slice(&[OBJECT, 0, 1, b'a']);
        }
        obj.push(NULL);
        assert_eq!(scan(&obj, &Amf0Limits::default()), Err(Amf0Error::TooDeep(32)));
    }

    #[test]
    fn counts_sizes_and_malformed_input_are_refused() {
        let limits = Amf0Limits { max_values: 10, ..Default::default() };
        assert_eq!(scan(&[NULL; 10], &limits), Ok(10));
        assert_eq!(scan(&[NULL; 11], &limits), Err(Amf0Error::TooManyValues(10)));
        let limits = Amf0Limits { max_bytes: 4, ..Default::default() };
        assert_eq!(scan(&[NULL; 5], &limits), Err(Amf0Error::TooLarge { len: 5, limit: 4 }));
        let limits = Amf0Limits::default();
        assert_eq!(scan(&[STRING, 0, 5, b'a'], &limits), Err(Amf0Error::Truncated(3)));
        assert_eq!(scan(&[NUMBER, 0], &limits), Err(Amf0Error::Truncated(1)));
        assert_eq!(scan(&[0x11], &limits), Err(Amf0Error::UnknownMarker { marker: 0x11, at: 0 }));
        assert_eq!(scan(&[OBJECT, 0, 0, NULL], &limits), Err(Amf0Error::BadObjectEnd(3)));
        assert_eq!(scan(&[OBJECT, 0, 1, b'a', OBJECT_END], &limits), Err(Amf0Error::BadObjectEnd(4)));
        // A strict array whose count lies is cut by the end of the data, as rml_amf0 reads it.
        assert_eq!(scan(&[STRICT_ARRAY, 0xff, 0xff, 0xff, 0xff, NULL], &limits), Ok(1));
    }
}
