//! Progress on stderr: a bar per query stage for `segment`, a line per ten slices
//! for the true-box run and the demo.

use medlsam::types::Progress;

/// `[query/queries] case stage [####....] done/total`, redrawn in place.
pub struct SliceBar {
    queries: usize,
    current: String,
    index: usize,
}

impl SliceBar {
    /// A bar for a run of `queries` queries.
    pub fn new(queries: usize) -> Self {
        Self {
            queries,
            current: String::new(),
            index: 0,
        }
    }

    /// Redraw for `case`'s progress (a new line when a stage ends).
    pub fn show(&mut self, case: &str, p: Progress) {
        if case != self.current {
            self.current = case.to_string();
            self.index += 1;
        }
        let w = 24;
        if let Some(fill) = (p.done * w).checked_div(p.total) {
            let fill = fill.min(w);
            eprint!(
                "\r[{}/{}] {case} {:<9} [{}{}] {}/{}   ",
                self.index,
                self.queries,
                p.stage,
                "#".repeat(fill),
                ".".repeat(w - fill),
                p.done,
                p.total
            );
            if p.done == p.total {
                eprintln!();
            }
        }
    }
}

/// Every 10th segmented slice of a query (and the last), on stderr.
pub fn print_slice_progress(case: &str, p: Progress) {
    if p.stage == "segment" && p.total > 0 && (p.done.is_multiple_of(10) || p.done == p.total) {
        eprintln!("{case}: slice {}/{}", p.done, p.total);
    }
}
