//! `medlsam localize`: support scans with label maps → `<case>.boxes.json` per
//! query (the query file's voxel indices) and, with query labels,
//! `localization.csv` (3-D box IoU %, WD mm, ALE mm per organ, measured on the
//! query's canonical grid, a permutation of its file grid).

use std::path::PathBuf;
use std::time::Instant;

use super::config::{CasePaths, Organs};
use super::eval_localize::score;
use super::inputs::{load_ct, load_query_labels};
use super::outputs::{create_out, csv_field, write_boxes_json};
use super::session::Session;
use crate::medlam::LocalizeOptions;
use crate::types::{BoxMode, Localizer};
use crate::volume::case_name;
use crate::{Error, Result};

/// Options of `medlsam localize`.
pub struct LocalizeRun {
    pub supports: Vec<CasePaths>,
    pub queries: Vec<PathBuf>,
    /// Query label maps (same order as `queries`), for `localization.csv`.
    pub query_labels: Vec<PathBuf>,
    /// `(support label, query label)` pairs where the query labels use other values.
    pub query_label_map: Vec<(u16, u16)>,
    /// Organs ([`Organs::All`]: every label of any support).
    pub organs: Organs,
    pub mode: BoxMode,
    pub options: LocalizeOptions,
    pub weights: PathBuf,
    pub device: burn::tensor::Device,
    pub out: PathBuf,
}

/// `medlsam localize`: write `<case>.boxes.json` for every query (and `localization.csv`
/// with query labels); a line per query goes to `log`.
pub fn run_localize(run: &LocalizeRun, log: &mut dyn FnMut(String)) -> Result<()> {
    if !run.query_labels.is_empty() && run.query_labels.len() != run.queries.len() {
        return Err(Error::InvalidArgument(format!(
            "{} --query-label for {} --query: give one label map per query, in the same order",
            run.query_labels.len(),
            run.queries.len()
        )));
    }
    if run.queries.is_empty() {
        return Err(Error::InvalidArgument("no --query given".into()));
    }
    let t = Instant::now();
    let mut session = Session::open(
        &run.supports,
        &run.organs,
        &run.weights,
        run.device.clone(),
        run.options,
        log,
    )?;
    let mut localizer = session.localizer(run.mode)?;
    log(format!(
        "atlas of {} organs from {} supports in {:.1} s",
        localizer.atlas.organs.len(),
        session.supports.len(),
        t.elapsed().as_secs_f64()
    ));
    session.release_supports();
    create_out(&run.out)?;
    let mut csv = String::from("case,label,name,iou,wd,ale\n");
    for (qi, qpath) in run.queries.iter().enumerate() {
        let case = case_name(qpath);
        let t = Instant::now();
        let ct = load_ct(qpath)?;
        let (canon, r) = ct.to_canonical();
        let found = pollster::block_on(localizer.localize(&canon, &session.organs))?;
        write_boxes_json(&run.out, &case, &found, &r, &session.names)?;
        let mut line = format!(
            "{case}: {} organs in {:.1} s",
            found.len(),
            t.elapsed().as_secs_f64()
        );
        if let Some(lp) = run.query_labels.get(qi) {
            let lab = load_query_labels(&ct, qpath, lp, &run.query_label_map)?
                .to_canonical()
                .0;
            for o in &found {
                if let Some(s) = score(o, &lab) {
                    let name = session.names.name(o.label);
                    csv.push_str(&format!(
                        "{case},{},{},{:.4},{:.4},{:.4}\n",
                        o.label,
                        csv_field(&name),
                        s.iou,
                        s.wd,
                        s.ale
                    ));
                    line.push_str(&format!(
                        " | {name} IoU {:.1} % WD {:.1} mm ALE {:.1} mm",
                        s.iou, s.wd, s.ale
                    ));
                }
            }
        }
        log(line);
    }
    if !run.query_labels.is_empty() {
        std::fs::write(run.out.join("localization.csv"), csv)?;
    }
    Ok(())
}
