// The web page of `maskrcnn serve`: pick or drop an image, see the overlay and the instances.
// The image is detected once (every detection the model keeps); the score threshold then filters
// the overlay and the table here, without asking the server again.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, detections: [], masks: [], width: 0, height: 0 };

function headers() {
  const key = $("key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// the same colours as the server's overlays (maskrcnn.inference.visualize.colour)
function colour(i) {
  const h = (i * 0.618033988749895) % 1, s = 0.85, v = 0.95;
  const k = Math.floor(h * 6), f = h * 6 - k, p = v * (1 - s), q = v * (1 - f * s), t = v * (1 - (1 - f) * s);
  const [r, g, b] = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][k % 6];
  return [Math.floor(r * 255), Math.floor(g * 255), Math.floor(b * 255)];
}

// COCO compressed RLE (pycocotools' string form) -> run lengths; runs go down columns first
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

function decodeMask(rle, width, height) {
  const mask = new Uint8Array(width * height);  // row-major
  let pos = 0, on = false;
  for (const n of rleCounts(rle.counts)) {
    if (on) {
      for (let i = pos; i < pos + n; i++) mask[(i % height) * width + Math.floor(i / height)] = 1;
    }
    pos += n; on = !on;
  }
  return mask;
}

function render() {
  const threshold = parseFloat($("score").value);
  $("score-value").textContent = threshold.toFixed(2);
  if (!state.image) return;
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  canvas.width = state.width; canvas.height = state.height;
  ctx.drawImage(state.image, 0, 0, state.width, state.height);
  const kept = state.detections.map((d, i) => [d, i]).filter(([d]) => d.score >= threshold);
  const pixels = ctx.getImageData(0, 0, state.width, state.height);
  for (const [, i] of kept) {
    const [r, g, b] = colour(i), mask = state.masks[i], px = pixels.data;
    for (let j = 0; j < mask.length; j++) {
      if (!mask[j]) continue;
      px[4 * j] = px[4 * j] * 0.55 + r * 0.45;
      px[4 * j + 1] = px[4 * j + 1] * 0.55 + g * 0.45;
      px[4 * j + 2] = px[4 * j + 2] * 0.55 + b * 0.45;
    }
  }
  ctx.putImageData(pixels, 0, 0);
  ctx.lineWidth = Math.max(1, Math.round(Math.min(state.width, state.height) / 300));
  ctx.font = "12px sans-serif";
  for (const [d, i] of kept) {
    const [x, y, w, h] = d.bbox, css = `rgb(${colour(i).join(",")})`;
    ctx.strokeStyle = css; ctx.strokeRect(x, y, w, h);
    ctx.fillStyle = css; ctx.fillText(`${d.class_name} ${d.score.toFixed(2)}`, x + 2, Math.max(12, y - 2));
  }
  const body = $("instances").querySelector("tbody");
  body.replaceChildren(...kept.map(([d, i], row) => {
    const tr = document.createElement("tr");
    const cells = [String(row + 1), d.class_name, d.score.toFixed(3), String(d.area)];
    cells.forEach((text, c) => {
      const td = document.createElement("td");
      if (c === 1) {
        const sw = document.createElement("span");
        sw.className = "swatch"; sw.style.background = `rgb(${colour(i).join(",")})`;
        td.append(sw);
      }
      td.append(text);
      if (c !== 1) td.className = "num";
      tr.append(td);
    });
    return tr;
  }));
  $("instances").hidden = false;
  setStatus(`${kept.length} instances at score ≥ ${threshold.toFixed(2)} (${state.detections.length} detected)`);
}

async function detect(file) {
  setStatus(`detecting ${file.name}…`);
  const form = new FormData();
  form.append("image", file, file.name);
  let response;
  try {
    response = await fetch("v1/detect?format=coco&score=0", { method: "POST", body: form, headers: headers() });
  } catch (err) {
    setStatus(`request failed: ${err}`, true);
    return;
  }
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    setStatus(body.error || `HTTP ${response.status}`, true);
    return;
  }
  let image;
  try {
    image = await createImageBitmap(file);
  } catch (err) {  // a format the browser cannot show (e.g. a 16-bit TIFF): masks on grey
    image = document.createElement("canvas");
    image.width = body.width; image.height = body.height;
    const g = image.getContext("2d");
    g.fillStyle = "#777"; g.fillRect(0, 0, body.width, body.height);
  }
  state.image = image;
  state.width = body.width; state.height = body.height;
  state.detections = body.detections;
  state.masks = body.detections.map((d) => decodeMask(d.segmentation, body.width, body.height));
  render();
}

async function loadModel() {
  const response = await fetch("v1/model", { headers: headers() });
  if (response.status === 401) {
    $("model").textContent = "this server needs an API key: enter it below";
    return;
  }
  const m = await response.json();
  if (!response.ok) { $("model").textContent = m.error || `HTTP ${response.status}`; return; }
  $("model").textContent = `${m.weights} · ${m.classes.length - 1} classes (${m.classes.slice(1).join(", ")}) · `
    + `${m.backend} on ${m.device} · keeps scores ≥ ${m.config.detection_min_confidence}`;
}

$("file").addEventListener("change", (e) => { if (e.target.files.length) detect(e.target.files[0]); });
$("score").addEventListener("input", render);
$("key").addEventListener("change", loadModel);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) detect(e.dataTransfer.files[0]);
});
loadModel();
