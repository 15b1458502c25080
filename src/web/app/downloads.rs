//! Downloads of a run's results: the label map (NIfTI), boxes JSON and metrics CSV;
//! for a query read from DICOM also an RTSTRUCT and a DICOM SEG (the CLI's
//! `--rtstruct --dicom-seg` files, made by the same library function).

use super::*;

/// The files of the shown query's results.
struct ResultFiles {
    name: String,
    /// Label map (NIfTI, file grid).
    seg: Vec<u8>,
    boxes: Option<String>,
    metrics: Option<String>,
    /// The label table (JSON).
    table: String,
    /// RTSTRUCT and DICOM SEG (file name, bytes), for a query read from DICOM.
    dicom: Vec<(String, Vec<u8>)>,
}

/// The shown case and its label map on its file's grid.
fn shown_labels(a: &App) -> Result<(&Case, LabelVolume)> {
    let case = a
        .shown_case()
        .ok_or_else(|| Error::InvalidArgument("no case shown".into()))?;
    let labels = case
        .labels
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("the shown case has no label map".into()))?;
    Ok((case, labels.from_canonical(&case.reorientation)?))
}

fn result_files(a: &App) -> Result<ResultFiles> {
    let (case, file_labels) = shown_labels(a)?;
    let dicom = match (&case.dicom, &case.result) {
        (Some(info), Some(r)) => dicom_output_files(
            &case.name,
            &file_labels,
            &r.asked,
            &a.table,
            info,
            DicomOutputs::BOTH,
            unix_now(),
        )?,
        _ => Vec::new(),
    };
    let boxes = case.result.as_ref().map(|r| {
        let j = boxes_json(&case.name, &r.organs, &case.reorientation, &a.table);
        serde_json::to_string_pretty(&j).expect("serialisable")
    });
    let metrics = case.result.as_ref().and_then(|r| r.metrics.as_ref());
    let metrics = metrics.map(|m| {
        let mut rows = vec![METRICS_CSV_HEADER.to_string()];
        let named = |r: &LabelMetrics| metrics_csv_row(&case.name, &a.table.name(r.label), r);
        rows.extend(m.iter().map(named));
        rows.join("\n") + "\n"
    });
    Ok(ResultFiles {
        name: case.name.clone(),
        seg: write_labels_nifti_bytes(&file_labels)?,
        boxes,
        metrics,
        table: a.table.to_json(),
        dicom,
    })
}

/// Offer the shown query's results: label map (file grid), boxes, label table, metrics.
pub(super) fn offer_result_downloads() -> Result<()> {
    let files = APP.with_borrow(result_files)?;
    let name = &files.name;
    for (file, bytes) in &files.dicom {
        let id = if file.ends_with(".rtstruct.dcm") {
            "download-rtstruct"
        } else {
            "download-dicom-seg"
        };
        offer_download(id, bytes, file, "application/dicom")?;
    }
    let seg_name = format!("{name}.seg.nii.gz");
    offer_download("download-seg", &files.seg, &seg_name, "application/gzip")?;
    offer_table(&files.table)?;
    if let Some(b) = &files.boxes {
        let boxes_name = format!("{name}.boxes.json");
        offer_download(
            "download-boxes",
            b.as_bytes(),
            &boxes_name,
            "application/json",
        )?;
    }
    if let Some(m) = &files.metrics {
        offer_download("download-metrics", m.as_bytes(), "metrics.csv", "text/csv")?;
    }
    Ok(())
}

/// Offer the label table (labels.json).
fn offer_table(json: &str) -> Result<()> {
    offer_download(
        "download-labels",
        json.as_bytes(),
        "labels.json",
        "application/json",
    )
}

/// Hide the download links (their content belongs to what was shown before).
pub(super) fn hide_downloads() {
    for id in [
        "download-seg",
        "download-labels",
        "download-boxes",
        "download-metrics",
        "download-rtstruct",
        "download-dicom-seg",
    ] {
        let a: HtmlElement = by_testid(id);
        let _ = a.set_attribute("hidden", "");
    }
}

/// Offer bytes as a download on the anchor with this test id.
pub(super) fn offer_download(id: &str, bytes: &[u8], file_name: &str, mime: &str) -> Result<()> {
    let arr = js_sys::Uint8Array::from(bytes);
    let parts = js_sys::Array::of1(&arr);
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &opts)
        .map_err(|_| Error::Backend("cannot create a download".into()))?;
    let url = web_sys::Url::create_object_url_with_blob(&blob)
        .map_err(|_| Error::Backend("cannot create a download".into()))?;
    let a: HtmlAnchorElement = by_testid(id);
    // Free the previous file's bytes.
    let old = a.href();
    if old.starts_with("blob:") {
        let _ = web_sys::Url::revoke_object_url(&old);
    }
    a.set_href(&url);
    a.set_download(file_name);
    let _ = a.remove_attribute("hidden");
    Ok(())
}

/// Offer the shown case's label map (file grid and affine) for download.
pub(super) fn offer_label_download() -> Result<()> {
    let (bytes, name) = APP.with_borrow(|a| {
        let (case, file) = shown_labels(a)?;
        Ok::<_, Error>((
            write_labels_nifti_bytes(&file)?,
            format!("{}.seg.nii.gz", case.name),
        ))
    })?;
    offer_download("download-seg", &bytes, &name, "application/gzip")?;
    offer_table(&APP.with_borrow(|a| a.table.to_json()))
}
