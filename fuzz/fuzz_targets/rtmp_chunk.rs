//! RTMP server input: arbitrary bytes into rml_rtmp's server handshake + ServerSession (as the
//! RTMP server drives them, accepting every request), and every video/audio tag body raised into
//! gbgate's FLV demuxer; also tag bodies straight into the demuxer. Nothing may panic.
//!
//! Input layout: byte 0 selects the mode (0: handshake then session, 1: session only, 2: FLV tag
//! bodies as `[u8 kind][u16 BE len][body]` records); byte 1 is a chunk size for feeding.
//!
//! Session input goes through `RtmpCommandGuard` first, as in the server: our own chunk reader
//! (limits, budget) and the iterative AMF0 scan, then only whole, checked messages re-chunked by
//! rml_rtmp's serializer reach the session (D10, D30). Nothing is caught: any panic or stack
//! overflow, in rml_rtmp or in gbgate, aborts the run. The corpus holds deep nesting (seeds
//! `deep_*`: strict arrays and objects 10,000 deep in a command and in a data message).
#![no_main]

use gbgate::proto::flv::FlvDemuxer;
use gbgate::proto::rtmp_guard::RtmpCommandGuard;
use libfuzzer_sys::fuzz_target;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};

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
                if let Ok(more) = session.accept_request(request_id) {
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
            match hs.process_bytes(&rest[..n]) {
                Ok(HandshakeProcessResult::InProgress { .. }) => {}
                Ok(HandshakeProcessResult::Completed { remaining_bytes, .. }) => {
                    input = remaining_bytes;
                    done = true;
                }
                Err(_) => return,
            }
            rest = &rest[n..];
        }
        if !done {
            return;
        }
    }
    input.extend_from_slice(rest);
    let Ok((mut session, results)) = ServerSession::new(ServerSessionConfig::new()) else {
        return;
    };
    let mut guard = RtmpCommandGuard::default();
    drive(&mut session, &mut demux, results);
    for piece in input.chunks(chunk) {
        let Ok(piece) = guard.filter(piece) else { return };
        match session.handle_input(&piece) {
            Ok(results) => drive(&mut session, &mut demux, results),
            Err(_) => return,
        }
    }
});
