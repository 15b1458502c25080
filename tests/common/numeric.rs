//! Comparisons of numeric outputs shared by the native and the browser tests
//! (no file access here: the wasm tests include this file on its own).
#![allow(dead_code)]

/// Largest absolute element-wise difference (same lengths required).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Value range (max − min).
pub fn range(a: &[f32]) -> f32 {
    let (lo, hi) = a
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    hi - lo
}
