'use strict';
// /play?stream=<name>[&via=webrtc|hls][&key=...|&txSecret=...&txTime=...]: the shareable player page.
(function () {
  const params = new URLSearchParams(location.search);
  const stream = params.get('stream') || '';
  document.getElementById('player-title').textContent = stream;
  document.title = `${stream} · gbgate`;
  const player = new window.GbPlayer(document.getElementById('video'), document.getElementById('player-status'));
  window.gbPlayer = player;
  if (!stream) {
    player.setState('', 'failed', 'no stream given: open /play?stream=<name>');
    return;
  }
  player.play(stream, { via: params.get('via') || 'auto', query: window.gbgate.authQuery(location.search) });
})();
