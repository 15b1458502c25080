// Ad-hoc: drive a real run in headless Chromium and print timings and DSC (not part of the suite).
// Usage: [DEMO=1] [BACKEND=cpu] [MODE=wpl|spl] [SUPPORTS=okbp_001,okbp_002] [QUERY=okbp_010] \
//        node tests/e2e/try_run.mjs DIST DATA [ORGANS, e.g. 1 or 1,3]
// Any files instead of OpenKBP cases (DATA is then unused):
//        FILES=SUPPORT.ct.nii.gz,SUPPORT.label.nii.gz,QUERY.ct.nii.gz,QUERY.label.nii.gz
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { readNifti, dice } from "./nifti.mjs";
const [dist, data, organs] = process.argv.slice(2);
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json" };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://127.0.0.1");
  let file = path.resolve(dist, "." + decodeURIComponent(url.pathname));
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "index.html");
  if (!fs.existsSync(file)) { res.writeHead(404); return res.end("not found"); }
  res.writeHead(200, { "content-type": types[path.extname(file)] || "application/octet-stream" });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"] });
const page = await browser.newPage({ viewport: { width: 1280, height: 1000 }, acceptDownloads: true });
page.on("console", (m) => console.log("console:", m.type(), m.text().slice(0, 300)));
page.on("pageerror", (e) => console.log("pageerror:", String(e).slice(0, 500)));
await page.goto(origin + "/" + (process.env.BACKEND === "cpu" ? "?backend=cpu" : ""));
await page.waitForFunction(() => /ready/.test(document.querySelector("[data-testid='status']").textContent));
if (process.env.DEMO) {
  await page.getByTestId("demo-button").click();
  await page.waitForFunction(() => /demo/.test(document.querySelector("[data-testid='status']").textContent));
}
const sup = (process.env.SUPPORTS || "okbp_001,okbp_002").split(",");
const query = process.env.QUERY || "okbp_010";
const files = process.env.FILES ? process.env.FILES.split(",") : null;
const queryLabel = files ? files[3] : path.join(data, `openkbp/${query}.label.nii.gz`);
if (files) {
  await page.getByTestId("support-image-input").setInputFiles([files[0]]);
  await page.getByTestId("support-label-input").setInputFiles([files[1]]);
  await page.getByTestId("query-input").setInputFiles([files[2]]);
  await page.getByTestId("query-label-input").setInputFiles([files[3]]);
} else if (!process.env.DEMO) {
  await page.getByTestId("support-image-input").setInputFiles(sup.map((c) => path.join(data, `openkbp/${c}.ct.nii.gz`)));
  await page.getByTestId("support-label-input").setInputFiles(sup.map((c) => path.join(data, `openkbp/${c}.label.nii.gz`)));
  await page.getByTestId("label-table-input").setInputFiles([path.join(data, "openkbp/labels.json")]);
  await page.getByTestId("query-input").setInputFiles([path.join(data, `openkbp/${query}.ct.nii.gz`)]);
  await page.getByTestId("query-label-input").setInputFiles([path.join(data, `openkbp/${query}.label.nii.gz`)]);
}
await page.waitForTimeout(500);
const want = (organs || "1").split(",");
for (const cb of await page.locator("[data-testid='organ-select'] input").all()) {
  const l = await cb.getAttribute("data-organ");
  if (!want.includes(l)) await cb.uncheck();
}
if (process.env.MODE) await page.getByTestId("mode-select").selectOption(process.env.MODE);
// The page's longest stall during the run: gaps between ticks of a 50 ms timer.
await page.evaluate(() => {
  window.__gaps = []; window.__long = []; window.__t0 = performance.now(); let last = performance.now();
  setInterval(() => {
    const n = performance.now(); window.__gaps.push(n - last);
    if (n - last > 1000) window.__long.push(`${((last - window.__t0) / 1000).toFixed(1)} s: ${(n - last).toFixed(0)} ms`);
    last = n;
  }, 50);
});
const t0 = Date.now();
await page.getByTestId("run-button").click();
let last = "";
for (;;) {
  let s, p, g;
  try {
    s = await page.getByTestId("status").textContent({ timeout: 600000 });
    p = await page.getByTestId("progress-text").textContent();
    g = await page.getByTestId("gpu-status").textContent();
  } catch (e) { console.log("page busy:", String(e).slice(0, 100)); continue; }
  if (p + s + g !== last) { console.log(((Date.now() - t0) / 1000).toFixed(1), "s |", g, "|", p, "|", s); last = p + s + g; }
  if (/^(done|error|cancelled)/.test(s)) break;
  await page.waitForTimeout(1000);
}
console.log(await page.getByTestId("metrics-table").textContent());
const g = (await page.evaluate(() => window.__gaps)).sort((a, b) => a - b);
console.log(`page stalls (50 ms timer gaps) during the run: max ${g[g.length - 1].toFixed(0)} ms, ` +
  `99th percentile ${g[Math.floor(g.length * 0.99)].toFixed(0)} ms, over 1 s: ${g.filter((x) => x > 1000).length} of ${g.length}` +
  ` (${(await page.evaluate(() => window.__long)).join(", ")})`);
fs.mkdirSync("/tmp/webtry", { recursive: true });
await page.screenshot({ path: "/tmp/webtry/run.png", fullPage: true });
if (process.env.DEMO) { await browser.close(); server.close(); process.exit(0); }
const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download-seg").click()]);
const seg = readNifti(fs.readFileSync(await download.path()));
const truth = readNifti(fs.readFileSync(queryLabel));
for (const l of want) console.log(`DSC organ ${l} (downloaded NIfTI vs ${path.basename(queryLabel)}): ${dice(seg.data, truth.data, Number(l))?.toFixed(1)} %`);
await browser.close(); server.close();
