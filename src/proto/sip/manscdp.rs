//! MANSCDP (the XML in GB28181 MESSAGE bodies): decoding, a small bounded element tree, the
//! typed views the gateway needs (Catalog, DeviceInfo, DeviceStatus, RecordInfo, Keepalive,
//! MediaStatus) and the bodies it sends.
//!
//! Decoding follows ../shared/docs/gb28181.md §4: the declared encoding (absent = GB2312) is read
//! with a GB18030 decoder when it is GB2312/GBK (a superset: rare characters fail under strict
//! GB2312), with UTF-8 as the fallback for mislabelled devices; bare `&` is escaped, and an
//! `<Address>` whose content breaks the XML is dropped before a second attempt.
use std::fmt::Write as _;

use quick_xml::events::Event;
use quick_xml::Reader;

pub const MAX_BODY: usize = 64 * 1024;
const MAX_DEPTH: usize = 16;
const MAX_ELEMENTS: usize = 20_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManscdpError {
    #[error("body of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("XML error at byte {pos}: {message}")]
    Xml { pos: u64, message: String },
    #[error("XML nested deeper than {MAX_DEPTH} or more than {MAX_ELEMENTS} elements")]
    TooComplex,
    #[error("no root element")]
    Empty,
    #[error("no CmdType")]
    NoCmdType,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child called `name` (case-insensitive: devices vary, e.g. `Alarmstatus`).
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The trimmed text of child `name`, if present and non-empty.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim()).filter(|t| !t.is_empty())
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The label in `<?xml ... encoding="X"?>`, lower-cased.
fn declared_encoding(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(200)];
    let end = head.windows(2).position(|w| w == b"?>")?;
    let decl = std::str::from_utf8(&head[..end]).ok()?;
    let i = decl.find("encoding")?;
    let rest = decl[i + 8..].trim_start().strip_prefix('=')?.trim_start();
    let quote = rest.chars().next()?;
    let rest = &rest[quote.len_utf8()..];
    let j = rest.find(quote)?;
    Some(rest[..j].trim().to_ascii_lowercase())
}

/// Decodes a MANSCDP body to text (see the module note). Never fails: the last resort is lossy.
pub fn decode(body: &[u8]) -> String {
    let label = declared_encoding(body).unwrap_or_else(|| "gb2312".into());
    let gb = matches!(label.as_str(), "gb2312" | "gbk" | "gb18030" | "gb-2312" | "cp936");
    let try_gb = || {
        let (text, _, errors) = encoding_rs::GB18030.decode(body);
        (!errors).then(|| text.into_owned())
    };
    let try_utf8 = || std::str::from_utf8(body).ok().map(str::to_string);
    let first = if gb { try_gb().or_else(try_utf8) } else { try_utf8().or_else(try_gb) };
    first.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// Escapes every `&` that does not start an entity (Hikvision sends bare `&` in names).
pub fn repair_ampersands(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('&') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let entity = after.find(';').is_some_and(|j| {
            j <= 10 && {
                let name = &after[..j];
                matches!(name, "amp" | "lt" | "gt" | "quot" | "apos")
                    || (name.starts_with('#')
                        && name.len() > 1
                        && name[1..].trim_start_matches('x').chars().all(|c| c.is_ascii_hexdigit()))
            }
        });
        out.push_str(if entity { "&" } else { "&amp;" });
        rest = after;
    }
    out.push_str(rest);
    out.into()
}

/// Removes `<Address>...</Address>` spans (their content may hold a raw `<`).
fn drop_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("<Address>") {
        out.push_str(&rest[..i]);
        match rest[i..].find("</Address>") {
            Some(j) => rest = &rest[i + j + "</Address>".len()..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses XML text into its root element.
pub fn parse_tree(text: &str) -> Result<Element, ManscdpError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut count = 0usize;
    let mut root = None;
    let xml_err = |reader: &Reader<&[u8]>, e: &dyn std::fmt::Display| ManscdpError::Xml {
        pos: reader.buffer_position(),
        message: e.to_string().chars().take(120).collect(),
    };
    loop {
        let ev = reader.read_event().map_err(|e| xml_err(&reader, &e))?;
        match ev {
            Event::Start(e) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(ManscdpError::TooComplex);
                }
                stack.push(start_element(&e));
            }
            Event::Empty(e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(ManscdpError::TooComplex);
                }
                let el = start_element(&e);
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = root.or(Some(el)),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let s = t.unescape().map_err(|e| xml_err(&reader, &e))?;
                    top.text.push_str(&s);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::End(_) => {
                let Some(el) = stack.pop() else { return Err(ManscdpError::Empty) };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => {
                        root = root.or(Some(el));
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(ManscdpError::Xml { pos: text.len() as u64, message: "unclosed element".into() });
    }
    root.ok_or(ManscdpError::Empty)
}

fn start_element(e: &quick_xml::events::BytesStart<'_>) -> Element {
    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    let attrs = e
        .attributes()
        .flatten()
        .map(|a| {
            let k = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
            let v = a.unescape_value().map(|v| v.into_owned()).unwrap_or_default();
            (k, v)
        })
        .collect();
    Element { name, attrs, text: String::new(), children: Vec::new() }
}

/// One decoded MANSCDP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manscdp {
    /// `Query`, `Response`, `Notify` or `Control`.
    pub root: String,
    pub cmd_type: String,
    pub sn: u32,
    pub device_id: String,
    pub el: Element,
}

/// Decodes and parses a body.
pub fn parse(body: &[u8]) -> Result<Manscdp, ManscdpError> {
    if body.len() > MAX_BODY {
        return Err(ManscdpError::TooLarge(body.len()));
    }
    let text = decode(body);
    let text = repair_ampersands(&text).into_owned();
    let el = match parse_tree(&text) {
        Ok(el) => el,
        Err(first) => {
            let cleaned = drop_addresses(&text);
            if cleaned.len() == text.len() {
                return Err(first);
            }
            parse_tree(&cleaned)?
        }
    };
    let cmd_type = el.text_of("CmdType").ok_or(ManscdpError::NoCmdType)?.to_string();
    let sn = el.text_of("SN").and_then(|s| s.parse().ok()).unwrap_or(0);
    let device_id = el.text_of("DeviceID").unwrap_or("").to_string();
    Ok(Manscdp { root: el.name.clone(), cmd_type, sn, device_id, el })
}

/// One Catalog item.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatalogItem {
    pub device_id: String,
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    pub parent_id: String,
    pub civil_code: String,
    pub address: String,
    pub parental: bool,
    /// `Status` ON (case-insensitive).
    pub online: bool,
    pub ptz_type: Option<u8>,
}

/// `(SumNum, items)` of a Catalog response or notify; items without a DeviceID are skipped.
pub fn catalog(m: &Manscdp) -> (u32, Vec<CatalogItem>) {
    let (sum, items) = catalog_events(m);
    (sum, items.into_iter().map(|(it, _)| it).collect())
}

/// What a catalog notification says happened to an item (GB/T 28181-2016 §9.6.4 `Event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogEvent {
    /// ADD, UPDATE, ON, VLOST, DEFECT, or no Event (a plain answer's item).
    Upsert,
    /// DEL.
    Delete,
}

/// Like [`catalog`], with each item's `Event`; at most [`super::MAX_SUM_NUM`] items are read.
pub fn catalog_events(m: &Manscdp) -> (u32, Vec<(CatalogItem, CatalogEvent)>) {
    let sum = sum_num(m);
    let mut items = Vec::new();
    if let Some(list) = m.el.child("DeviceList") {
        for it in list.children.iter().filter(|c| c.name.eq_ignore_ascii_case("Item")) {
            let Some(id) = it.text_of("DeviceID").filter(|id| !id.is_empty()) else { continue };
            if items.len() >= super::MAX_SUM_NUM as usize {
                break;
            }
            let event = match it.text_of("Event") {
                Some(e) if e.eq_ignore_ascii_case("DEL") => CatalogEvent::Delete,
                _ => CatalogEvent::Upsert,
            };
            let s = |n: &str| it.text_of(n).unwrap_or("").to_string();
            items.push((
                CatalogItem {
                    device_id: id.to_string(),
                    name: s("Name"),
                    manufacturer: s("Manufacturer"),
                    model: s("Model"),
                    parent_id: s("ParentID"),
                    civil_code: s("CivilCode"),
                    address: s("Address"),
                    parental: it.text_of("Parental") == Some("1"),
                    online: it
                        .text_of("Status")
                        .is_none_or(|v| v.eq_ignore_ascii_case("ON") || v.eq_ignore_ascii_case("OK")),
                    ptz_type: it.child("Info").and_then(|i| i.text_of("PTZType")).and_then(|v| v.parse().ok()),
                },
                event,
            ));
        }
    }
    (sum, items)
}

/// DeviceInfo response fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    pub firmware: String,
    pub channels: u32,
}

pub fn device_info(m: &Manscdp) -> DeviceInfo {
    let s = |n: &str| m.el.text_of(n).unwrap_or("").to_string();
    DeviceInfo {
        name: s("DeviceName"),
        manufacturer: s("Manufacturer"),
        model: s("Model"),
        firmware: s("Firmware"),
        channels: m.el.text_of("Channel").and_then(|v| v.parse().ok()).unwrap_or(0),
    }
}

/// One RecordInfo item (times as given, `yyyy-MM-ddTHH:mm:ss`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordItem {
    pub device_id: String,
    pub name: String,
    pub file_path: String,
    pub start_time: String,
    pub end_time: String,
    pub record_type: String,
}

/// `SumNum`, clamped to [0, MAX_SUM_NUM]; absent, negative or garbage reads 0.
pub fn sum_num(m: &Manscdp) -> u32 {
    let v = m.el.text_of("SumNum").and_then(|s| super::clamped_number(s, u64::from(super::MAX_SUM_NUM)));
    v.map_or(0, |v| v as u32)
}

pub fn record_info(m: &Manscdp) -> (u32, Vec<RecordItem>) {
    let sum = sum_num(m);
    let mut items = Vec::new();
    if let Some(list) = m.el.child("RecordList") {
        for it in list.children.iter().filter(|c| c.name.eq_ignore_ascii_case("Item")) {
            let s = |n: &str| it.text_of(n).unwrap_or("").to_string();
            items.push(RecordItem {
                device_id: s("DeviceID"),
                name: s("Name"),
                file_path: s("FilePath"),
                start_time: s("StartTime"),
                end_time: s("EndTime"),
                record_type: s("Type"),
            });
        }
    }
    (sum, items)
}

/// Escapes text for an XML element.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

/// Serialises a MANSCDP message: `root` element with CmdType, SN, DeviceID, then `inner` (already
/// XML). Encoded as GB2312 (GBK) when `gb`, else UTF-8.
pub fn build(root: &str, cmd_type: &str, sn: u32, device_id: &str, inner: &str, gb: bool) -> Vec<u8> {
    let label = if gb { "GB2312" } else { "UTF-8" };
    let mut s = String::new();
    let _ = write!(
        s,
        "<?xml version=\"1.0\" encoding=\"{label}\"?>\r\n<{root}>\r\n<CmdType>{cmd_type}</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n{inner}</{root}>\r\n",
        escape(device_id)
    );
    if gb {
        encoding_rs::GBK.encode(&s).0.into_owned()
    } else {
        s.into_bytes()
    }
}

/// The body of a Catalog response message carrying `items` (one slice of a split answer).
pub fn catalog_response(sn: u32, device_id: &str, sum: usize, items: &[CatalogItem], gb: bool) -> Vec<u8> {
    let mut inner = format!("<SumNum>{sum}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n", items.len());
    for it in items {
        let _ = write!(
            inner,
            "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Name>{}</Name>\r\n<Manufacturer>{}</Manufacturer>\r\n<Model>{}</Model>\r\n<Owner>0</Owner>\r\n<CivilCode>{}</CivilCode>\r\n<Address>{}</Address>\r\n<Parental>{}</Parental>\r\n<ParentID>{}</ParentID>\r\n<RegisterWay>1</RegisterWay>\r\n<Secrecy>0</Secrecy>\r\n<Status>{}</Status>\r\n<Info><PTZType>{}</PTZType></Info>\r\n</Item>\r\n",
            escape(&it.device_id),
            escape(&it.name),
            escape(&it.manufacturer),
            escape(&it.model),
            escape(&it.civil_code),
            escape(&it.address),
            u8::from(it.parental),
            escape(&it.parent_id),
            if it.online { "ON" } else { "OFF" },
            it.ptz_type.unwrap_or(0)
        );
    }
    inner.push_str("</DeviceList>\r\n");
    build("Response", "Catalog", sn, device_id, &inner, gb)
}

/// A PTZCmd value (8 bytes as 16 hex): `A5 0F addr cmd pan tilt zoom<<4|addr_hi checksum`.
pub fn ptz_cmd(address: u16, command: u8, pan_speed: u8, tilt_speed: u8, zoom_speed: u8) -> String {
    let b = [
        0xA5u8,
        0x0F,
        (address & 0xFF) as u8,
        command,
        pan_speed,
        tilt_speed,
        ((zoom_speed & 0x0F) << 4) | ((address >> 8) as u8 & 0x0F),
    ];
    let sum = b.iter().fold(0u32, |a, x| a + u32::from(*x)) % 256;
    let mut s: String = b.iter().map(|x| format!("{x:02X}")).collect();
    let _ = write!(s, "{sum:02X}");
    s
}

/// The PTZ command byte of a direction/zoom request.
pub fn ptz_command_byte(action: &str) -> Option<u8> {
    Some(match action {
        "stop" => 0x00,
        "right" => 0x01,
        "left" => 0x02,
        "down" => 0x04,
        "up" => 0x08,
        "zoomin" | "zoom_in" => 0x10,
        "zoomout" | "zoom_out" => 0x20,
        "upleft" => 0x0A,
        "upright" => 0x09,
        "downleft" => 0x06,
        "downright" => 0x05,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_gb2312() {
        let body = b"<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>42</SN>\r\n<DeviceID>34020000001320000001</DeviceID>\r\n<Status>OK</Status>\r\n<Info></Info>\r\n</Notify>\r\n";
        let m = parse(body).unwrap();
        assert_eq!((m.root.as_str(), m.cmd_type.as_str(), m.sn), ("Notify", "Keepalive", 42));
        assert_eq!(m.device_id, "34020000001320000001");
    }

    #[test]
    fn catalog_with_gbk_names_bare_ampersand_and_broken_address() {
        let items = vec![CatalogItem {
            device_id: "34020000001310000001".into(),
            name: "大门口 摄像机".into(),
            parent_id: "34020000001180000001".into(),
            online: true,
            ptz_type: Some(0),
            ..Default::default()
        }];
        let body = catalog_response(7, "34020000001180000001", 64, &items, true);
        assert!(std::str::from_utf8(&body).is_err(), "GBK bytes");
        let m = parse(&body).unwrap();
        let (sum, got) = catalog(&m);
        assert_eq!(sum, 64);
        assert_eq!(got, items);
        // Hikvision bare `&`, and an Address holding `<`.
        let raw = "<?xml version=\"1.0\"?><Response><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>x</DeviceID><SumNum>1</SumNum><DeviceList Num=\"1\"><Item><DeviceID>c1</DeviceID><Name>A&B</Name><Address>a<b</Address><Status>on</Status></Item></DeviceList></Response>";
        let m = parse(raw.as_bytes()).unwrap();
        let (_, got) = catalog(&m);
        assert_eq!(got[0].name, "A&B");
        assert!(got[0].online);
    }

    #[test]
    fn utf8_mislabelled_as_gb2312_falls_back() {
        let raw = "<?xml version=\"1.0\" encoding=\"GB2312\"?><Response><CmdType>DeviceInfo</CmdType><SN>9</SN><DeviceID>d</DeviceID><DeviceName>\u{1F600}</DeviceName><Channel>4</Channel></Response>";
        let m = parse(raw.as_bytes()).unwrap();
        assert_eq!(device_info(&m).channels, 4);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        // A non-ASCII character where the encoding's quote should be.
        assert!(parse("<?xml version=\"1.0\" encoding=é?><a/>".as_bytes()).is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"<a><b></a>").is_err());
        assert!(parse(b"<Query><SN>1</SN></Query>").is_err());
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert_eq!(parse(deep.as_bytes()), Err(ManscdpError::TooComplex));
        assert!(parse(&vec![b'<'; MAX_BODY + 1]).is_err());
    }

    #[test]
    fn ptz_vectors() {
        assert_eq!(ptz_cmd(1, 0x01, 0x1F, 0, 0), "A50F01011F0000D5");
        assert_eq!(ptz_cmd(1, 0x08, 0, 0x1F, 0), "A50F0108001F00DC");
        assert_eq!(ptz_cmd(1, 0x10, 0, 0, 1), "A50F0110000010D5");
        assert_eq!(ptz_cmd(1, 0x00, 0, 0, 0), "A50F0100000000B5");
    }
}
