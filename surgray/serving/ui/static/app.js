// surgray review page: plain JS, no build step. Tracking goes through the /v1 session API;
// the page keeps every frame (JPEG) and every mask (COCO RLE) in memory.
"use strict";

const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
  "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3"];
const $ = (id) => document.getElementById(id);

const S = {
  token: sessionStorage.getItem("surgray-token") || "",
  me: null,
  mode: "live",
  name: "",
  frames: [],      // {b64, img}
  width: 0, height: 0, fps: 24,
  cur: 0,
  masks: [],       // per frame: {obj_id: {rle, score, state, bits}}
  objects: new Map(), // obj_id -> {obj_id, label, text, color}
  selected: null,
  newObject: false,
  clicks: [],      // {frame, obj_id, x, y, label, box, before, created}
  run: null,       // {gen, sid, offset, next, only, idmap, done}
  gen: 0,
  paused: true,
  live: { videoId: null, revision: 0 },
  review: { source: null, videoId: null, revision: 0, latest: 0, fixes: new Map(), rows: [], sortKey: "worst_object_score", sortAsc: true },
};
window.surgray = S; // for tests and curious users

// ---------------------------------------------------------------- HTTP
function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (S.token) h["Authorization"] = "Bearer " + S.token;
  return h;
}
async function api(method, path, body, extraHeaders) {
  const init = { method, headers: headers(extraHeaders) };
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof ArrayBuffer || body instanceof File) init.body = body;
    else { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  }
  const res = await fetch(path, init);
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
  if (!res.ok) {
    const err = new Error((data && data.message) || res.statusText);
    err.status = res.status; err.code = data && data.error;
    throw err;
  }
  return data;
}
function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = kind || "";
}
function fail(err) {
  console.error(err);
  if (err.status === 401) { status("Sign-in needed: the token was not accepted (" + err.message + ")", "error"); showLogin(true); return; }
  const prefix = err.status === 409 ? "Conflict: " : "Error: ";
  status(prefix + err.message, "error");
}

// ---------------------------------------------------------------- RLE
function rleCounts(rle) {
  if (Array.isArray(rle.counts)) return rle.counts;
  const s = rle.counts, counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1, c = 0;
    while (more) {
      c = s.charCodeAt(p) - 48; x |= (c & 0x1f) << (5 * k); more = c & 0x20; p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}
function decodeRle(rle) { // row-major Uint8Array of height*width
  const [h, w] = rle.size, out = new Uint8Array(h * w), counts = rleCounts(rle);
  let pos = 0, val = 0;
  for (const n of counts) {
    if (val) for (let i = pos; i < pos + n; i++) { const x = Math.floor(i / h), y = i - x * h; out[y * w + x] = 1; }
    pos += n; val = 1 - val;
  }
  return out;
}
function bitsOf(m) { if (!m.bits) m.bits = decodeRle(m.rle); return m.bits; }
function bboxOf(m) {
  const bits = bitsOf(m), w = S.width, h = S.height;
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (bits[y * w + x]) {
    if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
  }
  return x1 < 0 ? null : [x0, y0, x1 + 1, y1 + 1];
}
function hex(c) { return [1, 3, 5].map((i) => parseInt(c.substr(i, 2), 16)); }
function colorOf(id) { return COLORS[(id - 1 + COLORS.length) % COLORS.length]; }

// ---------------------------------------------------------------- drawing
function layout() {
  const stage = $("stage"), W = stage.clientWidth, H = stage.clientHeight;
  if (!S.width) return;
  const scale = Math.min(W / S.width, H / S.height);
  const w = Math.round(S.width * scale), h = Math.round(S.height * scale);
  const left = Math.round((W - w) / 2), top = Math.round((H - h) / 2);
  for (const id of ["frame", "overlay"]) {
    const c = $(id); c.width = S.width; c.height = S.height;
    Object.assign(c.style, { width: w + "px", height: h + "px", left: left + "px", top: top + "px" });
  }
  const m = $("marks"); m.width = w; m.height = h;
  Object.assign(m.style, { left: left + "px", top: top + "px" });
  S.scale = scale;
  draw();
}
function draw() {
  const n = S.frames.length;
  $("placeholder").hidden = n > 0;
  if (!n) return;
  const f = S.frames[S.cur];
  const ctx = $("frame").getContext("2d");
  if (f.img.complete) ctx.drawImage(f.img, 0, 0); else f.img.onload = () => draw();
  const ov = $("overlay").getContext("2d"), data = ov.createImageData(S.width, S.height);
  const masks = S.masks[S.cur] || {};
  for (const id of Object.keys(masks).map(Number).sort((a, b) => a - b)) {
    const m = masks[id];
    if (!S.objects.has(id)) continue;
    const [r, g, b] = hex(S.objects.get(id).color), bits = bitsOf(m);
    for (let i = 0; i < bits.length; i++) if (bits[i]) {
      data.data[4 * i] = r; data.data[4 * i + 1] = g; data.data[4 * i + 2] = b; data.data[4 * i + 3] = 140;
    }
  }
  ov.putImageData(data, 0, 0);
  drawMarks();
  $("scrub").max = String(n - 1); $("scrub").value = String(S.cur);
  const tracked = S.masks.filter((m) => m && Object.keys(m).length).length;
  $("frame-label").textContent = `Frame ${S.cur + 1} of ${n}` + (tracked ? ` · ${tracked} with masks` : "");
  renderObjects();
}
function drawMarks(drag) {
  const c = $("marks"), ctx = c.getContext("2d"), s = S.scale || 1;
  ctx.clearRect(0, 0, c.width, c.height);
  for (const k of S.clicks) {
    if (k.frame !== S.cur) continue;
    if (k.box) {
      ctx.strokeStyle = colorOf(k.obj_id); ctx.lineWidth = 2;
      ctx.strokeRect(k.box[0] * s, k.box[1] * s, (k.box[2] - k.box[0]) * s, (k.box[3] - k.box[1]) * s);
      continue;
    }
    ctx.beginPath(); ctx.arc(k.x * s, k.y * s, 7, 0, 2 * Math.PI);
    ctx.fillStyle = k.label ? "#1a8c3a" : "#c0392b"; ctx.fill();
    ctx.lineWidth = 2; ctx.strokeStyle = "#fff"; ctx.stroke();
    ctx.fillStyle = "#fff"; ctx.font = "bold 12px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
    ctx.fillText(k.label ? "+" : "−", k.x * s, k.y * s + 1);
  }
  if (drag) { ctx.strokeStyle = "#ffd400"; ctx.setLineDash([5, 3]); ctx.strokeRect(drag[0], drag[1], drag[2] - drag[0], drag[3] - drag[1]); ctx.setLineDash([]); }
}
function renderObjects() {
  const body = $("objects").querySelector("tbody");
  const masks = S.masks[S.cur] || {};
  const rows = [];
  for (const o of S.objects.values()) {
    const m = masks[o.obj_id];
    const visible = m && bitsOf(m).some((v) => v);
    const score = visible ? m.score.toFixed(2) : "–";
    const state = m ? (m.state || (visible ? "tracking" : "lost")) : (o.text ? "searching" : "–");
    rows.push(`<tr data-id="${o.obj_id}" class="${S.selected === o.obj_id ? "selected" : ""}">` +
      `<td><span class="swatch" style="background:${o.color}"></span> ${o.obj_id}</td>` +
      `<td><input class="name" data-id="${o.obj_id}" value="${escapeHtml(o.label || "")}" placeholder="name / category"></td>` +
      `<td><span class="state ${state}">${state}</span></td><td>${score}</td></tr>`);
  }
  const html = rows.join("") || `<tr><td colspan="4" class="small">No objects yet: type a description or click on the image.</td></tr>`;
  if (body.dataset.html !== html && !body.contains(document.activeElement)) { body.innerHTML = html; body.dataset.html = html; }
}
function escapeHtml(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }
function progress() {
  const n = S.frames.length, r = S.run;
  let text = "", pct = 0;
  if (r && !r.done) { pct = (100 * r.next) / n; text = S.paused ? `Paused at frame ${r.next} of ${n} (Space or Play continues)` : `Tracking frame ${r.next + 1} of ${n}…`; }
  else if (r && r.done) { pct = 100; text = `Tracked to the end (${n} frames)` + (r.wall ? ` in ${r.wall.toFixed(1)} s` : ""); }
  $("bar").style.width = pct + "%"; $("progress-text").textContent = text;
  $("play").innerHTML = S.paused ? "&#9654; Play" : "&#10074;&#10074; Pause";
  updateSave();
}

// ---------------------------------------------------------------- loading clips
function setClip(clip, name) {
  stopRun();
  S.name = name; S.width = clip.width; S.height = clip.height; S.fps = clip.fps || 24;
  S.frames = clip.frames.map((b64) => { const img = new Image(); img.src = "data:image/jpeg;base64," + b64; return { b64, img }; });
  S.masks = S.frames.map(() => ({}));
  S.objects = new Map(); S.clicks = []; S.selected = null; S.cur = 0; S.run = null; S.paused = true;
  S.live = { videoId: null, revision: 0 };
  Promise.all(S.frames.map((f) => f.img.decode().catch(() => null))).then(() => { layout(); });
  layout(); progress();
}
async function loadDemo(seed) {
  try {
    status(`Loading demo clip ${seed + 1}…`);
    const clip = await api("GET", `/ui/api/demo-clips/${seed}`);
    setClip(clip, clip.name);
    showSuggestions(clip.expressions);
    status(`Demo clip ${seed + 1}: ${clip.num_frames} frames. Type what to find, or click on an instrument.`, "ok");
  } catch (e) { fail(e); }
}
async function upload(file) {
  try {
    status(`Uploading ${file.name}…`);
    const clip = await api("POST", `/ui/api/clips?name=${encodeURIComponent(file.name)}`, file, { "Content-Type": file.type || "video/mp4" });
    setClip(clip, file.name.replace(/\.[^.]*$/, ""));
    showSuggestions([]);
    status(`${file.name}: ${clip.num_frames} frames. Type what to find, or click on an instrument.`, "ok");
  } catch (e) { fail(e); }
}
function showSuggestions(list) {
  const el = $("suggestions");
  el.innerHTML = list.length ? "Try: " + list.slice(0, 4).map((t) => `<span class="suggestion">${escapeHtml(t)}</span>`).join("") : "";
}

// ---------------------------------------------------------------- tracking runs
function stopRun() {
  S.gen++;
  if (S.run && S.run.sid) api("DELETE", `/v1/sessions/${S.run.sid}`, undefined, { "X-Session-Id": S.run.sid }).catch(() => {});
  S.run = null;
}
function snapshot(k) { const out = {}; for (const [id, m] of Object.entries(S.masks[k] || {})) out[id] = m; return out; }

// Objects to re-create at frame k: masks for the others, box + clicks for corrected ones.
function promptsAt(k, only, extraExpressions) {
  const objects = [], expressions = [...(extraExpressions || [])];
  const clicksHere = S.clicks.filter((c) => c.frame === k);
  for (const o of S.objects.values()) {
    if (only !== null && o.obj_id !== only) continue;
    const mine = clicksHere.filter((c) => c.obj_id === o.obj_id);
    const before = mine.length ? mine[0].before[o.obj_id] : (S.masks[k] || {})[o.obj_id];
    const hasMask = before && bitsOf(before).some((v) => v);
    if (mine.length) {
      const obj = { obj_id: o.obj_id, points: [], point_labels: [], label: o.label || null };
      for (const c of mine) { if (c.box) obj.box = c.box; else { obj.points.push([c.x, c.y]); obj.point_labels.push(c.label); } }
      if (!obj.box && hasMask) { const b = bboxOf(before); obj.box = b; }
      if (!obj.box && !obj.point_labels.includes(1)) continue; // background clicks alone cannot start an object
      objects.push(obj);
    } else if (hasMask) {
      objects.push({ obj_id: o.obj_id, mask: before.rle, label: o.label || null });
    } else if (o.text && !expressions.includes(o.label)) {
      expressions.push(o.label);
    }
  }
  return { objects, expressions };
}

async function trackFrom(k, only, extraExpressions) {
  stopRun();
  const gen = S.gen, n = S.frames.length;
  const { objects, expressions } = promptsAt(k, only, extraExpressions);
  if (!objects.length && !expressions.length) { draw(); progress(); return; }
  const run = { gen, sid: null, offset: k, next: k, only, idmap: {}, done: false, started: performance.now() };
  S.run = run;
  // What this run recomputes disappears first, so stale masks are never shown as new.
  const ids = new Set(objects.map((o) => o.obj_id));
  for (let f = k; f < n; f++) for (const id of ids) delete S.masks[f][id];
  for (const o of S.objects.values()) if (o.text && expressions.includes(o.label)) for (let f = k; f < n; f++) delete S.masks[f][o.obj_id];
  try {
    const info = await api("POST", "/v1/sessions", { objects, expressions });
    run.sid = info.session_id;
    S.lastSession = run.sid;
    if (gen !== S.gen) { api("DELETE", `/v1/sessions/${run.sid}`, undefined, { "X-Session-Id": run.sid }).catch(() => {}); return; }
    info.expressions.forEach((text, i) => {
      const existing = [...S.objects.values()].find((o) => o.text && o.label === text);
      const id = existing ? existing.obj_id : freeId(info.obj_ids[i]);
      run.idmap[info.obj_ids[i]] = id;
      if (!existing) S.objects.set(id, { obj_id: id, label: text, text: true, color: colorOf(id) });
    });
    S.paused = false;
    progress();
    await pump(run);
  } catch (e) { if (gen === S.gen) { S.paused = true; progress(); fail(e); } }
}
function freeId(wanted) {
  let id = wanted;
  while (S.objects.has(id) && !S.objects.get(id).text) id++;
  return id;
}
async function pump(run) {
  const n = S.frames.length;
  while (run.gen === S.gen && run.next < n) {
    if (S.paused) { await sleep(80); continue; }
    const f = run.next, blob = b64Blob(S.frames[f].b64);
    const result = await api("POST", `/v1/sessions/${run.sid}/frames`, blob, { "Content-Type": "image/jpeg", "X-Session-Id": run.sid });
    if (run.gen !== S.gen) return;
    for (const o of result.objects) {
      const id = run.idmap[o.obj_id] !== undefined ? run.idmap[o.obj_id] : o.obj_id;
      if (run.only !== null && id !== run.only) continue;
      S.masks[f][id] = { rle: o.rle, score: o.score, state: o.state };
      if (!S.objects.has(id)) S.objects.set(id, { obj_id: id, label: o.label || "", text: false, color: colorOf(id) });
    }
    run.next = f + 1;
    if (S.follow !== false) S.cur = f;
    if (S.cur === f) draw();
    progress();
  }
  if (run.gen === S.gen) {
    run.done = true; run.wall = (performance.now() - run.started) / 1000;
    S.paused = true;
    api("DELETE", `/v1/sessions/${run.sid}`, undefined, { "X-Session-Id": run.sid }).catch(() => {});
    run.sid = null;
    progress(); draw();
    status(`Tracked frames ${run.offset + 1}–${n}. Scrub to check; click on any frame to correct.`, "ok");
  }
}
function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
function b64Blob(b64) {
  const bin = atob(b64), bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type: "image/jpeg" });
}

// ---------------------------------------------------------------- prompts from the page
function nextObjectId() { let id = 1; while (S.objects.has(id)) id++; return id; }
function addClick(x, y, label, box) {
  if (!S.frames.length) return;
  if (S.mode === "review" && !S.review.hasFrames) { status("This video's frames are not available, so it cannot be re-tracked.", "error"); return; }
  let id = S.selected;
  let created = false;
  if (id === null || S.newObject) {
    if (S.mode === "review" && !S.newObject) { status("Select the object to correct in the list first (or + New object).", "error"); return; }
    if (!label && !box) { status("Start a new object with an include click or a box.", "error"); return; }
    id = nextObjectId(); created = true;
    S.objects.set(id, { obj_id: id, label: `object ${id}`, text: false, color: colorOf(id) });
    S.selected = id; S.newObject = false;
  }
  const k = S.cur;
  S.clicks.push({ frame: k, obj_id: id, x, y, label, box, before: snapshot(k), created });
  S.follow = true;
  if (S.mode === "review") noteFix(id, k);
  trackFrom(k, S.mode === "review" ? id : null);
}
function noteFix(id, k) {
  const fix = S.review.fixes.get(id) || { from_frame: k, prompts: [] };
  fix.from_frame = Math.min(fix.from_frame, k);
  const c = S.clicks[S.clicks.length - 1];
  fix.prompts.push(c.box ? { frame: k, box: c.box } : { frame: k, point: [c.x, c.y], label: c.label });
  S.review.fixes.set(id, fix);
}
function undo() {
  const c = S.clicks.pop();
  if (!c) { status("Nothing to undo."); return; }
  S.masks[c.frame] = Object.assign({}, c.before);
  if (c.created) { S.objects.delete(c.obj_id); if (S.selected === c.obj_id) S.selected = null; }
  if (S.mode === "review") {
    const fix = S.review.fixes.get(c.obj_id);
    if (fix) { fix.prompts.pop(); if (!fix.prompts.length) S.review.fixes.delete(c.obj_id); }
  }
  S.cur = c.frame;
  status(`Undid the ${c.box ? "box" : c.label ? "include click" : "exclude click"} on frame ${c.frame + 1}; tracking again from there.`);
  trackFrom(c.frame, S.mode === "review" ? c.obj_id : null);
}
function findExpression(text) {
  text = text.trim();
  if (!text || !S.frames.length) return;
  if (S.me && !S.me.text_prompts) { status("This server's model cannot take text; click on the object instead.", "error"); return; }
  S.follow = true;
  trackFrom(S.cur, null, [text]);
}

// ---------------------------------------------------------------- transport
function go(k) {
  if (!S.frames.length) return;
  S.cur = Math.max(0, Math.min(S.frames.length - 1, k));
  S.follow = false;
  draw();
}
function togglePlay() {
  if (!S.frames.length) return;
  S.paused = !S.paused;
  if (!S.paused) { S.follow = true; if (!(S.run && !S.run.done) && S.cur >= S.frames.length - 1) S.cur = 0; }
  progress();
}
setInterval(() => { // playback: advance at the clip's rate, never past the tracking frontier
  if (S.paused || !S.frames.length) return;
  const r = S.run;
  const frontier = r && !r.done ? r.next - 1 : S.frames.length - 1;
  if (S.cur < frontier) { S.cur++; draw(); }
  else if (!r || r.done) { S.paused = true; progress(); }
}, 1000 / 12);

// ---------------------------------------------------------------- saving
function updateSave() {
  const btn = $("save"), busy = S.run && !S.run.done;
  if (S.mode === "live") {
    const any = S.masks.some((m) => m && Object.keys(m).length);
    btn.disabled = !any || busy || !(S.me && S.me.live_source);
    btn.textContent = S.live.revision ? `Save (revision ${S.live.revision + 1})` : "Save result";
    btn.title = S.me && !S.me.live_source ? "The server has no review.live_source to save into" : "";
  } else {
    btn.disabled = !S.review.fixes.size || busy;
    btn.textContent = S.review.fixes.size ? `Save correction (${S.review.fixes.size} object${S.review.fixes.size > 1 ? "s" : ""})` : "Save correction";
  }
}
async function save() {
  try {
    if (S.mode === "live") await saveLive(); else await saveReview();
  } catch (e) { fail(e); }
}
async function saveLive() {
  if (!S.live.videoId) S.live.videoId = (S.name || "clip").replace(/[^A-Za-z0-9._-]/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 60) + "-" + Date.now().toString(36);
  const masks = [];
  S.masks.forEach((frame, f) => { for (const [id, m] of Object.entries(frame)) masks.push({ frame_idx: f, obj_id: Number(id), score: m.score, rle: m.rle }); });
  const body = {
    video_id: S.live.videoId, parent: S.live.revision, frames: S.frames.length, masks,
    objects: [...S.objects.values()].map((o) => ({ obj_id: o.obj_id, label: o.label || "" })),
    prompts: S.clicks.map((c) => ({ frame: c.frame, obj_id: c.obj_id, point: c.box ? undefined : [c.x, c.y], label: c.box ? undefined : c.label, box: c.box })),
  };
  if (S.live.revision === 0) body.frames_jpeg = S.frames.map((f) => f.b64);
  status("Saving…");
  const rev = await api("POST", "/ui/api/live/save", body);
  S.live.revision = rev.revision;
  status(`Saved revision ${rev.revision} of ${rev.video_id} in store "${rev.source}" (by ${rev.author}). Open it under "Review batch results".`, "ok");
  progress();
}
async function saveReview() {
  const R = S.review, n = S.frames.length || R.frames;
  const corrections = [];
  for (const [id, fix] of R.fixes) {
    const masks = [];
    for (let f = fix.from_frame; f < n; f++) { const m = (S.masks[f] || {})[id]; if (m) masks.push({ frame_idx: f, obj_id: id, score: m.score, rle: m.rle }); }
    const o = S.objects.get(id);
    corrections.push({ obj_id: id, label: o ? o.label || null : null, from_frame: fix.from_frame, masks, prompts: fix.prompts });
  }
  status("Saving…");
  const rev = await api("POST", "/ui/api/review/save", { source: R.source, video_id: R.videoId, parent: R.revision, corrections });
  R.fixes = new Map();
  await openVideo(R.videoId, null, true);
  status(`Saved revision ${rev.revision} (from revision ${rev.parent}, objects ${rev.objects_changed.join(", ")}, ${rev.frames_changed.length} frames) by ${rev.author}. The batch output is unchanged.`, "ok");
  loadVideos();
}

// ---------------------------------------------------------------- review
async function loadSources() {
  const sel = $("source");
  sel.innerHTML = (S.me.sources || []).map((s) => `<option value="${escapeHtml(s.name)}">${escapeHtml(s.name)}${s.description ? " — " + escapeHtml(s.description) : ""}</option>`).join("");
  if (!S.me.sources.length) { sel.innerHTML = "<option value=''>(no store configured on the server)</option>"; return; }
  if (S.review.source) sel.value = S.review.source;
  S.review.source = sel.value;
  await loadVideos();
}
async function loadVideos() {
  const source = S.review.source;
  if (!source) return;
  try {
    const data = await api("GET", `/ui/api/review/videos?source=${encodeURIComponent(source)}`);
    if (source !== S.review.source) return; // another store was picked meanwhile
    S.review.rows = data.videos; renderVideos();
  } catch (e) { fail(e); }
}
function renderVideos() {
  const R = S.review, key = R.sortKey, dir = R.sortAsc ? 1 : -1;
  const rows = [...R.rows].sort((a, b) => {
    const x = a[key], y = b[key];
    if (x === y) return 0; if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * dir;
  });
  for (const th of document.querySelectorAll("#videos th")) {
    const base = th.textContent.replace(/ [▲▼]$/, "");
    th.classList.toggle("sorted", th.dataset.key === key);
    th.textContent = th.dataset.key === key ? `${base} ${R.sortAsc ? "▲" : "▼"}` : base;
  }
  $("videos").querySelector("tbody").innerHTML = rows.map((r) => {
    const s = r.worst_object_score === null ? "–" : r.worst_object_score.toFixed(2);
    return `<tr data-id="${escapeHtml(r.video_id)}" class="${r.video_id === R.videoId ? "open" : ""}"><td title="${escapeHtml(r.video_id)}">${escapeHtml(r.video_id)}</td><td>${escapeHtml(r.status)}</td>` +
      `<td>${r.frames}</td><td>${r.objects}</td><td class="${r.worst_object_score !== null && r.worst_object_score < 0.5 ? "low" : ""}">${s}</td><td>${r.revision}</td></tr>`;
  }).join("") || `<tr><td colspan="6" class="small">No videos in this store yet.</td></tr>`;
}
async function openVideo(videoId, revision, keepFrame) {
  const R = S.review, ticket = (R.ticket = (R.ticket || 0) + 1);
  try {
    stopRun();
    status(`Opening ${videoId}…`);
    const q = `source=${encodeURIComponent(R.source)}&video_id=${encodeURIComponent(videoId)}` + (revision !== null && revision !== undefined ? `&revision=${revision}` : "");
    const d = await api("GET", `/ui/api/review/video?${q}`);
    if (ticket !== R.ticket) return; // a later open wins
    const keep = keepFrame && R.videoId === videoId ? S.cur : 0;
    R.videoId = videoId; R.revision = d.revision; R.latest = d.latest_revision; R.fixes = new Map(); R.frames = d.frames;
    R.hasFrames = d.has_frames; R.detail = d;
    if (!keepFrame || !S.frames.length || S.frames.length !== d.frames) {
      let frames = [];
      if (d.has_frames) {
        for (let start = 0; start < d.frames; start += 64) {
          const chunk = await api("GET", `/ui/api/review/frames?source=${encodeURIComponent(R.source)}&video_id=${encodeURIComponent(videoId)}&start=${start}&count=64`);
          frames = frames.concat(chunk.frames);
          if (!chunk.frames.length) break;
        }
        if (ticket !== R.ticket) return;
      } else {
        frames = blankFrames(d.frames, d.width, d.height);
      }
      setClip({ frames, width: d.width, height: d.height, fps: 24 }, videoId);
    }
    S.masks = S.frames.map(() => ({}));
    S.clicks = []; S.selected = null; S.cur = Math.min(keep, S.frames.length - 1);
    S.objects = new Map(d.objects.map((o) => [o.obj_id, { obj_id: o.obj_id, label: o.label, text: false, color: colorOf(o.obj_id) }]));
    for (const [f, list] of Object.entries(d.masks)) {
      if (!S.masks[Number(f)]) continue;
      for (const m of list) S.masks[Number(f)][m.obj_id] = { rle: m.rle, score: m.score };
    }
    renderRevisionInfo();
    renderVideos(); layout(); progress();
    $("export").hidden = false;
    status(`${videoId}: revision ${d.revision}${d.revision === d.latest_revision ? " (latest)" : ` (latest is ${d.latest_revision})`}. Select an object, then click on the image to correct it from that frame on.`, "ok");
  } catch (e) { fail(e); }
}
function blankFrames(n, w, h) {
  const c = document.createElement("canvas"); c.width = w; c.height = h;
  const ctx = c.getContext("2d"); ctx.fillStyle = "#222"; ctx.fillRect(0, 0, w, h);
  const b64 = c.toDataURL("image/jpeg").split(",")[1];
  return Array.from({ length: n }, () => b64);
}
function renderRevisionInfo() {
  const R = S.review, d = R.detail;
  if (!d) { $("revision-info").innerHTML = ""; return; }
  const opts = [`<option value="0">0 — batch output</option>`].concat(d.revisions.map((r) =>
    `<option value="${r.revision}">${r.revision} — ${escapeHtml(r.author)}, ${escapeHtml(r.created_at.replace("T", " ").slice(0, 16))}</option>`));
  $("revision-info").innerHTML = `<b>${escapeHtml(d.video_id)}</b> · ${d.frames} frames · showing revision ` +
    `<select id="revision">${opts.join("")}</select>` + (d.has_frames ? "" : ` <span class="low">frames unavailable (hashed ids): masks only</span>`);
  $("revision").value = String(d.revision);
  $("revision").onchange = (e) => openVideo(R.videoId, Number(e.target.value), true);
}
async function exportMasks(format) {
  const R = S.review;
  try {
    const q = `source=${encodeURIComponent(R.source)}&video_id=${encodeURIComponent(R.videoId)}&format=${format}&revision=${R.revision}`;
    const res = await fetch(`/ui/api/review/export?${q}`, { headers: headers() });
    if (!res.ok) { const d = await res.json().catch(() => ({})); throw Object.assign(new Error(d.message || res.statusText), { status: res.status }); }
    const blob = await res.blob();
    const name = (res.headers.get("Content-Disposition") || "").replace(/.*filename="([^"]+)".*/, "$1") || `${R.videoId}.${format}`;
    const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = name; document.body.appendChild(a); a.click(); a.remove();
    status(`Exported ${name} (${blob.size} bytes).`, "ok");
  } catch (e) { fail(e); }
}

// ---------------------------------------------------------------- modes, login
function setMode(mode) {
  stopRun();
  S.mode = mode;
  $("tab-live").classList.toggle("active", mode === "live");
  $("tab-review").classList.toggle("active", mode === "review");
  $("panel-live").hidden = mode !== "live";
  $("panel-review").hidden = mode !== "review";
  $("export").hidden = mode !== "review" || !S.review.videoId;
  S.frames = []; S.masks = []; S.objects = new Map(); S.clicks = []; S.selected = null; S.width = 0;
  S.review.videoId = null; S.review.detail = null; renderRevisionInfo();
  for (const id of ["frame", "overlay", "marks"]) { const c = $(id); c.getContext("2d").clearRect(0, 0, c.width, c.height); }
  $("placeholder").hidden = false;
  $("placeholder").textContent = mode === "live" ? "Upload a clip or pick a demo clip on the right." : "Pick a video from the list on the right (worst-scoring first).";
  $("frame-label").textContent = "no video";
  renderObjects(); progress();
  if (mode === "review" && S.me) loadSources();
}
function showLogin(show) {
  $("token").hidden = !show; $("sign-in").hidden = !show;
  $("sign-out").hidden = show; $("who").hidden = show;
}
async function signIn(token) {
  S.token = token;
  try {
    S.me = await api("GET", "/ui/api/whoami");
    sessionStorage.setItem("surgray-token", token);
    $("who").textContent = S.me.insecure ? "demo mode (no sign-in needed)" : `signed in as ${S.me.reviewer}`;
    showLogin(false);
    $("demo-buttons").innerHTML = S.me.demo_clips.map((seed) => `<button data-seed="${seed}">Demo clip ${seed + 1}</button>`).join(" ");
    status("Signed in. Upload a clip or pick a demo clip; or review a batch job's results (tab 2).", "ok");
    setMode(S.mode);
  } catch (e) { S.me = null; sessionStorage.removeItem("surgray-token"); showLogin(true); fail(e); }
}

// ---------------------------------------------------------------- events
function canvasPoint(ev) {
  const r = $("marks").getBoundingClientRect();
  return [Math.max(0, Math.min(S.width - 1, (ev.clientX - r.left) / S.scale)), Math.max(0, Math.min(S.height - 1, (ev.clientY - r.top) / S.scale))];
}
function wire() {
  $("login").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value.trim()); });
  $("sign-out").onclick = () => { sessionStorage.removeItem("surgray-token"); S.token = ""; S.me = null; showLogin(true); status("Signed out."); };
  for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => setMode(b.dataset.mode);
  $("demo-buttons").addEventListener("click", (e) => { if (e.target.dataset.seed !== undefined) loadDemo(Number(e.target.dataset.seed)); });
  $("upload").onchange = (e) => { if (e.target.files[0]) upload(e.target.files[0]); e.target.value = ""; };
  $("find").addEventListener("submit", (e) => { e.preventDefault(); findExpression($("expression").value); });
  $("suggestions").addEventListener("click", (e) => { if (e.target.classList.contains("suggestion")) { $("expression").value = e.target.textContent; } });
  $("prev").onclick = () => go(S.cur - 1);
  $("next").onclick = () => go(S.cur + 1);
  $("play").onclick = togglePlay;
  $("scrub").oninput = (e) => go(Number(e.target.value));
  $("undo").onclick = undo;
  $("save").onclick = save;
  $("new-object").onclick = () => { S.newObject = true; S.selected = null; renderObjects(); status("Click (include) or drag a box on the image to start a new object."); };
  $("export").addEventListener("click", (e) => { if (e.target.dataset.format) exportMasks(e.target.dataset.format); });
  $("refresh").onclick = loadVideos;
  $("source").onchange = (e) => { S.review.source = e.target.value; loadVideos(); };
  $("videos").querySelector("thead").addEventListener("click", (e) => {
    const key = e.target.dataset.key; if (!key) return;
    const R = S.review; R.sortAsc = R.sortKey === key ? !R.sortAsc : true; R.sortKey = key; renderVideos();
  });
  $("videos").querySelector("tbody").addEventListener("click", (e) => { const tr = e.target.closest("tr"); if (tr && tr.dataset.id) openVideo(tr.dataset.id, null, false); });
  const objs = $("objects").querySelector("tbody");
  objs.addEventListener("click", (e) => {
    const tr = e.target.closest("tr"); if (!tr || !tr.dataset.id) return;
    S.selected = Number(tr.dataset.id); S.newObject = false; renderObjects();
    if (!e.target.classList.contains("name")) status(`Object ${S.selected} selected: click on the image to include or exclude parts of it from frame ${S.cur + 1} on.`);
  });
  objs.addEventListener("change", (e) => {
    if (!e.target.classList.contains("name")) return;
    const o = S.objects.get(Number(e.target.dataset.id)); if (o) { o.label = e.target.value; if (S.mode === "review") { const f = S.review.fixes.get(o.obj_id) || { from_frame: S.frames.length, prompts: [] }; S.review.fixes.set(o.obj_id, f); } updateSave(); }
  });
  // Clicks and box drags on the image.
  const marks = $("marks");
  let down = null;
  marks.addEventListener("contextmenu", (e) => e.preventDefault());
  marks.addEventListener("mousedown", (e) => { if (!S.frames.length) return; down = { x: e.offsetX, y: e.offsetY, p: canvasPoint(e), button: e.button, shift: e.shiftKey }; });
  marks.addEventListener("mousemove", (e) => { if (down && Math.hypot(e.offsetX - down.x, e.offsetY - down.y) > 6) drawMarks([down.x, down.y, e.offsetX, e.offsetY]); });
  marks.addEventListener("mouseup", (e) => {
    if (!down) return;
    const d = down; down = null;
    const p = canvasPoint(e);
    if (Math.hypot(e.offsetX - d.x, e.offsetY - d.y) > 6) {
      const box = [Math.min(d.p[0], p[0]), Math.min(d.p[1], p[1]), Math.max(d.p[0], p[0]), Math.max(d.p[1], p[1])].map((v) => Math.round(v));
      if (box[2] > box[0] && box[3] > box[1]) addClick(0, 0, 1, box);
      return;
    }
    const radio = document.querySelector("input[name=click]:checked").value === "1" ? 1 : 0;
    const label = d.button === 2 || d.shift ? 0 : radio;
    addClick(Math.round(p[0]), Math.round(p[1]), label, null);
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT" || e.target.tagName === "TEXTAREA") return;
    if (e.key === "ArrowRight" || e.key === ".") { go(S.cur + 1); e.preventDefault(); }
    else if (e.key === "ArrowLeft" || e.key === ",") { go(S.cur - 1); e.preventDefault(); }
    else if (e.key === "Home") { go(0); e.preventDefault(); }
    else if (e.key === "End") { go(S.frames.length - 1); e.preventDefault(); }
    else if (e.key === " ") { togglePlay(); e.preventDefault(); }
    else if (e.key === "z" || e.key === "Z") { undo(); e.preventDefault(); }
  });
  window.addEventListener("resize", layout);
}

wire();
showLogin(true);
setMode("live");
fetch("/ui/api/whoami", { headers: headers() }).then((r) => {
  // A demo server without auth signs in at once; otherwise a token kept for this tab does.
  if (r.ok) r.json().then((me) => { if (me.insecure || S.token) signIn(S.token); });
  else if (S.token) status("The saved token was not accepted; sign in again.", "error");
}).catch(() => {});
