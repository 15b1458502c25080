// End-to-end tests of the browser app: serve the built bundle (dist/) on 127.0.0.1,
// drive Debian Chromium (SwiftShader WebGPU) with Playwright, and check what a user
// sees. Screenshots go to dist/screenshots/ (CI artifacts; look at them).
// Usage: node tests/e2e/run.mjs DIST_DIR DATA_DIR
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";

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
const page = await browser.newPage({ viewport: { width: 1280, height: 1000 }, acceptDownloads: true });
const foreign = [];
page.on("request", (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith("blob:") && !r.url().startsWith("data:")) foreign.push(r.url()); });
const consoleErrors = [];
page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
page.on("pageerror", (e) => consoleErrors.push(String(e)));

let passed = 0, failed = 0;
async function test(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`test ${name} ... ok`);
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

await test("no request left the page's origin", async () => {
  assert(foreign.length === 0, `requests to other origins: ${foreign.join(", ")}`);
  const unexpected = consoleErrors.filter((e) => !/favicon/.test(e));
  assert(unexpected.length === 0, `console errors: ${unexpected.join(" | ")}`);
});

await browser.close();
server.close();
console.log(`e2e: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
