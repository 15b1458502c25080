//! The training loop: a [`Trainer`] holds the network, the optimizer and the step; it
//! resumes from a checkpoint (or starts from `--init` weights), takes optimizer steps,
//! validates on a fixed batch, and writes checkpoints with the inference weights.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use serde::{Deserialize, Serialize};

use super::{LossParts, TrainEvent, TrainOptions, TrainSummary, learning_rate};
use crate::medlam::loss::{batch_loss, scalar};
use crate::medlam::net::{MedLam, MedLamConfig};
use crate::medlam::sample::Sample;
use crate::medlam::train_data::{TrainVolume, draw_batch};
use crate::{Error, Result};

/// What a checkpoint directory holds besides the model and optimizer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    config: MedLamConfig,
    seed: u64,
    batch: usize,
    lr: f64,
    total_steps: usize,
    wall_s: f64,
    history: Vec<(usize, LossParts)>,
}

/// Checkpoint file names inside the checkpoint directory.
fn ckpt_files(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join("model.bpk"),
        dir.join("optim.bpk"),
        dir.join("state.json"),
    ]
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

fn record_err(e: impl std::fmt::Display) -> Error {
    Error::Weights(format!("checkpoint: {e}"))
}

/// The training losses summed over the steps since the last log line.
#[derive(Default)]
struct LossWindow {
    sum: LossParts,
    n: usize,
    start: Option<Instant>,
}

impl LossWindow {
    fn add(&mut self, t: f64, u: f64, m: f64) {
        self.sum.total += t;
        self.sum.uam += u;
        self.sum.mss += m;
        self.n += 1;
    }

    /// The mean losses (no top-1 accuracy while training).
    fn mean(&self) -> LossParts {
        let n = self.n as f64;
        LossParts {
            total: self.sum.total / n,
            uam: self.sum.uam / n,
            mss: self.sum.mss / n,
            mss_top1: f64::NAN,
        }
    }

    /// Steps per second since the window started.
    fn rate(&self) -> f64 {
        let start = self.start.expect("started");
        self.n as f64 / start.elapsed().as_secs_f64().max(1e-9)
    }

    fn restart(&mut self) {
        *self = LossWindow {
            start: Some(Instant::now()),
            ..Default::default()
        };
    }
}

/// A training run: the data, the network and optimizer on their device, and the step.
pub(super) struct Trainer<'a> {
    opts: &'a TrainOptions,
    vols: Vec<TrainVolume>,
    steps_per_epoch: usize,
    total: usize,
    /// The inference device (validation) and its autodiff version (training).
    base: Device,
    device: Device,
    net: MedLam,
    optim: ModuleOptimizer,
    step: usize,
    /// Wall time of the run before it was resumed.
    wall_before: f64,
    history: Vec<(usize, LossParts)>,
    /// A fixed validation batch (drawn from the training CTs with a separate stream).
    val_samples: Vec<Sample>,
}

impl<'a> Trainer<'a> {
    /// A fresh network (seeded) and optimizer for `vols`.
    pub(super) fn new(opts: &'a TrainOptions, vols: Vec<TrainVolume>) -> Result<Self> {
        let steps_per_epoch = vols.len().div_ceil(opts.batch);
        let total = opts.epochs * steps_per_epoch;
        let base = opts.backend.device();
        let device = base.clone().autodiff();
        device.seed(opts.seed);
        let net = opts.config.init(&device)?;
        let optim: ModuleOptimizer = AdamConfig::new()
            .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(5.0)))
            .init();
        let val_samples = draw_batch(
            &vols,
            opts.seed ^ 0x5A5A_5A5A,
            u64::MAX,
            4,
            &opts.config,
            &opts.sampling,
        );
        Ok(Self {
            opts,
            vols,
            steps_per_epoch,
            total,
            base,
            device,
            net,
            optim,
            step: 0,
            wall_before: 0.0,
            history: Vec::new(),
            val_samples,
        })
    }

    /// Continue from the checkpoint (`--resume` and one exists: same settings), or start
    /// from `--init` weights, or keep the fresh network.
    pub(super) fn resume(&mut self, event: &mut dyn FnMut(TrainEvent)) -> Result<()> {
        let opts = self.opts;
        std::fs::create_dir_all(&opts.checkpoint_dir)?;
        let [model_f, optim_f, state_f] = ckpt_files(&opts.checkpoint_dir);
        if opts.resume && state_f.is_file() {
            let st: CheckpointState =
                serde_json::from_str(&std::fs::read_to_string(&state_f)?).map_err(record_err)?;
            if st.config != opts.config || st.seed != opts.seed || st.batch != opts.batch {
                return Err(Error::Weights(format!(
                    "the checkpoint in {} was made with other settings (config, seed or batch): \
                     use the same ones to resume, or another --checkpoint-dir",
                    opts.checkpoint_dir.display()
                )));
            }
            if st.step > self.total {
                return Err(Error::InvalidArgument(format!(
                    "the checkpoint is at step {} but --epochs gives only {} steps",
                    st.step, self.total
                )));
            }
            let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(std::fs::read(&model_f)?))
                .map_err(record_err)?;
            self.net = self.net.clone().try_load_record(rec).map_err(record_err)?;
            let optim = std::mem::replace(&mut self.optim, AdamConfig::new().init());
            self.optim = optim
                .from_bytes(Bytes::from_bytes_vec(std::fs::read(&optim_f)?))
                .map_err(record_err)?;
            self.step = st.step;
            self.wall_before = st.wall_s;
            self.history = st.history;
            event(TrainEvent::Resumed {
                step: st.step,
                schedule: (st.total_steps != self.total).then_some((st.total_steps, self.total)),
            });
        } else if let Some(init) = &opts.init {
            let bytes = std::fs::read(init)
                .map_err(|e| Error::Weights(format!("--init {}: {e}", init.display())))?;
            let (loaded, config) = MedLam::from_bytes(&bytes, &self.device)?;
            if config != opts.config {
                return Err(Error::Weights(format!(
                    "--init {} holds a network of another config ({config:?}); train with that \
                     config (--config) or start from scratch",
                    init.display()
                )));
            }
            self.net = loaded;
        }
        Ok(())
    }

    /// The losses of the network on the validation batch (no gradients).
    fn validate(&self) -> LossParts {
        let inner = self.net.valid();
        let mut acc = LossParts::default();
        for pair in self.val_samples.chunks(2) {
            let l = batch_loss(&inner, pair, &self.opts.config, &self.base, true);
            acc.total += scalar(&l.total) / 2.0;
            acc.uam += scalar(&l.uam) / 2.0;
            acc.mss += scalar(&l.mss) / 2.0;
            acc.mss_top1 += l.top1.unwrap_or(0.0) / 2.0;
        }
        acc
    }

    /// One optimizer step at learning rate `lr` on the step's batch: the (total, UAM,
    /// MSS) losses; an error where the loss is not finite.
    fn train_step(&mut self, lr: f64) -> Result<(f64, f64, f64)> {
        let opts = self.opts;
        let samples = draw_batch(
            &self.vols,
            opts.seed,
            self.step as u64,
            opts.batch,
            &opts.config,
            &opts.sampling,
        );
        let loss = batch_loss(&self.net, &samples, &opts.config, &self.device, false);
        let grads = GradientsParams::from_grads(loss.total.backward(), &self.net);
        self.net = self.optim.step(lr, self.net.clone(), grads);
        let (t, u, m) = (scalar(&loss.total), scalar(&loss.uam), scalar(&loss.mss));
        if !t.is_finite() {
            return Err(Error::Failed(format!(
                "training diverged at step {} (loss {t}); try a lower --lr",
                self.step
            )));
        }
        Ok((t, u, m))
    }

    /// Save the model, the optimizer and the state at the current step, and the
    /// inference weights to `out`.
    fn checkpoint(&self, wall_s: f64) -> Result<()> {
        let opts = self.opts;
        let st = CheckpointState {
            step: self.step,
            config: opts.config.clone(),
            seed: opts.seed,
            batch: opts.batch,
            lr: opts.lr,
            total_steps: self.total,
            wall_s,
            history: self.history.clone(),
        };
        let [model_f, optim_f, state_f] = ckpt_files(&opts.checkpoint_dir);
        let model = self
            .net
            .clone()
            .into_record()
            .into_bytes()
            .map_err(record_err)?;
        write_atomic(&model_f, &model)?;
        write_atomic(&optim_f, &self.optim.into_bytes().map_err(record_err)?)?;
        write_atomic(
            &state_f,
            serde_json::to_string_pretty(&st)
                .expect("serialisable")
                .as_bytes(),
        )?;
        let info = [
            ("medlam_step", st.step.to_string()),
            ("medlam_total_steps", st.total_steps.to_string()),
            ("medlam_seed", st.seed.to_string()),
            ("medlam_batch", st.batch.to_string()),
            ("medlam_wall_s", format!("{:.0}", st.wall_s)),
        ];
        let weights = self.net.valid().to_bytes(&opts.config, &info)?;
        if let Some(dir) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        write_atomic(&opts.out, &weights)
    }

    /// Train up to the end of the schedule (or `max_steps` more): a log event every
    /// `log_every` steps, validation and a checkpoint every `checkpoint_every` and at
    /// the end.
    pub(super) fn run(mut self, event: &mut dyn FnMut(TrainEvent)) -> Result<TrainSummary> {
        let opts = self.opts;
        let total = self.total;
        let run_start = Instant::now();
        let end = opts.max_steps.map_or(total, |m| (self.step + m).min(total));
        let mut window = LossWindow::default();
        window.restart();
        let mut last = LossParts::default();
        let mut validation = LossParts::default();
        while self.step < end {
            let lr = learning_rate(opts.lr, self.step, total);
            let (t, u, m) = self.train_step(lr)?;
            window.add(t, u, m);
            self.step += 1;
            let step = self.step;
            if step.is_multiple_of(opts.log_every.max(1)) || step == end {
                last = window.mean();
                let rate = window.rate();
                event(TrainEvent::Step {
                    step,
                    total,
                    epoch: step as f64 / self.steps_per_epoch as f64,
                    lr,
                    loss: last,
                    steps_per_s: rate,
                    eta_s: (end - step) as f64 / rate.max(1e-9),
                });
                window.restart();
            }
            if step.is_multiple_of(opts.checkpoint_every.max(1)) || step == end {
                validation = self.validate();
                self.history.push((step, validation));
                self.checkpoint(self.wall_before + run_start.elapsed().as_secs_f64())?;
                event(TrainEvent::Checkpoint { step, validation });
            }
        }
        Ok(TrainSummary {
            steps: self.step,
            total_steps: total,
            volumes: self.vols.len(),
            wall_s: self.wall_before + run_start.elapsed().as_secs_f64(),
            last,
            validation,
            history: self.history,
        })
    }
}
