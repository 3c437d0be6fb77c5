'use strict';
// gbgate player: WebRTC through WHEP first, then LL-HLS (fMP4) through Media Source Extensions.
// Plain JavaScript shipped in the binary: no library, no CDN, no build step.
(function () {
  // Query parameters of the play rules ([auth] play: a key or a signed URL), passed on to every
  // media request so that a shared link carries its credential.
  const AUTH_PARAMS = ['key', 'txSecret', 'txTime'];
  const NAMES = { webrtc: 'WebRTC', hls: 'HLS' };
  // How long a transport may take from its first request to a moving picture.
  const START_TIMEOUT_MS = { webrtc: 10000, hls: 15000 };

  class PlayError extends Error {}

  /** `/<segment>/<segment>` of a stream name, each segment URL-encoded; refuses `..` and empty parts. */
  function streamPath(name) {
    const parts = String(name || '').split('/');
    if (!name || name.length > 512 || parts.some((p) => p === '' || p === '.' || p === '..')) {
      throw new PlayError(`not a stream name: ${JSON.stringify(String(name || ''))}`);
    }
    return '/' + parts.map(encodeURIComponent).join('/');
  }

  /** The play credential of `search` (a location.search) as a query string (`?key=...`) or ''. */
  function authQuery(search) {
    const from = new URLSearchParams(search || '');
    const q = new URLSearchParams();
    for (const k of AUTH_PARAMS) if (from.has(k)) q.set(k, from.get(k));
    const s = q.toString();
    return s ? '?' + s : '';
  }

  /** An error naming what failed, with the gateway's own words (`{"code","error"}` or text). */
  async function refused(resp, what) {
    let text = '';
    try {
      text = (await resp.text()).slice(0, 400);
    } catch (_) {
      /* the body is optional */
    }
    // An HTML error page says nothing a status line does not; JSON and text bodies are the words.
    let msg = /html/i.test(resp.headers.get('Content-Type') || '') ? '' : text.replace(/\s+/g, ' ').trim().slice(0, 200);
    try {
      const j = JSON.parse(text);
      msg = String(j.error || j.message || msg);
    } catch (_) {
      /* not JSON */
    }
    const words = { 401: 'a credential is needed', 403: 'refused', 404: 'no such stream', 503: 'unavailable' };
    return new PlayError(`${what}: HTTP ${resp.status}${words[resp.status] ? ' (' + words[resp.status] + ')' : ''}${msg ? ': ' + msg : ''}`);
  }

  function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
  }

  // ---- fMP4 init segment: the codecs string MSE needs -------------------------------------------

  const hex2 = (b) => b.toString(16).padStart(2, '0');

  /** Boxes of `buf` between `start` and `end`: [{type, start (payload), end}]. */
  function boxes(buf, start, end) {
    const out = [];
    const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    let i = start;
    while (i + 8 <= end) {
      let size = v.getUint32(i);
      const type = String.fromCharCode(buf[i + 4], buf[i + 5], buf[i + 6], buf[i + 7]);
      let header = 8;
      if (size === 1 && i + 16 <= end) {
        size = Number(v.getBigUint64(i + 8));
        header = 16;
      } else if (size === 0) {
        size = end - i;
      }
      if (size < header || i + size > end) break;
      out.push({ type, start: i + header, end: i + size });
      i += size;
    }
    return out;
  }

  function hevcCodec(c) {
    // ISO/IEC 14496-15 annex E: hvc1.<space><profile>.<compat, bit-reversed>.<tier><level>.<constraints>
    const space = ['', 'A', 'B', 'C'][c[1] >> 6];
    const tier = c[1] & 0x20 ? 'H' : 'L';
    const profile = c[1] & 0x1f;
    let compat = ((c[2] << 24) | (c[3] << 16) | (c[4] << 8) | c[5]) >>> 0;
    let rev = 0;
    for (let i = 0; i < 32; i++) {
      rev = ((rev << 1) | (compat & 1)) >>> 0;
      compat >>>= 1;
    }
    const cons = Array.from(c.subarray(6, 12));
    while (cons.length && cons[cons.length - 1] === 0) cons.pop();
    return `${space}${profile}.${rev.toString(16)}.${tier}${c[12]}` + cons.map((b) => '.' + b.toString(16)).join('');
  }

  function aacCodec(buf, box) {
    // esds: version/flags, then descriptors: ES (3) > DecoderConfig (4: object type) > DecSpecificInfo (5).
    let i = box.start + 4;
    const len = () => {
      let n = 0;
      for (let k = 0; k < 4 && i < box.end; k++) {
        const b = buf[i++];
        n = (n << 7) | (b & 0x7f);
        if (!(b & 0x80)) break;
      }
      return n;
    };
    let oti = 0x40;
    let aot = 2;
    while (i < box.end) {
      const tag = buf[i++];
      const n = len();
      if (tag === 3) {
        const flags = buf[i + 2];
        i += 3 + (flags & 0x80 ? 2 : 0) + (flags & 0x20 ? 1 + buf[i + 3] : 0) + (flags & 0x40 ? 2 : 0);
      } else if (tag === 4) {
        oti = buf[i];
        i += 13;
      } else if (tag === 5) {
        aot = buf[i] >> 3;
        break;
      } else {
        i += n;
      }
    }
    return `mp4a.${oti.toString(16)}.${aot}`;
  }

  /** The RFC 6381 codecs of an fMP4 init segment's sample entries, e.g. ["avc1.42c00a", "mp4a.40.2"]. */
  function codecsOf(buf) {
    const found = [];
    const walk = (start, end) => {
      for (const b of boxes(buf, start, end)) {
        if (['moov', 'trak', 'mdia', 'minf', 'stbl'].includes(b.type)) walk(b.start, b.end);
        else if (b.type === 'stsd') walk(b.start + 8, b.end);
        else if (['avc1', 'avc3', 'hvc1', 'hev1'].includes(b.type)) {
          for (const c of boxes(buf, b.start + 78, b.end)) {
            const p = buf.subarray(c.start, c.end);
            if (c.type === 'avcC' && p.length >= 4) found.push(`${b.type}.${hex2(p[1])}${hex2(p[2])}${hex2(p[3])}`);
            if (c.type === 'hvcC' && p.length >= 13) found.push(`${b.type}.${hevcCodec(p)}`);
          }
        } else if (b.type === 'mp4a') {
          const esds = boxes(buf, b.start + 28, b.end).find((c) => c.type === 'esds');
          found.push(esds ? aacCodec(buf, esds) : 'mp4a.40.2');
        } else if (b.type === 'Opus') found.push('opus');
      }
    };
    walk(0, buf.length);
    return found;
  }

  // ---- HLS playlists ------------------------------------------------------------------------------

  function attrs(s) {
    const out = {};
    const re = /([A-Z0-9-]+)=("[^"]*"|[^,]*)/g;
    let m;
    while ((m = re.exec(s))) out[m[1]] = m[2].replace(/^"|"$/g, '');
    return out;
  }

  /** A media playlist: {map, target, partTarget, segments: [{msn, uri|null, parts: [uri]}], variants}. */
  function parsePlaylist(text) {
    if (!text.startsWith('#EXTM3U')) throw new PlayError('the playlist is not an M3U8 playlist');
    const pl = { map: null, target: 2, partTarget: 0, segments: [], variants: [], ended: false };
    let msn = 0;
    let parts = [];
    let inf = false;
    let streamInf = false;
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (!line) continue;
      const [tag, rest] = line.startsWith('#') ? [line.split(':', 1)[0], line.slice(line.indexOf(':') + 1)] : ['', line];
      if (tag === '#EXT-X-MEDIA-SEQUENCE') msn = parseInt(rest, 10) || 0;
      else if (tag === '#EXT-X-TARGETDURATION') pl.target = parseFloat(rest) || 2;
      else if (tag === '#EXT-X-PART-INF') pl.partTarget = parseFloat(attrs(rest)['PART-TARGET']) || 0;
      else if (tag === '#EXT-X-MAP') pl.map = attrs(rest).URI || null;
      else if (tag === '#EXT-X-PART') parts.push(attrs(rest).URI);
      else if (tag === '#EXTINF') inf = true;
      else if (tag === '#EXT-X-STREAM-INF') streamInf = true;
      else if (tag === '#EXT-X-ENDLIST') pl.ended = true;
      else if (!tag) {
        if (streamInf) pl.variants.push(line);
        else if (inf) pl.segments.push({ msn: msn++, uri: line, parts });
        parts = [];
        inf = streamInf = false;
      }
    }
    if (parts.length) pl.segments.push({ msn, uri: null, parts });
    return pl;
  }

  // ---- the player ---------------------------------------------------------------------------------

  class Player {
    /** `video`: the element; `statusEl`: where the transport, its state and errors are written. */
    constructor(video, statusEl) {
      this.video = video;
      this.statusEl = statusEl;
      this.session = 0;
      this.transport = '';
      this.state = 'idle';
      this.detail = '';
      this.stats = { appended: 0, resyncs: 0, gapsSkipped: 0 };
      this.cleanups = [];
      this.notes = [];
      window.addEventListener('pagehide', () => this.stop());
    }

    setState(transport, state, detail) {
      this.transport = transport;
      this.state = state;
      this.detail = detail || '';
      const el = this.statusEl;
      if (!el) return;
      // What failed before the transport that plays now stays in view, in words.
      const earlier = state === 'failed' || !this.notes || !this.notes.length ? '' : ` after ${this.notes.join('; ')}`;
      el.textContent = `${transport || 'player'}: ${state}${detail ? ' (' + detail + ')' : ''}${earlier}`;
      el.dataset.transport = transport;
      el.dataset.state = state;
      el.classList.toggle('error', state === 'failed');
    }

    /**
     * Plays `stream`. `opts.via`: 'auto' (WebRTC, then HLS), 'webrtc' or 'hls'; `opts.query`: the
     * play credential as a query string (see authQuery).
     */
    async play(stream, opts) {
      opts = opts || {};
      this.stop();
      const id = ++this.session;
      this.stream = stream;
      const via = opts.via || 'auto';
      const order = via === 'auto' ? ['webrtc', 'hls'] : [via];
      if (!order.every((t) => NAMES[t])) {
        this.setState('', 'failed', `unknown transport ${JSON.stringify(via)}: use webrtc or hls`);
        return;
      }
      const failures = [];
      this.notes = failures;
      for (let i = 0; i < order.length; i++) {
        const t = order[i];
        const next = order[i + 1];
        let why;
        try {
          const path = streamPath(stream);
          // An attempt ends with a reason: a failure to start, or a fatal error after playing.
          why = await new Promise((resolve, reject) => {
            const att = { id, t, fail: resolve, playing: false };
            this.attempt = att;
            this[t](path, opts.query || '', att).then(() => {
              att.playing = true;
            }, reject);
          });
        } catch (e) {
          why = e instanceof PlayError ? e.message : `${e.name || 'Error'}: ${e.message}`;
        }
        if (id !== this.session) return;
        this.teardown();
        this.setState(NAMES[t], 'failed', why + (next ? `; trying ${NAMES[next]}` : ''));
        failures.push(`${NAMES[t]} failed: ${why}`);
      }
      this.setState(NAMES[order[order.length - 1]], 'failed', failures.join('; '));
    }

    /** Stops playing and releases the connection (the WHEP resource is deleted). */
    stop() {
      this.session++;
      this.notes = [];
      this.teardown();
      this.setState('', 'idle');
    }

    teardown() {
      for (const f of this.cleanups.splice(0)) {
        try {
          f();
        } catch (_) {
          /* best effort */
        }
      }
      const v = this.video;
      v.removeAttribute('src');
      v.srcObject = null;
      try {
        v.load();
      } catch (_) {
        /* nothing loaded */
      }
    }

    live(att) {
      return att.id === this.session && this.attempt === att;
    }

    /** Resolves once the picture moves (currentTime advances with a decoded size), within the deadline. */
    untilPlaying(att, name, ms) {
      const v = this.video;
      return new Promise((resolve, reject) => {
        const t0 = v.currentTime;
        const deadline = Date.now() + ms;
        const timer = setInterval(() => {
          if (!this.live(att)) {
            clearInterval(timer);
            reject(new PlayError('stopped'));
          } else if (v.videoWidth > 0 && v.currentTime > t0 + 0.04) {
            clearInterval(timer);
            this.setState(name, 'playing', `${v.videoWidth}x${v.videoHeight}`);
            resolve();
          } else if (v.error) {
            clearInterval(timer);
            reject(new PlayError(`the browser cannot decode the stream: ${v.error.message || 'code ' + v.error.code}`));
          } else if (Date.now() > deadline) {
            clearInterval(timer);
            reject(new PlayError(`no moving picture within ${ms / 1000} s`));
          } else if (v.paused && v.readyState >= 2) {
            v.play().catch(() => {});
          }
        }, 100);
        this.cleanups.push(() => clearInterval(timer));
      });
    }

    /** Marks a stalled picture, and fails the attempt when it stays frozen (`limitMs`). */
    watch(att, name, limitMs) {
      const v = this.video;
      let last = v.currentTime;
      let since = Date.now();
      const timer = setInterval(() => {
        if (!this.live(att) || !att.playing) return;
        if (v.currentTime !== last) {
          last = v.currentTime;
          since = Date.now();
          if (this.state !== 'playing') this.setState(name, 'playing', `${v.videoWidth}x${v.videoHeight}`);
        } else if (Date.now() - since > limitMs) {
          att.fail(`the picture stopped for ${Math.round(limitMs / 1000)} s`);
        } else if (Date.now() - since > 2000 && this.state === 'playing') {
          this.setState(name, 'stalled', 'waiting for media');
        }
      }, 500);
      this.cleanups.push(() => clearInterval(timer));
    }

    // ---- WebRTC (WHEP) ----

    async webrtc(path, query, att) {
      if (!window.RTCPeerConnection) throw new PlayError('this browser has no WebRTC');
      const url = new URL(path + '/whep' + query, location.href).href;
      this.setState('WebRTC', 'connecting', 'offer');
      const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
      let resource = null;
      this.cleanups.push(() => {
        pc.close();
        // The gateway frees the session at once instead of waiting for ICE to time out.
        if (resource) fetch(resource, { method: 'DELETE', keepalive: true }).catch(() => {});
      });
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.addTransceiver('audio', { direction: 'recvonly' });
      const media = new MediaStream();
      pc.ontrack = (e) => {
        media.addTrack(e.track);
        if (this.video.srcObject !== media) this.video.srcObject = media;
      };
      pc.onconnectionstatechange = () => {
        if (!this.live(att)) return;
        const s = pc.connectionState;
        if (s === 'failed') {
          att.fail('the WebRTC connection failed: no ICE path to the gateway (is its WebRTC UDP port reachable, and its advertised address right?)');
        } else if (s === 'disconnected') {
          this.setState('WebRTC', 'reconnecting', 'the connection was interrupted');
        } else if (s === 'closed') {
          att.fail('the connection was closed');
        } else if (!att.playing) {
          this.setState('WebRTC', s === 'connected' ? 'waiting for the first frame' : 'connecting', `ICE ${pc.iceConnectionState}`);
        } else if (s === 'connected') {
          this.setState('WebRTC', 'playing', `${this.video.videoWidth}x${this.video.videoHeight}`);
        }
      };
      await pc.setLocalDescription(await pc.createOffer());
      // The gateway is ICE-lite: our host candidates go in the offer, so gather them first (briefly).
      await new Promise((resolve) => {
        if (pc.iceGatheringState === 'complete') return resolve();
        const t = setTimeout(resolve, 1000);
        pc.addEventListener('icegatheringstatechange', () => {
          if (pc.iceGatheringState === 'complete') {
            clearTimeout(t);
            resolve();
          }
        });
      });
      if (!this.live(att)) throw new PlayError('stopped');
      let resp;
      try {
        resp = await fetch(url, {
          method: 'POST',
          headers: { 'Content-Type': 'application/sdp' },
          body: pc.localDescription.sdp,
          cache: 'no-store',
        });
      } catch (e) {
        throw new PlayError(`the gateway did not answer the WHEP offer (${e.message})`);
      }
      if (resp.status !== 201 && resp.status !== 200) throw await refused(resp, 'the WHEP offer was refused');
      const loc = resp.headers.get('Location');
      if (loc) resource = new URL(loc, url).href;
      const answer = await resp.text();
      try {
        await pc.setRemoteDescription({ type: 'answer', sdp: answer });
      } catch (e) {
        throw new PlayError(`the gateway's SDP answer was not accepted: ${e.message}`);
      }
      this.setState('WebRTC', 'connecting', `ICE ${pc.iceConnectionState}`);
      await this.untilPlaying(att, 'WebRTC', START_TIMEOUT_MS.webrtc);
      this.watch(att, 'WebRTC', 15000);
    }

    // ---- HLS through Media Source Extensions ----

    async hls(path, query, att) {
      const MS = window.ManagedMediaSource || window.MediaSource;
      if (!MS) throw new PlayError('this browser has no Media Source Extensions');
      const withAuth = (u) => {
        // Segment URIs are relative to the playlist; each carries the play credential of the page.
        const abs = new URL(u, location.href);
        if (query && !abs.search) abs.search = query;
        return abs.href;
      };
      const get = async (u, what, binary) => {
        let lastErr = '';
        for (let tries = 0; tries < 3; tries++) {
          if (!this.live(att)) throw new PlayError('stopped');
          try {
            const r = await fetch(u, { cache: 'no-store' });
            if (r.ok) return binary ? new Uint8Array(await r.arrayBuffer()) : await r.text();
            if (r.status === 404 && what === 'playlist') throw await refused(r, `the ${what} is not there`);
            lastErr = (await refused(r, `${what} ${new URL(u).pathname}`)).message;
            if (r.status < 500 && r.status !== 404) break;
          } catch (e) {
            if (e instanceof PlayError) throw e;
            lastErr = `${what}: ${e.message}`;
          }
          await sleep(300 * (tries + 1));
        }
        throw new PlayError(lastErr);
      };
      this.setState('HLS', 'connecting', 'playlist');
      let playlistUrl = withAuth(path + '/index.m3u8' + query);
      let pl = parsePlaylist(await get(playlistUrl, 'playlist'));
      if (pl.variants.length) {
        playlistUrl = withAuth(new URL(pl.variants[0], playlistUrl).href);
        pl = parsePlaylist(await get(playlistUrl, 'playlist'));
      }
      if (!pl.map) throw new PlayError('the playlist has no EXT-X-MAP: not fMP4, which this player needs');
      const init = await get(withAuth(new URL(pl.map, playlistUrl).href), 'init segment', true);
      const codecs = codecsOf(init);
      if (!codecs.length) throw new PlayError('the init segment names no codec this player knows');
      const mime = `video/mp4; codecs="${codecs.join(', ')}"`;
      if (!MS.isTypeSupported(mime)) throw new PlayError(`this browser cannot play ${mime}`);
      const ms = new MS();
      const objUrl = URL.createObjectURL(ms);
      this.cleanups.push(() => URL.revokeObjectURL(objUrl));
      this.video.disableRemotePlayback = true;
      this.video.src = objUrl;
      await new Promise((resolve) => ms.addEventListener('sourceopen', resolve, { once: true }));
      const sb = ms.addSourceBuffer(mime);
      const append = (data) =>
        new Promise((resolve, reject) => {
          const done = () => {
            sb.removeEventListener('updateend', done);
            sb.removeEventListener('error', fail);
            resolve();
          };
          const fail = () => {
            sb.removeEventListener('updateend', done);
            sb.removeEventListener('error', fail);
            reject(new PlayError('the browser refused a media segment'));
          };
          sb.addEventListener('updateend', done);
          sb.addEventListener('error', fail);
          try {
            sb.appendBuffer(data);
          } catch (e) {
            done();
            reject(new PlayError(`the browser refused a media segment: ${e.message}`));
          }
        });
      const trim = () =>
        new Promise((resolve) => {
          // Keep about 30 s behind the playhead: the buffer stays bounded however long one watches.
          const b = sb.buffered;
          const cut = this.video.currentTime - 30;
          if (sb.updating || !b.length || b.start(0) >= cut) return resolve();
          sb.addEventListener('updateend', () => resolve(), { once: true });
          sb.remove(0, cut);
        });
      await append(init);
      this.setState('HLS', 'connecting', `segments (${codecs.join(', ')})`);
      // Start at the newest complete segment (it begins on a keyframe), or the in-progress one.
      const start = (p) => {
        const done = p.segments.filter((s) => s.uri);
        const seg = done.length ? done[done.length - 1] : p.segments[p.segments.length - 1];
        return seg ? { msn: seg.msn, part: 0 } : null;
      };
      let next = start(pl);
      let started = false;
      const loop = async () => {
        while (this.live(att)) {
          if (!next) next = start(pl);
          let progressed = false;
          while (next && this.live(att)) {
            const seg = pl.segments.find((s) => s.msn === next.msn);
            if (!seg) {
              const first = pl.segments.length ? pl.segments[0].msn : 0;
              if (next.msn < first) {
                // We fell out of the window: start again at the newest keyframe.
                this.stats.resyncs++;
                next = start(pl);
                continue;
              }
              break; // not yet published
            }
            let uri;
            if (next.part === 0 && seg.uri) {
              uri = seg.uri;
              next = { msn: seg.msn + 1, part: 0 };
            } else if (next.part < seg.parts.length) {
              uri = seg.parts[next.part];
              next = { msn: seg.msn, part: next.part + 1 };
            } else if (seg.uri) {
              next = { msn: seg.msn + 1, part: 0 };
              continue;
            } else {
              break; // the next part is not out yet
            }
            const data = await get(withAuth(new URL(uri, playlistUrl).href), 'segment', true);
            if (!this.live(att)) return;
            await append(data);
            this.stats.appended++;
            progressed = true;
            if (this.stats.appended % 20 === 0) await trim();
          }
          const v = this.video;
          const b = sb.buffered;
          if (b.length) {
            const end = b.end(b.length - 1);
            if (!started) {
              started = true;
              v.currentTime = b.start(b.length - 1);
              v.play().catch(() => {});
            } else if (end - v.currentTime > Math.max(3, 3 * (pl.partTarget || pl.target))) {
              // Too far behind live (a stall, a background tab): jump close to the live edge.
              v.currentTime = Math.max(b.start(b.length - 1), end - 1);
            } else {
              // A hole (a lost part): skip to the next buffered range.
              for (let i = 0; i < b.length; i++) {
                if (b.start(i) > v.currentTime && b.start(i) - v.currentTime < 5 && v.readyState < 3) {
                  v.currentTime = b.start(i);
                  this.stats.gapsSkipped++;
                  break;
                }
              }
            }
          }
          if (pl.ended) return att.fail('the stream ended');
          const wait = progressed ? 50 : Math.min(2000, Math.max(100, 1000 * (pl.partTarget || pl.target / 2)));
          await sleep(wait);
          if (!this.live(att)) return;
          pl = parsePlaylist(await get(playlistUrl, 'playlist'));
        }
      };
      loop().catch((e) => {
        if (this.live(att)) att.fail(e instanceof PlayError ? e.message : `${e.name}: ${e.message}`);
      });
      await this.untilPlaying(att, 'HLS', START_TIMEOUT_MS.hls);
      this.watch(att, 'HLS', 15000);
    }
  }

  window.GbPlayer = Player;
  window.gbgate = { streamPath, authQuery, codecsOf, parsePlaylist, PlayError };
})();
