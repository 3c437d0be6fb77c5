//! RTMP ingest: what `RtmpCommandGuard` (D10) adds to rml_rtmp's server session for a publisher.
//!
//! Run with `cargo bench --bench rtmp`. The input is one second of a 2 Mbit/s publisher: 25 video
//! messages of 10,000 bytes in 4,096-byte chunks, after connect and publish were accepted. A client
//! and a server session talk in memory to get there.
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gbgate::proto::rtmp_guard::RtmpCommandGuard;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType, ServerSession,
    ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use rml_rtmp::time::RtmpTimestamp;

/// Server results to bytes for the client; accepts every request.
fn serve(server: &mut ServerSession, results: Vec<ServerSessionResult>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut queue = results;
    while let Some(r) = queue.pop() {
        match r {
            ServerSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
            ServerSessionResult::RaisedEvent(
                ServerSessionEvent::ConnectionRequested { request_id, .. }
                | ServerSessionEvent::PublishStreamRequested { request_id, .. },
            ) => queue.extend(server.accept_request(request_id).unwrap()),
            _ => {}
        }
    }
    out
}

/// Client results to bytes for the server; whether `want` was raised.
fn client_out(results: Vec<ClientSessionResult>, want: fn(&ClientSessionEvent) -> bool) -> (Vec<u8>, bool) {
    let (mut out, mut seen) = (Vec::new(), false);
    for r in results {
        match r {
            ClientSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
            ClientSessionResult::RaisedEvent(e) => seen |= want(&e),
            _ => {}
        }
    }
    (out, seen)
}

/// Runs client and server until `want`; returns the pieces the server was given, in order (the
/// server accepts each request before it reads the next piece).
fn exchange(
    client: &mut ClientSession,
    server: &mut ServerSession,
    first: Vec<u8>,
    want: fn(&ClientSessionEvent) -> bool,
) -> Vec<Vec<u8>> {
    let (mut to_server, mut given) = (first, Vec::new());
    for _ in 0..16 {
        given.push(to_server.clone());
        let results = server.handle_input(&to_server).unwrap();
        let to_client = serve(server, results);
        let (next, seen) = client_out(client.handle_input(&to_client).unwrap(), want);
        if seen {
            given.push(next.clone());
            let results = server.handle_input(&next).unwrap();
            serve(server, results);
            return given;
        }
        to_server = next;
    }
    panic!("the sessions did not get there");
}

/// The pieces of bytes that make a server session accept a publisher, and one second of media.
fn publishing() -> (Vec<Vec<u8>>, Vec<u8>) {
    let (mut server, first) = ServerSession::new(ServerSessionConfig::new()).unwrap();
    let (mut client, hello) = ClientSession::new(ClientSessionConfig::new()).unwrap();
    let mut setup = Vec::new();
    let (mut to_server, _) = client_out(hello, |_| false);
    to_server.extend(client_out(vec![client.request_connection("live".into()).unwrap()], |_| false).0);
    // What the server sends first (window size, bandwidth, chunk size) must reach the client.
    let server_hello = serve(&mut server, first);
    to_server.extend(client_out(client.handle_input(&server_hello).unwrap(), |_| false).0);
    setup.extend(exchange(&mut client, &mut server, to_server, |e| {
        matches!(e, ClientSessionEvent::ConnectionRequestAccepted)
    }));
    let publish =
        client_out(vec![client.request_publishing("x".into(), PublishRequestType::Live).unwrap()], |_| false).0;
    setup.extend(exchange(&mut client, &mut server, publish, |e| {
        matches!(e, ClientSessionEvent::PublishRequestAccepted)
    }));
    let mut media = Vec::new();
    for i in 0..25u32 {
        let mut tag = vec![0x27, 1, 0, 0, 0];
        tag[0] = if i == 0 { 0x17 } else { 0x27 };
        tag.resize(10_000, 0x55);
        let p = client.publish_video_data(Bytes::from(tag), RtmpTimestamp::new(i * 40), false).unwrap();
        media.extend(client_out(vec![p], |_| false).0);
    }
    (setup, media)
}

/// A session that accepted the publish; with `guarded`, fed through the guard as the server does.
fn server_ready(setup: &[Vec<u8>], guarded: bool) -> (ServerSession, RtmpCommandGuard) {
    let (mut server, first) = ServerSession::new(ServerSessionConfig::new()).unwrap();
    let _ = serve(&mut server, first);
    let mut guard = RtmpCommandGuard::default();
    for piece in setup {
        let piece = if guarded { guard.filter(piece).unwrap() } else { piece.clone() };
        let results = server.handle_input(&piece).unwrap();
        let _ = serve(&mut server, results);
    }
    (server, guard)
}

fn rtmp_ingest(c: &mut Criterion) {
    let (setup, media) = publishing();
    let (mut server, _) = server_ready(&setup, false);
    let all = server.handle_input(&media).unwrap();
    let videos = all.into_iter().filter(|r| {
        matches!(r, ServerSessionResult::RaisedEvent(ServerSessionEvent::VideoDataReceived { data, .. }) if data.len() == 10_000)
    });
    assert_eq!(videos.count(), 25, "the session must raise every video message");
    let mut g = c.benchmark_group("rtmp_publisher_1s_2mbit");
    g.throughput(Throughput::Bytes(media.len() as u64));
    g.bench_function("session", |b| {
        b.iter_batched(
            || server_ready(&setup, false),
            |(mut server, _)| black_box(server.handle_input(&media).unwrap().len()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("guard_then_session", |b| {
        b.iter_batched(
            || server_ready(&setup, true),
            |(mut server, mut guard)| {
                let whole = guard.filter(&media).unwrap();
                black_box(server.handle_input(&whole).unwrap().len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, rtmp_ingest);
criterion_main!(benches);
