// End-to-end tests of the browser app: serve the built bundle (dist/) on 127.0.0.1,
// drive Debian Chromium (SwiftShader WebGPU) with Playwright, and check what a user
// sees. Screenshots go to dist/screenshots/ (CI artifacts; look at them).
// Usage: node tests/e2e/run.mjs DIST_DIR DATA_DIR
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import os from "node:os";
import { execFileSync } from "node:child_process";
import { readNifti, dice, labelExtent } from "./nifti.mjs";

const [dist, data] = process.argv.slice(2);
if (!dist || !fs.existsSync(path.join(dist, "index.html"))) {
  console.error(`error: no built app at ${dist} (run trunk build first)`);
  process.exit(1);
}
if (!data || !fs.existsSync(path.join(data, "openkbp", "index.tsv"))) {
  console.error(`error: real CT data not found at ${data} (the tests need ../shared/data)`);
  process.exit(1);
}
const shots = path.join(dist, "screenshots");
fs.mkdirSync(shots, { recursive: true });

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css",
  ".json": "application/json", ".bpk": "application/octet-stream" };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://127.0.0.1");
  let file = path.resolve(dist, "." + decodeURIComponent(url.pathname));
  if (!file.startsWith(path.resolve(dist))) { res.writeHead(403); return res.end(); }
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "index.html");
  if (!fs.existsSync(file)) { res.writeHead(404); return res.end("not found"); }
  res.writeHead(200, { "content-type": types[path.extname(file)] || "application/octet-stream" });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const foreign = [];
const consoleErrors = [];
async function newPage() {
  const p = await browser.newPage({ viewport: { width: 1280, height: 1000 }, acceptDownloads: true });
  p.on("request", (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith("blob:") && !r.url().startsWith("data:")) foreign.push(r.url()); });
  p.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  p.on("pageerror", (e) => consoleErrors.push(String(e)));
  return p;
}
// The page the tests drive (a test may switch to another one).
let page = await newPage();

let passed = 0, failed = 0;
const suiteStart = Date.now();
// E2E_ONLY=regex runs only the tests whose names match (while developing; CI runs all).
const only = process.env.E2E_ONLY ? new RegExp(process.env.E2E_ONLY) : null;
async function test(name, fn) {
  if (only && !only.test(name)) return;
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    console.log(`test ${name} ... ok (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  } catch (e) {
    failed++;
    console.log(`test ${name} ... FAILED\n  ${String(e.stack || e).split("\n").slice(0, 4).join("\n  ")}`);
    await page.screenshot({ path: path.join(shots, `failed-${name.replace(/\W+/g, "_")}.png`) }).catch(() => {});
  }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }
const status = () => page.getByTestId("status");
async function waitStatus(re, timeout = 60000) {
  await page.waitForFunction(([src, flags]) => new RegExp(src, flags).test(document.querySelector("[data-testid='status']").textContent),
    [re.source, re.flags], { timeout });
  return status().textContent();
}
async function canvasHasImage(id) {
  return page.evaluate((id) => {
    const c = document.querySelector(`[data-testid='${id}']`);
    if (!c.width || !c.height) return false;
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let lit = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 30) lit++;
    return lit > (c.width * c.height) / 20;
  }, id);
}

await page.goto(origin + "/");

await test("page starts, states privacy and WebGPU status", async () => {
  await waitStatus(/ready/);
  const text = await page.textContent("body");
  assert(/never leave this computer/.test(text), "privacy statement missing");
  const gpu = await page.getByTestId("gpu-status").textContent();
  assert(/WebGPU/.test(gpu), `gpu status: ${gpu}`);
  await page.screenshot({ path: path.join(shots, "start.png") });
});

await test("demo loads phantoms into the viewer and offers a NIfTI download", async () => {
  await page.getByTestId("demo-button").click();
  await waitStatus(/demo/);
  for (const id of ["viewer-axial", "viewer-coronal", "viewer-sagittal"]) assert(await canvasHasImage(id), `${id} is empty`);
  const organs = await page.getByTestId("organ-list").textContent();
  assert(/liver/.test(organs) && /spleen/.test(organs), `organ list: ${organs}`);
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download-seg").click()]);
  const bytes = fs.readFileSync(await download.path());
  const raw = zlib.gunzipSync(bytes);
  assert(raw.readInt32LE(0) === 348 && raw.toString("latin1", 344, 347) === "n+1", "download is not NIfTI-1");
  await page.screenshot({ path: path.join(shots, "demo.png"), fullPage: true });
});

await test("an organ is marked on a support by clicking its 6 extreme points, with undo", async () => {
  await page.getByTestId("demo-button").click();
  await waitStatus(/demo/);
  await page.getByTestId("points-label").fill("9");
  await page.getByTestId("mark-points-button").click();
  await waitStatus(/patient's RIGHT \(1\/6\)/);
  const axial = page.getByTestId("viewer-axial");
  const box = await axial.boundingBox();
  const at = (fx, fy) => axial.click({ position: { x: box.width * fx, y: box.height * fy } });
  await at(0.3, 0.5);
  await at(0.7, 0.5);
  await waitStatus(/ANTERIOR.*\(3\/6\)/);
  await page.getByTestId("undo-point-button").click();
  await waitStatus(/LEFT \(2\/6\)/);
  await at(0.7, 0.5);
  await at(0.5, 0.3);
  await at(0.5, 0.7);
  await at(0.5, 0.5);
  await page.getByTestId("viewer-coronal").click({ position: { x: box.width * 0.5, y: 20 } });
  const s = await waitStatus(/marked by 6 extreme points/);
  assert(/organ 9/.test(s), s);
  const organs = await page.getByTestId("organ-list").textContent();
  assert(/9 label_9 \(marked by 6 points\)/.test(organs), `organ list: ${organs}`);
  await page.screenshot({ path: path.join(shots, "extreme-points.png"), fullPage: true });
});

await test("real OpenKBP support CT and label load through the inputs", async () => {
  await page.getByTestId("support-image-input").setInputFiles([path.join(data, "openkbp/okbp_004.ct.nii.gz")]);
  await waitStatus(/1 support CT/);
  await page.getByTestId("support-label-input").setInputFiles([path.join(data, "openkbp/okbp_004.label.nii.gz")]);
  await waitStatus(/1 support label map/);
  await page.getByTestId("label-table-input").setInputFiles([path.join(data, "openkbp/labels.json")]);
  await waitStatus(/label names/);
  const organs = await page.getByTestId("organ-list").textContent();
  assert(/Mandible/.test(organs) && /Brainstem/.test(organs), `organ list: ${organs}`);
  assert(await page.getByTestId("download-seg").isHidden(), "stale demo download still offered");
  assert(await canvasHasImage("viewer-axial"), "axial pane empty");
  await page.screenshot({ path: path.join(shots, "openkbp-support.png"), fullPage: true });
});

await test("a label map of another patient is refused with a message", async () => {
  await page.getByTestId("support-label-input").setInputFiles([path.join(data, "openkbp/okbp_006.label.nii.gz")]);
  const s = await waitStatus(/error/);
  assert(/does not match/.test(s), s);
});

await test("a corrupt file shows an error and the page stays usable", async () => {
  const good = fs.readFileSync(path.join(data, "openkbp/okbp_001.ct.nii.gz"));
  await page.getByTestId("query-input").setInputFiles([{ name: "broken.nii.gz", mimeType: "application/gzip", buffer: good.subarray(0, 5000) }]);
  const s = await waitStatus(/error/);
  assert(/broken\.nii\.gz/.test(s) && /(corrupt|truncated)/.test(s), s);
  assert((await status().getAttribute("data-state")) === "error", "status not marked as error");
  await page.screenshot({ path: path.join(shots, "corrupt-file.png") });
  await page.getByTestId("demo-button").click();
  await waitStatus(/demo/);
});

// A whole Run on real CTs, as a user does it: one support with its label map, one query with
// its label map (metrics only), one organ, WPL boxes. It runs on Burn's CPU backend in
// WebAssembly (`?backend=cpu`): on this CI's SwiftShader WebGPU (a software GPU) the same run
// takes far longer than the suite can wait (see the README). The downloaded segmentation is
// checked here, independently of the app's code, against the query's own label map, and against
// the native CLI's result on the same inputs (`medlsam segment` with the web's int8 LiteMedSAM):
// the page must give the same segmentation, and at least `minDsc` (a working run; one support
// and one organ give no robust localization, so the figure itself varies by case).
const RUN = { support: "okbp_001", query: "okbp_004", organ: 1, name: "Brainstem", minDsc: 30 };
// Generous: `./dev test` runs these tests beside the native ones, so the page shares the cores.
const RUN_TIMEOUT_MS = 25 * 60 * 1000;

/// The native CLI the tests run (it writes phantoms and gives reference results).
function medlsamBin() {
  const bin = process.env.MEDLSAM_BIN || "target/release/medlsam";
  assert(fs.existsSync(bin), `no medlsam binary at ${bin} (cargo build --release, or set MEDLSAM_BIN)`);
  return bin;
}

/// A phantom CT and its label map written by `medlsam phantom` into `dir`: [ct, label] paths.
function writePhantom(dir, name, ...args) {
  execFileSync(medlsamBin(), ["phantom", "--out", dir, "--name", name, ...args], { stdio: "ignore" });
  return [path.join(dir, `${name}.ct.nii.gz`), path.join(dir, `${name}.label.nii.gz`)];
}

/// DSC of the native CLI's `segment` on RUN's inputs (WPL, the web's int8 LiteMedSAM weights, the
/// default localizer as in the page: registration, MedLAM where it fails or disagrees).
function nativeRunDsc(kbp) {
  const bin = medlsamBin();
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "medlsam-native-run-"));
  execFileSync(bin, ["segment",
    "--support-image", kbp(`${RUN.support}.ct.nii.gz`), "--support-label", kbp(`${RUN.support}.label.nii.gz`),
    "--query", kbp(`${RUN.query}.ct.nii.gz`), "--query-label", kbp(`${RUN.query}.label.nii.gz`),
    "--organs", String(RUN.organ), "--mode", "wpl", "--localizer", "both",
    "--weights", "weights/lite_medsam.q8.bpk", "--medlam-weights", "weights/medlam.q8.bpk", "--out", out], { stdio: "ignore" });
  const [header, ...rows] = fs.readFileSync(path.join(out, "metrics.csv"), "utf8").trim().split("\n");
  const col = header.split(",").indexOf("dsc");
  const row = rows.map((r) => r.split(",")).find((r) => r[1] === String(RUN.organ));
  assert(col >= 0 && row, `no DSC of organ ${RUN.organ} in the native metrics.csv`);
  const boxes = JSON.parse(fs.readFileSync(path.join(out, `${RUN.query}.boxes.json`), "utf8"));
  const organ = boxes.organs.find((o) => o.label === RUN.organ);
  assert(organ, `organ ${RUN.organ} not in the native boxes.json`);
  fs.rmSync(out, { recursive: true, force: true });
  return { dsc: Number(row[col]), localizer: organ.localizer, warning: organ.warning };
}

/// One OpenKBP support (CT, label map, the label names) and one query (CT, label map) through the
/// page's inputs.
async function loadOpenKbp({ support, query }) {
  const kbp = (f) => path.join(data, "openkbp", f);
  const steps = [["support-image-input", `${support}.ct.nii.gz`, /1 support CT/],
    ["support-label-input", `${support}.label.nii.gz`, /1 support label map/],
    ["label-table-input", "labels.json", /label names/],
    ["query-input", `${query}.ct.nii.gz`, /1 query CT/],
    ["query-label-input", `${query}.label.nii.gz`, /1 query label map/]];
  for (const [input, file, status] of steps) {
    await page.getByTestId(input).setInputFiles([kbp(file)]);
    await waitStatus(status);
  }
}

/// Start timing the gaps between the ticks of a 50 ms timer in the page (read: `window.__gaps`).
async function watchStalls() {
  await page.evaluate(() => {
    window.__gaps = []; window.__stalls = []; let last = performance.now();
    const stage = () => document.querySelector("[data-testid='progress-text']")?.textContent ?? "";
    let before = stage();
    setInterval(() => {
      const n = performance.now(), now = stage();
      window.__gaps.push(n - last);
      // Where each stall over 1 s happened: the status line before and after it.
      if (n - last > 1000) window.__stalls.push({ ms: n - last, at: `${before} → ${now}` });
      last = n; before = now;
    }, 50);
  });
}

/// The gaps timed since `watchStalls`: the longest, in seconds, and the stalls over 1 s with
/// the status lines around them (printed, so a failing run says which stage blocked the page).
async function stallReport() {
  const { gaps, stalls } = await page.evaluate(() => ({ gaps: window.__gaps, stalls: window.__stalls }));
  const longest = Math.max(...gaps) / 1000;
  console.log(`  page stalls: longest ${longest.toFixed(1)} s; over 1 s: ${stalls.length}; the longest 12:`);
  const worst = [...stalls].sort((a, b) => b.ms - a.ms).slice(0, 12);
  for (const s of stalls.filter((s) => worst.includes(s))) console.log(`    ${(s.ms / 1000).toFixed(1)} s (${s.at})`);
  return { longest, stalls };
}

/// Tick only these organs in the organ choice.
async function chooseOrgans(labels) {
  const boxes = await page.locator("[data-testid='organ-select'] input").all();
  assert(boxes.length > 0, "no organ to choose");
  const offered = [];
  for (const cb of boxes) {
    const l = Number(await cb.getAttribute("data-organ"));
    offered.push(l);
    if (labels.includes(l)) await cb.check(); else await cb.uncheck();
  }
  for (const l of labels) assert(offered.includes(l), `organ ${l} not offered (offered: ${offered})`);
}

/// Press Run and wait until it ends; returns the final status line.
async function runToEnd() {
  await page.getByTestId("run-button").click();
  const s = await waitStatus(/^(done|error|cancelled)/, RUN_TIMEOUT_MS);
  assert(/^done/.test(s), `run did not finish: ${s}`);
  assert((await page.getByTestId("progress").getAttribute("value")) === "1.0000", "progress bar not full");
  return s;
}

/// A fresh page (`query`: its address's query string; `initScript`: a function run in it before
/// the page's own scripts) with one support CT and its label map and one query CT and its label
/// map loaded through the inputs; returns the status once the query CT loaded.
async function loadPair(query, [supportCt, supportLabel, queryCt, queryLabel], timeout = 60000, initScript = null) {
  page = await newPage();
  if (initScript) await page.addInitScript(initScript);
  await page.goto(origin + "/" + query);
  await waitStatus(/ready/);
  await page.getByTestId("support-image-input").setInputFiles([supportCt]);
  await waitStatus(/1 support CT/);
  await page.getByTestId("support-label-input").setInputFiles([supportLabel]);
  await waitStatus(/1 support label map/);
  await page.getByTestId("query-input").setInputFiles([queryCt]);
  const loaded = await waitStatus(/1 query CT|error/, timeout);
  assert(/1 query CT/.test(loaded), loaded);
  await page.getByTestId("query-label-input").setInputFiles([queryLabel]);
  const labelled = await waitStatus(/1 query label map|error/, timeout);
  assert(/1 query label map/.test(labelled), labelled);
  return loaded;
}

/// Put the viewer's cursor on a canonical voxel by clicking the coronal pane (i, k) then the axial pane (i, j).
/// Returns the voxel shown: exactly the one asked for where a pane has at least a pixel per voxel;
/// where a pane is drawn smaller than its grid (a 512-wide slice in a narrower box), a click
/// cannot hit every voxel, and a neighbour within the pixel's width is accepted.
async function showVoxel([i, j, k], dims) {
  const tol = [0, 0, 0];
  for (const [id, x, y, ax, ay] of [["viewer-coronal", i, dims[2] - 1 - k, 0, 2], ["viewer-axial", i, j, 0, 1]]) {
    const c = page.getByTestId(id);
    const box = await c.boundingBox();
    const [w, h] = await c.evaluate((el) => [el.width, el.height]);
    tol[ax] = Math.max(tol[ax], Math.ceil(w / box.width) - 1);
    tol[ay] = Math.max(tol[ay], Math.ceil(h / box.height) - 1);
    await c.click({ position: { x: ((x + 0.5) * box.width) / w, y: ((y + 0.5) * box.height) / h } });
  }
  const info = await page.getByTestId("viewer-info").textContent();
  const m = info.match(/slice i=(\d+) j=(\d+) k=(\d+)/);
  const shown = m ? m.slice(1, 4).map(Number) : null;
  assert(shown && [i, j, k].every((v, a) => Math.abs(shown[a] - v) <= tol[a]),
    `viewer not at voxel ${[i, j, k]} (±${tol}): ${info}`);
  return shown;
}

/// Show the organ's largest axial slice of a downloaded mask (file grid) in the viewer, with the
/// cursor on the organ, and check that the axial overlay is exactly the mask on that slice.
/// The viewer shows the canonical LPS grid: for the axis-aligned files used here, the file's
/// i (j) axis is flipped when it runs toward the patient's right (anterior), i.e. +x (+y) in RAS.
async function overlayMatchesMask(seg, organ) {
  const a = seg.srow;
  assert(a[0][1] === 0 && a[0][2] === 0 && a[1][0] === 0 && a[1][2] === 0 && a[2][0] === 0 && a[2][1] === 0 && a[2][2] > 0,
    `not an axis-aligned file with k toward the head: ${JSON.stringify(a)}`);
  const [nx, ny, nz] = seg.dim;
  const canon = (i, j) => [a[0][0] > 0 ? nx - 1 - i : i, a[1][1] > 0 ? ny - 1 - j : j];
  let best = -1, most = 0;
  for (let k = 0; k < nz; k++) {
    let n = 0;
    for (let o = k * nx * ny; o < (k + 1) * nx * ny; o++) if (seg.data[o] === organ) n++;
    if (n > most) { most = n; best = k; }
  }
  assert(most > 0, `organ ${organ} absent from the mask`);
  // The mask's pixels on axial slice k of the file, as canonical-pane indices y*w+x.
  const maskSlice = (k) => {
    const px = [];
    let si = 0, sj = 0;
    for (let o = 0; o < nx * ny; o++) {
      if (seg.data[k * nx * ny + o] !== organ) continue;
      const [ci, cj] = canon(o % nx, Math.floor(o / nx));
      px.push(cj * nx + ci);
      si += ci; sj += cj;
    }
    return { px: px.sort((x, y) => x - y), centre: [Math.round(si / px.length), Math.round(sj / px.length)] };
  };
  const shown = await showVoxel([...maskSlice(best).centre, best], seg.dim);
  // The slice the viewer landed on (the asked one, or a neighbour on a pane narrower than its grid).
  best = shown[2];
  const want = maskSlice(best).px;
  await page.getByTestId("boxes-toggle").uncheck();
  const coloured = await colouredAxialPixels();
  await page.getByTestId("boxes-toggle").check();
  assert(JSON.stringify(coloured) === JSON.stringify(want),
    `axial overlay (${coloured.length} px) is not the downloaded mask on slice ${best} (${want.length} px)`);
}

/// Pixels of the axial pane drawn in colour (the label overlay; CT pixels are grey), as indices y*w+x.
async function colouredAxialPixels() {
  return page.evaluate(() => {
    const c = document.querySelector("[data-testid='viewer-axial']");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    const out = [];
    for (let p = 0; p < c.width * c.height; p++) {
      if (d[4 * p] !== d[4 * p + 1] || d[4 * p + 1] !== d[4 * p + 2]) out.push(p);
    }
    return out;
  });
}

await test("a full Run on real CT (CPU in WebAssembly) segments the organ of the query", async () => {
  page = await newPage();
  await page.goto(origin + "/?backend=cpu");
  await waitStatus(/ready/);
  const gpu = await page.getByTestId("gpu-status").textContent();
  assert(/CPU in WebAssembly/.test(gpu) && /backend=cpu/.test(gpu), `gpu status: ${gpu}`);
  const kbp = (f) => path.join(data, "openkbp", f);
  await loadOpenKbp(RUN);
  await chooseOrgans([RUN.organ]);
  await page.getByTestId("mode-select").selectOption("wpl");
  // The page keeps running during the Run: gaps between the ticks of a 50 ms timer. The CPU
  // backend computes synchronously; the page gets control back between encoder blocks and
  // after every MedLAM forward pass of at most 2 patches: the longest gap was 0.9 s here
  // (encoding a slice in one piece stalled it ~6 s per slice; MedLAM's query patches in
  // one go, 13.5 s).
  await watchStalls();
  const t0 = Date.now();
  const s = await runToEnd();
  console.log(`  ${RUN.support} → ${RUN.query}, ${RUN.name}, WPL: wall ${((Date.now() - t0) / 1000).toFixed(0)} s; ${s}`);
  const { longest } = await stallReport();
  assert(longest < 2.5, `the page stalled ${longest.toFixed(1)} s during the Run (stalls listed above)`);
  assert(/models run on: CPU in WebAssembly/.test(await page.getByTestId("gpu-status").textContent()), "backend not reported");

  // The downloaded label map: the query's grid and affine, only the chosen organ.
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download-seg").click()]);
  assert(download.suggestedFilename() === `${RUN.query}.seg.nii.gz`, `file name ${download.suggestedFilename()}`);
  const seg = readNifti(fs.readFileSync(await download.path()));
  const ct = readNifti(fs.readFileSync(kbp(`${RUN.query}.ct.nii.gz`)));
  const truth = readNifti(fs.readFileSync(kbp(`${RUN.query}.label.nii.gz`)));
  assert(JSON.stringify(seg.dim) === JSON.stringify(ct.dim), `dims ${seg.dim} vs query ${ct.dim}`);
  assert(seg.sformCode > 0 && seg.qformCode > 0, `sform/qform codes ${seg.sformCode}/${seg.qformCode}`);
  const close = (a, b, tol) => a.every((x, n) => Math.abs(x - b[n]) <= tol);
  assert(close(seg.srow.flat(), ct.srow.flat(), 1e-3), `srow ${JSON.stringify(seg.srow)} vs query ${JSON.stringify(ct.srow)}`);
  assert(close(seg.quatern, ct.quatern, 1e-4) && close(seg.qoffset, ct.qoffset, 1e-3) && close(seg.pixdim.slice(0, 4), ct.pixdim.slice(0, 4), 1e-4),
    `qform ${seg.quatern} ${seg.qoffset} ${seg.pixdim.slice(0, 4)} vs query ${ct.quatern} ${ct.qoffset} ${ct.pixdim.slice(0, 4)}`);
  const values = new Set(seg.data);
  assert([...values].every((v) => v === 0 || v === RUN.organ), `labels in the download: ${[...values]}`);

  // Overlap with the query's own label map, and the same figure as the page's metrics table.
  const dsc = dice(seg.data, truth.data, RUN.organ);
  const ext = labelExtent(seg, RUN.organ), truthExt = labelExtent(truth, RUN.organ);
  console.log(`  DSC ${RUN.name} (downloaded NIfTI vs ${RUN.query}.label): ${dsc.toFixed(1)} %; ` +
    `${ext.count} voxels on slices ${ext.slices[0]}-${ext.slices.at(-1)} (truth ${truthExt.count} on ${truthExt.slices[0]}-${truthExt.slices.at(-1)})`);
  const row = await page.locator("[data-testid='metrics-table'] tr", { hasText: RUN.name }).first().locator("td").allTextContents();
  assert(row.length >= 3 && Math.abs(Number(row[2]) - dsc) < 0.1, `page metrics ${row} vs ${dsc.toFixed(2)}`);
  assert(dsc >= RUN.minDsc, `DSC ${dsc.toFixed(1)} % below ${RUN.minDsc} %`);
  // What placed the organ (registration, or MedLAM where it failed or disagreed), as the page says.
  const placed = await page.locator(`[data-confidence='${RUN.organ}']`).first();
  const source = await placed.getAttribute("data-source");
  console.log(`  page: ${await placed.textContent()}`);
  const { dsc: native, localizer, warning } = nativeRunDsc(kbp);
  console.log(`  native CLI on the same inputs (int8 LiteMedSAM): DSC ${native.toFixed(1)} %, placed by ${localizer}${warning ? ` (${warning})` : ""}`);
  assert(source === localizer, `the page's organ was placed by ${source}, the native CLI's by ${localizer}`);
  assert(Math.abs(dsc - native) < 0.5, `the page's DSC ${dsc.toFixed(2)} % differs from the native CLI's ${native.toFixed(2)} %`);

  // The viewer shows the result: the overlay on the axial pane is exactly the downloaded mask.
  await overlayMatchesMask(seg, RUN.organ);
  await page.screenshot({ path: path.join(shots, "run-openkbp.png"), fullPage: true });
  await page.getByTestId("viewer-axial").screenshot({ path: path.join(shots, "run-openkbp-axial.png") });
});

// Registration in the page: a support whose registration to the query works (okbp_002 → okbp_004:
// the prior places every organ, so no slice is encoded), all its organs, on the CPU backend in
// WebAssembly. The downloaded NIfTI must match the native CLI's voxel for voxel (up to a few voxels
// per organ: the optimiser's sums run in another order on one wasm thread than on native threads).
const REG = { support: "okbp_002", query: "okbp_004", minDsc: 45, minAgree: 99 };
await test("registration places the organs in the page as in the native CLI (CPU in WebAssembly)", async () => {
  page = await newPage();
  await page.goto(origin + "/?backend=cpu");
  await waitStatus(/ready/);
  const kbp = (f) => path.join(data, "openkbp", f);
  await loadOpenKbp(REG);
  assert((await page.getByTestId("localizer-select").inputValue()) === "both", "the page's default localizer is not both");
  await page.getByTestId("mode-select").selectOption("spl");
  await watchStalls();
  const t0 = Date.now();
  const s = await runToEnd();
  console.log(`  ${REG.support} → ${REG.query}, all organs, SPL 6 mm: wall ${((Date.now() - t0) / 1000).toFixed(0)} s; ${s}`);
  const { longest } = await stallReport();
  assert(longest < 2.5, `the page stalled ${longest.toFixed(1)} s during the registration`);
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download-seg").click()]);
  const seg = readNifti(fs.readFileSync(await download.path()));
  const truth = readNifti(fs.readFileSync(kbp(`${REG.query}.label.nii.gz`)));

  const out = fs.mkdtempSync(path.join(os.tmpdir(), "medlsam-native-reg-"));
  execFileSync(medlsamBin(), ["segment",
    "--support-image", kbp(`${REG.support}.ct.nii.gz`), "--support-label", kbp(`${REG.support}.label.nii.gz`),
    "--query", kbp(`${REG.query}.ct.nii.gz`), "--mode", "spl", "--slab-mm", "6", "--localizer", "both",
    "--weights", "weights/lite_medsam.q8.bpk", "--medlam-weights", "weights/medlam.q8.bpk", "--out", out], { stdio: "ignore" });
  const native = readNifti(fs.readFileSync(path.join(out, `${REG.query}.seg.nii.gz`)));
  const boxes = JSON.parse(fs.readFileSync(path.join(out, `${REG.query}.boxes.json`), "utf8"));
  fs.rmSync(out, { recursive: true, force: true });
  assert(JSON.stringify(seg.dim) === JSON.stringify(native.dim), `dims ${seg.dim} vs native ${native.dim}`);
  const dscs = [];
  for (const o of boxes.organs) {
    const el = page.locator(`[data-confidence='${o.label}']`).first();
    const source = await el.getAttribute("data-source");
    assert(source === o.localizer, `organ ${o.label}: the page's was placed by ${source}, the native CLI's by ${o.localizer}`);
    if (o.outside_field_of_view) continue;
    const agree = dice(seg.data, native.data, o.label) ?? 100;
    const dsc = dice(seg.data, truth.data, o.label);
    const fmt = (v) => (v === null ? "-" : v.toFixed(1));
    if (dsc !== null && truth.data.includes(o.label)) dscs.push(dsc);
    console.log(`  organ ${o.label} (${o.name}): placed by ${o.localizer}; DSC vs truth ${fmt(dsc)} %, ` +
      `native ${fmt(dice(native.data, truth.data, o.label))} %; page vs native ${agree.toFixed(2)} %`);
    assert(agree >= REG.minAgree, `organ ${o.label}: the page's mask and the native CLI's agree only ${agree.toFixed(2)} % (DSC)`);
  }
  assert(boxes.organs.some((o) => o.localizer === "register"), "registration placed no organ natively");
  const mean = dscs.reduce((a, b) => a + b, 0) / dscs.length;
  console.log(`  mean DSC over the ${dscs.length} organs in the query's labels: ${mean.toFixed(1)} %`);
  assert(mean >= REG.minDsc, `mean DSC ${mean.toFixed(1)} % below ${REG.minDsc} %`);
  await page.screenshot({ path: path.join(shots, "run-registration.png"), fullPage: true });
});

// The newcomer's flow without files: Demo, then Run. One small organ of the phantoms (the left
// kidney) to keep CI short; the page's metrics compare with the phantom query's own organ labels.
const DEMO = { organ: 3, name: "left_kidney", minDsc: 30 };
await test("Demo then Run localizes and segments the phantom query (CPU in WebAssembly)", async () => {
  await page.getByTestId("demo-button").click();
  await waitStatus(/demo:.*press Run/);
  for (const id of ["support-image-input", "query-input"]) {
    assert((await page.getByTestId(id).inputValue()) === "", `${id} still names files the demo replaced`);
  }
  await chooseOrgans([DEMO.organ]);
  await page.getByTestId("mode-select").selectOption("spl");
  const t0 = Date.now();
  const s = await runToEnd();
  console.log(`  demo, ${DEMO.name}, SPL: wall ${((Date.now() - t0) / 1000).toFixed(0)} s; ${s}`);
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download-seg").click()]);
  assert(download.suggestedFilename() === "phantom_query.seg.nii.gz", `file name ${download.suggestedFilename()}`);
  const seg = readNifti(fs.readFileSync(await download.path()));
  assert(JSON.stringify(seg.dim) === JSON.stringify([96, 96, 64]), `dims ${seg.dim}`);
  // The phantom query is stored in RAS: the segmentation keeps that orientation.
  assert(seg.srow[0][0] > 0 && seg.srow[1][1] > 0 && seg.srow[2][2] > 0, `srow ${JSON.stringify(seg.srow)}`);
  const ext = labelExtent(seg, DEMO.organ);
  assert(ext.count > 0 && [...new Set(seg.data)].every((v) => v === 0 || v === DEMO.organ), "downloaded mask lacks the organ or has others");
  const row = await page.locator("[data-testid='metrics-table'] tr", { hasText: DEMO.name }).first().locator("td").allTextContents();
  const dsc = Number(row[2]);
  console.log(`  DSC ${DEMO.name} on the phantom query (page metrics): ${dsc} %; ${ext.count} voxels on ${ext.slices.length} slices`);
  assert(dsc >= DEMO.minDsc, `DSC ${row[2]} % below ${DEMO.minDsc} %`);
  await overlayMatchesMask(seg, DEMO.organ);
  await page.screenshot({ path: path.join(shots, "demo-run.png"), fullPage: true });
});

// A full-size CT in the browser's WebAssembly memory (at most 4 GiB): a 512×512×300 int16
// phantom query written by `medlsam phantom` (5 mm slices: a whole-body length, so that the organ
// spans few slices and CI stays short) with one small phantom support, through the page's inputs.
// The page reports its memory (WebAssembly memory only grows: the figure after the run is the peak).
const BIG = { dims: [512, 512, 300], spacing: [0.8, 0.8, 5.0], organ: 3, name: "left_kidney", minDsc: 30, maxMiB: 2048 };
await test("a 512×512×300 CT is segmented within the browser's memory (CPU in WebAssembly)", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "medlsam-big-"));
  const [supportCt, supportLabel] = writePhantom(dir, "support", "--seed", "1");
  const [queryCt, queryLabel] = writePhantom(dir, "big_query", "--dims", BIG.dims.join(","), "--spacing", BIG.spacing.join(","), "--seed", "12");
  const loaded = await loadPair("?backend=cpu", [supportCt, supportLabel, queryCt, queryLabel], 120000);
  await chooseOrgans([BIG.organ]);
  await page.getByTestId("mode-select").selectOption("spl");
  const t0 = Date.now();
  const s = await runToEnd();
  console.log(`  ${BIG.dims.join("×")} query, ${BIG.name}, SPL: wall ${((Date.now() - t0) / 1000).toFixed(0)} s; after loading: ${loaded}; ${s}`);
  const mib = Number(/memory (\d+) MiB/.exec(s)?.[1]);
  assert(mib > 0 && mib <= BIG.maxMiB, `WebAssembly memory ${mib} MiB (limit ${BIG.maxMiB})`);
  // The viewer's case choice lists every case and shows the query; switching to the support and
  // back offers the query's result again.
  const choice = () => page.getByTestId("case-select").evaluate((el) => [el.value, [...el.options].map((o) => o.text)]);
  const [shown, options] = await choice();
  assert(shown === "q0" && JSON.stringify(options) === JSON.stringify(["support: support", "query: big_query"]),
    `case choice ${shown} of ${options}`);
  await page.getByTestId("case-select").selectOption("s0");
  assert(/^support —/.test(await page.getByTestId("viewer-info").textContent()), "support not shown");
  await page.getByTestId("case-select").selectOption("q0");
  assert(/^big_query —/.test(await page.getByTestId("viewer-info").textContent()), "query not shown again");
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download-seg").click()]);
  assert(download.suggestedFilename() === "big_query.seg.nii.gz", `file name ${download.suggestedFilename()}`);
  const seg = readNifti(fs.readFileSync(await download.path()));
  const truth = readNifti(fs.readFileSync(queryLabel));
  assert(JSON.stringify(seg.dim) === JSON.stringify(BIG.dims), `dims ${seg.dim}`);
  assert(seg.srow.flat().every((x, n) => Math.abs(x - truth.srow.flat()[n]) <= 1e-3), `srow ${JSON.stringify(seg.srow)} vs ${JSON.stringify(truth.srow)}`);
  const dsc = dice(seg.data, truth.data, BIG.organ);
  console.log(`  DSC ${BIG.name} (downloaded NIfTI vs the phantom's labels): ${dsc.toFixed(1)} %`);
  assert(dsc >= BIG.minDsc, `DSC ${dsc.toFixed(1)} % below ${BIG.minDsc} %`);
  await overlayMatchesMask(seg, BIG.organ);
  await page.screenshot({ path: path.join(shots, "run-512x512x300.png"), fullPage: true });
  fs.rmSync(dir, { recursive: true, force: true });
});

// SwiftShader for this suite alone while it runs the WebGPU Run: `./dev test` runs the wasm tests
// (also on SwiftShader) beside this suite, and with both on it at once chromedriver timed out
// waiting for the renderer. SWIFTSHADER_LOCK names a directory that whoever holds SwiftShader
// creates (mkdir is atomic); unset, nothing is waited for. Returns the release function.
async function takeSwiftShader() {
  const dir = process.env.SWIFTSHADER_LOCK;
  if (!dir) return () => {};
  const t0 = Date.now();
  for (;;) {
    try { fs.mkdirSync(dir); break; } catch (e) {
      if (e.code !== "EEXIST") throw e;
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  const waited = (Date.now() - t0) / 1000;
  if (waited >= 2) console.log(`  waited ${waited.toFixed(0)} s for SwiftShader (the wasm tests held it)`);
  return () => fs.rmSync(dir, { recursive: true, force: true });
}

// A whole Run on WebGPU, the page's default backend: here the SwiftShader adapter (a GPU emulated
// on the CPU, ~30× slower than the CPU backend in WebAssembly; one encoded slice takes it ~6
// minutes), so the query is a small phantom with 48 mm slices on which the organ (the right
// kidney) lies on 1 axial slice: the atlas, MedLAM's localization and LiteMedSAM's encoder and
// decoder all run on WebGPU (Localizer: MedLAM, since with the default registration the prior
// alone is the mask and LiteMedSAM would not run). The same Run on the CPU in WebAssembly must
// give the same segmentation. (The native CLI with the int8 weights: DSC 63.2 % on these inputs.)
const GPU_RUN = { dims: [96, 96, 4], spacing: [3, 3, 48], organ: 4, minDsc: 50, minAgreement: 98 };
// What the page asks of the GPU, counted in the browser (WebGPU's own entry points wrapped before
// the page loads): compute dispatches, queue submissions, read-backs (mapAsync), uploads
// (writeBuffer), buffers and pipelines created; snapshotted when the progress moves to another
// stage (support atlas, localize, segment, then done), so each stage's share is printed. A stage
// boundary is seen by a mutation observer on the progress text (and a 50 ms timer as a backstop).
function countGpuCalls() {
  const c = { dispatches: 0, submits: 0, readbacks: 0, uploads: 0, buffers: 0, pipelines: 0 };
  const marks = [];
  window.__gpuCalls = { c, marks };
  const wrap = (cls, name, key) => {
    const proto = self[cls]?.prototype;
    const f = proto?.[name];
    if (typeof f !== "function") return;
    proto[name] = function (...args) { c[key]++; return f.apply(this, args); };
  };
  wrap("GPUComputePassEncoder", "dispatchWorkgroups", "dispatches");
  wrap("GPUComputePassEncoder", "dispatchWorkgroupsIndirect", "dispatches");
  wrap("GPUQueue", "submit", "submits");
  wrap("GPUBuffer", "mapAsync", "readbacks");
  wrap("GPUQueue", "writeBuffer", "uploads");
  wrap("GPUDevice", "createBuffer", "buffers");
  wrap("GPUDevice", "createComputePipeline", "pipelines");
  wrap("GPUDevice", "createComputePipelineAsync", "pipelines");
  let last = "";
  const check = () => {
    const text = (id) => (document.querySelector(`[data-testid='${id}']`)?.textContent ?? "").trim();
    const m = /^(done|error|cancelled)/.exec(text("status"))
      ?? /^(support atlas|query \d+\/\d+: [a-z]+)/.exec(text("progress-text"));
    if (m && m[1] !== last) {
      last = m[1];
      marks.push({ stage: last, ...c });
    }
  };
  // A mutation observer's callback runs at the first microtask checkpoint after the page
  // sets its progress text, i.e. as soon as the wasm awaits, before any GPU call of the
  // next stage; a timer could fire after that stage had queued its dispatches.
  new MutationObserver(check).observe(document, { childList: true, characterData: true, subtree: true });
  setInterval(check, 50);
}
/// Per-stage GPU calls from the snapshots of countGpuCalls (each stage: until the next one).
function gpuCallsPerStage({ c, marks }) {
  const keys = Object.keys(c);
  const first = marks[0] ?? c;
  return [`before the first stage (page start, models loaded): ` + keys.map((k) => `${first[k]} ${k}`).join(", ")].concat(marks.map((m, n) => {
    const next = marks[n + 1] ?? c;
    return `${m.stage}: ` + keys.map((k) => `${next[k] - m[k]} ${k}`).join(", ");
  }).filter((_, n) => n < marks.length - 1 || !/^(done|error|cancelled)/.test(marks[n].stage)));
}
await test("a whole Run on WebGPU (SwiftShader) segments like the CPU backend", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "medlsam-gpu-run-"));
  const phantom = (name, seed) => writePhantom(dir, name, "--dims", GPU_RUN.dims.join(","),
    "--spacing", GPU_RUN.spacing.join(","), "--seed", String(seed));
  const [supportCt, supportLabel] = phantom("gpu_support", 1);
  const [queryCt, queryLabel] = phantom("gpu_query", 2);
  const truth = readNifti(fs.readFileSync(queryLabel));
  const runOn = async (query, backendRe, timeout) => {
    await loadPair(query, [supportCt, supportLabel, queryCt, queryLabel], 60000, countGpuCalls);
    await chooseOrgans([GPU_RUN.organ]);
    await page.getByTestId("localizer-select").selectOption("medlam");
    await page.getByTestId("mode-select").selectOption("wpl");
    const t0 = Date.now();
    await page.getByTestId("run-button").click();
    const s = await waitStatus(/^(done|error|cancelled)/, timeout);
    assert(/^done/.test(s), `run did not finish: ${s}`);
    const gpu = await page.getByTestId("gpu-status").textContent();
    assert(backendRe.test(gpu), `backend: ${gpu}`);
    const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download-seg").click()]);
    const seg = readNifti(fs.readFileSync(await download.path()));
    assert(JSON.stringify(seg.dim) === JSON.stringify(GPU_RUN.dims), `dims ${seg.dim}`);
    const dsc = dice(seg.data, truth.data, GPU_RUN.organ);
    const ext = labelExtent(seg, GPU_RUN.organ);
    console.log(`  ${gpu}: wall ${((Date.now() - t0) / 1000).toFixed(0)} s; ${s}; DSC ${dsc.toFixed(1)} %, ` +
      `${ext.count} voxels on slices ${ext.slices.join(",")}`);
    const calls = await page.evaluate(() => window.__gpuCalls);
    if (calls.c.dispatches > 0) for (const line of gpuCallsPerStage(calls)) console.log(`  WebGPU calls, ${line}`);
    // After the Run the viewer shows a slice of the result (the file's k is the canonical k here).
    const info = await page.getByTestId("viewer-info").textContent();
    const k = Number(/ k=(\d+)/.exec(info)?.[1]);
    assert(ext.slices.includes(k), `the viewer shows slice ${k}, not one of the result's (${ext.slices}): ${info}`);
    return { seg, dsc };
  };
  const release = await takeSwiftShader();
  let gpu;
  try {
    gpu = await runOn("", /^\s*models run on: WebGPU\s*$/, 25 * 60 * 1000);
  } finally {
    release();
  }
  await page.screenshot({ path: path.join(shots, "run-webgpu.png"), fullPage: true });
  await overlayMatchesMask(gpu.seg, GPU_RUN.organ);
  assert(gpu.dsc >= GPU_RUN.minDsc, `DSC on WebGPU ${gpu.dsc.toFixed(1)} % below ${GPU_RUN.minDsc} %`);
  const cpu = await runOn("?backend=cpu", /CPU in WebAssembly/, RUN_TIMEOUT_MS);
  const agreement = dice(gpu.seg.data, cpu.seg.data, GPU_RUN.organ);
  console.log(`  WebGPU vs CPU in WebAssembly: DSC ${agreement.toFixed(2)} %`);
  assert(agreement >= GPU_RUN.minAgreement, `WebGPU and CPU segmentations agree only ${agreement.toFixed(2)} %`);
  fs.rmSync(dir, { recursive: true, force: true });
});

// DICOM in, RTSTRUCT and DICOM SEG out: the committed DICOM slices of 3D-IRCADb patient 1 as the
// query, chosen with the folder picker; the liver of ircadb_017 (NIfTI) as the support, placed by
// registration, on the CPU in WebAssembly, with the automatic mask: one support, and LiteMedSAM
// draws this liver well on it (the self-check), so LiteMedSAM segments it inside the
// registration's boxes (the CLI with the page's int8 weights does the same). The downloads are checked independently by
// tools/check_dicom_outputs.py (pydicom: UIDs, references, contours and frames vs the NIfTI) and
// compared with the native CLI's files on the same inputs: where the two masks are equal, the
// DICOM objects must be equal element for element except their creation date and time.
const DCM = { query: "tests/data/dicom/ircadb_001", case: "ircadb_001", support: "ircadb_017", organ: 1, name: "liver", minAgree: 99 };
const DATE_TAGS = ["StructureSetDate", "StructureSetTime", "ContentDate", "ContentTime"];
/// The elements of an RTSTRUCT or SEG made from the mask itself.
const MASK_MADE = /^(meta\.MediaStorageSOPInstanceUID|SOPInstanceUID|SeriesInstanceUID|.*DimensionOrganizationUID|PixelData|ROIContourSequence\[\d+\]\.ContourSequence.*)$/;
/// The DICOM elements (file meta included, sequences walked) that differ between two files,
/// leaving out DATE_TAGS; by pydicom.
function dicomDifferences(a, b) {
  const py = `
import sys, pydicom
skip = set(sys.argv[3].split(","))
def walk(x, y, at, out):
    for t in sorted({e.tag for e in x} | {e.tag for e in y}):
        ex, ey = x.get(t), y.get(t)
        name = (ex or ey).keyword or str(t)
        if name in skip:
            continue
        if ex is None or ey is None:
            out.append(at + name + " (missing in one)")
        elif ex.VR == "SQ":
            if len(ex.value) != len(ey.value):
                out.append(f"{at}{name} ({len(ex.value)} vs {len(ey.value)} items)")
            else:
                for i, (p, q) in enumerate(zip(ex.value, ey.value)):
                    walk(p, q, f"{at}{name}[{i}].", out)
        elif ex.value != ey.value:
            out.append(at + name)
a, b = pydicom.dcmread(sys.argv[1]), pydicom.dcmread(sys.argv[2])
out = []
walk(a.file_meta, b.file_meta, "meta.", out)
walk(a, b, "", out)
print("\\n".join(out))
`;
  const out = execFileSync("python3", ["-c", py, a, b, DATE_TAGS.join(",")], { encoding: "utf8" }).trim();
  return out ? out.split("\n") : [];
}
function havePydicom() {
  try { execFileSync("python3", ["-c", "import pydicom, numpy"], { stdio: "ignore" }); return true; } catch { return false; }
}
/// Save the download behind a link into `dir` under its suggested name; returns the path.
async function saveDownload(id, dir) {
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId(id).click()]);
  const file = path.join(dir, download.suggestedFilename());
  await download.saveAs(file);
  return file;
}
/// The page's downloads in `pageOut` against the native CLI's files in `cliOut` (same inputs):
/// NIfTI masks voxel for voxel; RTSTRUCT and SEG element for element (pydicom) and byte for byte.
/// Equal masks: the DICOM files must be equal but for DATE_TAGS. Masks a few voxels apart: only
/// what is made from the mask may differ. Returns the number of mask voxels that differ.
function compareWithCli(pageOut, cliOut) {
  const seg = readNifti(fs.readFileSync(path.join(pageOut, `${DCM.case}.seg.nii.gz`)));
  const native = readNifti(fs.readFileSync(path.join(cliOut, `${DCM.case}.seg.nii.gz`)));
  assert(JSON.stringify(seg.dim) === JSON.stringify(native.dim), `dims ${seg.dim} vs native ${native.dim}`);
  let differ = 0;
  for (let n = 0; n < seg.data.length; n++) if (seg.data[n] !== native.data[n]) differ++;
  const agree = dice(seg.data, native.data, DCM.organ);
  console.log(`  page vs native CLI: NIfTI masks DSC ${agree.toFixed(2)} %, ${differ} voxels differ`);
  assert(agree >= DCM.minAgree, `the page's mask and the native CLI's agree only ${agree.toFixed(2)} %`);
  for (const f of [`${DCM.case}.rtstruct.dcm`, `${DCM.case}.seg.dcm`]) {
    const a = fs.readFileSync(path.join(pageOut, f)), b = fs.readFileSync(path.join(cliOut, f));
    let bytes = a.length === b.length ? 0 : null;
    if (bytes !== null) for (let n = 0; n < a.length; n++) if (a[n] !== b[n]) bytes++;
    const diffs = dicomDifferences(path.join(pageOut, f), path.join(cliOut, f));
    console.log(`  ${f}: page ${a.length} B, CLI ${b.length} B; ${bytes === null ? "sizes differ" : `${bytes} bytes differ`}; ` +
      `elements that differ besides ${DATE_TAGS.join("/")}: ${diffs.length ? diffs.slice(0, 8).join(", ") : "none"}`);
    if (differ === 0) {
      assert(diffs.length === 0, `${f}: with equal masks the page's file differs from the CLI's in ${diffs.join(", ")}`);
      assert(bytes !== null && bytes <= 14 * 2, `${f}: ${bytes === null ? "sizes differ" : `${bytes} bytes differ`} (only the date and time may)`);
    } else {
      // The masks differ by a few voxels (the registration's sums run in another order in
      // wasm): only what is made from the mask may differ (the UIDs derived from its digest,
      // the contours, the frames' pixels); patient, study, references, names are the same.
      const other = diffs.filter((d) => !MASK_MADE.test(d));
      assert(other.length === 0, `${f}: the page's file differs from the CLI's beyond the mask: ${other.join(", ")}`);
    }
  }
  return differ;
}
await test("a DICOM query folder gives RTSTRUCT and DICOM SEG downloads as the native CLI's (CPU in WebAssembly)", async () => {
  assert(havePydicom(), "python3 with pydicom and numpy is needed (pip install pydicom)");
  page = await newPage();
  await page.goto(origin + "/?backend=cpu");
  await waitStatus(/ready/);
  const abd = (f) => path.join(data, "abdomen", f);
  for (const [input, file, re] of [["support-image-input", abd(`${DCM.support}.ct.nii.gz`), /1 support CT/],
    ["support-label-input", abd(`${DCM.support}.label.nii.gz`), /1 support label map/],
    ["label-table-input", abd(`${DCM.support}.labels.json`), /label names/],
    ["query-folder-input", DCM.query, /1 query CT\(s\) loaded \(1 DICOM series\)|error/]]) {
    await page.getByTestId(input).setInputFiles(input === "query-folder-input" ? DCM.query : [file]);
    const s = await waitStatus(re);
    assert(!/error/.test(s), s);
  }
  assert(/^ircadb_001 —/.test(await page.getByTestId("viewer-info").textContent()), "the DICOM query is not shown");
  await chooseOrgans([DCM.organ]);
  await page.getByTestId("localizer-select").selectOption("register");
  await page.getByTestId("mode-select").selectOption("spl");
  const t0 = Date.now();
  const s = await runToEnd();
  console.log(`  ${DCM.support} → ${DCM.case} (DICOM, ${fs.readdirSync(DCM.query).length} slices), ${DCM.name}, registration: wall ${((Date.now() - t0) / 1000).toFixed(0)} s; ${s}`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "medlsam-web-dicom-"));
  const pageOut = path.join(dir, "page"), cliOut = path.join(dir, "cli");
  fs.mkdirSync(pageOut);
  const files = {};
  for (const id of ["download-seg", "download-labels", "download-rtstruct", "download-dicom-seg"]) files[id] = path.basename(await saveDownload(id, pageOut));
  assert(files["download-rtstruct"] === `${DCM.case}.rtstruct.dcm` && files["download-dicom-seg"] === `${DCM.case}.seg.dcm`,
    `file names ${JSON.stringify(files)}`);
  // Independently of the Rust code: the page's RTSTRUCT and SEG against its own NIfTI mask.
  const check = execFileSync("python3", ["tools/check_dicom_outputs.py", "--query", DCM.query, "--out", pageOut, "--case", DCM.case], { encoding: "utf8" });
  console.log(check.trim().split("\n").map((l) => "  page: " + l).join("\n"));
  // The native CLI on the same inputs.
  execFileSync(medlsamBin(), ["segment", "--support-image", abd(`${DCM.support}.ct.nii.gz`), "--support-label", abd(`${DCM.support}.label.nii.gz`),
    "--query", DCM.query, "--organs", String(DCM.organ), "--localizer", "register", "--weights", "weights/lite_medsam.q8.bpk",
    "--rtstruct", "--dicom-seg", "--out", cliOut], { stdio: "ignore" });
  // The organ list says how the mask was drawn, as boxes.json does.
  const drawn = await page.locator(`[data-confidence='${DCM.organ}']`).first().textContent();
  assert(/drawn by LiteMedSAM inside the registration's boxes/.test(drawn), `organ list: ${drawn}`);
  const cliBoxes = JSON.parse(fs.readFileSync(path.join(cliOut, `${DCM.case}.boxes.json`), "utf8"));
  const cliOrgan = cliBoxes.organs.find((o) => o.label === DCM.organ);
  assert(cliOrgan && /LiteMedSAM inside/.test(cliOrgan.mask_from ?? ""), `CLI boxes.json: ${JSON.stringify(cliOrgan?.mask_from)}`);
  compareWithCli(pageOut, cliOut);
  await page.screenshot({ path: path.join(shots, "run-dicom.png"), fullPage: true });

  // The page's RTSTRUCT back in as the label of a DICOM support (the query's own series): the
  // registration of the query to itself must give back its mask (as ./dev does with the CLI's),
  // here with the Mask choice "the registration prior" (no LiteMedSAM; `--prior-weight 1`).
  page = await newPage();
  await page.goto(origin + "/?backend=cpu");
  await waitStatus(/ready/);
  for (const [input, file, re] of [["support-folder-input", DCM.query, /1 support CT\(s\) loaded \(1 DICOM series\)|error/],
    ["support-label-input", [path.join(pageOut, `${DCM.case}.rtstruct.dcm`)], /1 support label map|error/],
    ["query-folder-input", DCM.query, /1 query CT\(s\) loaded \(1 DICOM series\)|error/],
    ["query-label-input", [path.join(pageOut, `${DCM.case}.seg.nii.gz`)], /1 query label map|error/]]) {
    await page.getByTestId(input).setInputFiles(file);
    const s = await waitStatus(re);
    assert(!/error/.test(s), s);
  }
  const organs = await page.getByTestId("organ-select").textContent();
  assert(new RegExp(`${DCM.organ} ${DCM.name}`).test(organs), `organ choice (names from the RTSTRUCT's ROIs): ${organs}`);
  await page.getByTestId("localizer-select").selectOption("register");
  await page.getByTestId("mask-select").selectOption("prior");
  const s2 = await runToEnd();
  assert(/encoder 0 s/.test(s2), `the prior alone encodes no slice: ${s2}`);
  const row = await page.locator("[data-testid='metrics-table'] tr", { hasText: DCM.name }).first().locator("td").allTextContents();
  console.log(`  support from the page's RTSTRUCT, query itself: ${DCM.name} DSC ${row[2]} %; ${s2}`);
  assert(Number(row[2]) >= 90, `DSC ${row[2]} % below 90 %`);
  // Its downloads against the CLI's on the same inputs (the RTSTRUCT as --support-label).
  const selfPage = path.join(dir, "self-page"), selfCli = path.join(dir, "self-cli");
  fs.mkdirSync(selfPage);
  for (const id of ["download-seg", "download-labels", "download-rtstruct", "download-dicom-seg"]) await saveDownload(id, selfPage);
  execFileSync(medlsamBin(), ["segment", "--support-image", DCM.query, "--support-label", path.join(pageOut, `${DCM.case}.rtstruct.dcm`),
    "--query", DCM.query, "--organs", String(DCM.organ), "--localizer", "register", "--prior-weight", "1", "--rtstruct", "--dicom-seg", "--out", selfCli], { stdio: "ignore" });
  compareWithCli(selfPage, selfCli);
  fs.rmSync(dir, { recursive: true, force: true });
});

await test("a folder without DICOM files is refused with a message and the page stays usable", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "medlsam-nodicom-"));
  const folder = path.join(dir, "notes");
  fs.mkdirSync(folder);
  fs.writeFileSync(path.join(folder, "README"), "not a scan\n");
  fs.writeFileSync(path.join(folder, "DICOMDIR"), Buffer.alloc(300, 7));
  await page.getByTestId("query-folder-input").setInputFiles(folder);
  const s = await waitStatus(/error/);
  assert(/folder notes/.test(s) && /no DICOM/.test(s), s);
  assert((await status().getAttribute("data-state")) === "error", "status not marked as error");
  await page.getByTestId("demo-button").click();
  await waitStatus(/demo/);
  assert(await canvasHasImage("viewer-axial"), "axial pane empty after the error");
  fs.rmSync(dir, { recursive: true, force: true });
});

// Drag and drop: a folder dropped on the query fieldset (the DICOM slices, a non-DICOM README and
// a subfolder), through the browser's FileSystemEntry API as Chromium gives it (directory entries
// read in batches); Playwright cannot drag from the desktop, so the drop event carries entries
// built in the page over real File objects. Then a plain file drop (no entries: dataTransfer.files).
await test("DICOM folders and files dropped on the fieldsets load", async () => {
  page = await newPage();
  await page.goto(origin + "/");
  await waitStatus(/ready/);
  const names = fs.readdirSync(DCM.query).sort();
  const files = names.map((n, i) => [i < 3 ? `${DCM.case}/sub/${n}` : `${DCM.case}/${n}`, fs.readFileSync(path.join(DCM.query, n)).toString("base64")]);
  files.push([`${DCM.case}/README`, Buffer.from("not DICOM").toString("base64")]);
  await page.evaluate(([files]) => {
    const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    // A tree of FileSystemEntry look-alikes: {isFile, isDirectory, name, fullPath, file(), createReader()}.
    const dir = (fullPath) => {
      const children = [];
      return { isFile: false, isDirectory: true, name: fullPath.split("/").pop(), fullPath, children,
        createReader() { let done = false; return { readEntries(ok) { setTimeout(() => { const b = done ? [] : children; done = true; ok(b); }, 0); } }; } };
    };
    const root = dir("/" + files[0][0].split("/")[0]);
    const dirs = { [root.fullPath]: root };
    for (const [p, b64] of files) {
      const parts = p.split("/");
      let d = root;
      for (let n = 1; n < parts.length - 1; n++) {
        const fp = "/" + parts.slice(0, n + 1).join("/");
        if (!dirs[fp]) { dirs[fp] = dir(fp); d.children.push(dirs[fp]); }
        d = dirs[fp];
      }
      const file = new File([bytes(b64)], parts.at(-1));
      d.children.push({ isFile: true, isDirectory: false, name: parts.at(-1), fullPath: "/" + p, file(ok) { setTimeout(() => ok(file), 0); } });
    }
    const ev = new DragEvent("drop", { bubbles: true, cancelable: true });
    Object.defineProperty(ev, "dataTransfer", { value: { items: { length: 1, 0: { kind: "file", webkitGetAsEntry: () => root } }, files: { length: 0 } } });
    document.querySelector("[data-testid='query-drop']").dispatchEvent(ev);
  }, [files]);
  const s = await waitStatus(/1 query CT\(s\) loaded|error/);
  assert(/\(1 DICOM series\)/.test(s), s);
  const info = await page.getByTestId("viewer-info").textContent();
  assert(new RegExp(`^${DCM.case} — 512×512×${names.length} voxels`).test(info), `all ${names.length} slices not loaded: ${info}`);
  // A plain file drop: the browser gives no entries, only dataTransfer.files.
  const nii = fs.readFileSync(path.join(data, "abdomen", `${DCM.support}.ct.nii.gz`)).toString("base64");
  await page.evaluate(([b64]) => {
    const dt = new DataTransfer();
    dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], "dropped.ct.nii.gz"));
    const ev = new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: dt });
    document.querySelector("[data-testid='support-drop']").dispatchEvent(ev);
  }, [nii]);
  const s2 = await waitStatus(/1 support CT|error/);
  assert(/1 support CT\(s\) loaded$/.test(s2), s2);
  assert(/^dropped —/.test(await page.getByTestId("viewer-info").textContent()), "the dropped support is not shown");
});

await test("no request left the page's origin", async () => {
  assert(foreign.length === 0, `requests to other origins: ${foreign.join(", ")}`);
  const unexpected = consoleErrors.filter((e) => !/favicon/.test(e));
  assert(unexpected.length === 0, `console errors: ${unexpected.join(" | ")}`);
});

await browser.close();
server.close();
console.log(`e2e: ${passed} passed, ${failed} failed (${((Date.now() - suiteStart) / 1000).toFixed(0)} s)`);
process.exit(failed ? 1 : 0);
