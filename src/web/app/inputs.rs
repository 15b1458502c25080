//! The inputs panel: support and query CTs, their label maps, a label table, the demo
//! phantoms; files are read in the page and never leave it.

use super::*;

pub(super) fn case_name(file_name: &str) -> String {
    file_name.split('.').next().unwrap_or(file_name).to_string()
}

pub(super) async fn read_file(file: web_sys::File) -> Result<Vec<u8>> {
    let buf = wasm_bindgen_futures::JsFuture::from(file.array_buffer())
        .await
        .map_err(|_| Error::InvalidArgument(format!("cannot read {}", file.name())))?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

pub(super) async fn files_of(input: &HtmlInputElement) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(list) = input.files() {
        for n in 0..list.length() {
            if let Some(f) = list.get(n) {
                let name = f.name();
                out.push((name, read_file(f).await?));
            }
        }
    }
    Ok(out)
}

pub(super) fn to_case(name: &str, bytes: &[u8]) -> Result<Case> {
    let ct = read_nifti_bytes(bytes)
        .map_err(|e| prefix(name, e))?
        .into_ct()
        .map_err(|e| prefix(name, e))?;
    let codes = ct.affine.axis_codes();
    let (canon, reorientation) = ct.to_canonical();
    Ok(Case {
        name: case_name(name),
        canon,
        reorientation,
        file_affine_codes: codes,
        labels: None,
        truth: None,
        points: Vec::new(),
        result: None,
    })
}

pub(super) fn prefix(name: &str, e: Error) -> Error {
    Error::InvalidArgument(format!("{name}: {e}"))
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

/// Pair label maps (file order) with cases one to one.
pub(super) fn check_pairs(cases: usize, labels: usize, what: &str) -> Result<()> {
    if labels != cases {
        return Err(Error::Mismatch(format!(
            "{cases} {what} CTs but {labels} {what} label maps: give one label map per {what} CT"
        )));
    }
    Ok(())
}

/// Read every CT chosen in a file input.
pub(super) async fn read_cases(input: &HtmlInputElement) -> Result<Vec<Case>> {
    files_of(input)
        .await?
        .iter()
        .map(|(n, b)| to_case(n, b))
        .collect()
}

pub(super) async fn on_support_images(input: HtmlInputElement) -> Result<String> {
    let cases = read_cases(&input).await?;
    let n = cases.len();
    APP.with_borrow_mut(|a| {
        a.supports = cases;
        pair_support_labels(a)?;
        a.shown = (!a.supports.is_empty()).then_some(Shown::Support(0));
        a.recentre = true;
        Ok::<_, Error>(())
    })?;
    Ok(format!("{n} support CT(s) loaded"))
}

pub(super) fn pair_support_labels(a: &mut App) -> Result<()> {
    if a.support_labels.is_empty() || a.supports.is_empty() {
        return Ok(());
    }
    check_pairs(a.supports.len(), a.support_labels.len(), "support")?;
    for (case, (name, lab)) in a.supports.iter_mut().zip(&a.support_labels) {
        case.labels = Some(labels_for(case, name, lab.clone())?);
    }
    Ok(())
}

pub(super) fn pair_query_labels(a: &mut App) -> Result<()> {
    if a.query_labels.is_empty() || a.queries.is_empty() {
        return Ok(());
    }
    check_pairs(a.queries.len(), a.query_labels.len(), "query")?;
    for (case, (name, lab)) in a.queries.iter_mut().zip(&a.query_labels) {
        case.truth = Some(labels_for(case, name, lab.clone())?);
    }
    Ok(())
}

pub(super) async fn read_label_maps(
    input: &HtmlInputElement,
) -> Result<Vec<(String, LabelVolume)>> {
    files_of(input)
        .await?
        .iter()
        .map(|(n, b)| {
            Ok((
                n.clone(),
                read_nifti_bytes(b)
                    .and_then(|f| f.into_labels())
                    .map_err(|e| prefix(n, e))?,
            ))
        })
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
    let cases = read_cases(&input).await?;
    let n = cases.len();
    APP.with_borrow_mut(|a| {
        a.queries = cases;
        a.shown = (!a.queries.is_empty()).then_some(Shown::Query(0));
        a.recentre = true;
        pair_query_labels(a)
    })?;
    Ok(format!(
        "{n} query CT(s) loaded; memory {:.0} MiB",
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
    APP.with_borrow_mut(|a| a.table = table);
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
