//! The FLV file form (HTTP-FLV, WebSocket-FLV): a 13-byte header, then tags, each an 11-byte tag
//! header, the body RTMP carries (built once per frame, see [`crate::proto::flv`]) and the
//! previous-tag-size trailer. Sans-IO: bytes are appended to a caller's buffer.
use rml_rtmp::rml_amf0::{self, Amf0Value};
use rml_rtmp::sessions::StreamMetadata;

use crate::proto::flv_flow::Out;

/// FLV tag types.
pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

/// Largest tag body the 24-bit size field carries.
pub const MAX_TAG_BODY: usize = 0xFF_FFFF;

/// The file header and the first (zero) previous-tag-size: `FLV`, version 1, the track flags.
pub fn header(audio: bool, video: bool) -> [u8; 13] {
    let flags = (u8::from(audio) << 2) | u8::from(video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// Appends one tag. A body over [`MAX_TAG_BODY`] (which no frame within `rtp.max_access_unit`
/// reaches) is skipped rather than written with a wrong size.
pub fn put_tag(out: &mut Vec<u8>, tag_type: u8, ts_ms: u32, body: &[u8]) {
    if body.len() > MAX_TAG_BODY {
        return;
    }
    let size = body.len() as u32;
    let ts = ts_ms.to_be_bytes();
    out.reserve(11 + body.len() + 4);
    out.push(tag_type);
    out.extend_from_slice(&size.to_be_bytes()[1..]);
    // 24 low bits, then the extended (high) byte; stream id 0.
    out.extend_from_slice(&[ts[1], ts[2], ts[3], ts[0], 0, 0, 0]);
    out.extend_from_slice(body);
    out.extend_from_slice(&(size + 11).to_be_bytes());
}

/// The `onMetaData` properties of `m` (what is known of it), shared by the RTMP output's data
/// message and this file form.
pub fn metadata_props(m: &StreamMetadata) -> std::collections::HashMap<String, Amf0Value> {
    let mut props = std::collections::HashMap::new();
    let mut num = |k: &str, v: Option<f64>| {
        if let Some(v) = v {
            props.insert(k.to_string(), Amf0Value::Number(v));
        }
    };
    num("width", m.video_width.map(f64::from));
    num("height", m.video_height.map(f64::from));
    num("videocodecid", m.video_codec_id.map(f64::from));
    num("framerate", m.video_frame_rate.map(f64::from));
    num("audiocodecid", m.audio_codec_id.map(f64::from));
    num("audiosamplerate", m.audio_sample_rate.map(f64::from));
    num("audiochannels", m.audio_channels.map(f64::from));
    if let Some(e) = &m.encoder {
        props.insert("encoder".to_string(), Amf0Value::Utf8String(e.clone()));
    }
    props
}

/// The `onMetaData` script tag body (AMF0 name and object).
pub fn metadata_body(m: &StreamMetadata) -> Vec<u8> {
    let props = metadata_props(m);
    let values = vec![Amf0Value::Utf8String("onMetaData".to_string()), Amf0Value::Object(props)];
    // Numbers and short strings only: serialisation cannot fail.
    rml_amf0::serialize(&values).unwrap_or_default()
}

/// Appends one message of the FLV flow as a tag.
pub fn put_out(out: &mut Vec<u8>, o: &Out) {
    match o {
        Out::Meta(m) => put_tag(out, TAG_SCRIPT, 0, &metadata_body(m)),
        Out::Video(b, ts) => put_tag(out, TAG_VIDEO, ts.value, b),
        Out::Audio(b, ts) => put_tag(out, TAG_AUDIO, ts.value, b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_layout_and_trailer() {
        let mut out = Vec::new();
        put_tag(&mut out, TAG_VIDEO, 0x0123_4567, &[0xAA, 0xBB, 0xCC]);
        assert_eq!(
            out,
            [9, 0, 0, 3, 0x23, 0x45, 0x67, 0x01, 0, 0, 0, 0xAA, 0xBB, 0xCC, 0, 0, 0, 14],
            "size, 24-bit time then its high byte, stream id, body, previous tag size"
        );
        assert_eq!(header(true, true)[4], 5);
        assert_eq!(header(false, true)[4], 1);
    }

    #[test]
    fn metadata_is_amf0_on_metadata() {
        let mut m = StreamMetadata::new();
        m.video_width = Some(352);
        let b = metadata_body(&m);
        let v = rml_amf0::deserialize(&mut std::io::Cursor::new(&b)).unwrap();
        assert_eq!(v[0], Amf0Value::Utf8String("onMetaData".into()));
        let Amf0Value::Object(props) = &v[1] else { panic!("{v:?}") };
        assert_eq!(props.get("width"), Some(&Amf0Value::Number(352.0)));
    }
}
