//! One epoch of one rank's stream: the rank's share of the epoch's seeded shard order, read a
//! sample at a time through a seeded shuffle buffer. Everything is a function of (seed, epoch,
//! rank), and the buffer is drained at the end of the epoch, so an epoch can be replayed from
//! its start and every sample of the rank's shards comes out exactly once.

use super::samples::{RawSample, ShardReader};
use crate::error::DataError;
use difforge_core::{derive_seed, rng_for, Stream, StreamRng};
use rand::seq::SliceRandom;
use rand::Rng;
use std::path::PathBuf;
use std::sync::Arc;

/// The shards of `rank` in `epoch`: positions rank, rank + world, ... of the epoch's
/// permutation, which every rank computes alike, so the ranks' shards are disjoint.
pub fn rank_shards(shards: usize, seed: u64, epoch: u64, rank: usize, world: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..shards).collect();
    order.shuffle(&mut rng_for(seed, Stream::Shuffle, epoch));
    order.into_iter().skip(rank).step_by(world).collect()
}

/// The shuffle buffer's generator for (seed, epoch, rank): derived from the epoch's shard-order
/// seed, so it needs no stream of its own and differs from every other draw.
fn buffer_rng(seed: u64, epoch: u64, rank: usize) -> StreamRng {
    rng_for(derive_seed(seed, Stream::Shuffle, epoch), Stream::Shuffle, rank as u64)
}

pub struct Epoch {
    pub index: u64,
    /// Stream position of the epoch's first sample, and of the next one to come out.
    pub start: u64,
    pub next_pos: u64,
    shards: Arc<[PathBuf]>,
    order: Vec<usize>,
    next_shard: usize,
    reader: Option<ShardReader>,
    buffer: Vec<RawSample>,
    capacity: usize,
    input_done: bool,
    rng: StreamRng,
}

/// Who reads: the stream's fixed parameters.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    pub buffer: usize,
}

impl Epoch {
    /// Epoch `index`, whose first sample is at stream position `start`. Opens no file yet.
    pub fn new(shards: Arc<[PathBuf]>, r: Reading, index: u64, start: u64) -> Epoch {
        let order = rank_shards(shards.len(), r.seed, index, r.rank, r.world);
        Epoch {
            index,
            start,
            next_pos: start,
            shards,
            order,
            next_shard: 0,
            reader: None,
            buffer: Vec::with_capacity(r.buffer.min(1 << 16)),
            capacity: r.buffer,
            input_done: false,
            rng: buffer_rng(r.seed, index, r.rank),
        }
    }

    /// The next sample of the epoch, None once it is over: the buffer is topped up from the
    /// shards, then one slot drawn uniformly comes out.
    pub fn next(&mut self) -> Result<Option<RawSample>, DataError> {
        while !self.input_done && self.buffer.len() < self.capacity {
            match self.read_input()? {
                Some(s) => self.buffer.push(s),
                None => self.input_done = true,
            }
        }
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let slot = self.rng.random_range(0..self.buffer.len() as u64) as usize;
        self.next_pos += 1;
        Ok(Some(self.buffer.swap_remove(slot)))
    }

    /// The next sample in shard order.
    fn read_input(&mut self) -> Result<Option<RawSample>, DataError> {
        loop {
            if self.reader.is_none() {
                let Some(&shard) = self.order.get(self.next_shard) else { return Ok(None) };
                self.next_shard += 1;
                self.reader = Some(ShardReader::open(&self.shards[shard], true)?);
            }
            if let Some(reader) = self.reader.as_mut() {
                match reader.next_sample()? {
                    Some(s) => return Ok(Some(s)),
                    None => self.reader = None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_split_the_shards_and_epochs_reorder_them() {
        let mut all: Vec<usize> = (0..3).flat_map(|r| rank_shards(10, 7, 0, r, 3)).collect();
        assert_eq!(rank_shards(10, 7, 0, 0, 3).len(), 4);
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(rank_shards(10, 7, 0, 0, 1), rank_shards(10, 7, 1, 0, 1));
    }
}
