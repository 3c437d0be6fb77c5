//! GB SDP bodies (`y=`, `f=`, `a=setup`, `t=`): no panic; an answer built from a parsed offer parses.
#![no_main]
use gbgate::proto::sip::sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = sdp::parse(data) else { return };
    let ip = offer.connection.unwrap_or_else(|| "127.0.0.1".parse().unwrap());
    let text = sdp::answer(&sdp::Answer {
        device_id: "34020000001320000001",
        ip,
        port: offer.port,
        kind: offer.kind,
        tcp: offer.tcp,
        setup: offer.setup.as_deref().map(|_| "passive"),
        ssrc: offer.ssrc.unwrap_or(0),
        time: offer.time,
    });
    let back = sdp::parse(text.as_bytes()).expect("our answer parses");
    assert_eq!(back.port, offer.port);
    assert_eq!(back.ssrc, Some(offer.ssrc.unwrap_or(0)));
});
