//! Intensity mappings of CT values (Hounsfield units) for the two models.

/// MedLAM input mapping: piecewise linear [-1000, -200, 200, 1500] HU → [0, 0.2, 0.8, 1], clamped.
pub fn medlam_intensity(hu: f32) -> f32 {
    const X: [f32; 4] = [-1000.0, -200.0, 200.0, 1500.0];
    const Y: [f32; 4] = [0.0, 0.2, 0.8, 1.0];
    if hu.is_nan() || hu <= X[0] {
        return Y[0];
    }
    for s in 0..3 {
        if hu <= X[s + 1] {
            return Y[s] + (hu - X[s]) * (Y[s + 1] - Y[s]) / (X[s + 1] - X[s]);
        }
    }
    Y[3]
}

/// Clip to `[lo, hi]` HU.
pub fn clip_hu(hu: f32, lo: f32, hi: f32) -> f32 {
    hu.clamp(lo, hi)
}

/// CT window `[lo, hi]` HU mapped to 0..255 (the SAM-stage input scale).
pub fn window_to_u8_range(hu: f32, lo: f32, hi: f32) -> f32 {
    (clip_hu(hu, lo, hi) - lo) / (hi - lo) * 255.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medlam_mapping_hits_its_knots_and_clamps() {
        for (x, y) in [
            (-3000.0, 0.0),
            (-1000.0, 0.0),
            (-600.0, 0.1),
            (-200.0, 0.2),
            (0.0, 0.5),
            (200.0, 0.8),
            (850.0, 0.9),
            (1500.0, 1.0),
            (4000.0, 1.0),
        ] {
            assert!(
                (medlam_intensity(x) - y).abs() < 1e-6,
                "{x} → {}",
                medlam_intensity(x)
            );
        }
        assert_eq!(window_to_u8_range(-600.0, -500.0, 1000.0), 0.0);
        assert_eq!(window_to_u8_range(1000.0, -500.0, 1000.0), 255.0);
        assert!((window_to_u8_range(250.0, -500.0, 1000.0) - 127.5).abs() < 1e-4);
    }
}
