//! Fetching the model weights in the browser (wasm32 only): from the page's own
//! origin, streamed with a progress callback, kept in the browser's Cache
//! Storage (so later visits and offline use need no download), and verified
//! against the weights manifest's SHA-256 before use.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Request, RequestInit, Response};

use super::manifest::{MANIFEST_NAME, Manifest};
use crate::{Error, Result};

/// Folder of the weights, relative to the page.
pub const WEIGHTS_DIR: &str = "weights/";
/// Name of the Cache Storage bucket holding verified weights.
const CACHE_NAME: &str = "medlsam-weights-v1";

fn js_err(what: &str, e: JsValue) -> Error {
    let detail = e
        .as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"));
    Error::Io(std::io::Error::other(format!("{what}: {detail}")))
}

/// Download the weights manifest (never from cache: it says what is current).
pub async fn fetch_manifest() -> Result<Manifest> {
    let url = format!("{WEIGHTS_DIR}{MANIFEST_NAME}");
    let init = RequestInit::new();
    init.set_cache(web_sys::RequestCache::NoCache);
    let resp = fetch(&url, &init).await?;
    let text = JsFuture::from(resp.text().map_err(|e| js_err(&url, e))?)
        .await
        .map_err(|e| js_err(&url, e))?;
    Manifest::from_json(&text.as_string().unwrap_or_default())
}

async fn fetch(url: &str, init: &RequestInit) -> Result<Response> {
    let window = web_sys::window().ok_or_else(|| Error::Backend("no window".into()))?;
    let req = Request::new_with_str_and_init(url, init).map_err(|e| js_err(url, e))?;
    let resp: Response = JsFuture::from(window.fetch_with_request(&req))
        .await
        .map_err(|e| js_err(&format!("cannot download {url}"), e))?
        .dyn_into()
        .map_err(|e| js_err(url, e))?;
    if !resp.ok() {
        return Err(Error::Weights(format!(
            "cannot download {url}: HTTP {} (was the app built after `./dev setup` made the weights?)",
            resp.status()
        )));
    }
    Ok(resp)
}

/// The page's Cache Storage bucket, when the browser offers one (secure contexts only).
async fn open_cache() -> Option<web_sys::Cache> {
    let window = web_sys::window()?;
    let caches = window.caches().ok()?;
    JsFuture::from(caches.open(CACHE_NAME))
        .await
        .ok()?
        .dyn_into()
        .ok()
}

/// Read a response body in chunks, reporting `(received, total)` bytes.
async fn read_body(
    resp: &Response,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<u8>> {
    let Some(body) = resp.body() else {
        return Ok(Vec::new());
    };
    let reader: web_sys::ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|e| js_err("stream reader", e.into()))?;
    let mut out = Vec::with_capacity(total as usize);
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| js_err("download interrupted", e))?;
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .ok()
            .and_then(|d| d.as_bool())
            .unwrap_or(true);
        if done {
            break;
        }
        let value =
            js_sys::Reflect::get(&chunk, &"value".into()).map_err(|e| js_err("chunk", e))?;
        let arr: js_sys::Uint8Array = value.dyn_into().map_err(|e| js_err("chunk", e))?;
        let start = out.len();
        out.resize(start + arr.length() as usize, 0);
        arr.copy_to(&mut out[start..]);
        progress(out.len() as u64, total);
    }
    Ok(out)
}

/// Get one weights file: from the cache if a verified copy is there, else
/// downloaded (with progress) and stored in the cache once verified.
pub async fn fetch_weights(
    manifest: &Manifest,
    name: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<u8>> {
    let entry = manifest.entry(name)?;
    // The cache key carries the hash: a new weights file never meets an old copy.
    let url = format!("{WEIGHTS_DIR}{name}");
    let key = format!("{url}?sha256={}", entry.sha256);
    let cache = open_cache().await;
    if let Some(cache) = &cache
        && let Ok(hit) = JsFuture::from(cache.match_with_str(&key)).await
        && let Ok(resp) = hit.dyn_into::<Response>()
    {
        let bytes = read_body(&resp, entry.bytes, progress).await?;
        if manifest.verify(name, &bytes).is_ok() {
            return Ok(bytes);
        }
        let _ = JsFuture::from(cache.delete_with_str(&key)).await;
    }
    let resp = fetch(&url, &RequestInit::new()).await?;
    let bytes = read_body(&resp, entry.bytes, progress).await?;
    manifest.verify(name, &bytes)?;
    if let Some(cache) = &cache {
        let arr = js_sys::Uint8Array::from(bytes.as_slice());
        if let Ok(copy) = Response::new_with_opt_buffer_source(Some(&arr)) {
            let _ = JsFuture::from(cache.put_with_str(&key, &copy)).await;
        }
    }
    Ok(bytes)
}
