//! Synthetic CT phantoms: `phantom` writes one (any size), `demo` runs the whole
//! pipeline on three of them with no user data.

use std::path::{Path, PathBuf};

use medlsam::device::BackendChoice;
use medlsam::run::config::{CasePaths, Organs, RunConfig};
use medlsam::run::segment::{SupportRun, segment_with_supports, summary_table};
use medlsam::types::BoxMode;
use medlsam::volume::label_table::LabelTable;
use medlsam::volume::labels::{bounding_box, classes, slice_boxes};
use medlsam::volume::nifti_io::write_ct_nifti_path;
use medlsam::volume::synthetic::{PHANTOM_LABELS, PhantomOptions, phantom};
use medlsam::volume::write_labels_nifti_path;
use medlsam::{Error, Result};

use super::progress::print_slice_progress;

/// Make a phantom and write `DIR/NAME.ct.nii.gz` and `DIR/NAME.label.nii.gz`.
pub fn write_phantom(
    dir: &Path,
    name: &str,
    opt: &PhantomOptions,
) -> Result<(PathBuf, PathBuf, medlsam::volume::LabelVolume)> {
    let (ct, lab) = phantom(opt)?;
    let (c, l) = (
        dir.join(format!("{name}.ct.nii.gz")),
        dir.join(format!("{name}.label.nii.gz")),
    );
    write_ct_nifti_path(&ct, &c)?;
    write_labels_nifti_path(&lab, &l)?;
    Ok((c, l, lab))
}

/// Phantom options from command-line `--dims` and `--spacing` (three values each).
pub fn phantom_options(
    dims: &[usize],
    spacing: &[f64],
    seed: u64,
    ras: bool,
) -> Result<PhantomOptions> {
    let (&[nx, ny, nz], &[sx, sy, sz]) = (dims, spacing) else {
        return Err(Error::InvalidArgument(
            "--dims and --spacing take three values each".into(),
        ));
    };
    if !spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "--spacing must be positive millimetres, got {sx},{sy},{sz}"
        )));
    }
    Ok(PhantomOptions {
        dims: [nx, ny, nz],
        spacing_mm: [sx, sy, sz],
        seed,
        ras,
    })
}

/// `medlsam phantom`.
pub fn write_phantom_command(
    out: &Path,
    name: &str,
    dims: &[usize],
    spacing: &[f64],
    seed: u64,
    ras: bool,
) -> Result<()> {
    let opt = phantom_options(dims, spacing, seed, ras)?;
    std::fs::create_dir_all(out)?;
    let (ct, lab, _) = write_phantom(out, name, &opt)?;
    println!("{}\n{}", ct.display(), lab.display());
    Ok(())
}

/// `medlsam demo`: phantoms in, the whole pipeline, DSC out.
pub fn demo(out: &Path, seed: u64, backend: BackendChoice) -> Result<()> {
    let inputs = out.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    let table = LabelTable(
        PHANTOM_LABELS
            .iter()
            .map(|&(v, n)| (v, n.to_string()))
            .collect(),
    );
    std::fs::write(inputs.join("labels.json"), table.to_json())?;
    // Two supports (LPS files) and a query with other anatomy sizes and positions, stored
    // in RAS: the result must come back in the query's own orientation.
    let mut cases = Vec::new();
    for (n, (tag, ras)) in [("support1", false), ("support2", false), ("query", true)]
        .into_iter()
        .enumerate()
    {
        let opt = PhantomOptions {
            seed: seed + n as u64,
            ras,
            ..Default::default()
        };
        let (ct_path, lab_path, lab) = write_phantom(&inputs, &format!("phantom_{tag}"), &opt)?;
        let (c, _) = lab.to_canonical();
        let organs: Vec<String> = classes(&c)
            .into_iter()
            .map(|(v, n)| {
                let b = bounding_box(&c, v).expect("present");
                format!(
                    "{} {n} voxels, {} slices, box {:?}..{:?}",
                    table.name(v),
                    slice_boxes(&c, v).len(),
                    b.min,
                    b.max
                )
            })
            .collect();
        println!("{}: {}", ct_path.display(), organs.join("; "));
        cases.push(CasePaths {
            image: ct_path,
            label: Some(lab_path),
        });
    }
    let query = cases.pop().expect("three phantoms");
    let run = SupportRun {
        config: RunConfig {
            supports: cases,
            queries: vec![query],
            organs: Organs::All,
            mode: BoxMode::Spl { slab_mm: 6.0 },
            out: Some(out.to_path_buf()),
            ..Default::default()
        },
        backend,
        margin_px_1024: 10.0,
        window_hu: medlsam::sam::preprocess::SOFT_TISSUE_WINDOW_HU,
        query_label_map: Vec::new(),
        localize: Default::default(),
        prior_weight: None,
        dicom_outputs: Default::default(),
    };
    println!("MedLAM localizes the supports' organs in the query, LiteMedSAM segments them:");
    let reports =
        segment_with_supports(&run, &mut print_slice_progress, &mut |l| eprintln!("{l}"))?;
    for r in &reports {
        let ok = r.ok()?;
        println!(
            "{}: {} slices encoded, {} boxes decoded in {:.1} s",
            r.case, ok.slices, ok.boxes, ok.seconds
        );
    }
    print!("{}", summary_table(&reports, &table));
    println!(
        "wrote {} (segmentation, boxes, overview PNG, metrics.csv)",
        out.display()
    );
    Ok(())
}
