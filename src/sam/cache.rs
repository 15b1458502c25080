//! An embedding cache over any [`SliceSegmenter`]: several runs over one query
//! (SPL, WPL and true boxes in an evaluation) encode each slice once.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::types::SliceSegmenter;
use crate::{Error, Result};

/// A [`SliceSegmenter`] that keeps every slice embedding it computes, so several runs
/// over one query (SPL, WPL and true boxes in an evaluation) encode each slice once.
/// A slice is recognised by its size and pixel values; make one per query (it holds
/// every embedding until dropped).
pub struct EmbeddingCache<'a, S: SliceSegmenter> {
    inner: &'a mut S,
    cache: HashMap<u64, S::Embedding>,
}

impl<'a, S: SliceSegmenter> EmbeddingCache<'a, S> {
    pub fn new(inner: &'a mut S) -> Self {
        Self {
            inner,
            cache: HashMap::new(),
        }
    }

    /// Slices encoded (and kept) since the last [`Self::clear`].
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

fn slice_key(slice: &[f32], width: usize, height: usize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (width, height).hash(&mut h);
    for v in slice {
        v.to_bits().hash(&mut h);
    }
    h.finish()
}

impl<S: SliceSegmenter> SliceSegmenter for EmbeddingCache<'_, S>
where
    S::Embedding: Clone,
{
    type Embedding = S::Embedding;

    async fn encode(
        &mut self,
        slice_hu: &[f32],
        width: usize,
        height: usize,
    ) -> Result<Self::Embedding> {
        Ok(self
            .encode_many(&[slice_hu.to_vec()], width, height)
            .await?
            .remove(0))
    }

    fn slices_in_flight(&self) -> usize {
        self.inner.slices_in_flight()
    }

    async fn encode_many(
        &mut self,
        slices: &[Vec<f32>],
        width: usize,
        height: usize,
    ) -> Result<Vec<Self::Embedding>> {
        let keys: Vec<u64> = slices.iter().map(|s| slice_key(s, width, height)).collect();
        let mut missing: Vec<usize> = Vec::new();
        for (n, key) in keys.iter().enumerate() {
            if !self.cache.contains_key(key) && !missing.iter().any(|&m| keys[m] == *key) {
                missing.push(n);
            }
        }
        if !missing.is_empty() {
            let todo: Vec<Vec<f32>> = missing.iter().map(|&n| slices[n].clone()).collect();
            let new = self.inner.encode_many(&todo, width, height).await?;
            if new.len() != todo.len() {
                return Err(Error::Model(format!(
                    "segmenter returned {} embeddings for {} slices",
                    new.len(),
                    todo.len()
                )));
            }
            for (&n, e) in missing.iter().zip(new) {
                self.cache.insert(keys[n], e);
            }
        }
        Ok(keys.iter().map(|k| self.cache[k].clone()).collect())
    }

    async fn decode_box(
        &mut self,
        embedding: &Self::Embedding,
        bbox: [f32; 4],
    ) -> Result<Vec<f32>> {
        self.inner.decode_box(embedding, bbox).await
    }

    async fn decode_boxes(
        &mut self,
        embedding: &Self::Embedding,
        boxes: &[[f32; 4]],
    ) -> Result<Vec<Vec<f32>>> {
        self.inner.decode_boxes(embedding, boxes).await
    }
}
