//! The evaluation's summaries: DSC per organ and mode, and the time per query.

use super::localizes;
use super::results::{EvalResults, EvalRow, QueryTimes};
use crate::output::{mean_sd, median};

/// time per query.
pub fn summary_table(res: &EvalResults) -> String {
    dsc_table(res) + &times_summary(res, &res.modes_or_default())
}

/// Several evaluations side by side (e.g. `eval/openkbp`'s SPL/WPL/oracle and a
/// registration run on the same queries): the DSC table over the queries every one of
/// them finished (a mode in two of them is taken from the first), then each one's times
/// on those queries.
pub fn merged_summary(all: &[EvalResults]) -> String {
    let mut common: Vec<&str> = all
        .first()
        .map(|r| r.times.iter().map(|t| t.case.as_str()).collect())
        .unwrap_or_default();
    common.retain(|c| all.iter().all(|r| r.times.iter().any(|t| t.case == *c)));
    let mut merged = EvalResults::default();
    for res in all {
        for m in &res.modes {
            if merged.modes.contains(m) {
                continue;
            }
            merged.modes.push(m.clone());
            merged.rows.extend(
                res.rows
                    .iter()
                    .filter(|r| r.mode == *m && common.contains(&r.case.as_str()))
                    .cloned(),
            );
        }
    }
    let mut out = format!(
        "{} queries in all {} evaluations\n",
        common.len(),
        all.len()
    );
    out += &dsc_table(&merged);
    for res in all {
        let on_common = EvalResults {
            modes: res.modes.clone(),
            rows: Vec::new(),
            times: res
                .times
                .iter()
                .filter(|t| common.contains(&t.case.as_str()))
                .cloned()
                .collect(),
        };
        out += &times_summary(&on_common, &res.modes);
    }
    out
}

/// [`summary_table`]'s DSC and box IoU part.
fn dsc_table(res: &EvalResults) -> String {
    let mut labels: Vec<(u16, String)> = res
        .rows
        .iter()
        .filter(|r| r.truth_voxels > 0)
        .map(|r| (r.label, r.name.clone()))
        .collect();
    labels.sort();
    labels.dedup_by_key(|l| l.0);
    let cell = |v: Vec<f64>| match mean_sd(&v) {
        Some((m, sd)) => format!("{:>12}", format!("{m:.1} ± {sd:.1}")),
        None => format!("{:>12}", "-"),
    };
    // Columns: DSC of the true boxes first, then of each other mode; box IoU of the modes
    // whose boxes come from a localizer's 3-D box.
    let modes = res.modes_or_default();
    let mut dsc_modes: Vec<&str> = modes.iter().map(String::as_str).collect();
    dsc_modes.sort_by_key(|m| *m != "oracle");
    let iou_modes: Vec<&str> = dsc_modes
        .iter()
        .copied()
        .filter(|m| matches!(*m, "spl" | "wpl" | "reg_sam"))
        .collect();
    let mut out = format!("{:>5}  {:<16} {:>4}", "label", "name", "n");
    for m in &dsc_modes {
        out += &format!("  {:>12}", format!("{} DSC", mode_title(m)));
    }
    for m in &iou_modes {
        out += &format!("  {:>12}", format!("{} boxIoU", mode_title(m)));
    }
    out += "\n";
    let mut line = |label: &str, name: &str, keep: &dyn Fn(&EvalRow) -> bool| {
        let pick = |mode: &str, f: fn(&EvalRow) -> Option<f64>| -> Vec<f64> {
            res.rows
                .iter()
                .filter(|r| r.mode == mode && r.truth_voxels > 0 && keep(r))
                .map(|r| f(r).unwrap_or(0.0))
                .collect()
        };
        let n = pick(dsc_modes[0], |r| r.dsc).len();
        out += &format!("{label:>5}  {name:<16} {n:>4}");
        for m in &dsc_modes {
            out += &format!("  {}", cell(pick(m, |r| r.dsc)));
        }
        for m in &iou_modes {
            out += &format!("  {}", cell(pick(m, |r| r.box_iou)));
        }
        out += "\n";
    };
    for (l, name) in &labels {
        line(&l.to_string(), name, &|r| r.label == *l);
    }
    line("", "all", &|_| true);
    out
}

/// A mode's name in the tables: `oracle` as it is, the others in capitals.
fn mode_title(mode: &str) -> String {
    if mode == "oracle" {
        mode.into()
    } else {
        mode.to_ascii_uppercase()
    }
}

/// One line per backend: the median time per query and per stage. Times per backend (a
/// run may be continued on another machine); medians, so a query that shared the machine
/// with other work does not skew them.
fn times_summary(res: &EvalResults, modes: &[String]) -> String {
    let loc_modes: Vec<&String> = modes.iter().filter(|m| localizes(m)).collect();
    let mut backends: Vec<&str> = res.times.iter().map(|t| t.backend.as_str()).collect();
    backends.sort();
    backends.dedup();
    let mut out = String::new();
    for backend in backends {
        let times: Vec<&QueryTimes> = res.times.iter().filter(|t| t.backend == backend).collect();
        let med = |f: &dyn Fn(&QueryTimes) -> f64| median(times.iter().map(|t| f(t)).collect());
        let (lo, hi) = times
            .iter()
            .map(|t| t.total_s)
            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let loc: Vec<String> = loc_modes
            .iter()
            .enumerate()
            .map(|(n, m)| {
                let s = med(&|t| t.localize_s.get(n).copied().unwrap_or(0.0));
                format!("{} {s:.1} s", mode_title(m))
            })
            .collect();
        out += &format!(
            "{} queries on {backend}; per query, medians: {:.0} s (range {:.0}-{:.0} s; {:.0} slices; load {:.1} s, localize {}, encode {:.1} s, decode {:.1} s)\n",
            times.len(),
            med(&|t| t.total_s),
            lo,
            hi,
            med(&|t| t.slices_encoded as f64),
            med(&|t| t.load_s),
            loc.join(" + "),
            med(&|t| t.encode_s),
            med(&|t| t.decode_s),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::evaluate::EvalRow;

    #[test]
    fn merged_reports_compare_modes_on_the_queries_all_folders_finished() {
        let row = |mode: &str, case: &str, dsc: f64| {
            EvalRow::parse(&format!("{mode},{case},1,Brainstem,100,90,{dsc},1,,1,1")).unwrap()
        };
        let times = |case: &str, n: usize| QueryTimes {
            case: case.into(),
            boxes: vec![0; n],
            localize_s: vec![1.0],
            backend: "cpu".into(),
            ..Default::default()
        };
        let a = EvalResults {
            modes: vec!["spl".into(), "oracle".into()],
            rows: vec![
                row("spl", "q1", 40.0),
                row("oracle", "q1", 60.0),
                row("spl", "q2", 10.0),
                row("oracle", "q2", 20.0),
            ],
            times: vec![times("q1", 2), times("q2", 2)],
        };
        let b = EvalResults {
            modes: vec!["reg".into()],
            rows: vec![row("reg", "q1", 70.0)],
            times: vec![times("q1", 1)],
        };
        let t = merged_summary(&[a, b]);
        assert!(t.starts_with("1 queries in all 2 evaluations"), "{t}");
        // Only q1: oracle 60, SPL 40, REG 70.
        let all = t
            .lines()
            .find(|l| l.trim_start().starts_with("all"))
            .unwrap();
        let cells: Vec<&str> = all.split_whitespace().collect();
        assert_eq!(
            &cells[..8],
            ["all", "1", "60.0", "±", "0.0", "40.0", "±", "0.0"]
        );
        assert!(all.contains("70.0"), "{all}");
    }
}
