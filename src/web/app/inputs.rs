//! The inputs panel: support and query CTs, their label maps, a label table, the demo
//! phantoms; files are read in the page and never leave it. What was read goes to the
//! page's state as a [`Msg`].

use super::*;

pub(super) async fn read_file(file: web_sys::File) -> Result<Vec<u8>> {
    let buf = wasm_bindgen_futures::JsFuture::from(file.array_buffer())
        .await
        .map_err(|_| {
            Error::Io(std::io::Error::other(format!(
                "cannot read {}",
                file.name()
            )))
        })?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

/// A file's path inside what was chosen: `folder/…/name` for a folder's files (a
/// folder picker's `webkitRelativePath`), else its name.
fn relative_path(f: &web_sys::File) -> String {
    js_sys::Reflect::get(f, &JsValue::from_str("webkitRelativePath"))
        .ok()
        .and_then(|v| v.as_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| f.name())
}

pub(super) async fn read_files(files: Vec<web_sys::File>) -> Result<NamedFiles> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let name = relative_path(&f);
        out.push((name, read_file(f).await?));
    }
    Ok(out)
}

pub(super) async fn files_of(input: &HtmlInputElement) -> Result<NamedFiles> {
    let mut files = Vec::new();
    if let Some(list) = input.files() {
        files.extend((0..list.length()).filter_map(|n| list.get(n)));
    }
    read_files(files).await
}

/// Every file under what was dropped: folders walked (`webkitGetAsEntry`), paths
/// `folder/…/name`; the dropped files themselves where the browser gives no entries.
/// The entries are taken during the drop event (the browser forgets them after it).
pub(super) fn dropped(
    e: &web_sys::DragEvent,
) -> (Vec<web_sys::FileSystemEntry>, Vec<web_sys::File>) {
    let Some(dt) = e.data_transfer() else {
        return (Vec::new(), Vec::new());
    };
    let items = dt.items();
    let entries: Vec<web_sys::FileSystemEntry> = (0..items.length())
        .filter_map(|i| items.get(i))
        .filter_map(|it| it.webkit_get_as_entry().ok().flatten())
        .collect();
    let files = match dt.files() {
        Some(list) if entries.is_empty() => {
            (0..list.length()).filter_map(|n| list.get(n)).collect()
        }
        _ => Vec::new(),
    };
    (entries, files)
}

/// A callback API's single result as a future.
async fn callback_result(
    start: impl FnOnce(&js_sys::Function, &js_sys::Function),
    what: &str,
) -> Result<JsValue> {
    let mut start = Some(start);
    let promise = js_sys::Promise::new(&mut |ok, err| {
        if let Some(s) = start.take() {
            s(&ok, &err)
        }
    });
    wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(|_| Error::Io(std::io::Error::other(format!("cannot read {what}"))))
}

/// Read every file under dropped entries (folders walked to any depth).
pub(super) async fn read_dropped(
    entries: Vec<web_sys::FileSystemEntry>,
    files: Vec<web_sys::File>,
) -> Result<NamedFiles> {
    let mut out = read_files(files).await?;
    let mut stack: Vec<web_sys::FileSystemEntry> = entries.into_iter().rev().collect();
    while let Some(entry) = stack.pop() {
        let path = entry.full_path().trim_start_matches('/').to_string();
        if entry.is_directory() {
            let reader = entry
                .unchecked_into::<web_sys::FileSystemDirectoryEntry>()
                .create_reader();
            // readEntries gives a batch per call, until an empty one.
            let mut children = Vec::new();
            loop {
                let batch = callback_result(
                    |ok, err| {
                        let _ = reader.read_entries_with_callback_and_callback(ok, err);
                    },
                    &path,
                )
                .await?;
                let batch = js_sys::Array::from(&batch);
                if batch.length() == 0 {
                    break;
                }
                children.extend(
                    batch
                        .iter()
                        .map(|v| v.unchecked_into::<web_sys::FileSystemEntry>()),
                );
            }
            stack.extend(children.into_iter().rev());
        } else if entry.is_file() {
            let fe = entry.unchecked_into::<web_sys::FileSystemFileEntry>();
            let file =
                callback_result(|ok, err| fe.file_with_callback_and_callback(ok, err), &path)
                    .await?
                    .unchecked_into::<web_sys::File>();
            out.push((path, read_file(file).await?));
        }
    }
    Ok(out)
}

pub(super) async fn on_support_images(input: HtmlInputElement) -> Result<Msg> {
    load_supports(files_of(&input).await?)
}

pub(super) fn load_supports(files: NamedFiles) -> Result<Msg> {
    Ok(Msg::SupportsLoaded(read_cases(files)?))
}

pub(super) async fn on_queries(input: HtmlInputElement) -> Result<Msg> {
    load_queries(files_of(&input).await?)
}

pub(super) fn load_queries(files: NamedFiles) -> Result<Msg> {
    let cases = read_cases(files)?;
    Ok(Msg::QueriesLoaded {
        cases,
        memory_mib: crate::web::wasm_memory_mib(),
    })
}

pub(super) async fn read_label_maps(input: &HtmlInputElement) -> Result<Vec<(String, LabelFile)>> {
    files_of(input)
        .await?
        .into_iter()
        .map(|(n, b)| Ok((n.clone(), LabelFile::read(&n, b)?)))
        .collect()
}

pub(super) async fn on_support_labels(input: HtmlInputElement) -> Result<Msg> {
    Ok(Msg::SupportLabelsLoaded(read_label_maps(&input).await?))
}

pub(super) async fn on_query_labels(input: HtmlInputElement) -> Result<Msg> {
    Ok(Msg::QueryLabelsLoaded(read_label_maps(&input).await?))
}

pub(super) async fn on_label_table(input: HtmlInputElement) -> Result<Msg> {
    let files = files_of(&input).await?;
    let Some((name, bytes)) = files.into_iter().next() else {
        return Ok(Msg::LabelTableLoaded(None));
    };
    let table =
        LabelTable::from_json(&String::from_utf8_lossy(&bytes)).map_err(|e| prefix(&name, e))?;
    Ok(Msg::LabelTableLoaded(Some(table)))
}

/// The file inputs, emptied when the demo replaces what they named.
const FILE_INPUTS: [&str; 7] = [
    "support-image-input",
    "support-folder-input",
    "query-folder-input",
    "support-label-input",
    "label-table-input",
    "query-input",
    "query-label-input",
];

pub(super) fn clear_file_inputs() {
    for id in FILE_INPUTS {
        by_testid::<HtmlInputElement>(id).set_value("");
    }
}

/// The demo's phantoms, built in the page.
fn demo() -> Msg {
    match demo_cases() {
        Ok((supports, query)) => Msg::DemoLoaded {
            supports,
            query: Box::new(query),
        },
        Err(e) => Msg::LoadFailed(e),
    }
}

/// On each `event` of the file input with this test id, read what it holds with `f`.
fn on_async<F, Fut>(id: &str, event: &str, f: F)
where
    F: Fn(HtmlInputElement) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<Msg>> + 'static,
{
    let input: HtmlInputElement = by_testid(id);
    let f = Rc::new(f);
    on_event(id, event, move |_e: Event| {
        let (f, input) = (f.clone(), input.clone());
        wasm_bindgen_futures::spawn_local(async move {
            dispatch(Msg::Reading);
            dispatch(f(input).await.unwrap_or_else(Msg::LoadFailed));
        });
    });
}

/// Folders and files dropped on the element with this test id go to `load`.
fn on_drop(id: &str, load: fn(NamedFiles) -> Result<Msg>) {
    on_event(id, "dragover", |e: Event| e.prevent_default());
    on_event(id, "drop", move |e: Event| {
        e.prevent_default();
        let Ok(d) = e.dyn_into::<web_sys::DragEvent>() else {
            return;
        };
        let (entries, files) = dropped(&d);
        wasm_bindgen_futures::spawn_local(async move {
            dispatch(Msg::Reading);
            let files = read_dropped(entries, files).await.and_then(|f| {
                if f.is_empty() {
                    // A text or link dragged in: keep what is loaded.
                    return Err(Error::InvalidArgument(
                        "nothing to load in what was dropped: drop CT files or DICOM folders"
                            .into(),
                    ));
                }
                Ok(f)
            });
            dispatch(files.and_then(load).unwrap_or_else(Msg::LoadFailed));
        });
    });
}

/// Wire the inputs panel: file and folder choices, drops, the Demo button.
pub(super) fn wire() {
    on_async("support-image-input", "change", on_support_images);
    on_async("support-label-input", "change", on_support_labels);
    on_async("query-input", "change", on_queries);
    on_async("support-folder-input", "change", on_support_images);
    on_async("query-folder-input", "change", on_queries);
    on_drop("support-drop", load_supports);
    on_drop("query-drop", load_queries);
    on_async("label-table-input", "change", on_label_table);
    on_async("query-label-input", "change", on_query_labels);
    on_click("demo-button", || dispatch(demo()));
}
