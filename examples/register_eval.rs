//! Registration-only accuracy on OpenKBP: every support registered to every query,
//! warped labels fused, DSC per organ on the query's own grid (see `medlsam::register::eval`).
//!
//! ```sh
//! cargo run --release --example register_eval -- [--supports 1-5] [--queries 6-15] \
//!     [--data ../shared/data] [--set key=value ...] [--weighted WINDOW,POWER ...] \
//!     [--init body|truth|medlam] [--medlam weights/medlam.bpk] [--alphas 0.5,1] [--kappas 0.6,0.8] [--band 15]
//! ```
//! `--init`: the second start of each registration beside the body boxes: none (`body`),
//! the query's own organ points (`truth`, an upper bound) or MedLAM's (`medlam`, the
//! product's `--localizer both`); default `body`. `--alphas`: intensity refinement of
//! the weighted prior, one more column per α; `--kappas`: then one column per κ, each
//! organ's α raised from 1 towards κ nats of evidence (`IntensityModel::exponent`).
//! `--set` keys: margin, z, top, affine (a,b), affine_lr, grid, deform (a,b), deform_lr, bending,
//! lncc, points (a,b), deformable (true/false). Default weighted fusion: 7,3.

use std::path::PathBuf;

use medlsam::register::eval::{EvalOptions, InitPoints, query_line, run, summary_table};
use medlsam::register::{FuseMode, RegisterOptions, located_points};
use medlsam::run::config::{CasePaths, Organs};
use medlsam::run::session::Session;
use medlsam::types::{BoxMode, Localizer};
use medlsam::volume::label_table::LabelTable;

fn cases(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.trim().parse().expect("case number"),
            b.trim().parse().expect("case number"),
        );
        out.extend((a..=b).map(|n| format!("okbp_{n:03}")));
    }
    out
}

fn pair(v: &str) -> [usize; 2] {
    let (a, b) = v.split_once(',').expect("two numbers a,b");
    [a.parse().expect("number"), b.parse().expect("number")]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut supports = cases("1-5");
    let mut queries = cases("6-15");
    let mut data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    // Head and neck: register the superior 250 mm of the body (not the shoulders).
    let mut opts = RegisterOptions {
        top_mm: 250.0,
        ..Default::default()
    };
    let mut weighted = Vec::new();
    let mut init = "body".to_string();
    let mut alphas: Vec<f32> = Vec::new();
    let mut kappas: Vec<f32> = Vec::new();
    let mut band_mm = medlsam::register::intensity::DEFAULT_BAND_MM;
    let mut medlam_weights = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/medlam.bpk");
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--supports" => supports = cases(&val()),
            "--queries" => queries = cases(&val()),
            "--data" => data = PathBuf::from(val()),
            "--init" => init = val(),
            "--band" => band_mm = val().parse().expect("band mm"),
            "--alphas" => {
                alphas = val()
                    .split(',')
                    .map(|v| v.parse().expect("alpha"))
                    .collect()
            }
            "--kappas" => {
                kappas = val()
                    .split(',')
                    .map(|v| v.parse().expect("kappa"))
                    .collect()
            }
            "--medlam" => medlam_weights = PathBuf::from(val()),
            "--weighted" => {
                let [w, p] = {
                    let v = val();
                    let (w, p) = v.split_once(',').expect("WINDOW,POWER");
                    [w.to_string(), p.to_string()]
                };
                weighted.push(FuseMode::LocalNcc {
                    window: w.parse().expect("window"),
                    power: p.parse().expect("power"),
                });
            }
            "--set" => {
                let kv = val();
                let (k, v) = kv.split_once('=').expect("key=value");
                let f = || v.parse::<f64>().expect("number");
                match k {
                    "margin" => opts.margin_mm = f(),
                    "z" => opts.z_search_mm = f(),
                    "top" => opts.top_mm = f(),
                    "affine" => opts.affine_steps = pair(v),
                    "affine_lr" => opts.affine_lr = f(),
                    "grid" => opts.grid_mm = f(),
                    "deform" => opts.deform_steps = pair(v),
                    "deform_lr" => opts.deform_lr = f(),
                    "bending" => opts.bending = f(),
                    "points" => opts.max_points = pair(v),
                    "lncc" => opts.lncc_window = v.parse().expect("window"),
                    "deformable" => opts.deformable = v.parse().expect("true/false"),
                    _ => panic!("unknown --set key {k}"),
                }
            }
            _ => panic!("unknown argument {a}"),
        }
    }
    if weighted.is_empty() {
        weighted.push(FuseMode::LocalNcc {
            window: 7,
            power: 3.0,
        });
    }
    let dir = data.join("openkbp");
    // Case numbers with no files (the numbering has gaps) are skipped.
    let exists = |c: &String| dir.join(format!("{c}.ct.nii.gz")).is_file();
    supports.retain(exists);
    queries.retain(exists);
    assert!(
        dir.join("index.tsv").is_file(),
        "OpenKBP data not found at {} (use --data DIR)",
        dir.display()
    );
    let names = std::fs::read_to_string(dir.join("labels.json"))
        .ok()
        .and_then(|t| LabelTable::from_json(&t).ok());
    println!("supports {supports:?}\nqueries {queries:?}\n{opts:?}\nweighted {weighted:?}");
    let eval = EvalOptions {
        openkbp_dir: dir,
        supports,
        queries,
        organs: (1..=7).collect(),
        register: opts,
        weighted,
        alphas,
        kappas,
        band_mm,
    };
    let t0 = std::time::Instant::now();
    let device = burn::tensor::Device::flex();
    let mut medlam = None;
    if init == "medlam" {
        let paths: Vec<CasePaths> = eval
            .supports
            .iter()
            .map(|c| CasePaths {
                image: eval.openkbp_dir.join(format!("{c}.ct.nii.gz")),
                label: Some(eval.openkbp_dir.join(format!("{c}.label.nii.gz"))),
            })
            .collect();
        let session = Session::open(
            &paths,
            &Organs::All,
            &medlam_weights,
            device.clone(),
            Default::default(),
            &mut |w| eprintln!("{w}"),
        )
        .unwrap_or_else(|e| panic!("MedLAM: {e}"));
        medlam = Some((
            session.localizer(BoxMode::Wpl).expect("MedLAM atlas"),
            session.organs.clone(),
        ));
    }
    let mut located = |ct: &medlsam::volume::CtVolume| {
        let (m, organs) = medlam.as_mut().expect("MedLAM built");
        let found = pollster::block_on(m.localize(ct, organs))?;
        Ok(located_points(&found, &ct.affine))
    };
    let init = match init.as_str() {
        "body" => InitPoints::Body,
        "truth" => InitPoints::Truth,
        "medlam" => InitPoints::Located(&mut located),
        other => panic!("--init body|truth|medlam, not {other}"),
    };
    let results =
        run(&eval, init, &device, |r| println!("{}", query_line(r))).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        });
    let name = |o: u16| names.as_ref().map_or(o.to_string(), |t| t.name(o));
    println!("{}", summary_table(&results, &name));
    println!("total {:.0} s", t0.elapsed().as_secs_f64());
}
