//! The inputs panel: support and query CTs, their label maps, a label table, the demo
//! phantoms; files are read in the page and never leave it.

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

/// A CT read from its files (NIfTI, or a DICOM series) as the page keeps it.
pub(super) fn scan_case(scan: ScanRead) -> Case {
    let codes = scan.ct.affine.axis_codes();
    let (canon, reorientation) = scan.ct.to_canonical();
    Case {
        name: scan.name,
        canon,
        reorientation,
        file_affine_codes: codes,
        labels: None,
        truth: None,
        points: Vec::new(),
        result: None,
        dicom: scan.dicom,
    }
}

pub(super) fn to_case(name: &str, bytes: &[u8]) -> Result<Case> {
    read_scan(&ScanFiles::Nifti {
        name: name.to_string(),
        bytes: bytes.to_vec(),
    })
    .map(scan_case)
}

pub(super) fn prefix(name: &str, e: Error) -> Error {
    e.context(name)
}

/// A label map (file grid) on a case's canonical grid, after checking they match.
pub(super) fn labels_for(case: &Case, name: &str, labels: LabelVolume) -> Result<LabelVolume> {
    let (canon, r) = labels.to_canonical();
    if r != case.reorientation || !case.canon.same_grid(&canon) {
        return Err(Error::Mismatch(format!(
            "{name} does not match {} (different shape or geometry): is it the label map of another scan?",
            case.name
        )));
    }
    Ok(canon)
}

/// A chosen label file (NIfTI, or an RTSTRUCT of a DICOM case) on a case's canonical
/// grid, with the RTSTRUCT's ROI names.
fn label_file_for(
    case: &Case,
    name: &str,
    file: &LabelFile,
) -> Result<(LabelVolume, Option<LabelTable>)> {
    let ct = match file {
        LabelFile::Map(_) => None,
        LabelFile::RtStruct(_) => Some(case.canon.from_canonical(&case.reorientation)?),
    };
    let grid = ct.as_ref().unwrap_or(&case.canon);
    let (labels, table) = file.on_scan(name, &case.name, grid, case.dicom.as_ref())?;
    Ok((labels_for(case, name, labels)?, table))
}

/// Pair label maps (file order) with cases one to one.
pub(super) fn check_pairs(cases: usize, labels: usize, what: &str) -> Result<()> {
    if labels != cases {
        return Err(Error::Mismatch(format!(
            "{cases} {what} CTs but {labels} {what} label maps: give one label map per {what} CT"
        )));
    }
    Ok(())
}

/// Read the CTs among files (NIfTI files; DICOM folders, each one series).
pub(super) fn read_cases(files: NamedFiles) -> Result<Vec<Case>> {
    group_scans(files)
        .iter()
        .map(|s| read_scan(s).map(scan_case))
        .collect()
}

pub(super) async fn on_support_images(input: HtmlInputElement) -> Result<String> {
    load_supports(files_of(&input).await?)
}

pub(super) fn load_supports(files: NamedFiles) -> Result<String> {
    let cases = read_cases(files)?;
    let n = cases.len();
    let dicom = cases.iter().filter(|c| c.dicom.is_some()).count();
    APP.with_borrow_mut(|a| {
        a.supports = cases;
        pair_support_labels(a)?;
        a.shown = (!a.supports.is_empty()).then_some(Shown::Support(0));
        a.recentre = true;
        Ok::<_, Error>(())
    })?;
    Ok(format!("{n} support CT(s) loaded{}", dicom_note(dicom)))
}

fn dicom_note(dicom: usize) -> String {
    match dicom {
        0 => String::new(),
        n => format!(" ({n} DICOM series)"),
    }
}

pub(super) fn pair_support_labels(a: &mut App) -> Result<()> {
    if a.support_labels.is_empty() || a.supports.is_empty() {
        return Ok(());
    }
    check_pairs(a.supports.len(), a.support_labels.len(), "support")?;
    let mut roi_names = None;
    for (case, (name, lab)) in a.supports.iter_mut().zip(&a.support_labels) {
        let (labels, table) = label_file_for(case, name, lab)?;
        case.labels = Some(labels);
        roi_names = roi_names.or(table);
    }
    // As natively: an RTSTRUCT's ROI names name the organs, unless a label table was chosen.
    if let Some(t) = roi_names.filter(|_| !a.table_chosen) {
        a.table = t;
    }
    Ok(())
}

pub(super) fn pair_query_labels(a: &mut App) -> Result<()> {
    if a.query_labels.is_empty() || a.queries.is_empty() {
        return Ok(());
    }
    check_pairs(a.queries.len(), a.query_labels.len(), "query")?;
    for (case, (name, lab)) in a.queries.iter_mut().zip(&a.query_labels) {
        case.truth = Some(label_file_for(case, name, lab)?.0);
    }
    Ok(())
}

pub(super) async fn read_label_maps(input: &HtmlInputElement) -> Result<Vec<(String, LabelFile)>> {
    files_of(input)
        .await?
        .into_iter()
        .map(|(n, b)| Ok((n.clone(), LabelFile::read(&n, b)?)))
        .collect()
}

pub(super) async fn on_query_labels(input: HtmlInputElement) -> Result<String> {
    let labels = read_label_maps(&input).await?;
    let n = labels.len();
    APP.with_borrow_mut(|a| {
        a.query_labels = labels;
        pair_query_labels(a)
    })?;
    Ok(format!(
        "{n} query label map(s) loaded (used only for metrics)"
    ))
}

pub(super) async fn on_support_labels(input: HtmlInputElement) -> Result<String> {
    let labels = read_label_maps(&input).await?;
    let n = labels.len();
    APP.with_borrow_mut(|a| {
        a.support_labels = labels;
        pair_support_labels(a)
    })?;
    Ok(format!("{n} support label map(s) loaded"))
}

pub(super) async fn on_queries(input: HtmlInputElement) -> Result<String> {
    load_queries(files_of(&input).await?)
}

pub(super) fn load_queries(files: NamedFiles) -> Result<String> {
    let cases = read_cases(files)?;
    let n = cases.len();
    let dicom = cases.iter().filter(|c| c.dicom.is_some()).count();
    APP.with_borrow_mut(|a| {
        a.queries = cases;
        a.shown = (!a.queries.is_empty()).then_some(Shown::Query(0));
        a.recentre = true;
        pair_query_labels(a)
    })?;
    Ok(format!(
        "{n} query CT(s) loaded{}; memory {:.0} MiB",
        dicom_note(dicom),
        crate::web::wasm_memory_mib()
    ))
}

pub(super) async fn on_label_table(input: HtmlInputElement) -> Result<String> {
    let files = files_of(&input).await?;
    let Some((name, bytes)) = files.into_iter().next() else {
        return Ok(String::new());
    };
    let table =
        LabelTable::from_json(&String::from_utf8_lossy(&bytes)).map_err(|e| prefix(&name, e))?;
    let n = table.0.len();
    APP.with_borrow_mut(|a| {
        a.table = table;
        a.table_chosen = true;
    });
    Ok(format!("{n} label names loaded"))
}

pub(super) fn run_demo() -> Result<String> {
    let mut supports = Vec::new();
    for seed in 1..=3 {
        let (ct, lab) = phantom(&PhantomOptions {
            seed,
            ..Default::default()
        })?;
        let (canon, r) = ct.to_canonical();
        supports.push(Case {
            name: format!("phantom_support_{seed}"),
            canon,
            reorientation: r,
            file_affine_codes: ct.affine.axis_codes(),
            labels: Some(lab.to_canonical().0),
            truth: None,
            points: Vec::new(),
            result: None,
            dicom: None,
        });
    }
    let (q, q_labels) = phantom(&PhantomOptions {
        seed: 11,
        ras: true,
        ..Default::default()
    })?;
    let mut query = to_case(
        "phantom_query.nii.gz",
        &crate::volume::nifti_io::write_nifti_bytes(&q, false)?,
    )?;
    // The phantom's own organs: after a Run the page shows how well they were found.
    query.truth = Some(labels_for(&query, "phantom_query labels", q_labels)?);
    APP.with_borrow_mut(|a| {
        a.supports = supports;
        a.support_labels.clear();
        a.queries = vec![query];
        a.query_labels.clear();
        a.table_chosen = false;
        a.table = LabelTable(
            PHANTOM_LABELS
                .iter()
                .map(|&(v, n)| (v, n.to_string()))
                .collect(),
        );
        a.shown = Some(Shown::Support(0));
        a.recentre = true;
    });
    Ok("demo: 3 synthetic support phantoms with organ labels and 1 query phantom (RAS file) loaded: press Run to localize and segment the query's organs".into())
}
