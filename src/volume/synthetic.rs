//! Synthetic CT phantoms (no patient data needed): a body with fat and muscle,
//! lungs, a spine, and a few organ-like blobs with realistic Hounsfield units,
//! their size and position varied by a seed. Used by `medlsam demo` and tests.

use super::{Affine, CtVolume, LabelVolume, Volume};
use crate::Result;
use crate::rng::Rng;

/// Organ labels of the phantom, with names.
pub const PHANTOM_LABELS: [(u16, &str); 4] = [
    (1, "liver"),
    (2, "spleen"),
    (3, "left_kidney"),
    (4, "right_kidney"),
];

/// Options for [`phantom`].
#[derive(Clone, Debug)]
pub struct PhantomOptions {
    pub dims: [usize; 3],
    pub spacing_mm: [f64; 3],
    pub seed: u64,
    /// Store the file in RAS (`true`) instead of LPS axis directions.
    pub ras: bool,
}

impl Default for PhantomOptions {
    fn default() -> Self {
        Self {
            dims: [96, 96, 64],
            spacing_mm: [3.0, 3.0, 3.0],
            seed: 1,
            ras: false,
        }
    }
}

struct Ellipsoid {
    c: [f64; 3],
    r: [f64; 3],
}

impl Ellipsoid {
    fn inside(&self, p: [f64; 3]) -> bool {
        (0..3)
            .map(|a| ((p[a] - self.c[a]) / self.r[a]).powi(2))
            .sum::<f64>()
            <= 1.0
    }
}

/// The phantom's body, tissues and organs in mm (body frame, see [`phantom`]).
struct Anatomy {
    body: Ellipsoid,
    fat_inner: Ellipsoid,
    liver: Ellipsoid,
    spleen: Ellipsoid,
    lkid: Ellipsoid,
    rkid: Ellipsoid,
    spine: Ellipsoid,
    lung_l: Ellipsoid,
    lung_r: Ellipsoid,
}

impl Anatomy {
    /// Patient size, position and organ shapes drawn from `rng`.
    fn draw(rng: &mut Rng) -> Self {
        let s = rng.range(0.85, 1.15); // patient size
        let shift = [
            rng.range(-10.0, 10.0),
            rng.range(-8.0, 8.0),
            rng.range(-12.0, 12.0),
        ];
        let organ = |rng: &mut Rng, c: [f64; 3], r: [f64; 3]| Ellipsoid {
            c: [0, 1, 2].map(|a| shift[a] + c[a] * s + rng.range(-6.0, 6.0)),
            r: [0, 1, 2].map(|a| r[a] * s * rng.range(0.85, 1.15)),
        };
        Self {
            body: Ellipsoid {
                c: shift,
                r: [130.0 * s, 95.0 * s, 1e9],
            },
            fat_inner: Ellipsoid {
                c: shift,
                r: [118.0 * s, 84.0 * s, 1e9],
            },
            // Organs (x toward patient's left): liver on the right (−x), spleen on the left.
            liver: organ(rng, [-55.0, -5.0, 25.0], [60.0, 50.0, 45.0]),
            spleen: organ(rng, [70.0, 25.0, 30.0], [22.0, 30.0, 35.0]),
            lkid: organ(rng, [45.0, 40.0, -20.0], [18.0, 20.0, 32.0]),
            rkid: organ(rng, [-45.0, 40.0, -28.0], [18.0, 20.0, 32.0]),
            spine: Ellipsoid {
                c: [shift[0], shift[1] + 50.0 * s, 0.0],
                r: [16.0 * s, 16.0 * s, 1e9],
            },
            lung_l: Ellipsoid {
                c: [shift[0] + 55.0 * s, shift[1] + 5.0, shift[2] + 140.0],
                r: [45.0 * s, 60.0 * s, 70.0],
            },
            lung_r: Ellipsoid {
                c: [shift[0] - 55.0 * s, shift[1] + 5.0, shift[2] + 140.0],
                r: [45.0 * s, 60.0 * s, 70.0],
            },
        }
    }

    /// HU (before noise) and organ label at point `p`.
    fn tissue(&self, p: [f64; 3]) -> (f64, u16) {
        if !self.body.inside(p) {
            (-1000.0, 0)
        } else if self.spine.inside(p) {
            (
                if (p[2] / 30.0).fract().abs() < 0.15 {
                    80.0
                } else {
                    650.0
                },
                0,
            )
        } else if self.lung_l.inside(p) || self.lung_r.inside(p) {
            (-820.0, 0)
        } else if self.liver.inside(p) {
            (60.0, 1)
        } else if self.spleen.inside(p) {
            (48.0, 2)
        } else if self.lkid.inside(p) {
            (32.0, 3)
        } else if self.rkid.inside(p) {
            (32.0, 4)
        } else if !self.fat_inner.inside(p) {
            (-100.0, 0)
        } else {
            (25.0, 0)
        }
    }
}

/// An abdominal phantom CT (HU) and its organ label map, in mm coordinates
/// centred on the volume. Positions in the body frame are LPS-like: +x toward
/// the patient's left, +y posterior, +z superior.
pub fn phantom(opt: &PhantomOptions) -> Result<(CtVolume, LabelVolume)> {
    let mut rng = Rng::new(opt.seed);
    let [nx, ny, nz] = opt.dims;
    let sp = opt.spacing_mm;
    let half = [0, 1, 2].map(|a| (opt.dims[a] as f64 - 1.0) * sp[a] / 2.0);
    let anatomy = Anatomy::draw(&mut rng);
    let mut ct = Vec::with_capacity(nx * ny * nz);
    let mut lab = Vec::with_capacity(nx * ny * nz);
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let p = [
                    i as f64 * sp[0] - half[0],
                    j as f64 * sp[1] - half[1],
                    k as f64 * sp[2] - half[2],
                ];
                let noise = rng.range(-12.0, 12.0);
                let (hu, l) = anatomy.tissue(p);
                ct.push((hu + noise).round() as i16);
                lab.push(l);
            }
        }
    }
    // LPS file: voxel +i toward L (world −x), +j toward P (world −y), +k toward S.
    let affine = Affine::from_diagonal([-sp[0], -sp[1], sp[2]], [half[0], half[1], -half[2]]);
    let mut ct = Volume::from_data(opt.dims, ct, affine)?;
    let mut lab = Volume::from_data(opt.dims, lab, affine)?;
    if opt.ras {
        // Same anatomy stored with i and j reversed: the affine changes, the world positions do not.
        flip_ij(&mut ct.data, opt.dims);
        flip_ij(&mut lab.data, opt.dims);
        let ras = Affine::from_diagonal([sp[0], sp[1], sp[2]], [-half[0], -half[1], -half[2]]);
        ct.affine = ras;
        lab.affine = ras;
    }
    Ok((ct, lab))
}

/// Voxel data with the i and j axes reversed.
fn flip_ij<T: Copy>(v: &mut Vec<T>, [nx, ny, nz]: [usize; 3]) {
    let mut out = Vec::with_capacity(v.len());
    for k in 0..nz {
        for j in (0..ny).rev() {
            for i in (0..nx).rev() {
                out.push(v[i + nx * (j + ny * k)]);
            }
        }
    }
    *v = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::labels::classes;

    #[test]
    fn phantoms_have_all_organs_vary_with_seed_and_agree_across_orientations() {
        let opt = PhantomOptions {
            dims: [48, 48, 32],
            spacing_mm: [6.0, 6.0, 6.0],
            ..Default::default()
        };
        let (ct, lab) = phantom(&opt).unwrap();
        let c = classes(&lab);
        assert_eq!(c.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        let (_, lab2) = phantom(&PhantomOptions {
            seed: 2,
            ..opt.clone()
        })
        .unwrap();
        assert_ne!(lab.data, lab2.data);
        assert!(ct.data.iter().any(|&v| v < -900) && ct.data.iter().any(|&v| v > 500));
        let (ct_ras, lab_ras) = phantom(&PhantomOptions { ras: true, ..opt }).unwrap();
        assert_eq!(ct_ras.affine.axis_codes(), "RAS");
        assert_eq!(lab.affine.axis_codes(), "LPS");
        // Canonical (LPS) views of both are identical.
        assert_eq!(lab_ras.to_canonical().0.data, lab.to_canonical().0.data);
    }
}
