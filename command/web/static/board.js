// The live incident board: the server sends the whole board on every change and once a second (so the
// deadlines count down on the server's clock); this script only draws it. Text goes in with textContent.
"use strict";
(function () {
  const STATE_LABEL = {
    "unacknowledged": "UNACK", "acknowledged": "ACK", "returned-to-normal-unacknowledged": "CLEARED · UNACK",
    "normal": "cleared", "shelved": "SHELVED",
  };
  const rows = document.getElementById("rows");
  const shelvedRows = document.getElementById("shelved-rows");
  const live = document.getElementById("live");

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function deadlineCell(d) {
    const td = el("td", "deadline" + (d.overdue ? " overdue" : "") + (d.counting ? "" : " stopped"), d.text);
    return td;
  }

  function row(r) {
    const tr = el("tr", "state-" + r.state + " warn-" + (r.warning || "none"));
    tr.dataset.incident = r.incident_id;
    tr.dataset.state = r.state;
    tr.appendChild(el("td", "state", STATE_LABEL[r.state] || r.state));
    const w = el("td", "warning");
    w.appendChild(el("span", "chip w-" + (r.warning || "none"), (r.warning || "none").toUpperCase()));
    tr.appendChild(w);
    tr.appendChild(el("td", "level", (r.level_name || "–") + (r.projected ? " (projected)" : "")));
    tr.appendChild(el("td", "category", r.category_zh));
    const site = el("td", "site");
    const a = el("a", null, r.site);
    a.href = "/incidents/" + encodeURIComponent(r.incident_id);
    site.appendChild(a);
    site.appendChild(el("div", "iid", r.incident_id + " · rev " + r.revision));
    tr.appendChild(site);
    tr.appendChild(el("td", "num households", r.households ? r.households.toLocaleString("en") : "–"));
    tr.appendChild(deadlineCell(r.phone));
    tr.appendChild(deadlineCell(r.written));
    let ack;
    if (r.acked) ack = el("td", "ack yes", r.acked.by);
    else if (r.escalation) ack = el("td", "ack escalated", "ESCALATED ×" + r.escalation.count);
    else ack = el("td", "ack no", "not acknowledged");
    if (r.shelf) ack.appendChild(el("div", "shelf", "shelved by " + r.shelf.by + ": " + r.shelf.reason));
    tr.appendChild(ack);
    const act = el("td", "actions");
    if (!r.acked) {
      const b = el("a", "button ack-button", "Acknowledge…");
      b.href = "/incidents/" + encodeURIComponent(r.incident_id) + "/ack?back=/";
      act.appendChild(b);
    }
    tr.appendChild(act);
    return tr;
  }

  // The server's gateway line (console.gateway_status, the field console's rule and wording): the count, then
  // each silent / offline / shared gateway, the whole line in warning colours while any is; hidden when the
  // source knows no gateway (no command service).
  function drawGateways(g) {
    const line = document.getElementById("gateways");
    line.hidden = !g;
    if (!g) return;
    line.classList.toggle("bad", g.warnings.length > 0);
    line.replaceChildren(el("span", "gw-summary", g.summary), ...g.warnings.map(w => {
      const s = el("span", "gw-warning gw-" + w.kind, w.text);
      s.dataset.gateway = w.gateway;
      return s;
    }));
  }

  // The rows are drawn anew with every board, once a second at least. Two things an operator does must survive it:
  // a press on a row's control (a click is a press and a release on the same element: a row replaced in between
  // loses it), and the keyboard focus on one (tabbed to the Acknowledge link, then Enter).
  function focused() {        // [incident, class] of the focused control in a row, or null
    const a = document.activeElement;
    const tr = a && a.closest ? a.closest("tr[data-incident]") : null;
    return tr ? [tr.dataset.incident, a.className] : null;
  }

  function refocus(key) {
    if (!key) return;
    for (const tr of document.querySelectorAll("tr[data-incident]")) {
      if (tr.dataset.incident !== key[0]) continue;
      for (const c of tr.querySelectorAll("a, button")) {
        if (c.className === key[1]) { c.focus(); return; }
      }
    }
  }

  function draw(board) {
    const main = board.rows.filter(r => r.state !== "shelved");
    const shelved = board.rows.filter(r => r.state === "shelved");
    const key = focused();
    rows.replaceChildren(...main.map(row));
    shelvedRows.replaceChildren(...shelved.map(row));
    refocus(key);
    document.getElementById("empty").hidden = main.length > 0;
    document.getElementById("shelved").hidden = shelved.length === 0;
    document.getElementById("shelved-head").hidden = shelved.length === 0;
    const unack = board.rows.filter(r => r.state === "unacknowledged" || r.state === "returned-to-normal-unacknowledged").length;
    document.getElementById("counts").textContent = "· " + main.length + " shown, " + unack + " unacknowledged";
    const f = board.flood, banner = document.getElementById("flood");
    banner.hidden = !f.flood;
    if (f.flood) banner.textContent = "ALARM FLOOD: " + f.count + " alarms in the last " + Math.round(f.window_s / 60) +
      " minutes (more than " + f.start_above + "). Work the red and unacknowledged first; shelve what is understood.";
    drawGateways(board.gateways);
    const refused = document.getElementById("refused");
    refused.hidden = !board.refused;
    refused.textContent = board.refused || "";
    document.getElementById("clock").textContent = board.now_text;   // the district's time, from the server
    document.body.dataset.boardAt = String(board.now);
  }

  // While a pointer is down the boards that arrive wait (the newest is kept, body[data-pending]) and the newest is
  // drawn after the release's click has gone to the element that was pressed (a task later: setTimeout). A press
  // never holds the board longer than HOLD_MS (a release the page never saw: the pointer let go outside the
  // window), nor past the window losing focus.
  const HOLD_MS = 3000;
  let pressed = false, pressedAt = 0, pending = null;
  document.addEventListener("pointerdown", () => { pressed = true; pressedAt = Date.now(); }, true);
  const release = () => {
    pressed = false;
    setTimeout(() => {
      if (pressed || !pending) return;
      const b = pending;
      pending = null;
      delete document.body.dataset.pending;
      draw(b);
    }, 0);
  };
  document.addEventListener("pointerup", release, true);
  document.addEventListener("pointercancel", release, true);
  window.addEventListener("blur", release);

  draw(JSON.parse(document.getElementById("board-data").textContent));
  const es = new EventSource("/events");
  es.addEventListener("board", ev => {
    const b = JSON.parse(ev.data);
    if (pressed && Date.now() - pressedAt < HOLD_MS) {
      pending = b;
      document.body.dataset.pending = "1";
    } else {
      pending = null;
      delete document.body.dataset.pending;
      draw(b);
    }
    live.textContent = "live"; live.className = "live on";
  });
  es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
})();
