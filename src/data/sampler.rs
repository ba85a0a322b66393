//! Which rows each rank reads in each epoch, in which order.
//!
//! Invariants:
//! - an epoch's full order is a permutation of `0..N` (N = rows of the
//!   split, indexed across its shards in file-name order), a function of
//!   (seed, epoch) only;
//! - distributed: the full order is padded **by wrapping** to
//!   `P = ceil(N / world) * world` positions (position p holds row
//!   `order[p mod N]`, so at most `world − 1` rows appear twice in an
//!   epoch, never more than twice); rank r takes positions `r, r + world,
//!   r + 2·world, …` (torch `DistributedSampler` layout). Every rank gets
//!   exactly `P / world` positions, ranks are disjoint as sets of positions,
//!   and their union covers every row;
//! - a position's index `p` in the padded order is the sample's identity
//!   for its random transform, so a sample is augmented the same way
//!   whichever rank or worker handles it;
//! - [`SamplerState`] (seed, epoch, position) is all a checkpoint needs:
//!   `position` counts this rank's samples already consumed this epoch.

use serde::{Deserialize, Serialize};

use super::rng::{SampleRng, Stream};
use super::DataError;
use crate::shard::{ShardSet, Split};

/// How an epoch's order is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shuffle {
    /// File order (evaluation).
    None,
    /// A seeded permutation of every row (random access into the maps is
    /// cheap, so this is the default for training; the loader announces
    /// each raw image to the OS so a cold read fetches just its bytes).
    Global,
    /// For slow storage: shards in shuffled order, each shard's row groups
    /// in shuffled order, rows drawn through a shuffle buffer of this many
    /// rows (so reads stay sequential within a row group).
    Buffer(usize),
}

impl std::str::FromStr for Shuffle {
    type Err = String;
    fn from_str(s: &str) -> Result<Shuffle, String> {
        match s {
            "none" => Ok(Shuffle::None),
            "global" => Ok(Shuffle::Global),
            _ => match s.strip_prefix("buffer:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => Ok(Shuffle::Buffer(n)),
                _ => Err(format!(
                    "unknown shuffle '{s}' (expected none, global or buffer:N with N > 0)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Shuffle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shuffle::None => f.write_str("none"),
            Shuffle::Global => f.write_str("global"),
            Shuffle::Buffer(n) => write!(f, "buffer:{n}"),
        }
    }
}

/// Where a rank stands in training; what a checkpoint stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    pub epoch: u64,
    /// This rank's samples consumed in `epoch` (a multiple of the batch
    /// size when taken from the loader).
    pub position: u64,
}

impl SamplerState {
    pub fn new(seed: u64) -> SamplerState {
        SamplerState {
            seed,
            epoch: 0,
            position: 0,
        }
    }
}

/// Row-group lengths of each shard of a split, in the split's shard order
/// (the order of its global row index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub shards: Vec<Vec<u64>>,
}

impl Layout {
    pub fn from_set(set: &ShardSet, split: Split) -> Layout {
        Layout {
            shards: set
                .split_shards(split)
                .map(|s| {
                    (0..s.num_row_groups())
                        .map(|rg| s.row_group_len(rg))
                        .collect()
                })
                .collect(),
        }
    }

    pub fn num_rows(&self) -> u64 {
        self.shards.iter().flatten().sum()
    }
}

/// Draws epoch orders for one rank.
#[derive(Debug, Clone)]
pub struct Sampler {
    layout: Layout,
    rows: u64,
    shuffle: Shuffle,
    seed: u64,
    rank: u32,
    world: u32,
}

/// Fisher–Yates over `v` with `rng`.
fn shuffle_in_place<T>(v: &mut [T], rng: &mut SampleRng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

impl Sampler {
    pub fn new(
        layout: Layout,
        shuffle: Shuffle,
        seed: u64,
        rank: u32,
        world: u32,
    ) -> Result<Sampler, DataError> {
        if world == 0 || rank >= world {
            return Err(DataError::Config(format!(
                "rank {rank} of world {world}: need world >= 1 and rank < world"
            )));
        }
        let rows = layout.num_rows();
        if rows == 0 {
            return Err(DataError::Config("the split has no rows".into()));
        }
        Ok(Sampler {
            layout,
            rows,
            shuffle,
            seed,
            rank,
            world,
        })
    }

    pub fn num_rows(&self) -> u64 {
        self.rows
    }

    pub fn rank(&self) -> u32 {
        self.rank
    }

    pub fn world(&self) -> u32 {
        self.world
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Positions (samples) each rank gets per epoch: `ceil(N / world)`.
    pub fn per_rank(&self) -> u64 {
        self.rows.div_ceil(u64::from(self.world))
    }

    /// The epoch's full order: a permutation of `0..N`, the same on every
    /// rank.
    pub fn epoch_order(&self, epoch: u64) -> Vec<u64> {
        let mut rng = SampleRng::new(self.seed, epoch, 0, Stream::Order);
        match self.shuffle {
            Shuffle::None => (0..self.rows).collect(),
            Shuffle::Global => {
                let mut v: Vec<u64> = (0..self.rows).collect();
                shuffle_in_place(&mut v, &mut rng);
                v
            }
            Shuffle::Buffer(cap) => {
                // Row groups as (first global row, len), in shuffled shard
                // order, each shard's groups shuffled.
                let mut shard_starts = Vec::with_capacity(self.layout.shards.len());
                let mut start = 0u64;
                for groups in &self.layout.shards {
                    shard_starts.push(start);
                    start += groups.iter().sum::<u64>();
                }
                let mut shard_order: Vec<usize> = (0..self.layout.shards.len()).collect();
                shuffle_in_place(&mut shard_order, &mut rng);
                let mut out = Vec::with_capacity(self.rows as usize);
                let mut buf: Vec<u64> = Vec::with_capacity(cap.min(self.rows as usize));
                for s in shard_order {
                    let groups = &self.layout.shards[s];
                    let mut firsts = Vec::with_capacity(groups.len());
                    let mut g0 = shard_starts[s];
                    for &len in groups {
                        firsts.push((g0, len));
                        g0 += len;
                    }
                    shuffle_in_place(&mut firsts, &mut rng);
                    for (first, len) in firsts {
                        for row in first..first + len {
                            if buf.len() < cap {
                                buf.push(row);
                            } else {
                                let j = rng.below(cap as u64) as usize;
                                out.push(std::mem::replace(&mut buf[j], row));
                            }
                        }
                    }
                }
                shuffle_in_place(&mut buf, &mut rng);
                out.extend(buf);
                out
            }
        }
    }

    /// This rank's rows for `epoch` with their positions in the padded
    /// order: element k is `(k·world + rank, row)`.
    pub fn rank_order(&self, epoch: u64) -> Vec<(u64, u64)> {
        let order = self.epoch_order(epoch);
        let w = u64::from(self.world);
        (0..self.per_rank())
            .map(|k| {
                let p = k * w + u64::from(self.rank);
                (p, order[(p % self.rows) as usize])
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            shards: vec![vec![4, 4, 2], vec![3], vec![5, 5]],
        }
    }

    #[test]
    fn every_mode_is_a_permutation() {
        for shuffle in [
            Shuffle::None,
            Shuffle::Global,
            Shuffle::Buffer(1),
            Shuffle::Buffer(6),
            Shuffle::Buffer(100),
        ] {
            let s = Sampler::new(layout(), shuffle, 3, 0, 1).unwrap();
            let mut o = s.epoch_order(2);
            assert_eq!(o.len(), 23);
            o.sort();
            assert_eq!(o, (0..23).collect::<Vec<_>>(), "{shuffle}");
        }
    }

    #[test]
    fn shuffle_parses() {
        assert_eq!("global".parse::<Shuffle>().unwrap(), Shuffle::Global);
        assert_eq!("buffer:64".parse::<Shuffle>().unwrap(), Shuffle::Buffer(64));
        assert!("buffer:0".parse::<Shuffle>().is_err());
        assert!("random".parse::<Shuffle>().is_err());
    }
}
