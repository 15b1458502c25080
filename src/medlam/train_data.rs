//! MedLAM's training data: the CT list (files, globs, folders, lists), each CT
//! prepared for training (3 mm, intensity-mapped, body-cropped) and cached 8-bit,
//! exported prepared volumes, and the samples of each step.

use std::path::{Path, PathBuf};

use super::net::MedLamConfig;
use super::prep::Prepared;
use super::sample::{Sample, SamplingOptions, draw_sample};
use crate::rng::Rng;
use crate::volume::labels::bounding_box_where;
use crate::volume::resample::ResampleGrid;
use crate::{Error, Result};

/// A CT ready for sampling.
pub struct TrainVolume {
    pub name: String,
    pub vol: Prepared,
}

/// Expand image specifications: a `.nii`/`.nii.gz` (or prepared `.medlam`) path, a glob
/// (`*`, `?` in the file name), a directory (its `*.nii.gz`/`*.nii`/`*.medlam`), or a
/// text file listing paths.
pub fn expand_images(specs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for spec in specs {
        let path = Path::new(spec);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name.contains('*') || name.contains('?') {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut hits: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir.display(), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| glob_match(&name, &n.to_string_lossy()))
                })
                .collect();
            if hits.is_empty() {
                return Err(Error::InvalidArgument(format!("no file matches {spec}")));
            }
            hits.sort();
            out.extend(hits);
        } else if path.is_dir() {
            let mut hits: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_training_image(&p.to_string_lossy()))
                .collect();
            hits.sort();
            out.extend(hits);
        } else if name.ends_with(".nii") || name.ends_with(".nii.gz") || name.ends_with(".medlam") {
            out.push(path.to_path_buf());
        } else if path.is_file() {
            let text = std::fs::read_to_string(path)?;
            let base = path.parent().unwrap_or(Path::new("."));
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                let p = Path::new(line);
                out.push(if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                });
            }
        } else {
            return Err(Error::InvalidArgument(format!(
                "{spec}: not a NIfTI file, a glob, a directory or a list file"
            )));
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument("no training images given".into()));
    }
    Ok(out)
}

/// A file name `--images` takes as an image: NIfTI or a prepared `.medlam` volume.
pub(super) fn is_training_image(name: &str) -> bool {
    name.ends_with(".nii") || name.ends_with(".nii.gz") || name.ends_with(".medlam")
}

/// Shell-style match of `*` and `?` against a whole file name.
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Body crop margin in grid voxels.
pub(super) const BODY_MARGIN: usize = 4;

/// Read, reorient, resample, map, body-crop and quantise one CT for training.
pub(super) fn prepare_for_training(path: &Path) -> Result<Prepared> {
    let ct = crate::volume::load_ct(path)?;
    let (canon, _) = ct.to_canonical();
    let p = Prepared::from_canonical(&canon)?;
    // HU > −500 ⇔ intensity > 0.125.
    let bb = bounding_box_where(
        &crate::volume::Volume {
            dims: p.dims,
            data: p.data.clone(),
            affine: crate::volume::Affine::identity(),
        },
        |v| v > 0.125,
    )
    .ok_or_else(|| {
        Error::InvalidVolume(format!("{}: no body (HU > −500) found", path.display()))
    })?;
    let lo = bb.min.map(|x| x.saturating_sub(BODY_MARGIN));
    let hi = [0, 1, 2].map(|a| (bb.max[a] + BODY_MARGIN).min(p.dims[a] - 1));
    let dims = [0, 1, 2].map(|a| hi[a] - lo[a] + 1);
    let mut data = Vec::with_capacity(dims.iter().product());
    for k in lo[2]..=hi[2] {
        for j in lo[1]..=hi[1] {
            for i in lo[0]..=hi[0] {
                data.push(quantise(p.data[i + p.dims[0] * (j + p.dims[1] * k)]));
            }
        }
    }
    from_quantised(dims, &data)
}

pub(super) fn quantise(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

pub(super) fn from_quantised(dims: [usize; 3], data: &[u8]) -> Result<Prepared> {
    // Training needs relative positions only: the grid is its own reference.
    let grid = ResampleGrid::new(dims, [3.0; 3], [3.0; 3])?;
    Prepared::from_parts(dims, data.iter().map(|&q| q as f32 / 255.0).collect(), grid)
}

/// Cache file of one image: keyed by its absolute path, size and modification time.
pub(super) fn cache_path(dir: &Path, image: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(image)?;
    let abs = std::fs::canonicalize(image)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let key = format!("{}|{}|{}|v1", abs.display(), meta.len(), mtime);
    // FNV-1a 64.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    Ok(dir.join(format!("{h:016x}.medlam")))
}

pub(super) fn read_cache(path: &Path) -> Option<Prepared> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 16 || &bytes[..4] != b"MLC1" {
        return None;
    }
    let dim = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let dims = [dim(4), dim(8), dim(12)];
    let n: usize = dims.iter().product();
    (bytes.len() == 16 + n).then(|| from_quantised(dims, &bytes[16..]).ok())?
}

pub(super) fn write_cache(path: &Path, vol: &Prepared) -> Result<()> {
    let mut bytes = b"MLC1".to_vec();
    for d in vol.dims {
        bytes.extend_from_slice(&(d as u32).to_le_bytes());
    }
    bytes.extend(vol.data.iter().map(|&v| quantise(v)));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// A prepared training volume (`.medlam`, written by [`export_prepared`] or the cache).
pub(super) fn is_prepared(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "medlam")
}

/// A `.medlam` file read back, or a CT prepared now.
pub(super) fn prepared_volume(path: &Path) -> Result<Prepared> {
    if is_prepared(path) {
        read_cache(path).ok_or_else(|| {
            Error::InvalidVolume(
                "not a prepared training volume (MLC1 header and 8-bit voxels)".into(),
            )
        })
    } else {
        prepare_for_training(path)
    }
}

/// Prepare each CT for training (3 mm, HU mapped, body-cropped, 8-bit) and write it as
/// `dir/<case>.medlam`, so that preparation runs once and training elsewhere (another
/// machine, a GPU) reads only these small files. Returns the written paths; CTs that
/// cannot be prepared are named in the second result.
pub fn export_prepared(images: &[PathBuf], dir: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut skipped = Vec::new();
    for path in images {
        match prepared_volume(path) {
            Ok(v) => {
                let out = dir.join(format!("{}.medlam", crate::volume::case_name(path)));
                write_cache(&out, &v)?;
                written.push(out);
            }
            Err(e) => skipped.push(format!("{}: {e}", path.display())),
        }
    }
    Ok((written, skipped))
}

/// Load and prepare the training CTs (from the cache when possible). Files that cannot
/// be read are skipped and named in the second result; none readable is an error.
pub fn load_volumes(
    images: &[PathBuf],
    cache_dir: Option<&Path>,
) -> Result<(Vec<TrainVolume>, Vec<String>)> {
    if let Some(d) = cache_dir {
        std::fs::create_dir_all(d)?;
    }
    use rayon::prelude::*;
    // One CT per thread; the order of the result is the order of `images`.
    let loaded: Vec<Result<std::result::Result<TrainVolume, String>>> = images
        .par_iter()
        .map(|path| {
            let name = crate::volume::case_name(path);
            // Prepared files are read as they are; CTs go through the cache.
            let cached = cache_dir
                .filter(|_| !is_prepared(path))
                .and_then(|d| cache_path(d, path).ok());
            if let Some(vol) = cached.as_deref().and_then(read_cache) {
                return Ok(Ok(TrainVolume { name, vol }));
            }
            match prepared_volume(path) {
                Ok(vol) => {
                    if let Some(c) = &cached {
                        write_cache(c, &vol)?;
                    }
                    Ok(Ok(TrainVolume { name, vol }))
                }
                Err(e) => Ok(Err(format!("{}: {e}", path.display()))),
            }
        })
        .collect();
    let mut vols = Vec::new();
    let mut skipped = Vec::new();
    for r in loaded {
        match r? {
            Ok(v) => vols.push(v),
            Err(s) => skipped.push(s),
        }
    }
    if vols.is_empty() {
        return Err(Error::Failed(format!(
            "none of the {} training images could be used (first problem: {})",
            images.len(),
            skipped.first().map_or("-", |s| s.as_str())
        )));
    }
    Ok((vols, skipped))
}

/// Draw the samples of one step (deterministic for `(seed, step)`).
pub fn draw_batch(
    vols: &[TrainVolume],
    seed: u64,
    step: u64,
    batch: usize,
    config: &MedLamConfig,
    o: &SamplingOptions,
) -> Vec<Sample> {
    use rayon::prelude::*;
    // One generator per sample, seeded from the step's stream: the batch is the same
    // whatever the number of threads that draw it.
    let mut rng = Rng::stream(seed, step);
    let seeds: Vec<u64> = (0..batch).map(|_| rng.next_u64()).collect();
    seeds
        .into_par_iter()
        .map(|s| {
            let mut rng = Rng::new(s);
            let v = &vols[rng.below(vols.len())].vol;
            draw_sample(v, &mut rng, config.patch, config.feature_strides(), o)
        })
        .collect()
}
