//! The evaluation's files: `OUT/eval.csv` (one [`EvalRow`] per mode, query and organ)
//! and `OUT/times.csv` (one [`QueryTimes`] per query), read back as [`EvalResults`].

use std::io::Write;
use std::path::Path;

use super::{MODES, localizes};
use crate::metrics::LabelMetrics;
use crate::{Error, Result};

pub const EVAL_CSV_HEADER: &str =
    "mode,case,label,name,truth_voxels,pred_voxels,dsc,hd95,box_iou,wd,ale";
/// `times.csv`'s header for [`MODES`] (other mode sets: [`times_header`]).
pub const TIMES_CSV_HEADER: &str = "case,slices_encoded,boxes_spl,boxes_wpl,boxes_oracle,load_s,localize_spl_s,localize_wpl_s,encode_s,decode_s,total_s,backend";

/// `times.csv`'s header for `modes`: boxes decoded per mode, localization time per
/// mode that localizes.
pub fn times_header(modes: &[&str]) -> String {
    let boxes: Vec<String> = modes.iter().map(|m| format!("boxes_{m}")).collect();
    let loc: Vec<String> = modes
        .iter()
        .filter(|m| localizes(m))
        .map(|m| format!("localize_{m}_s"))
        .collect();
    format!(
        "case,slices_encoded,{},load_s,{},encode_s,decode_s,total_s,backend",
        boxes.join(","),
        loc.join(",")
    )
}

/// The modes a `times.csv` header names (inverse of [`times_header`]).
fn modes_of_header(header: &str) -> Option<Vec<String>> {
    let modes: Vec<String> = header
        .split(',')
        .filter_map(|c| c.strip_prefix("boxes_").map(String::from))
        .collect();
    let refs: Vec<&str> = modes.iter().map(String::as_str).collect();
    (times_header(&refs) == header).then_some(modes)
}

/// One row of `eval.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    pub mode: String,
    pub case: String,
    pub label: u16,
    pub name: String,
    pub truth_voxels: usize,
    pub pred_voxels: usize,
    pub dsc: Option<f64>,
    pub hd95_mm: Option<f64>,
    pub box_iou: Option<f64>,
    pub wd_mm: Option<f64>,
    pub ale_mm: Option<f64>,
}

impl EvalRow {
    pub(super) fn new(mode: &str, case: &str, name: String, m: &LabelMetrics) -> Self {
        Self {
            mode: mode.into(),
            case: case.into(),
            label: m.label,
            name,
            truth_voxels: m.truth_voxels,
            pred_voxels: m.pred_voxels,
            dsc: m.dsc,
            hd95_mm: m.hd95_mm,
            box_iou: m.box_iou,
            wd_mm: m.wd_mm,
            ale_mm: m.ale_mm,
        }
    }

    pub(super) fn to_csv(&self) -> String {
        let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
        format!(
            "{},{},{},{},{},{},{},{},{},{},{}",
            self.mode,
            self.case,
            self.label,
            self.name.replace([',', '"', '\n'], " "),
            self.truth_voxels,
            self.pred_voxels,
            f(self.dsc),
            f(self.hd95_mm),
            f(self.box_iou),
            f(self.wd_mm),
            f(self.ale_mm)
        )
    }

    pub(super) fn parse(line: &str) -> Result<Self> {
        let c: Vec<&str> = line.split(',').collect();
        let bad = || Error::InvalidArgument(format!("not an eval.csv row: {line:?}"));
        if c.len() != 11 {
            return Err(bad());
        }
        let f = |s: &str| -> Result<Option<f64>> {
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse().map(Some).map_err(|_| bad())
            }
        };
        Ok(Self {
            mode: c[0].into(),
            case: c[1].into(),
            label: c[2].parse().map_err(|_| bad())?,
            name: c[3].into(),
            truth_voxels: c[4].parse().map_err(|_| bad())?,
            pred_voxels: c[5].parse().map_err(|_| bad())?,
            dsc: f(c[6])?,
            hd95_mm: f(c[7])?,
            box_iou: f(c[8])?,
            wd_mm: f(c[9])?,
            ale_mm: f(c[10])?,
        })
    }
}

/// The measurements of one query.
#[derive(Clone, Debug, Default)]
pub struct QueryTimes {
    pub case: String,
    pub slices_encoded: usize,
    /// Boxes decoded per mode, in the evaluation's mode order.
    pub boxes: Vec<usize>,
    pub load_s: f64,
    /// Localization seconds per mode that localizes, in mode order.
    pub localize_s: Vec<f64>,
    pub encode_s: f64,
    pub decode_s: f64,
    pub total_s: f64,
    /// The backend the query ran on (`cpu`, `wgpu`): times are summarised per backend.
    pub backend: String,
}

impl QueryTimes {
    pub(super) fn to_csv(&self) -> String {
        let boxes: Vec<String> = self.boxes.iter().map(|b| b.to_string()).collect();
        let loc: Vec<String> = self.localize_s.iter().map(|s| format!("{s:.2}")).collect();
        format!(
            "{},{},{},{:.2},{},{:.2},{:.2},{:.2},{}",
            self.case,
            self.slices_encoded,
            boxes.join(","),
            self.load_s,
            loc.join(","),
            self.encode_s,
            self.decode_s,
            self.total_s,
            self.backend
        )
    }

    /// A row of a `times.csv` whose header names `modes`.
    fn parse(line: &str, modes: &[String]) -> Result<Self> {
        let c: Vec<&str> = line.split(',').collect();
        let bad = || Error::InvalidArgument(format!("not a times.csv row: {line:?}"));
        let nm = modes.len();
        let nl = modes.iter().filter(|m| localizes(m)).count();
        if c.len() != 7 + nm + nl || c[c.len() - 1].is_empty() {
            return Err(bad());
        }
        let u = |s: &str| s.parse::<usize>().map_err(|_| bad());
        let f = |s: &str| s.parse::<f64>().map_err(|_| bad());
        let l = 3 + nm + nl;
        Ok(Self {
            case: c[0].into(),
            slices_encoded: u(c[1])?,
            boxes: c[2..2 + nm].iter().map(|s| u(s)).collect::<Result<_>>()?,
            load_s: f(c[2 + nm])?,
            localize_s: c[3 + nm..l].iter().map(|s| f(s)).collect::<Result<_>>()?,
            encode_s: f(c[l])?,
            decode_s: f(c[l + 1])?,
            total_s: f(c[l + 2])?,
            backend: c[l + 3].into(),
        })
    }
}

/// Everything evaluated so far under an output folder.
#[derive(Clone, Debug, Default)]
pub struct EvalResults {
    /// The modes of the evaluation, in order (empty when nothing was evaluated yet).
    pub modes: Vec<String>,
    pub rows: Vec<EvalRow>,
    pub times: Vec<QueryTimes>,
}

impl EvalResults {
    /// The evaluation's modes; [`MODES`] when nothing was evaluated yet.
    pub(super) fn modes_or_default(&self) -> Vec<String> {
        if self.modes.is_empty() {
            MODES.iter().map(|m| m.to_string()).collect()
        } else {
            self.modes.clone()
        }
    }
}

/// The header and the non-empty lines of a CSV file; `None` when it does not exist.
fn csv_lines(path: &Path) -> Result<Option<(String, Vec<String>)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut it = text.lines();
    let header = it.next().unwrap_or("").to_string();
    let lines = it
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    Ok(Some((header, lines)))
}

fn another_header(path: &Path, expected: &str) -> Error {
    Error::InvalidArgument(format!(
        "{} has another header than this version writes ({expected}): use a new output folder",
        path.display()
    ))
}

/// Read `OUT/eval.csv` and `OUT/times.csv` (empty when absent). Rows of queries
/// missing from `times.csv` (a run stopped while writing them) are dropped.
pub fn read_results(out: &Path) -> Result<EvalResults> {
    let times_path = out.join("times.csv");
    let Some((header, time_lines)) = csv_lines(&times_path)? else {
        return Ok(EvalResults::default());
    };
    let modes =
        modes_of_header(&header).ok_or_else(|| another_header(&times_path, TIMES_CSV_HEADER))?;
    // A run killed while appending may leave the last times.csv line cut short: it is
    // dropped (its query runs again); any other bad line is an error.
    let mut times = Vec::new();
    for (n, l) in time_lines.iter().enumerate() {
        match QueryTimes::parse(l, &modes) {
            Ok(t) => times.push(t),
            Err(_) if n + 1 == time_lines.len() => {}
            Err(e) => return Err(e),
        }
    }
    let eval_path = out.join("eval.csv");
    let (eval_header, eval_lines) = csv_lines(&eval_path)?.unwrap_or_default();
    if !eval_lines.is_empty() && eval_header != EVAL_CSV_HEADER {
        return Err(another_header(&eval_path, EVAL_CSV_HEADER));
    }
    // Rows of queries not in times.csv (unfinished, possibly cut short) are dropped unread.
    let rows = eval_lines
        .iter()
        .filter(|l| {
            let case = l.split(',').nth(1).unwrap_or("");
            times.iter().any(|t| t.case == case)
        })
        .map(|l| EvalRow::parse(l))
        .collect::<Result<Vec<_>>>()?;
    Ok(EvalResults { modes, rows, times })
}

pub(super) fn rewrite(path: &Path, header: &str, rows: impl Iterator<Item = String>) -> Result<()> {
    let mut text = format!("{header}\n");
    rows.for_each(|r| text += &(r + "\n"));
    std::fs::write(path, text)?;
    Ok(())
}

pub(super) fn append(path: &Path, rows: &[String]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    for r in rows {
        writeln!(f, "{r}")?;
    }
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::evaluate::summary_table;

    #[test]
    fn rows_survive_the_csv_and_a_stopped_query_is_dropped_on_reading() {
        let dir = std::env::temp_dir().join(format!("medlsam_eval_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let row = |mode: &str, case: &str, dsc: Option<f64>| EvalRow {
            mode: mode.into(),
            case: case.into(),
            label: 3,
            name: "Right, Parotid".into(),
            truth_voxels: 10,
            pred_voxels: 12,
            dsc,
            hd95_mm: Some(4.5),
            box_iou: None,
            wd_mm: Some(1.25),
            ale_mm: Some(2.0),
        };
        let rows = [
            row("spl", "a", Some(50.0)),
            row("oracle", "a", Some(70.0)),
            row("spl", "b", None),
        ];
        rewrite(
            &dir.join("eval.csv"),
            EVAL_CSV_HEADER,
            rows.iter().map(EvalRow::to_csv),
        )
        .unwrap();
        let t = |case: &str, slices: usize, total_s: f64, backend: &str| QueryTimes {
            case: case.into(),
            slices_encoded: slices,
            boxes: vec![9, 8, 7],
            localize_s: vec![1.0, 2.0],
            total_s,
            backend: backend.into(),
            ..Default::default()
        };
        // "z" has no rows (no organ present): it counts for the times only. "g" ran on
        // another backend: its time is summarised apart.
        let times = [
            t("a", 7, 12.5, "cpu"),
            t("y", 9, 20.0, "cpu"),
            t("z", 30, 900.0, "cpu"),
            t("g", 40, 3.0, "wgpu"),
        ];
        rewrite(
            &dir.join("times.csv"),
            TIMES_CSV_HEADER,
            times.iter().map(QueryTimes::to_csv),
        )
        .unwrap();
        // A query cut short while its rows were written: a partial eval.csv line.
        append(&dir.join("eval.csv"), &["spl,c,3,Right Pa".into()]).unwrap();
        let back = read_results(&dir).unwrap();
        // "b" never reached times.csv: its row is dropped; a comma in a name is replaced.
        assert_eq!(back.rows.len(), 2);
        assert_eq!(back.rows[0].name, "Right  Parotid");
        assert_eq!(back.rows[0].dsc, Some(50.0));
        assert_eq!(back.rows[0].box_iou, None);
        assert_eq!(back.times[0].boxes, [9, 8, 7]);
        assert_eq!(back.modes, MODES);
        // A times.csv line cut short: that query is not counted.
        append(&dir.join("times.csv"), &["b,7,9".into()]).unwrap();
        assert_eq!(read_results(&dir).unwrap().times.len(), 4);
        let table = summary_table(&back);
        assert!(table.contains("70.0 ± 0.0"), "{table}");
        // Medians, so the 900 s query does not move the figures; the range shows it.
        assert!(
            table.contains("3 queries on cpu; per query, medians: 20 s (range 12-900 s; 9 slices;"),
            "{table}"
        );
        assert!(
            table.contains("1 queries on wgpu; per query, medians: 3 s (range 3-3 s; 40 slices;"),
            "{table}"
        );
        assert_eq!(back.times[3].backend, "wgpu");
        std::fs::write(dir.join("times.csv"), "case,other\n").unwrap();
        let e = read_results(&dir).unwrap_err().to_string();
        assert!(e.contains("another header"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
