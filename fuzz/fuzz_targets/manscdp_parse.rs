//! MANSCDP bodies: encoding detection (GB18030/UTF-8), `&` repair, the bounded element tree and
//! the typed views. Invariants: no panic; memory bounded by the element/depth limits.
#![no_main]
use gbgate::proto::sip::manscdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = manscdp::repair_ampersands(&manscdp::decode(data));
    let Ok(m) = manscdp::parse(data) else { return };
    let (sum, items) = manscdp::catalog(&m);
    assert!(items.len() <= 20_000 || sum > 0);
    let _ = manscdp::device_info(&m);
    let _ = manscdp::record_info(&m);
    // Re-encoding what was decoded must parse again.
    let body = manscdp::catalog_response(m.sn, &m.device_id, items.len(), &items, true);
    assert!(manscdp::parse(&body).is_ok(), "our own catalog answer parses");
});
