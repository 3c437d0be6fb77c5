//! RTMP server input: arbitrary bytes into rml_rtmp's server handshake + ServerSession (as the
//! RTMP server drives them, accepting every request), and every video/audio tag body raised into
//! gbgate's FLV demuxer; also tag bodies straight into the demuxer. Nothing may panic.
//!
//! Input layout: byte 0 selects the mode (0: handshake then session, 1: session only, 2: FLV tag
//! bodies as `[u8 kind][u16 BE len][body]` records); byte 1 is a chunk size for feeding.
//!
//! rml_rtmp 0.8 itself panics on some malformed messages (e.g. an AMF0 command with fewer than
//! three values: `amf0_command.rs:35`); the server driver catches that per connection, and so
//! does this target around rml_rtmp calls only. A panic in gbgate's code still aborts.
#![no_main]

use gbgate::proto::flv::FlvDemuxer;
use libfuzzer_sys::fuzz_target;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};

/// Runs an rml_rtmp call, a panic inside it counted as an error (see the module docs).
fn guarded<T>(f: impl FnOnce() -> Option<T>) -> Option<T> {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                default(info);
            }
        }));
    });
    GUARDED.with(|g| g.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok().flatten();
    GUARDED.with(|g| g.set(false));
    r
}

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn drive(session: &mut ServerSession, demux: &mut FlvDemuxer, results: Vec<ServerSessionResult>) {
    let mut queue = results;
    let mut rounds = 0;
    while let Some(r) = queue.pop() {
        rounds += 1;
        if rounds > 1000 {
            return;
        }
        let ServerSessionResult::RaisedEvent(e) = r else { continue };
        match e {
            ServerSessionEvent::ConnectionRequested { request_id, .. }
            | ServerSessionEvent::PublishStreamRequested { request_id, .. }
            | ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                if let Some(more) = guarded(|| session.accept_request(request_id).ok()) {
                    queue.extend(more);
                }
            }
            ServerSessionEvent::VideoDataReceived { data, timestamp, .. } => {
                let _ = demux.video(timestamp.value, &data);
            }
            ServerSessionEvent::AudioDataReceived { data, timestamp, .. } => {
                let _ = demux.audio(timestamp.value, &data);
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (mode, chunk, mut rest) = (data[0] % 3, (data[1] as usize).max(1), &data[2..]);
    let mut demux = FlvDemuxer::new();
    if mode == 2 {
        while rest.len() >= 3 {
            let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
            let body = &rest[3..(3 + n).min(rest.len())];
            let _ = if rest[0] & 1 == 0 { demux.video(n as u32, body) } else { demux.audio(n as u32, body) };
            rest = &rest[(3 + n).min(rest.len())..];
        }
        return;
    }
    let mut input: Vec<u8> = Vec::new();
    if mode == 0 {
        let mut hs = Handshake::new(PeerType::Server);
        let mut done = false;
        while !rest.is_empty() && !done {
            let n = chunk.min(rest.len());
            match guarded(|| hs.process_bytes(&rest[..n]).ok()) {
                Some(HandshakeProcessResult::InProgress { .. }) => {}
                Some(HandshakeProcessResult::Completed { remaining_bytes, .. }) => {
                    input = remaining_bytes;
                    done = true;
                }
                None => return,
            }
            rest = &rest[n..];
        }
        if !done {
            return;
        }
    }
    input.extend_from_slice(rest);
    let Some((mut session, results)) = guarded(|| ServerSession::new(ServerSessionConfig::new()).ok()) else {
        return;
    };
    drive(&mut session, &mut demux, results);
    for piece in input.chunks(chunk) {
        match guarded(|| session.handle_input(piece).ok()) {
            Some(results) => drive(&mut session, &mut demux, results),
            None => return,
        }
    }
});
