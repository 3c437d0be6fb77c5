//! `GET /metrics` (D118): a camera (`gbgate send`), a registered device and an RTSP player
//! (ffmpeg) move the counters; the text is checked by a strict parser of the Prometheus text
//! exposition format (0.0.4) written here.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::hub::{Source, Takeover, Transport};
use gbgate::sim::camera::{self, SimOptions};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

/// The exposition, strictly: every line is a HELP, a TYPE or a sample; names and label names are
/// valid; HELP and label values use only the escapes the format defines; each family has one
/// TYPE (and at most one HELP) given before its samples, and its lines are contiguous; every
/// sample belongs to the family declared last and has a name of that family (no untyped strays);
/// counters are named `*_total` and are not negative; no series appears twice.
fn parse(text: &str) -> Result<BTreeMap<String, Family>, String> {
    fn metric_name(s: &str) -> bool {
        let mut b = s.bytes();
        b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
    }
    fn label_name(s: &str) -> bool {
        let mut b = s.bytes();
        !s.starts_with("__")
            && b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    }
    fn unescape(s: &str, quote_ok: bool) -> Result<String, String> {
        let mut out = String::new();
        let mut it = s.chars();
        while let Some(c) = it.next() {
            match c {
                '\\' => match it.next() {
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('"') if quote_ok => out.push('"'),
                    other => return Err(format!("bad escape \\{other:?} in {s:?}")),
                },
                '"' if quote_ok => return Err(format!("unescaped quote in {s:?}")),
                c => out.push(c),
            }
        }
        Ok(out)
    }
    fn value(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => s.parse::<f64>().map_err(|e| format!("value {s:?}: {e}")),
        }
    }

    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut done: Vec<String> = Vec::new();
    let mut series = std::collections::HashSet::new();
    for (no, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", no + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let (keyword, rest) = rest.split_once(' ').ok_or_else(|| at("bare comment".into()))?;
            let (name, arg) = rest.split_once(' ').ok_or_else(|| at("no name or text".into()))?;
            if !metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            if current.as_deref() != Some(name) {
                if done.iter().any(|d| d == name) || families.contains_key(name) {
                    return Err(at(format!("family {name} declared again after others")));
                }
                if let Some(c) = current.take() {
                    done.push(c);
                }
                current = Some(name.to_string());
            }
            let fam = families.entry(name.to_string()).or_default();
            if !fam.samples.is_empty() {
                return Err(at("HELP/TYPE after the family's samples".into()));
            }
            match keyword {
                "HELP" => {
                    if fam.help.is_some() {
                        return Err(at("second HELP".into()));
                    }
                    fam.help = Some(unescape(arg, false).map_err(at)?);
                }
                "TYPE" => {
                    if !fam.kind.is_empty() {
                        return Err(at("second TYPE".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                        return Err(at(format!("unknown type {arg:?}")));
                    }
                    if arg == "counter" && !name.ends_with("_total") {
                        return Err(at("a counter not named *_total".into()));
                    }
                    fam.kind = arg.to_string();
                }
                other => return Err(at(format!("unexpected comment {other:?}"))),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at("comment without a space".into()));
        }
        // name{labels} value [timestamp]
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut b = body;
            loop {
                if let Some(r) = b.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = b.find('=').ok_or_else(|| at("label without =".into()))?;
                let lname = &b[..eq];
                if !label_name(lname) {
                    return Err(at(format!("bad label name {lname:?}")));
                }
                let v = b[eq + 1..].strip_prefix('"').ok_or_else(|| at("label value not quoted".into()))?;
                // The closing quote is the first one not escaped.
                let mut end = None;
                let mut esc = false;
                for (i, c) in v.char_indices() {
                    match (esc, c) {
                        (true, _) => esc = false,
                        (false, '\\') => esc = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or_else(|| at("unterminated label value".into()))?;
                let lvalue = unescape(&v[..end], true).map_err(at)?;
                if labels.insert(lname.to_string(), lvalue).is_some() {
                    return Err(at(format!("label {lname} twice")));
                }
                b = &v[end + 1..];
                b = match b.strip_prefix(',') {
                    Some(r) => r,
                    None if b.starts_with('}') => b,
                    None => return Err(at("labels not separated by commas".into())),
                };
            }
        }
        let rest = rest.strip_prefix(' ').ok_or_else(|| at("no space before the value".into()))?;
        let mut parts = rest.split(' ');
        let v = value(parts.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = parts.next() {
            ts.parse::<i64>().map_err(|e| at(format!("timestamp: {e}")))?;
        }
        if parts.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let fam_name = current.clone().ok_or_else(|| at("sample before any TYPE".into()))?;
        let fam = families.get_mut(&fam_name).unwrap();
        if fam.kind.is_empty() {
            return Err(at("sample of a family without TYPE".into()));
        }
        let belongs = match fam.kind.as_str() {
            "histogram" => {
                [&fam_name, "_bucket"].concat() == name
                    || name == [&fam_name, "_sum"].concat()
                    || name == [&fam_name, "_count"].concat()
            }
            "summary" => {
                name == fam_name || name == [&fam_name, "_sum"].concat() || name == [&fam_name, "_count"].concat()
            }
            _ => name == fam_name,
        };
        if !belongs {
            return Err(at(format!("sample {name} in family {fam_name}")));
        }
        if fam.kind == "counter" && (v.is_nan() || v < 0.0) {
            return Err(at("negative or NaN counter".into()));
        }
        if !series.insert((name.to_string(), labels.clone())) {
            return Err(at("series repeated".into()));
        }
        fam.samples.push(Sample { name: name.to_string(), labels, value: v });
    }
    for (name, fam) in &families {
        if fam.kind.is_empty() {
            return Err(format!("family {name} has no TYPE"));
        }
    }
    Ok(families)
}

#[test]
fn the_parser_is_strict() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\n# TYPE g gauge\ng 2.5\n";
    let f = parse(ok).unwrap();
    assert_eq!(f["a_total"].samples[0].labels["x"], "q\"\\\n");
    for bad in [
        "a 1\n",                                                 // no TYPE
        "# TYPE a counter\na 1\n",                               // counter without _total
        "# TYPE a_total counter\na_total -1\n",                  // negative counter
        "# TYPE g gauge\n# TYPE g gauge\ng 1\n",                 // two TYPEs
        "# TYPE g gauge\ng 1\n# TYPE h gauge\nh 1\ng 2\n",       // g's sample in h's family
        "# TYPE g gauge\ng 1\n# TYPE h gauge\n# TYPE g gauge\n", // g declared again
        "# TYPE g gauge\ng{a=\"x\\t\"} 1\n",                     // bad escape
        "# TYPE g gauge\ng{a=\"x\"\"} 1\n",                      // stray quote
        "# TYPE g gauge\ng{1a=\"x\"} 1\n",                       // bad label name
        "# TYPE g gauge\ng{a=\"x\",a=\"y\"} 1\n",                // label twice
        "# TYPE g gauge\ng 1\ng 2\n",                            // series repeated
        "# TYPE g gauge\ng one\n",                               // not a number
        "# TYPE g gauge\ng 1",                                   // no final newline
        "# TYPE g gauge\ng_x 1\n",                               // not of the family
        "# TYPE 9g gauge\n",                                     // bad name
        "# EOF\n",                                               // unknown comment
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}

type Scrape = BTreeMap<String, Family>;

async fn scrape(api: std::net::SocketAddr) -> (Scrape, String) {
    let (status, head, body) = http_raw(api, http_request("GET", "/metrics", &api.to_string(), "", "")).await;
    assert_eq!(status, 200, "{body}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    match parse(&body) {
        Ok(f) => (f, body),
        Err(e) => panic!("{e}\n{body}"),
    }
}

/// The value of one series (family name, labels that must match), if present.
fn value(s: &Scrape, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.get(family)?
        .samples
        .iter()
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|x| x.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_the_traffic() {
    if !require_tool("metrics_parse_and_move_with_the_traffic", "ffmpeg") {
        return;
    }
    let mut cfg = test_config();
    cfg.sip.password = Some("12345678".into());
    cfg.api.metrics_streams = 3;
    let gw = start(cfg).await;
    let api = gw.api_addr;

    // A registered device.
    let stop = CancellationToken::new();
    let mut o = SimOptions::new(gw.sip_addr.unwrap(), own_fixture("h264_g711a_8k.rtp"));
    o.password = "12345678".into();
    let _sim = camera::spawn(o, stop.clone()).await.unwrap();
    // A camera pushing G.711 + H.264 over RTP/UDP, in a `gbgate send` process.
    let _send = Command::new(env!("CARGO_BIN_EXE_gbgate"))
        .args(["send", "--to", &gw.rtp_addr.to_string(), "--ssrc", "0600000001", "--loop", "30"])
        .arg(own_fixture("h264_g711a_8k.rtp"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || !gw.hub.list().is_empty()).await, "the camera's stream");
    let name = gw.hub.list()[0].name.clone();
    // More streams, made directly on the hub, oldest first: a name that needs escaping, a name
    // too long for a label (skipped), a third labelled one, and one beyond the cap (3).
    let odd = "we\"ird\\name\nx";
    let src = Source { transport: Transport::Rtmp, peer: "127.0.0.1:1".parse().unwrap(), ssrc: None };
    let _odd = gw.hub.create(odd, src.clone(), Takeover::Refuse).unwrap();
    let long = format!("live/{}", "l".repeat(300));
    let mut later = Vec::new();
    for name in [long.as_str(), "live/third", "live/fourth"] {
        tokio::time::sleep(Duration::from_millis(5)).await; // distinct start times
        later.push(gw.hub.create(name, src.clone(), Takeover::Refuse).unwrap());
    }

    // An RTSP player.
    let url = format!("rtsp://127.0.0.1:{}/{name}", gw.rtsp_addr.unwrap().port());
    let _player = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-rtsp_transport",
            "tcp",
            "-i",
            &url,
            "-f",
            "null",
            "-",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let (first, _) = loop {
        let (s, text) = scrape(api).await;
        let ready = value(&s, "gbgate_players", &[("protocol", "rtsp")]) == Some(1.0)
            && value(&s, "gbgate_sip_devices", &[("state", "online")]) == Some(1.0)
            && value(&s, "gbgate_transcode_streams", &[]).is_some_and(|v| v >= 1.0);
        if ready {
            break (s, text);
        }
        assert!(Instant::now() < deadline, "no player, device or transcoder:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stream_bytes = |s: &Scrape| value(s, "gbgate_stream_bytes_total", &[("stream", &name)]).unwrap_or(0.0);
    let stream_packets = |s: &Scrape| value(s, "gbgate_stream_packets_total", &[("stream", &name)]).unwrap_or(0.0);
    // Wait (bounded) for the traffic to move every counter we look at.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (second, text) = loop {
        let (s, text) = scrape(api).await;
        let moved = stream_bytes(&s) > stream_bytes(&first)
            && stream_packets(&s) > stream_packets(&first)
            && value(&s, "gbgate_rtp_udp_bytes_total", &[]) > value(&first, "gbgate_rtp_udp_bytes_total", &[])
            && value(&s, "gbgate_transcode_busy_seconds_total", &[("worker", "0")])
                > value(&first, "gbgate_transcode_busy_seconds_total", &[("worker", "0")]);
        if moved {
            break (s, text);
        }
        assert!(Instant::now() < deadline, "counters did not move:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Every counter is monotonic between the scrapes; every series of the first is in the second.
    for (fam_name, fam) in &first {
        for x in &fam.samples {
            let later =
                value(&second, fam_name, &x.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
            let later = later.unwrap_or_else(|| panic!("{x:?} gone:\n{text}"));
            if fam.kind == "counter" {
                assert!(later >= x.value, "{x:?} went back to {later}");
            }
        }
    }
    assert_eq!(value(&second, "gbgate_streams", &[]), Some(5.0));
    assert!(!text.contains("live/fourth") && !text.contains("live/lll"), "beyond the cap, or too long");
    assert_eq!(value(&second, "gbgate_stream_players", &[("stream", &name), ("protocol", "rtsp")]), Some(1.0));
    // Each scrape is one API connection: the listener counters move too.
    assert!(
        value(&second, "gbgate_listener_admitted_total", &[("listener", "api")])
            > value(&first, "gbgate_listener_admitted_total", &[("listener", "api")])
    );
    // The odd name comes back exactly; the long one and the fourth are only counted.
    let labelled: std::collections::BTreeSet<_> =
        second["gbgate_stream_bytes_total"].samples.iter().map(|x| x.labels["stream"].clone()).collect();
    assert_eq!(labelled, [name.as_str(), odd, "live/third"].into_iter().map(String::from).collect(), "{text}");
    assert_eq!(value(&second, "gbgate_stream_series_omitted", &[]), Some(2.0));
    assert!(text.contains(r#"stream="we\"ird\\name\nx""#), "{text}");
    // Callbacks are off: the outbox families are declared and empty.
    assert_eq!(value(&second, "gbgate_callbacks_enabled", &[]), Some(0.0));
    stop.cancel();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_outbox_shows_in_the_metrics() {
    let mut cfg = test_config();
    cfg.sip.enabled = false;
    let gw = start(cfg).await;
    // A control center that refuses connections: every event fails after its retries.
    let (_held, port) = refusing_port();
    let mut cb =
        gbgate::config::CallbacksConfig { url: Some(format!("http://127.0.0.1:{port}/cb")), ..Default::default() };
    cb.retries = 1;
    cb.retry_initial = gbgate::config::HumanDuration(Duration::from_millis(10));
    cb.retry_max = gbgate::config::HumanDuration(Duration::from_millis(10));
    gw.hub.set_notifier(gbgate::notify::Notifier::start(&cb, None));
    for i in 0..3 {
        gw.hub.notifier().emit(gbgate::notify::Event::StreamState {
            stream: format!("s{i}"),
            channel: None,
            state: gbgate::notify::StreamState::Stopped,
            reason: "test".into(),
        });
    }
    let kind = [("event", "stream_state")];
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let (s, text) = scrape(gw.api_addr).await;
        if value(&s, "gbgate_callbacks_failed_total", &kind) == Some(3.0) {
            break s;
        }
        assert!(Instant::now() < deadline, "the failures were not counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(value(&s, "gbgate_callbacks_enabled", &[]), Some(1.0));
    assert_eq!(value(&s, "gbgate_callbacks_emitted_total", &kind), Some(3.0));
    assert_eq!(value(&s, "gbgate_callbacks_retried_total", &kind), Some(3.0));
    assert_eq!(value(&s, "gbgate_callbacks_sent_total", &kind), Some(0.0));
    assert_eq!(value(&s, "gbgate_callbacks_queued", &[]), Some(0.0));
    gw.stop().await;
}
