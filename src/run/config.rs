//! Run configuration files for `medlsam segment --config FILE`: the reference
//! MedLSAM test-config INI format (so existing users can switch with their own
//! files) and an equivalent TOML or JSON format for new users.
//!
//! INI (`[data]` support_image_ls, support_label_ls, query_image_ls,
//! query_label_ls — each a text file listing one path per line —, fg_class,
//! bbox_mode, slice_interval, seg_save_path; `[weight]` medlam_load_path,
//! vit_load_path). The reference's `slice_interval` counts voxels of MedLAM's
//! 3 mm grid, so `slice_interval = 2` means 6 mm slabs; `False` means WPL. Our
//! localization's options may be added as `[localize]` search_radius,
//! template_radius, localizer (the reference ignores that section).
//!
//! TOML/JSON:
//! ```toml
//! supports = [{ image = "s1.nii.gz", label = "s1.label.nii.gz" }]
//! queries = [{ image = "q1.nii.gz" }, { image = "q2.nii.gz", label = "q2.label.nii.gz" }]
//! organs = [1, 3]      # or "all"
//! mode = "spl"         # or "wpl"
//! slab_mm = 6
//! out = "results"
//! search_radius = 16   # MSS search half-width, 3 mm voxels (optional)
//! template_radius = 5  # intensity-template search half-width, 0: off (optional)
//! localizer = "both"   # medlam, register or both (optional)
//! [weights]
//! medlam = "weights/medlam.bpk"
//! sam = "weights/lite_medsam.bpk"
//! ```
//! Relative paths are taken from the current directory if they exist there,
//! else from the config file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::types::{BoxMode, LocalizerChoice};
use crate::{Error, Result};

/// Which organs to process.
#[derive(Clone, Debug, PartialEq)]
pub enum Organs {
    All,
    List(Vec<u16>),
}

/// A support or query: image and optional label map.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CasePaths {
    pub image: PathBuf,
    #[serde(default)]
    pub label: Option<PathBuf>,
}

/// Everything a run needs, from a config file or the command line.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    pub supports: Vec<CasePaths>,
    pub queries: Vec<CasePaths>,
    pub organs: Organs,
    pub mode: BoxMode,
    pub out: Option<PathBuf>,
    pub medlam_weights: Option<PathBuf>,
    pub sam_weights: Option<PathBuf>,
    /// MSS search half-width (3 mm voxels); `None`: the command line's or the default.
    pub search_radius: Option<usize>,
    /// Intensity-template search half-width (3 mm voxels, 0: off); `None`: the command
    /// line's or the default.
    pub template_radius: Option<usize>,
    /// Which localizer places the organs; `None`: the command line's or the default.
    pub localizer: Option<LocalizerChoice>,
}

impl Default for RunConfig {
    /// No cases; every organ, SPL with 6 mm slabs, default weights and options.
    fn default() -> Self {
        Self {
            supports: Vec::new(),
            queries: Vec::new(),
            organs: Organs::All,
            mode: BoxMode::Spl { slab_mm: 6.0 },
            out: None,
            medlam_weights: None,
            sam_weights: None,
            search_radius: None,
            template_radius: None,
            localizer: None,
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Parse `[1, 2, 3]`, `1,2,3` or `all`.
pub fn parse_organs(text: &str) -> Result<Organs> {
    let t = text
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim();
    if t.eq_ignore_ascii_case("all") {
        return Ok(Organs::All);
    }
    let list = t
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| bad(format!("organ {s:?} is not a label value (1-65535)")))
        })
        .collect::<Result<Vec<_>>>()?;
    if list.is_empty() || list.contains(&0) {
        return Err(bad(
            "organs must be label values ≥ 1, e.g. 1,3,4, or \"all\"",
        ));
    }
    Ok(Organs::List(list))
}

/// `SUPPORT=QUERY` label pairs (`5=1`: support organ 5 is label 1 in the query
/// label maps), for query label maps that use other values than the supports.
pub fn parse_label_map(pairs: &[String]) -> Result<Vec<(u16, u16)>> {
    pairs
        .iter()
        .map(|pair| {
            let parsed = pair
                .split_once('=')
                .and_then(|(s, q)| Some((s.trim().parse().ok()?, q.trim().parse().ok()?)));
            parsed.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "--query-label-map '{pair}': expected SUPPORT=QUERY label values, e.g. 5=1"
                ))
            })
        })
        .collect()
}

fn resolve(p: &str, base: &Path) -> PathBuf {
    let p = PathBuf::from(p.trim());
    if p.is_absolute() || p.exists() {
        p
    } else {
        base.join(&p)
    }
}

pub fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read list file {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Minimal INI: `[section]`, `key = value`, `#`/`;` comments.
fn parse_ini(text: &str) -> Result<BTreeMap<(String, String), String>> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim().to_string();
        } else if let Some((k, v)) = l.split_once('=') {
            out.insert(
                (section.clone(), k.trim().to_string()),
                v.trim().to_string(),
            );
        } else {
            return Err(bad(format!(
                "config line {}: expected key = value, got {l:?}",
                n + 1
            )));
        }
    }
    Ok(out)
}

/// A parsed reference INI file and the folder its relative paths start from.
struct Ini<'a> {
    map: BTreeMap<(String, String), String>,
    base: &'a Path,
}

impl Ini<'_> {
    fn get(&self, s: &str, k: &str) -> Option<String> {
        self.map.get(&(s.to_string(), k.to_string())).cloned()
    }

    fn need(&self, k: &str) -> Result<String> {
        self.get("data", k)
            .ok_or_else(|| bad(format!("config: [data] {k} is missing")))
    }

    /// The paths of the list file `[data] k`.
    fn list(&self, k: &str) -> Result<Vec<PathBuf>> {
        let base = self.base;
        Ok(read_list(&resolve(&self.need(k)?, base))?
            .iter()
            .map(|p| resolve(p, base))
            .collect())
    }

    /// The supports (image and label) and the queries (image, label if listed).
    fn cases(&self) -> Result<(Vec<CasePaths>, Vec<CasePaths>)> {
        let (si, sl, qi) = (
            self.list("support_image_ls")?,
            self.list("support_label_ls")?,
            self.list("query_image_ls")?,
        );
        let ql = if self.get("data", "query_label_ls").is_some() {
            self.list("query_label_ls")?
        } else {
            Vec::new()
        };
        if si.len() != sl.len() {
            return Err(bad(format!(
                "config: {} support images but {} support labels",
                si.len(),
                sl.len()
            )));
        }
        if !ql.is_empty() && ql.len() != qi.len() {
            return Err(bad(format!(
                "config: {} query images but {} query labels",
                qi.len(),
                ql.len()
            )));
        }
        let supports = si
            .into_iter()
            .zip(sl)
            .map(|(image, label)| CasePaths {
                image,
                label: Some(label),
            })
            .collect();
        let queries = qi
            .into_iter()
            .enumerate()
            .map(|(n, image)| CasePaths {
                image,
                label: ql.get(n).cloned(),
            })
            .collect();
        Ok((supports, queries))
    }

    /// `[data] bbox_mode` with `slice_interval` (3 mm slices), SPL by default.
    fn mode(&self) -> Result<BoxMode> {
        let slab = match self.get("data", "slice_interval").as_deref().map(str::trim) {
            None | Some("False") | Some("false") => None,
            Some(v) => Some(
                v.parse::<f64>()
                    .map_err(|_| bad(format!("slice_interval {v:?} is not a number")))?
                    * 3.0,
            ),
        };
        Ok(match self.get("data", "bbox_mode") {
            Some(m) => BoxMode::parse(&m, slab)?,
            None => BoxMode::Spl {
                slab_mm: slab.unwrap_or(6.0),
            },
        })
    }

    /// `[localize] k`, a radius in 3 mm voxels.
    fn radius(&self, k: &str) -> Result<Option<usize>> {
        self.get("localize", k)
            .map(|v| {
                v.trim().parse::<usize>().map_err(|_| {
                    bad(format!(
                        "config: [localize] {k} {v:?} is not a whole number of 3 mm voxels"
                    ))
                })
            })
            .transpose()
    }
}

impl RunConfig {
    /// Load a config file (`.ini`/`.txt`/`.cfg` → reference INI, `.toml`, `.json`).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read config {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "toml" => Self::from_toml(&text, base),
            "json" => Self::from_json(&text, base),
            _ => Self::from_ini(&text, base),
        }
    }

    /// The reference MedLSAM INI format.
    pub fn from_ini(text: &str, base: &Path) -> Result<Self> {
        let ini = Ini {
            map: parse_ini(text)?,
            base,
        };
        let (supports, queries) = ini.cases()?;
        let mode = ini.mode()?;
        Ok(Self {
            supports,
            queries,
            organs: ini
                .get("data", "fg_class")
                .map(|v| parse_organs(&v))
                .transpose()?
                .unwrap_or(Organs::All),
            mode,
            out: ini.get("data", "seg_save_path").map(PathBuf::from),
            medlam_weights: ini
                .get("weight", "medlam_load_path")
                .map(|p| resolve(&p, base)),
            sam_weights: ini
                .get("weight", "vit_load_path")
                .map(|p| resolve(&p, base)),
            search_radius: ini.radius("search_radius")?,
            template_radius: ini.radius("template_radius")?,
            localizer: ini
                .get("localize", "localizer")
                .map(|v| LocalizerChoice::parse(&v))
                .transpose()?,
        })
    }

    /// The TOML format (see the module documentation).
    pub fn from_toml(text: &str, base: &Path) -> Result<Self> {
        let f: FileConfig = toml::from_str(text).map_err(|e| bad(format!("config: {e}")))?;
        f.into_config(base)
    }

    /// The JSON equivalent of the TOML format.
    pub fn from_json(text: &str, base: &Path) -> Result<Self> {
        let f: FileConfig = serde_json::from_str(text).map_err(|e| bad(format!("config: {e}")))?;
        f.into_config(base)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    supports: Vec<CasePaths>,
    queries: Vec<CasePaths>,
    #[serde(default)]
    organs: Option<OrgansField>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    slab_mm: Option<f64>,
    #[serde(default)]
    out: Option<PathBuf>,
    #[serde(default)]
    weights: Option<WeightsField>,
    #[serde(default)]
    search_radius: Option<usize>,
    #[serde(default)]
    template_radius: Option<usize>,
    #[serde(default)]
    localizer: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OrgansField {
    List(Vec<u16>),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsField {
    medlam: Option<PathBuf>,
    sam: Option<PathBuf>,
}

impl FileConfig {
    fn into_config(self, base: &Path) -> Result<RunConfig> {
        let fix = |c: CasePaths| CasePaths {
            image: resolve(&c.image.to_string_lossy(), base),
            label: c.label.map(|l| resolve(&l.to_string_lossy(), base)),
        };
        let organs = match self.organs {
            None => Organs::All,
            Some(OrgansField::Text(t)) => parse_organs(&t)?,
            Some(OrgansField::List(l)) => parse_organs(
                &l.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )?,
        };
        let (medlam, sam) = self.weights.map_or((None, None), |w| (w.medlam, w.sam));
        Ok(RunConfig {
            supports: self.supports.into_iter().map(fix).collect(),
            queries: self.queries.into_iter().map(fix).collect(),
            organs,
            mode: BoxMode::parse(self.mode.as_deref().unwrap_or("spl"), self.slab_mm)?,
            out: self.out,
            medlam_weights: medlam.map(|p| resolve(&p.to_string_lossy(), base)),
            sam_weights: sam.map(|p| resolve(&p.to_string_lossy(), base)),
            search_radius: self.search_radius,
            template_radius: self.template_radius,
            localizer: self
                .localizer
                .as_deref()
                .map(LocalizerChoice::parse)
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_ini_format() {
        let dir = std::env::temp_dir().join(format!("medlsam-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("si.txt"), "a.nii.gz\nb.nii.gz\n").unwrap();
        std::fs::write(dir.join("sl.txt"), "a.label.nii.gz\nb.label.nii.gz\n").unwrap();
        std::fs::write(dir.join("qi.txt"), "q.nii.gz\n").unwrap();
        let ini = "[data]\nsupport_image_ls = si.txt\nsupport_label_ls = sl.txt\nquery_image_ls = qi.txt\n\
                   fg_class = [1,2,7]\nbbox_mode = SPL\nslice_interval = 2\nseg_save_path = result/x\n\n\
                   [vit]\nnet_type = vit_b\n[weight]\nmedlam_load_path = checkpoint/medlam.pth\nvit_load_path = sam.pth\n";
        let c = RunConfig::from_ini(ini, &dir).unwrap();
        assert_eq!(c.supports.len(), 2);
        assert_eq!(
            c.supports[1].label.as_ref().unwrap(),
            &dir.join("b.label.nii.gz")
        );
        assert_eq!(
            c.queries,
            vec![CasePaths {
                image: dir.join("q.nii.gz"),
                label: None
            }]
        );
        assert_eq!(c.organs, Organs::List(vec![1, 2, 7]));
        assert_eq!(c.mode, BoxMode::Spl { slab_mm: 6.0 });
        assert_eq!(c.out, Some(PathBuf::from("result/x")));
        assert_eq!((c.search_radius, c.template_radius), (None, None));
        assert_eq!(c.localizer, None);
        let tuned =
            format!("{ini}[localize]\nsearch_radius = 12\ntemplate_radius = 0\nlocalizer = Both\n");
        let c = RunConfig::from_ini(&tuned, &dir).unwrap();
        assert_eq!((c.search_radius, c.template_radius), (Some(12), Some(0)));
        assert_eq!(c.localizer, Some(LocalizerChoice::Both));
        let e = RunConfig::from_ini(&tuned.replace("= 12", "= -1"), &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[localize] search_radius \"-1\""), "{e}");
        let wpl = ini
            .replace("bbox_mode = SPL", "bbox_mode = WPL")
            .replace("slice_interval = 2", "slice_interval = False");
        assert_eq!(RunConfig::from_ini(&wpl, &dir).unwrap().mode, BoxMode::Wpl);
        std::fs::write(dir.join("sl.txt"), "a.label.nii.gz\n").unwrap();
        let e = RunConfig::from_ini(ini, &dir).unwrap_err().to_string();
        assert!(e.contains("2 support images but 1 support labels"), "{e}");
        let e = RunConfig::from_ini("[data]\nsupport_image_ls = nope.txt\n", &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read list file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn toml_and_json_formats() {
        let t = "supports = [{ image = \"s.nii.gz\", label = \"s.l.nii.gz\" }]\n\
                 queries = [{ image = \"q.nii.gz\" }]\norgans = \"all\"\nmode = \"wpl\"\n[weights]\nsam = \"w.bpk\"\n";
        let c = RunConfig::from_toml(t, Path::new("/base")).unwrap();
        assert_eq!(c.organs, Organs::All);
        assert_eq!(c.mode, BoxMode::Wpl);
        assert_eq!(c.sam_weights, Some(PathBuf::from("/base/w.bpk")));
        assert_eq!(c.template_radius, None);
        let c = RunConfig::from_toml(
            &format!("template_radius = 3\nlocalizer = \"register\"\n{t}"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!((c.search_radius, c.template_radius), (None, Some(3)));
        assert_eq!(c.localizer, Some(LocalizerChoice::Register));
        let e = RunConfig::from_toml(&format!("localizer = \"atlas\"\n{t}"), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none of medlam, register, both"), "{e}");
        let j = r#"{"supports": [{"image": "s", "label": "l"}], "queries": [{"image": "q"}], "organs": [3, 4], "slab_mm": 9, "search_radius": 8}"#;
        let c = RunConfig::from_json(j, Path::new("/b")).unwrap();
        assert_eq!(c.search_radius, Some(8));
        assert_eq!(c.organs, Organs::List(vec![3, 4]));
        assert_eq!(c.mode, BoxMode::Spl { slab_mm: 9.0 });
        let e = RunConfig::from_json(
            r#"{"supports": [], "queries": [], "typo": 1}"#,
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(
            parse_organs("1,x")
                .unwrap_err()
                .to_string()
                .contains("not a label value")
        );
    }
}
