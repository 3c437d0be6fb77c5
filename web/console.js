'use strict';
// gbgate console: devices, their catalogs, channels and streams with live counters, and a player.
// It reads the read-only console API of the HTTP listener (/console/api/v1/..., D141), which
// applies the API's own rules: the [api] token when one is set (typed once, kept in this tab's
// sessionStorage), loopback only when none is.
(function () {
  const API = '/console/api/v1/';
  const REFRESH_MS = 2000;
  const TOKEN_KEY = 'gbgate.token';
  const $ = (id) => document.getElementById(id);

  /** An element with text children only: nothing from the gateway is ever parsed as HTML. */
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'onclick') e.addEventListener('click', v);
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    return e;
  }

  class Unauthorized extends Error {}

  async function api(path) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    const r = await fetch(API + path, { headers, cache: 'no-store' });
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      /* not JSON */
    }
    if (r.status === 401 || r.status === 403) throw new Unauthorized((body && body.error) || `HTTP ${r.status}`);
    if (!r.ok) {
      const e = new Error((body && body.error) || `HTTP ${r.status}`);
      e.status = r.status;
      throw e;
    }
    return body;
  }

  function age(unix) {
    if (!unix) return '-';
    const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
    return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
  }

  function since(rfc3339) {
    const t = Date.parse(rfc3339);
    return Number.isNaN(t) ? '-' : age(t / 1000);
  }

  function playLink(stream) {
    return `/play?stream=${encodeURIComponent(stream)}`;
  }

  // ---- player ----
  const player = new window.GbPlayer($('video'), $('player-status'));
  window.gbPlayer = player;

  function openPlayer(stream) {
    $('player-section').hidden = false;
    $('player-title').textContent = stream;
    $('player-link').href = playLink(stream);
    player.play(stream, { via: 'auto' });
    $('player-section').scrollIntoView({ block: 'nearest' });
  }
  $('player-close').addEventListener('click', () => {
    player.stop();
    $('player-section').hidden = true;
  });

  function playButtons(stream) {
    return el(
      'td',
      {},
      el('button', { type: 'button', onclick: () => openPlayer(stream), 'data-play': stream }, 'play'),
      ' ',
      el('a', { href: playLink(stream), target: '_blank', rel: 'noopener', class: 'button' }, 'link'),
    );
  }

  // ---- tables ----
  // A gateway may hold thousands of cameras: each table shows at most this many rows, and the
  // filter box narrows them.
  const MAX_ROWS = 300;
  const wanted = () => $('filter').value.trim().toLowerCase();
  const matches = (q, ...texts) => !q || texts.some((t) => String(t || '').toLowerCase().includes(q));
  function capped(rows, countId, total, shown) {
    $(countId).textContent = rows.length > MAX_ROWS ? `(${total}; showing ${MAX_ROWS} of ${shown}: use the filter)` : `(${total}${shown !== total ? `, ${shown} shown` : ''})`;
    return rows.slice(0, MAX_ROWS);
  }
  const lastBytes = new Map(); // stream name -> [bytes_in, ms], for the input rate
  const rates = new Map(); // stream name -> kbit/s, from the last two answers

  function renderStreams(all, fresh) {
    const now = Date.now();
    const q = wanted();
    const list = all.filter((s) => matches(q, s.name, s.source && s.source.peer));
    const rows = list.map((s) => {
      const v = s.video;
      const a = s.audio;
      if (fresh) {
        const prev = lastBytes.get(s.name);
        if (prev && now > prev[1]) rates.set(s.name, (((s.bytes_in - prev[0]) * 8) / (now - prev[1])).toFixed(0));
        lastBytes.set(s.name, [s.bytes_in, now]);
      }
      const rate = rates.get(s.name) || '-';
      const players = Object.entries(s.players || {})
        .map(([p, n]) => `${p} ${n}`)
        .join(', ');
      return el(
        'tr',
        { 'data-stream': s.name },
        el('td', {}, s.name),
        el('td', {}, s.source ? `${s.source.transport} ${s.source.peer}` : '-'),
        el('td', {}, v ? `${v.codec} ${v.width}x${v.height} ${Number(v.fps || 0).toFixed(1)} fps` : '-'),
        el('td', {}, a ? `${a.codec} ${a.sample_rate} Hz` : '-'),
        el('td', { class: 'num' }, rate),
        el('td', { class: 'num' }, s.lost),
        el('td', {}, players || '0'),
        el('td', { class: 'num' }, s.drops),
        el('td', {}, since(s.started_at)),
        playButtons(s.name),
      );
    });
    for (const k of lastBytes.keys()) {
      if (!all.some((s) => s.name === k)) {
        lastBytes.delete(k);
        rates.delete(k);
      }
    }
    $('streams').tBodies[0].replaceChildren(...capped(rows, 'streams-count', all.length, list.length));
  }

  function renderDevices(list) {
    const q = wanted();
    const rows = [];
    let shown = 0;
    for (const d of list) {
      const all = d.channels || [];
      const self = matches(q, d.id, d.info && d.info.name, d.addr);
      const channels = self ? all : all.filter((c) => matches(q, c.device_id, c.name));
      if (!self && !channels.length) continue;
      shown++;
      rows.push(
        el(
          'tr',
          { 'data-device': d.id },
          el('td', {}, d.id),
          el('td', {}, (d.info && d.info.name) || ''),
          el('td', { class: d.online ? 'online' : 'offline' }, d.online ? 'online' : 'offline'),
          el('td', {}, d.transport),
          el('td', {}, d.addr),
          el('td', {}, age(d.last_keepalive)),
          el('td', { class: 'num' }, all.length),
          el('td', {}),
        ),
      );
      for (const c of channels) {
        rows.push(
          el(
            'tr',
            { class: 'catalog', 'data-channel': c.device_id },
            el('td', {}, c.device_id),
            el('td', {}, c.name),
            el('td', { class: c.online ? 'online' : 'offline' }, c.online ? 'on' : 'off'),
            el('td', { class: 'muted' }, [c.manufacturer, c.model].filter(Boolean).join(' ')),
            el('td', { class: 'muted' }, c.address || ''),
            el('td', {}),
            el('td', {}),
            // Playing a catalog channel makes the gateway INVITE it on demand (gb/<channel id>).
            playButtons(`gb/${c.device_id}`),
          ),
        );
      }
    }
    $('devices').tBodies[0].replaceChildren(...capped(rows, 'devices-count', list.length, shown));
    $('devices-count').textContent += ` ${list.filter((d) => d.online).length} online`;
  }

  function renderChannels(all) {
    const q = wanted();
    const list = all.filter((c) => matches(q, c.id, c.stream));
    const rows = list.map((c) =>
      el(
        'tr',
        { 'data-channel-id': c.id },
        el('td', {}, c.id),
        el('td', {}, c.stream),
        // `{"rtsp": {...}}`: the source kind is the one key.
        el('td', {}, c.source ? Object.keys(c.source).join(' ') : '-'),
        el('td', {}, c.state),
        el('td', { class: 'muted' }, c.reason || ''),
        el('td', {}, since(c.since)),
        playButtons(c.stream),
      ),
    );
    $('channels').tBodies[0].replaceChildren(...capped(rows, 'channels-count', all.length, list.length));
  }

  // ---- refresh ----
  const last = {}; // path -> [render, body]: the filter re-renders without asking again
  async function section(path, render, errorId, sectionId) {
    try {
      const body = await api(path);
      last[path] = [render, body];
      render(body, true);
      $(errorId).textContent = '';
      if (sectionId) $(sectionId).hidden = false;
      return true;
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
      if (sectionId && e.status === 404) {
        // No channel layer in this gateway: nothing to show.
        $(sectionId).hidden = true;
        return true;
      }
      if (e.status === 503 && path === 'devices') {
        $(errorId).textContent = 'GB28181 signalling is off in this gateway ([sip] enabled = false)';
        render({ devices: [] });
        return true;
      }
      $(errorId).textContent = `cannot read ${path}: ${e.message}`;
      return false;
    }
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      await Promise.all([
        section('streams', (b, fresh) => renderStreams(b.streams || [], fresh), 'streams-error'),
        section('devices', (b) => renderDevices(b.devices || []), 'devices-error'),
        section('channels', (b) => renderChannels(b.channels || []), 'channels-error', 'channels-section'),
      ]);
      $('auth').hidden = true;
      $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
      document.body.dataset.loaded = 'true';
    } catch (e) {
      if (!(e instanceof Unauthorized)) throw e;
      $('auth').hidden = false;
      $('auth-error').textContent = sessionStorage.getItem(TOKEN_KEY) ? `the gateway refused: ${e.message}` : e.message;
      $('updated').textContent = 'needs the API token';
      return; // wait for the token form
    }
    if (!document.hidden) timer = setTimeout(refresh, REFRESH_MS);
  }

  $('filter').addEventListener('input', () => {
    for (const [render, body] of Object.values(last)) render(body, false);
  });
  // A hidden tab does not poll; it catches up when shown again.
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) refresh();
  });

  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    $('token').value = '';
    refresh();
  });

  refresh();
})();
