//! Slice segmentation with a SAM-family model: encode a CT slice once, then
//! decode any number of prompts (boxes, points, or both) against the cached
//! embedding. This is the [`SliceSegmenter`] the pipeline uses.
//!
//! Prompts are in **slice pixel** coordinates: x = column (canonical axis 0),
//! y = row (axis 1); boxes `[x0, y0, x1, y1]` with inclusive corners. Outputs
//! are foreground probabilities per slice pixel, row-major.
//!
//! All reads from the device are asynchronous (`into_data_async`), so the same
//! code runs in the browser; native callers use `pollster::block_on`.

use std::sync::OnceLock;

use burn::tensor::activation::sigmoid;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, TensorData};

use super::model::{PromptBatch, Sam};
use super::preprocess::{PreparedSlice, Preprocess, prepare_slice};
use super::prompt_encoder::{PointBatch, PointLabel};
use super::transformer::TransformerImage;
use crate::types::SliceSegmenter;
use crate::{Error, Result};

/// Most prompts decoded in one batch.
pub const MAX_BATCH: usize = 8;

/// A point prompt in slice pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PromptPoint {
    pub xy: [f32; 2],
    /// `true`: the object is here; `false`: it is not.
    pub positive: bool,
}

/// One prompt on a slice: a box, points, or both (slice pixels).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlicePrompt {
    /// `[x0, y0, x1, y1]`, inclusive corners.
    pub bbox: Option<[f32; 4]>,
    pub points: Vec<PromptPoint>,
}

impl SlicePrompt {
    /// A box prompt.
    pub fn from_box(bbox: [f32; 4]) -> Self {
        Self {
            bbox: Some(bbox),
            points: Vec::new(),
        }
    }

    /// Tokens layout: batching needs prompts with the same one.
    fn layout(&self) -> (bool, usize) {
        (self.bbox.is_some(), self.points.len())
    }
}

/// The image embedding of one slice and the geometry of its preprocessing.
#[derive(Clone, Debug)]
pub struct SliceEmbedding {
    /// `[1, 256, E, E]` on the segmenter's device.
    pub embedding: Tensor<4>,
    /// Preprocessing geometry (the input buffer is dropped after encoding).
    pub prep: PreparedSlice,
    /// The mask decoder's image side, made by the first decode on this slice and reused by
    /// the next ones (each box would otherwise project the 4096 image tokens again).
    decoder_image: OnceLock<TransformerImage>,
}

impl SliceEmbedding {
    /// An embedding and its preprocessing geometry.
    pub fn new(embedding: Tensor<4>, prep: PreparedSlice) -> Self {
        Self {
            embedding,
            prep,
            decoder_image: OnceLock::new(),
        }
    }
}

/// A SAM-family model ready to segment slices on a device.
pub struct SamSegmenter {
    pub model: Sam,
    pub device: Device,
    pub preprocess: Preprocess,
    image_pe: Tensor<4>,
    /// Slices encoded at once by [`SliceSegmenter::encode_many`] (native only).
    slices_in_flight: usize,
}

impl SamSegmenter {
    /// Wrap a loaded model (its input size sets the preprocessing size; batch norms are folded).
    pub fn new(model: Sam, device: Device, mut preprocess: Preprocess) -> Self {
        let model = model.for_inference();
        preprocess.input_size = model.prompt_encoder.input_size;
        let image_pe = model.prompt_encoder.dense_pe(&device);
        Self {
            model,
            device,
            preprocess,
            image_pe,
            slices_in_flight: 1,
        }
    }

    /// Encode up to `n` slices at once, each on its own thread (native builds).
    /// On the CPU backend this pays: Flex runs element-wise ops such as GELU on
    /// one thread, so two slices in flight keep both cores busy (`medlsam bench
    /// sam` prints the figure). Ignored in the browser.
    pub fn with_slices_in_flight(mut self, n: usize) -> Self {
        self.slices_in_flight = n.max(1);
        self
    }

    /// Preprocess one slice (HU, row-major `[height][width]`) into the encoder's
    /// input `[1, 3, S, S]` on the device; the geometry is kept (its input buffer moved out).
    pub fn input_image(
        &self,
        slice_hu: &[f32],
        width: usize,
        height: usize,
    ) -> Result<(Tensor<4>, PreparedSlice)> {
        let mut prep = prepare_slice(slice_hu, width, height, &self.preprocess)?;
        let s = prep.input_size;
        let one = Tensor::<4>::from_data(
            TensorData::new(std::mem::take(&mut prep.input), [1, 1, s, s]),
            &self.device,
        );
        Ok((one.expand([1, 3, s, s]), prep))
    }

    /// Preprocess and encode one slice (HU, row-major `[height][width]`).
    pub fn embed(&self, slice_hu: &[f32], width: usize, height: usize) -> Result<SliceEmbedding> {
        let (image, prep) = self.input_image(slice_hu, width, height)?;
        Ok(SliceEmbedding::new(self.model.encode(image), prep))
    }

    /// [`Self::embed`] letting the page run between the encoder's blocks where that is
    /// needed: in the browser the CPU backend computes synchronously, a slice for seconds.
    pub async fn embed_pausing(
        &self,
        slice_hu: &[f32],
        width: usize,
        height: usize,
    ) -> Result<SliceEmbedding> {
        let (image, prep) = self.input_image(slice_hu, width, height)?;
        let device = &self.device;
        let embedding = self
            .model
            .image_encoder
            .forward_pausing(image, &mut move || crate::device::yield_on_cpu(device))
            .await;
        Ok(SliceEmbedding::new(embedding, prep))
    }

    /// Low-resolution mask logits `[B, 1, S, S]` (model input frame) of prompts
    /// that share one token layout (all boxes, or the same number of points).
    pub fn decode_logits(
        &self,
        emb: &SliceEmbedding,
        prompts: &[SlicePrompt],
    ) -> Result<Tensor<4>> {
        let first = prompts
            .first()
            .ok_or_else(|| Error::InvalidArgument("no prompt to decode".into()))?;
        if prompts.iter().any(|p| p.layout() != first.layout()) {
            return Err(Error::InvalidArgument(
                "prompts decoded together need the same number of points and boxes".into(),
            ));
        }
        let (has_box, n_points) = first.layout();
        if !has_box && n_points == 0 {
            return Err(Error::InvalidArgument(
                "a prompt needs a box or at least one point".into(),
            ));
        }
        let [h, w] = emb.prep.slice_hw;
        let b = prompts.len();
        let boxes = has_box.then(|| {
            let mut v = Vec::with_capacity(4 * b);
            for p in prompts {
                let bb = p.bbox.expect("same layout");
                let clamped = [
                    bb[0].clamp(0.0, (w - 1) as f32),
                    bb[1].clamp(0.0, (h - 1) as f32),
                    bb[2].clamp(0.0, (w - 1) as f32),
                    bb[3].clamp(0.0, (h - 1) as f32),
                ];
                v.extend(emb.prep.box_to_input(clamped));
            }
            Tensor::<2>::from_data(TensorData::new(v, [b, 4]), &self.device)
        });
        let points = (n_points > 0).then(|| {
            let mut xy = Vec::with_capacity(2 * n_points * b);
            let mut labels = Vec::with_capacity(b);
            for p in prompts {
                for q in &p.points {
                    xy.extend(emb.prep.point_to_input(q.xy));
                }
                labels.push(
                    p.points
                        .iter()
                        .map(|q| {
                            if q.positive {
                                PointLabel::Positive
                            } else {
                                PointLabel::Negative
                            }
                        })
                        .collect(),
                );
            }
            PointBatch {
                coords: Tensor::<3>::from_data(TensorData::new(xy, [b, n_points, 2]), &self.device),
                labels,
            }
        });
        let image = emb.decoder_image.get_or_init(|| {
            self.model
                .decoder_image(emb.embedding.clone(), self.image_pe.clone())
        });
        let out = self
            .model
            .decode_image(image, PromptBatch { points, boxes }, false);
        Ok(out.masks)
    }

    /// Foreground probability per slice pixel for each prompt (row-major, slice size).
    pub async fn decode_probabilities(
        &self,
        emb: &SliceEmbedding,
        prompts: &[SlicePrompt],
    ) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(prompts.len());
        // Consecutive prompts with the same token layout are decoded as one batch
        // (at most MAX_BATCH, to bound memory: ≈ 10 MB per prompt).
        let mut start = 0;
        while start < prompts.len() {
            let layout = prompts[start].layout();
            let end = (start..prompts.len().min(start + MAX_BATCH))
                .find(|&i| prompts[i].layout() != layout)
                .unwrap_or(prompts.len().min(start + MAX_BATCH));
            let logits = self.decode_logits(emb, &prompts[start..end])?;
            let probs = upsample_probabilities(logits, &emb.prep);
            let data = probs
                .into_data_async()
                .await
                .map_err(|e| Error::Backend(format!("reading the mask from the device: {e:?}")))?;
            let v: Vec<f32> = data
                .try_into_vec()
                .map_err(|e| Error::Backend(format!("mask data: {e:?}")))?;
            let n = emb.prep.slice_hw[0] * emb.prep.slice_hw[1];
            out.extend(v.chunks(n).map(<[f32]>::to_vec));
            start = end;
        }
        Ok(out)
    }
}

/// Logits `[B, 1, S, S]` → probabilities `[B, 1, H, W]` on the slice grid: crop
/// the padding, bilinear with half-pixel centres, sigmoid.
pub fn upsample_probabilities(logits: Tensor<4>, prep: &PreparedSlice) -> Tensor<4> {
    let [b, c, _, _] = logits.dims();
    let [rh, rw] = prep.resized_hw;
    let cropped = logits.slice([0..b, 0..c, 0..rh, 0..rw]);
    let options = InterpolateOptions::new(InterpolateMode::Bilinear)
        .with_output_size(prep.slice_hw)
        .with_align_corners(false);
    sigmoid(interpolate(cropped, options))
}

impl SliceSegmenter for SamSegmenter {
    type Embedding = SliceEmbedding;

    async fn encode(
        &mut self,
        slice_hu: &[f32],
        width: usize,
        height: usize,
    ) -> Result<SliceEmbedding> {
        self.embed_pausing(slice_hu, width, height).await
    }

    fn slices_in_flight(&self) -> usize {
        if cfg!(target_arch = "wasm32") {
            1
        } else {
            self.slices_in_flight
        }
    }

    async fn encode_many(
        &mut self,
        slices: &[Vec<f32>],
        width: usize,
        height: usize,
    ) -> Result<Vec<SliceEmbedding>> {
        #[cfg(not(target_arch = "wasm32"))]
        if slices.len() > 1 {
            let this = &*self;
            return std::thread::scope(|scope| {
                let workers: Vec<_> = slices
                    .iter()
                    .map(|s| scope.spawn(move || this.embed(s, width, height)))
                    .collect();
                workers
                    .into_iter()
                    .map(|w| {
                        w.join()
                            .map_err(|_| Error::Backend("a slice encoder thread panicked".into()))?
                    })
                    .collect()
            });
        }
        let mut out = Vec::with_capacity(slices.len());
        for s in slices {
            out.push(self.encode(s, width, height).await?);
        }
        Ok(out)
    }

    async fn decode_box(&mut self, embedding: &SliceEmbedding, bbox: [f32; 4]) -> Result<Vec<f32>> {
        let mut v = self
            .decode_probabilities(embedding, &[SlicePrompt::from_box(bbox)])
            .await?;
        Ok(v.pop().expect("one prompt"))
    }

    async fn decode_boxes(
        &mut self,
        embedding: &SliceEmbedding,
        boxes: &[[f32; 4]],
    ) -> Result<Vec<Vec<f32>>> {
        let prompts: Vec<SlicePrompt> = boxes.iter().map(|&b| SlicePrompt::from_box(b)).collect();
        self.decode_probabilities(embedding, &prompts).await
    }
}
