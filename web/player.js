'use strict';
// gbgate player: WebRTC through WHEP first, then LL-HLS (fMP4) through Media Source Extensions.
// Plain JavaScript shipped in the binary: no library, no CDN, no build step.
(function () {
  // Query parameters of the play rules ([auth] play: a key or a signed URL), passed on to every
  // media request so that a shared link carries its credential.
  const AUTH_PARAMS = ['key', 'txSecret', 'txTime'];
  const NAMES = { webrtc: 'WebRTC', hls: 'HLS', flv: 'HTTP-FLV' };
  // How long a transport may take from its first request to a moving picture.
  const START_TIMEOUT_MS = { webrtc: 10000, hls: 15000, flv: 10000 };

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
    const words = { 401: 'a credential is needed', 403: 'refused', 404: 'not found', 503: 'unavailable' };
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

  /**
   * A media playlist: {map (the last EXT-X-MAP), target, partTarget, canBlock, ended, variants,
   * segments: [{msn, uri (null while in progress), parts: [uri], map (its init segment)}]}.
   */
  function parsePlaylist(text) {
    if (!text.startsWith('#EXTM3U')) throw new PlayError('the playlist is not an M3U8 playlist');
    const pl = { map: null, target: 2, partTarget: 0, segments: [], variants: [], ended: false, canBlock: false };
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
      else if (tag === '#EXT-X-SERVER-CONTROL') pl.canBlock = attrs(rest)['CAN-BLOCK-RELOAD'] === 'YES';
      else if (tag === '#EXT-X-MAP') pl.map = attrs(rest).URI || null;
      else if (tag === '#EXT-X-PART') parts.push(attrs(rest).URI);
      else if (tag === '#EXTINF') inf = true;
      else if (tag === '#EXT-X-STREAM-INF') streamInf = true;
      else if (tag === '#EXT-X-ENDLIST') pl.ended = true;
      else if (!tag) {
        if (streamInf) pl.variants.push(line);
        else if (inf) pl.segments.push({ msn: msn++, uri: line, parts, map: pl.map });
        parts = [];
        inf = streamInf = false;
      }
    }
    if (parts.length) pl.segments.push({ msn, uri: null, parts, map: pl.map });
    return pl;
  }

  // ---- FLV to fMP4, for HTTP-FLV through Media Source Extensions ---------------------------------

  function concat(parts) {
    let n = 0;
    for (const p of parts) n += p.length;
    const out = new Uint8Array(n);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
  const u8 = (...v) => Uint8Array.from(v);
  const u16 = (v) => u8((v >> 8) & 255, v & 255);
  const u32 = (v) => u8((v >>> 24) & 255, (v >>> 16) & 255, (v >>> 8) & 255, v & 255);
  const u64 = (v) => concat([u32(Math.floor(v / 2 ** 32)), u32(v >>> 0)]);
  const ascii = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0));
  function box(type, ...parts) {
    const body = concat(parts);
    return concat([u32(body.length + 8), ascii(type), body]);
  }
  const full = (type, version, flags, ...parts) => box(type, u8(version, (flags >> 16) & 255, (flags >> 8) & 255, flags & 255), ...parts);
  const MATRIX = concat([0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000].map(u32));
  /** FLV timestamps are milliseconds: every track keeps them as they are. */
  const TIMESCALE = 1000;

  function sampleEntry(t) {
    if (t.kind === 'video') {
      const cfg = box(t.fourcc === 'avc1' ? 'avcC' : 'hvcC', t.config);
      return box(t.fourcc, new Uint8Array(6), u16(1), new Uint8Array(16), u16(t.width), u16(t.height),
        u32(0x480000), u32(0x480000), u32(0), u16(1), new Uint8Array(32), u16(0x18), u16(0xffff), cfg);
    }
    // esds: ES_Descriptor > DecoderConfigDescriptor (AAC, audio stream) > DecoderSpecificInfo (the ASC).
    const dsi = concat([u8(5, t.config.length), t.config]);
    const dcd = concat([u8(4, 13 + dsi.length, 0x40, 0x15, 0, 0, 0), u32(0), u32(0), dsi]);
    const esd = concat([u8(3, dcd.length + 6), u16(1), u8(0), dcd, u8(6, 1, 2)]);
    return box('mp4a', new Uint8Array(6), u16(1), new Uint8Array(8), u16(t.channels), u16(16), u16(0), u16(0),
      u32(((t.rate & 0xffff) * 65536) >>> 0), full('esds', 0, 0, esd));
  }

  /** An fMP4 init segment (ftyp + moov) for `tracks` ({id, kind, fourcc, config, width, height, rate, channels}). */
  function initSegment(tracks) {
    const traks = tracks.map((t) => {
      const video = t.kind === 'video';
      return box('trak',
        full('tkhd', 0, 3, u32(0), u32(0), u32(t.id), u32(0), u32(0), new Uint8Array(8), u16(0), u16(0),
          u16(video ? 0 : 0x100), u16(0), MATRIX, u32(video ? t.width * 65536 : 0), u32(video ? t.height * 65536 : 0)),
        box('mdia',
          full('mdhd', 0, 0, u32(0), u32(0), u32(TIMESCALE), u32(0), u16(0x55c4), u16(0)),
          full('hdlr', 0, 0, u32(0), ascii(video ? 'vide' : 'soun'), new Uint8Array(12), ascii('gbgate\0')),
          box('minf',
            video ? full('vmhd', 0, 1, new Uint8Array(8)) : full('smhd', 0, 0, new Uint8Array(4)),
            box('dinf', full('dref', 0, 0, u32(1), full('url ', 0, 1))),
            box('stbl', full('stsd', 0, 0, u32(1), sampleEntry(t)), full('stts', 0, 0, u32(0)),
              full('stsc', 0, 0, u32(0)), full('stsz', 0, 0, u32(0), u32(0)), full('stco', 0, 0, u32(0))))));
    });
    const mvhd = full('mvhd', 0, 0, u32(0), u32(0), u32(TIMESCALE), u32(0), u32(0x10000), u16(0x100),
      new Uint8Array(10), MATRIX, new Uint8Array(24), u32(tracks.length + 1));
    const mvex = box('mvex', ...tracks.map((t) => full('trex', 0, 0, u32(t.id), u32(1), u32(0), u32(0), u32(0))));
    return concat([box('ftyp', ascii('isom'), u32(0x200), ascii('isom'), ascii('iso6'), ascii('mp41')), box('moov', mvhd, ...traks, mvex)]);
  }

  /** One sample of track `t` as a fragment (moof + mdat). `s`: {dts, duration, cts, key, data}. */
  function fragment(seq, t, s) {
    const flags = t.kind === 'audio' || s.key ? 0x02000000 : 0x01010000;
    const moof = (offset) => box('moof', full('mfhd', 0, 0, u32(seq)),
      box('traf', full('tfhd', 0, 0x020000, u32(t.id)), full('tfdt', 1, 0, u64(s.dts)),
        full('trun', 1, 0xf01, u32(1), u32(offset), u32(s.duration), u32(s.data.length), u32(flags), u32(s.cts | 0))));
    const size = moof(0).length;
    return concat([moof(size + 8), box('mdat', s.data)]);
  }

  /** Width and height from an H.264 SPS (RBSP after the NAL header), or [0, 0]. */
  function spsSize(nal) {
    const b = [];
    for (let i = 1; i < nal.length; i++) {
      if (i > 2 && nal[i] === 3 && nal[i - 1] === 0 && nal[i - 2] === 0) continue; // emulation prevention
      b.push(nal[i]);
    }
    let pos = 0;
    const bit = () => (b[pos >> 3] >> (7 - (pos++ & 7))) & 1;
    const bits = (n) => {
      let v = 0;
      for (let i = 0; i < n; i++) v = v * 2 + bit();
      return v;
    };
    const ue = () => {
      let z = 0;
      while (bit() === 0 && z < 32) z++;
      return 2 ** z - 1 + bits(z);
    };
    const se = () => {
      const v = ue();
      return v & 1 ? (v + 1) / 2 : -v / 2;
    };
    try {
      const profile = bits(8);
      bits(16);
      ue();
      let chroma = 1;
      if ([100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135].includes(profile)) {
        chroma = ue();
        if (chroma === 3) bit();
        ue();
        ue();
        bit();
        if (bit()) {
          for (let i = 0; i < (chroma !== 3 ? 8 : 12); i++) {
            if (bit()) {
              let last = 8;
              let next = 8;
              for (let j = 0; j < (i < 6 ? 16 : 64); j++) {
                if (next !== 0) next = (last + se() + 256) % 256;
                last = next === 0 ? last : next;
              }
            }
          }
        }
      }
      ue();
      const poc = ue();
      if (poc === 0) ue();
      else if (poc === 1) {
        bit();
        se();
        se();
        const n = ue();
        for (let i = 0; i < n; i++) se();
      }
      ue();
      bit();
      const w = ue() + 1;
      const h = ue() + 1;
      const frameMbsOnly = bit();
      if (!frameMbsOnly) bit();
      bit();
      let crop = [0, 0, 0, 0];
      if (bit()) crop = [ue(), ue(), ue(), ue()];
      const cx = chroma === 0 ? 1 : 2;
      const cy = (chroma === 1 ? 2 : 1) * (2 - frameMbsOnly);
      return [w * 16 - cx * (crop[0] + crop[1]), h * 16 * (2 - frameMbsOnly) - cy * (crop[2] + crop[3])];
    } catch (_) {
      return [0, 0];
    }
  }

  /** Width and height of the first SPS of an avcC record. */
  function avcSize(avcc) {
    if (avcc.length < 8 || (avcc[5] & 0x1f) < 1) return [0, 0];
    const n = (avcc[6] << 8) | avcc[7];
    return spsSize(avcc.subarray(8, 8 + n));
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
     * Plays `stream`. `opts.via`: 'auto' (WebRTC, then HLS, then HTTP-FLV), 'webrtc', 'hls' or 'flv'; `opts.query`: the
     * play credential as a query string (see authQuery).
     */
    async play(stream, opts) {
      opts = opts || {};
      this.stop();
      const id = ++this.session;
      this.stream = stream;
      const via = opts.via || 'auto';
      const order = via === 'auto' ? ['webrtc', 'hls', 'flv'] : [via];
      if (!order.every((t) => NAMES[t])) {
        this.setState('', 'failed', `unknown transport ${JSON.stringify(via)}: use webrtc, hls or flv`);
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
      const last = failures.pop() || '';
      const why = last.slice(last.indexOf(': ') + 2);
      this.setState(NAMES[order[order.length - 1]], 'failed', why + (failures.length ? `; before: ${failures.join('; ')}` : ''));
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
        // Playing means time advancing between two looks, twice in a row (a seek is no progress).
        let prev = v.currentTime;
        let advancing = 0;
        const deadline = Date.now() + ms;
        const timer = setInterval(() => {
          const now = v.currentTime;
          advancing = now > prev && now - prev < 1 && !v.seeking && !v.paused ? advancing + 1 : 0;
          prev = now;
          if (!this.live(att)) {
            clearInterval(timer);
            reject(new PlayError('stopped'));
          } else if (v.videoWidth > 0 && advancing >= 2) {
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

    // ---- HTTP-FLV through MSE (FLV tags remuxed to fMP4 fragments in the page) ----

    async flv(path, query, att) {
      const MS = window.ManagedMediaSource || window.MediaSource;
      if (!MS) throw new PlayError('this browser has no Media Source Extensions');
      if (!window.ReadableStream) throw new PlayError('this browser cannot read a response as a stream');
      const url = new URL(path + '.flv' + query, location.href).href;
      const abort = new AbortController();
      this.cleanups.push(() => abort.abort());
      this.setState('HTTP-FLV', 'connecting', 'GET ' + new URL(url).pathname);
      let resp;
      try {
        resp = await fetch(url, { cache: 'no-store', signal: abort.signal });
      } catch (e) {
        throw new PlayError(`the gateway did not answer (${e.message})`);
      }
      if (!resp.ok) throw await refused(resp, 'the FLV request was refused');
      const reader = resp.body.getReader();
      const v = this.video;
      const tracks = { video: null, audio: null };
      let ms = null;
      let sb = null;
      let seq = 1;
      const queue = [];
      let queued = 0;
      const pump = () => {
        if (!sb || sb.updating || !queue.length) return;
        const b = sb.buffered;
        // Keep about 30 s behind the playhead, and stay near the live edge.
        if (b.length && b.start(0) < v.currentTime - 30) return sb.remove(0, v.currentTime - 30);
        if (b.length && b.end(b.length - 1) - v.currentTime > 3 && v.readyState >= 2) v.currentTime = b.end(b.length - 1) - 0.5;
        const data = queue.shift();
        queued -= data.length;
        try {
          sb.appendBuffer(data);
        } catch (e) {
          att.fail(`the browser refused the remuxed media: ${e.message}`);
        }
      };
      const push = (data) => {
        queue.push(data);
        queued += data.length;
        // A page that cannot keep up must not grow without bound.
        if (queued > 16 * 1024 * 1024) att.fail('the browser could not keep up with the stream');
        pump();
      };
      const start = async () => {
        const list = [tracks.video, tracks.audio].filter((t) => t && t.config);
        const codecs = list.map((t) =>
          t.kind === 'audio' ? aacCodec(t.config) : t.fourcc === 'avc1' ? `avc1.${hex2(t.config[1])}${hex2(t.config[2])}${hex2(t.config[3])}` : `hvc1.${hevcCodec(t.config)}`,
        );
        const mime = `video/mp4; codecs="${codecs.join(', ')}"`;
        if (!MS.isTypeSupported(mime)) throw new PlayError(`this browser cannot play ${mime}`);
        list.forEach((t, i) => {
          t.id = i + 1;
          t.ready = true;
        });
        ms = new MS();
        const objUrl = URL.createObjectURL(ms);
        this.cleanups.push(() => URL.revokeObjectURL(objUrl));
        v.src = objUrl;
        await new Promise((resolve) => ms.addEventListener('sourceopen', resolve, { once: true }));
        sb = ms.addSourceBuffer(mime);
        sb.addEventListener('updateend', pump);
        sb.addEventListener('error', () => att.fail('the browser refused the remuxed media'));
        push(initSegment(list));
        this.setState('HTTP-FLV', 'connecting', codecs.join(', '));
      };
      const aacCodec = (asc) => `mp4a.40.${asc[0] >> 3}`;
      const emit = (t, s) => {
        // A sample's duration is known when the next one arrives.
        if (t.pending) {
          const p = t.pending;
          p.duration = Math.max(1, s.dts - p.dts);
          t.lastDuration = p.duration;
          push(fragment(seq++, t, p));
        }
        t.pending = s;
      };
      const tag = async (type, ts, d) => {
        if (type === 9 && d.length > 5) {
          const ex = d[0] & 0x80;
          const key = ((d[0] >> 4) & 7) === 1;
          let fourcc;
          let kind;
          let cts = 0;
          let body;
          if (ex) {
            // Enhanced FLV: packet type in the low bits, then a FourCC.
            const pt = d[0] & 0x0f;
            fourcc = String.fromCharCode(d[1], d[2], d[3], d[4]);
            kind = pt === 0 ? 'config' : pt === 1 || pt === 3 ? 'frame' : 'other';
            const off = pt === 1 ? 8 : 5;
            if (pt === 1) cts = ((d[5] << 16) | (d[6] << 8) | d[7]) << 8 >> 8;
            body = d.subarray(off);
          } else {
            const codec = d[0] & 0x0f;
            fourcc = codec === 7 ? 'avc1' : codec === 12 ? 'hvc1' : '';
            kind = d[1] === 0 ? 'config' : d[1] === 1 ? 'frame' : 'other';
            cts = ((d[2] << 16) | (d[3] << 8) | d[4]) << 8 >> 8;
            body = d.subarray(5);
          }
          if (fourcc !== 'avc1' && fourcc !== 'hvc1') throw new PlayError(`the FLV video codec (${fourcc || 'id ' + (d[0] & 15)}) cannot be played here`);
          if (kind === 'config') {
            if (!tracks.video) {
              const [w, h] = fourcc === 'avc1' ? avcSize(body) : [0, 0];
              tracks.video = { kind: 'video', fourcc, config: body.slice(), width: w, height: h };
            }
          } else if (kind === 'frame' && tracks.video) {
            if (!sb) await start();
            if (tracks.video.ready) emit(tracks.video, { dts: ts, cts, key, data: body.slice() });
          }
        } else if (type === 8 && d.length > 2) {
          if (d[0] >> 4 !== 10) return; // not AAC: the gateway sends AAC (or nothing) in FLV
          if (d[1] === 0 && !tracks.audio) {
            const asc = d.slice(2);
            const rates = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];
            const rate = rates[((asc[0] & 7) << 1) | (asc[1] >> 7)] || 44100;
            tracks.audio = { kind: 'audio', config: asc, rate, channels: (asc[1] >> 3) & 15 || 1 };
          } else if (d[1] === 1 && tracks.audio && tracks.audio.ready) {
            emit(tracks.audio, { dts: ts, cts: 0, key: true, data: d.slice(2) });
          }
        }
      };
      const read = async () => {
        let buf = new Uint8Array(0);
        let pos = 0;
        let header = false;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return att.fail('the gateway ended the stream');
          if (!this.live(att)) return;
          buf = concat([buf.subarray(pos), value]);
          pos = 0;
          if (!header) {
            if (buf.length < 13) continue;
            if (buf[0] !== 0x46 || buf[1] !== 0x4c || buf[2] !== 0x56) throw new PlayError('the answer is not FLV');
            pos = ((buf[5] << 24) | (buf[6] << 16) | (buf[7] << 8) | buf[8]) + 4;
            header = true;
          }
          while (buf.length - pos >= 11) {
            const size = (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3];
            if (buf.length - pos < 11 + size + 4) break;
            const ts = ((buf[pos + 7] << 24) | (buf[pos + 4] << 16) | (buf[pos + 5] << 8) | buf[pos + 6]) >>> 0;
            await tag(buf[pos] & 0x1f, ts, buf.subarray(pos + 11, pos + 11 + size));
            pos += 11 + size + 4;
          }
        }
      };
      read().catch((e) => {
        if (this.live(att) && e.name !== 'AbortError') att.fail(e instanceof PlayError ? e.message : `${e.name}: ${e.message}`);
      });
      await this.untilPlaying(att, 'HTTP-FLV', START_TIMEOUT_MS.flv);
      this.watch(att, 'HTTP-FLV', 15000);
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
            if (r.ok) return binary ? new Uint8Array(await r.arrayBuffer()) : { text: await r.text(), url: r.url || u };
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
      // The playlist's own URL as the gateway answered it (after a redirect): reloads go there.
      let playlistUrl = withAuth(path + '/index.m3u8' + query);
      const load = async (u) => {
        const r = await get(u, 'playlist');
        playlistUrl = r.url;
        return parsePlaylist(r.text);
      };
      let pl = await load(playlistUrl);
      if (pl.variants.length) pl = await load(withAuth(new URL(pl.variants[0], playlistUrl).href));
      const first = pl.segments.length ? pl.segments[pl.segments.length - 1].map : pl.map;
      if (!first) throw new PlayError('the playlist has no EXT-X-MAP: not fMP4, which this player needs');
      const mimeOf = (init) => {
        const codecs = codecsOf(init);
        if (!codecs.length) throw new PlayError('the init segment names no codec this player knows');
        const mime = `video/mp4; codecs="${codecs.join(', ')}"`;
        if (!MS.isTypeSupported(mime)) throw new PlayError(`this browser cannot play ${mime}`);
        return mime;
      };
      let map = first;
      const init = await get(withAuth(new URL(map, playlistUrl).href), 'init segment', true);
      let mime = mimeOf(init);
      const codecs = [mime.slice(mime.indexOf('"') + 1, -1)];
      const ms = new MS();
      const objUrl = URL.createObjectURL(ms);
      this.cleanups.push(() => URL.revokeObjectURL(objUrl));
      this.video.disableRemotePlayback = true;
      this.video.src = objUrl;
      await new Promise((resolve) => ms.addEventListener('sourceopen', resolve, { once: true }));
      const sb = ms.addSourceBuffer(mime);
      this.mse = { ms, sb, log: [] };
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
            if (seg.map && seg.map !== map) {
              // A new init segment (the source's codec or size changed): switch the buffer to it.
              const next = await get(withAuth(new URL(seg.map, playlistUrl).href), 'init segment', true);
              const m = mimeOf(next);
              if (m !== mime && sb.changeType) sb.changeType(m);
              await append(next);
              map = seg.map;
              mime = m;
            }
            const data = await get(withAuth(new URL(uri, playlistUrl).href), 'segment', true);
            this.mse.log.push(`${uri.split('?')[0]} ${data.length}`);
            if (this.mse.log.length > 50) this.mse.log.shift();
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
            // Stay about three parts (LL-HLS's hold-back) or one segment behind the newest media.
            const holdBack = pl.partTarget ? 3 * pl.partTarget : pl.target;
            if (!started) {
              started = true;
              v.currentTime = Math.max(b.start(b.length - 1), end - holdBack);
              v.play().catch(() => {});
            } else if (end - v.currentTime > holdBack + 2) {
              // Too far behind live (a stall, a background tab): jump back to the live edge.
              v.currentTime = Math.max(b.start(b.length - 1), end - holdBack);
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
          if (pl.canBlock && next) {
            // LL-HLS blocking reload: the gateway answers once the part we need next exists.
            const u = new URL(playlistUrl);
            u.searchParams.set('_HLS_msn', String(next.msn));
            u.searchParams.set('_HLS_part', String(next.part));
            const r = await get(u.href, 'playlist');
            pl = parsePlaylist(r.text);
          } else {
            await sleep(progressed ? 50 : Math.min(2000, Math.max(100, 1000 * (pl.partTarget || pl.target / 2))));
            if (!this.live(att)) return;
            pl = await load(playlistUrl);
          }
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
