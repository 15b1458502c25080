//! Native batch runs (`medlsam segment`): load and check the supports, then for
//! each query load, localize, segment and write `<case>.seg.nii.gz`,
//! `<case>.boxes.json`, `<case>.png`, and with query labels `metrics.csv`. A
//! failing query is reported and the others continue; a summary lists failures.

use std::path::{Path, PathBuf};

use crate::config::{CasePaths, Organs};
use crate::metrics::{LabelMetrics, evaluate_labels};
use crate::output::{METRICS_CSV_HEADER, boxes_json, metrics_csv_row, overview_png};
use crate::pipeline::{
    Localizer, Progress, SegmentOptions, SliceSegmenter, StageTimes, segment_query,
};
use crate::volume::label_table::LabelTable;
use crate::volume::labels::classes;
use crate::volume::nifti_io::write_file;
use crate::volume::{CtVolume, LabelVolume, read_nifti_path, write_labels_nifti_bytes};
use crate::{Error, Result};

/// A loaded support: CT and label map on the same grid.
pub struct Support {
    pub name: String,
    pub image: CtVolume,
    pub labels: LabelVolume,
}

/// Case name of a file: its name up to the first dot.
pub fn case_name(path: &Path) -> String {
    let n = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    n.split('.').next().unwrap_or(&n).to_string()
}

/// Load the supports and check each image/label pair.
pub fn load_supports(paths: &[CasePaths]) -> Result<Vec<Support>> {
    if paths.is_empty() {
        return Err(Error::InvalidArgument("no support scans given".into()));
    }
    paths
        .iter()
        .map(|p| {
            let label_path = p.label.as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!("support {} has no label map", p.image.display()))
            })?;
            let image = read_nifti_path(&p.image)?.into_ct()?;
            let labels = read_nifti_path(label_path)?.into_labels()?;
            image.check_same_grid(
                &labels,
                &format!(
                    "support image {} and label {}",
                    p.image.display(),
                    label_path.display()
                ),
            )?;
            Ok(Support {
                name: case_name(&p.image),
                image,
                labels,
            })
        })
        .collect()
}

/// The organs to process: the requested ones, or every label of any support.
/// Errors if a requested organ is in no support; warns (returned) where only some lack it.
pub fn resolve_organs(supports: &[Support], organs: &Organs) -> Result<(Vec<u16>, Vec<String>)> {
    let present: Vec<Vec<u16>> = supports
        .iter()
        .map(|s| classes(&s.labels).into_iter().map(|(v, _)| v).collect())
        .collect();
    let wanted: Vec<u16> = match organs {
        Organs::List(l) => l.clone(),
        Organs::All => {
            let mut all: Vec<u16> = present.iter().flatten().copied().collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    };
    let mut warnings = Vec::new();
    for &o in &wanted {
        let missing: Vec<&str> = supports
            .iter()
            .zip(&present)
            .filter(|(_, p)| !p.contains(&o))
            .map(|(s, _)| s.name.as_str())
            .collect();
        if missing.len() == supports.len() {
            return Err(Error::InvalidArgument(format!(
                "organ {o} is in none of the support label maps"
            )));
        }
        if !missing.is_empty() {
            warnings.push(format!(
                "organ {o} is missing in support(s) {}: they are not used for it",
                missing.join(", ")
            ));
        }
    }
    if wanted.is_empty() {
        return Err(Error::InvalidArgument(
            "the support label maps contain no organ".into(),
        ));
    }
    Ok((wanted, warnings))
}

/// Refuse queries without a body (e.g. not a CT in HU): fewer than 1000 voxels above −500 HU.
pub fn check_has_body(ct: &CtVolume) -> Result<()> {
    let body = ct.data.iter().filter(|&&v| v > -500).count();
    if body < 1000 {
        return Err(Error::InvalidVolume(format!(
            "no body found ({body} voxels above -500 HU): is this a CT in Hounsfield units?"
        )));
    }
    Ok(())
}

/// Outcome of one query.
pub struct QueryReport {
    pub case: String,
    pub result: Result<QueryOk>,
}

/// What a successful query produced.
pub struct QueryOk {
    pub metrics: Vec<LabelMetrics>,
    pub times: StageTimes,
    pub slices: usize,
    pub boxes: usize,
    pub seconds: f64,
}

/// Segment every query and write its outputs under `out`. `make_localizer` builds
/// the localizer for one query (given its file-grid CT and, when known, labels).
#[allow(clippy::too_many_arguments)]
pub fn run_queries<L: Localizer, S: SliceSegmenter>(
    queries: &[CasePaths],
    organs: &[u16],
    names: &LabelTable,
    out: &Path,
    make_localizer: &mut dyn FnMut(&CtVolume, Option<&LabelVolume>) -> Result<L>,
    segmenter: &mut S,
    opt: &SegmentOptions,
    progress: &mut dyn FnMut(&str, Progress),
) -> Result<Vec<QueryReport>> {
    std::fs::create_dir_all(out)?;
    write_file(&out.join("labels.json"), names.to_json().as_bytes())?;
    let mut reports = Vec::new();
    let mut csv = vec![METRICS_CSV_HEADER.to_string()];
    for q in queries {
        let case = case_name(&q.image);
        let t0 = web_time::Instant::now();
        let result = (|| -> Result<QueryOk> {
            let ct = read_nifti_path(&q.image)?.into_ct()?;
            check_has_body(&ct)?;
            let truth = match &q.label {
                Some(l) => {
                    let lab = read_nifti_path(l)?.into_labels()?;
                    ct.check_same_grid(
                        &lab,
                        &format!(
                            "query image {} and label {}",
                            q.image.display(),
                            l.display()
                        ),
                    )?;
                    Some(lab)
                }
                None => None,
            };
            let mut loc = make_localizer(&ct, truth.as_ref())?;
            let res = pollster::block_on(segment_query(
                &ct,
                organs,
                &mut loc,
                segmenter,
                opt,
                None,
                &mut |p| progress(&case, p),
            ))?;
            write_file(
                &out.join(format!("{case}.seg.nii.gz")),
                &write_labels_nifti_bytes(&res.labels)?,
            )?;
            let bj = boxes_json(&case, &res.organs, &res.reorientation, names);
            let text = serde_json::to_string_pretty(&bj)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            write_file(&out.join(format!("{case}.boxes.json")), text.as_bytes())?;
            write_file(
                &out.join(format!("{case}.png")),
                &overview_png(&ct, &res.labels, &res.organs)?,
            )?;
            let metrics = match &truth {
                Some(t) => evaluate_labels(&res.labels, t, organs)?,
                None => Vec::new(),
            };
            Ok(QueryOk {
                metrics,
                times: res.times,
                slices: res.slices_encoded,
                boxes: res.boxes_decoded,
                seconds: t0.elapsed().as_secs_f64(),
            })
        })();
        if let Ok(ok) = &result {
            for m in &ok.metrics {
                csv.push(metrics_csv_row(&case, &names.name(m.label), m));
            }
        }
        reports.push(QueryReport { case, result });
    }
    if queries.iter().any(|q| q.label.is_some()) {
        write_file(&out.join("metrics.csv"), (csv.join("\n") + "\n").as_bytes())?;
    }
    Ok(reports)
}

/// Peak resident memory of this process in MiB (Linux), if known.
pub fn peak_memory_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Output directory default.
pub fn default_out() -> PathBuf {
    PathBuf::from("medlsam_out")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::synthetic::{PhantomOptions, phantom};
    use crate::volume::{Affine, Volume};

    #[test]
    fn organ_resolution_and_body_check() {
        let (ct, lab) = phantom(&PhantomOptions {
            dims: [40, 40, 30],
            spacing_mm: [7.0; 3],
            ..Default::default()
        })
        .unwrap();
        let mut lab2 = lab.clone();
        lab2.data.iter_mut().for_each(|v| {
            if *v == 2 {
                *v = 0
            }
        });
        let s = vec![
            Support {
                name: "a".into(),
                image: ct.clone(),
                labels: lab,
            },
            Support {
                name: "b".into(),
                image: ct.clone(),
                labels: lab2,
            },
        ];
        let (o, w) = resolve_organs(&s, &Organs::All).unwrap();
        assert_eq!(o, vec![1, 2, 3, 4]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("organ 2 is missing in support(s) b"), "{w:?}");
        let e = resolve_organs(&s, &Organs::List(vec![9]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("organ 9 is in none"), "{e}");
        check_has_body(&ct).unwrap();
        let air = Volume::filled([20, 20, 20], -1000i16, Affine::identity()).unwrap();
        assert!(
            check_has_body(&air)
                .unwrap_err()
                .to_string()
                .contains("no body found")
        );
    }
}
