// The map redraws itself (server-side SVG) when the board changes; no tiles, nothing from outside.
"use strict";
(function () {
  const box = document.getElementById("map");
  const hl = box.dataset.highlight;
  let last = null, busy = false;
  const es = new EventSource("/events");
  es.addEventListener("board", async ev => {
    const b = JSON.parse(ev.data);
    const sig = JSON.stringify(b.rows.map(r => [r.incident_id, r.revision, r.state]));
    if (sig === last || busy) return;
    busy = true;
    try {
      const r = await fetch("/map.svg" + (hl ? "?incident=" + encodeURIComponent(hl) : ""));
      if (r.ok) { box.innerHTML = await r.text(); last = sig; }
    } finally { busy = false; }
  });
})();
