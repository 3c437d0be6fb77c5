//! SIP messages: parse (rsipstack's rsip + our checks), then everything the registrar reads of a
//! request: header helpers, Via, transaction key, digest parameters, a response built from it.
//! Invariants: no panic; a built response parses back.
#![no_main]
use gbgate::proto::sip::{self, digest, rsip::SipMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = sip::parse(data) else { return };
    let headers = sip::headers_of(&msg);
    let _ = sip::transaction_key(headers);
    let _ = sip::top_via(headers);
    for name in ["From", "To", "Contact"] {
        if let Some(v) = sip::header(headers, name) {
            let _ = (sip::uri_user(v), sip::tag(v), sip::uri_addr(sip::uri_of(v)), sip::param(v, "expires"));
        }
    }
    if let Some(a) = sip::header(headers, "Authorization") {
        if let Ok(p) = digest::parse(a) {
            let _ = digest::verify("REGISTER", "12345678", &p);
            let _ = digest::check_nonce("secret", &p.nonce, 1_000_000, 300);
        }
    }
    if let SipMessage::Request(req) = &msg {
        let resp = sip::response(req, 401, "tag1", "10.0.0.1:5060".parse().unwrap(), vec![], Vec::new());
        let bytes = resp.to_bytes();
        assert!(sip::parse(&bytes).is_ok(), "a response built from a parsed request parses back");
    }
});
