//! Playback control: history sessions and MANSRTSP INFO inside their dialogs.
use super::*;

impl Core {
    pub(super) fn history(&mut self, req: HistoryRequest, reply: Reply<PlayInfo>) {
        if req.end <= req.start {
            let _ = reply.send(Err(GbError::Bad("end must be after start".into())));
            return;
        }
        match self.find_device(req.device.as_deref(), &req.channel) {
            Ok(dev) => {
                let t = self.transport_for(&dev, req.transport);
                let kind = if req.download_speed.is_some() { SessionKind::Download } else { SessionKind::Playback };
                self.invite(&dev, &req.channel, kind, t, (req.start, req.end), req.download_speed, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// INFO with a MANSRTSP body inside the playback dialog.
    pub(super) fn control(&mut self, stream: &str, control: PlaybackControl, reply: Reply<()>) {
        let Some(s) = self.sessions.get_mut(stream) else {
            let _ = reply.send(Err(GbError::Bad(format!("no session {stream}"))));
            return;
        };
        if s.state != SessionState::Established || s.kind == SessionKind::Play {
            let _ = reply.send(Err(GbError::Bad("not an established playback session".into())));
            return;
        }
        s.cseq = s.cseq.saturating_add(1);
        let rtsp_cseq = s.cseq;
        let body = match control {
            PlaybackControl::Play => format!("PLAY RTSP/1.0\r\nCSeq: {rtsp_cseq}\r\nRange: npt=now-\r\n\r\n"),
            PlaybackControl::Pause => format!("PAUSE RTSP/1.0\r\nCSeq: {rtsp_cseq}\r\nPauseTime: now\r\n\r\n"),
            PlaybackControl::Scale { scale } => {
                format!("PLAY RTSP/1.0\r\nCSeq: {rtsp_cseq}\r\nScale: {scale:.6}\r\n\r\n")
            }
            PlaybackControl::Seek { seconds } => {
                format!("PLAY RTSP/1.0\r\nCSeq: {rtsp_cseq}\r\nRange: npt={seconds}-\r\n\r\n")
            }
        };
        let (uri, to, call_id, from_tag, cseq, device) = (
            s.remote_uri.clone(),
            s.to_header.clone(),
            s.call_id.clone(),
            s.from_tag.clone(),
            s.cseq,
            s.device.clone(),
        );
        let Some(peer) = self.devices.get(&device).map(|d| d.peer()) else {
            let _ = reply.send(Err(GbError::NoDevice(device)));
            return;
        };
        let pending = Pending::InDialog { what: "INFO", reply: Some(reply) };
        let _ = self.send_request(
            peer,
            Method::Info,
            &uri,
            to,
            &call_id,
            &from_tag,
            cseq,
            vec![],
            Some("Application/MANSRTSP"),
            body.into_bytes(),
            Some(pending),
        );
    }
}
