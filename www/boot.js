// Loads the app's WebAssembly from this page's own origin (no inline script, so the
// Content-Security-Policy can forbid every other script and connection).
import init from "./medlsam-web.js";
init().catch((e) => {
  const s = document.querySelector("[data-testid='status']");
  if (s) {
    s.textContent = "error: the app could not start: " + e;
    s.dataset.state = "error";
  }
});
