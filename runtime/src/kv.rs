//! The KV cache: each layer's keys and values, stored in slots.
//!
//! Storage is one flat buffer per tensor, addressed by explicit offsets as in llama2.c:
//! layer `l`, slot `s` starts at `(l * slots + s) * kv_dim`. A *slot* is where a position is
//! kept; the slot map ([`KvCache::slot_of`]) is separate from positions so that a cache can
//! later keep a sink and a window of recent positions in fewer slots than the context. Today
//! every position has its own slot (`slot = position`) and the storage is f32.
//!
//! Attention reads a layer's filled slots through a [`KvView`], in slot order.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Result};

/// One layer's filled slots, as attention reads them: rows of `kv_dim` floats.
#[derive(Debug, Clone, Copy)]
pub struct KvView<'c> {
    /// (len, kv_dim) keys after RoPE.
    pub keys: &'c [f32],
    /// (len, kv_dim) values.
    pub values: &'c [f32],
    /// Floats from one slot to the next (kv_dim).
    pub stride: usize,
    /// Filled slots.
    pub len: usize,
}

impl<'c> KvView<'c> {
    /// The columns of kv head slice `offset..` (a head's keys and values start `offset`
    /// floats into every slot).
    pub fn head(self, offset: usize) -> KvView<'c> {
        KvView { keys: &self.keys[offset..], values: &self.values[offset..], ..self }
    }
}

/// Keys and values of every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Vec<f32>,   // (layer, slots, kv_dim)
    values: Vec<f32>, // (layer, slots, kv_dim)
    n_layers: usize,
    slots: usize,
    kv_dim: usize,
}

impl KvCache {
    /// A cache of `slots` positions per layer for `n_layers` layers of `kv_dim` floats.
    pub fn new(n_layers: usize, slots: usize, kv_dim: usize) -> Self {
        let len = n_layers * slots * kv_dim;
        KvCache { keys: vec![0.0; len], values: vec![0.0; len], n_layers, slots, kv_dim }
    }

    /// Positions each layer holds.
    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn n_layers(&self) -> usize {
        self.n_layers
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// The slot that holds position `pos`, if the cache has room for it.
    pub fn slot_of(&self, pos: usize) -> Option<usize> {
        (pos < self.slots).then_some(pos)
    }

    /// Store `k` and `v` (kv_dim each) of position `pos` in layer `layer`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let slot = self.slot_of(pos).ok_or_else(|| Error::InvalidArgument {
            what: format!("position {pos} is beyond the KV cache of {} positions; use a larger --ctx", self.slots),
        })?;
        let at = (layer * self.slots + slot) * self.kv_dim;
        self.keys[at..at + self.kv_dim].copy_from_slice(&k[..self.kv_dim]);
        self.values[at..at + self.kv_dim].copy_from_slice(&v[..self.kv_dim]);
        Ok(())
    }

    /// Layer `layer`'s slots holding positions `0..len`, in position order.
    pub fn view(&self, layer: usize, len: usize) -> KvView<'_> {
        assert!(len <= self.slots, "{len} positions in a cache of {}", self.slots);
        let at = layer * self.slots * self.kv_dim;
        KvView {
            keys: &self.keys[at..at + len * self.kv_dim],
            values: &self.values[at..at + len * self.kv_dim],
            stride: self.kv_dim,
            len,
        }
    }

    /// Bytes of storage.
    pub fn bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * core::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_positions_do_not_overlap() {
        let mut c = KvCache::new(2, 3, 4);
        c.store(0, 2, &[1.0; 4], &[2.0; 4]).unwrap();
        c.store(1, 0, &[3.0; 4], &[4.0; 4]).unwrap();
        assert!(c.store(0, 3, &[0.0; 4], &[0.0; 4]).is_err());
        let v = c.view(0, 3);
        assert_eq!(&v.keys[8..12], &[1.0; 4]);
        assert_eq!(&v.values[..8], &[0.0; 8]);
        assert_eq!(c.view(1, 1).values, &[4.0; 4]);
        assert_eq!(c.slot_of(3), None);
        assert_eq!(c.bytes(), 2 * 2 * 3 * 4 * 4);
    }
}
