//! The worker pool: batches rendered ahead of the consumer.
//!
//! Design: batch b of an epoch is built whole by worker `b mod W` (W =
//! workers), which sends it into its own bounded channel; the consumer
//! receives batch b from channel `b mod W`, so batches arrive in order
//! without a reorder buffer and at most `prefetch` (rounded up to a
//! multiple of W) finished batches wait. Because a batch's content depends
//! only on (seed, epoch, rank, world, b), the result is bitwise the same
//! for any W.
//!
//! Invariants:
//! - a sample that fails (corrupt image, unreadable row group, wrong raw
//!   length) is, for training ([`OnError::Replace`]), replaced by a row drawn
//!   from the `Replace` stream keyed by its position, up to
//!   [`MAX_REPLACEMENTS`] times; each failure is a [`SampleError`] carried by
//!   its batch, and each replaced sample is counted once in the
//!   [`EpochSummary`]. Only when every replacement fails does the epoch end
//!   with [`DataError::Unrecoverable`]. For evaluation ([`OnError::Skip`])
//!   it is left out instead (its batch is that much shorter, possibly
//!   empty) and counted as skipped: a metric over stand-ins, some counted
//!   twice, would not be the model's on the split;
//! - dropping an [`EpochIter`] early raises a stop flag that workers check
//!   between samples, drops the receivers (unblocking any send) and joins
//!   every worker: no thread outlives the iterator, nothing hangs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::augment::{apply_mix, batch_mix, Augment, BatchMix, Renderer};
use super::batch::{Batch, BufferPool};
use super::rng::{mix64, SampleRng, Stream};
use super::sampler::{Layout, Sampler, SamplerState, Shuffle};
use super::DataError;
use crate::image::{decode_rgb8_into, DecodeLimits};
use crate::shard::{Access, Encoding, ShardSet, Split};

/// Replacement rows tried for one failing sample before giving up.
pub const MAX_REPLACEMENTS: u32 = 16;

/// Errors kept per epoch summary (all are counted).
const KEPT_ERRORS: usize = 100;

/// All cores but one (at least one): the consumer keeps a core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1).max(1))
        .unwrap_or(1)
}

/// One sample that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{shard}: row {row} (key {key:?}, split row {split_row}): {detail}")]
pub struct SampleError {
    /// Shard file name.
    pub shard: String,
    /// Row within the shard.
    pub row: u64,
    /// Row within the split (the sampler's index).
    pub split_row: u64,
    /// The entry's key, when the row group could be read.
    pub key: Option<String>,
    pub detail: String,
    /// The split row that took its place (None when it too failed).
    pub replaced_by: Option<u64>,
}

impl SampleError {
    /// "shard row N (key): why", for a warning that names one failure.
    pub fn brief(&self) -> String {
        let key = self.key.as_deref().unwrap_or("?");
        format!("{} row {} ({key}): {}", self.shard, self.row, self.detail)
    }
}

/// What an epoch (or the part consumed so far) did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSummary {
    pub epoch: u64,
    pub batches: u64,
    pub samples: u64,
    /// Samples that failed to load and took another row's place (each
    /// counted once, however many rows were tried for it).
    pub replaced: u64,
    /// Samples that failed to load and were left out ([`OnError::Skip`]).
    #[serde(default)]
    pub skipped: u64,
    /// The first failures (every row that failed, replacements included).
    pub errors: Vec<SampleError>,
}

/// What a sample that fails to load becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Another row takes its place (training: the batch keeps its size).
    #[default]
    Replace,
    /// It is left out (evaluation: every image scored is the split's own).
    Skip,
}

/// Everything the loader needs besides the shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    pub split: Split,
    pub batch: usize,
    pub workers: usize,
    /// Finished batches allowed to wait for the consumer.
    pub prefetch: usize,
    pub shuffle: Shuffle,
    pub rank: u32,
    pub world: u32,
    /// Drop the last, short batch of each epoch (training) or keep it.
    pub drop_last: bool,
    pub augment: Augment,
    /// Failed samples: replaced (training) or left out (evaluation).
    #[serde(default)]
    pub on_error: OnError,
}

impl LoaderConfig {
    /// The paper's training setup at `size`, batch `batch`.
    pub fn train(size: u32, batch: usize) -> LoaderConfig {
        LoaderConfig {
            split: Split::Train,
            batch,
            workers: default_workers(),
            prefetch: 4,
            shuffle: Shuffle::Global,
            rank: 0,
            world: 1,
            drop_last: true,
            augment: Augment::train(size),
            on_error: OnError::Replace,
        }
    }

    /// Evaluation: file order, no augmentation, last batch kept, failed
    /// samples left out.
    pub fn eval(size: u32, resize: u32, batch: usize) -> LoaderConfig {
        LoaderConfig {
            split: Split::Val,
            shuffle: Shuffle::None,
            drop_last: false,
            augment: Augment::eval(size, resize),
            on_error: OnError::Skip,
            ..LoaderConfig::train(size, batch)
        }
    }
}

/// The loader of one split of one shard folder, for one rank.
pub struct Loader {
    set: Arc<ShardSet>,
    cfg: Arc<LoaderConfig>,
    sampler: Sampler,
    pool: Arc<BufferPool>,
}

impl Loader {
    /// Check the configuration against the shards. `seed` is the run's seed.
    pub fn new(set: Arc<ShardSet>, cfg: LoaderConfig, seed: u64) -> Result<Loader, DataError> {
        if cfg.batch == 0 {
            return Err(DataError::Config("batch size must be at least 1".into()));
        }
        if let Err((field, why)) = cfg.augment.check() {
            return Err(DataError::Config(format!("augmentation {field}: {why}")));
        }
        let workers = cfg.workers.max(1);
        if set.num_rows(cfg.split) == 0 {
            return Err(DataError::Config(format!(
                "the {} split of {} has no rows",
                cfg.split,
                set.dir().display()
            )));
        }
        let sampler = Sampler::new(
            Layout::from_set(&set, cfg.split),
            cfg.shuffle,
            seed,
            cfg.rank,
            cfg.world,
        )?;
        // How the rows will be read, for the OS's readahead (see
        // `shard::Access`). A global shuffle reads scattered rows: a cold
        // image would otherwise pull the disk's whole readahead window (up
        // to MiBs) for its 18–150 KB. Where the images cannot be located
        // without reading them (JPEG shards whose footer predates
        // `ebv.image_lengths`), a row group is read whole at its first
        // access anyway and the default read-around is the fast way; the
        // other orders read row groups front to back. Not `Sequential` for
        // those: it lets the kernel drop pages right behind the reader, and
        // an evaluation split is read again every epoch.
        for shard in set.split_shards(cfg.split) {
            let scattered =
                cfg.shuffle == Shuffle::Global && shard.locates_images_without_reading();
            shard.advise(if scattered {
                Access::Random
            } else {
                Access::Normal
            });
        }
        let cap = cfg.prefetch + 2 * workers + 2;
        Ok(Loader {
            set,
            cfg: Arc::new(LoaderConfig { workers, ..cfg }),
            sampler,
            pool: Arc::new(BufferPool::new(cap)),
        })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Batches per epoch for this rank.
    pub fn batches_per_epoch(&self) -> u64 {
        let n = self.sampler.per_rank();
        let b = self.cfg.batch as u64;
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Start (or resume) the epoch of `state`, from `state.position`, which
    /// must be a multiple of the batch size (what [`Batch::state_after`]
    /// gives). The seed must be the loader's.
    pub fn epoch(&self, state: SamplerState) -> Result<EpochIter, DataError> {
        if state.seed != self.sampler.seed() {
            return Err(DataError::Config(format!(
                "state seed {} differs from the loader's seed {}",
                state.seed,
                self.sampler.seed()
            )));
        }
        let b = self.cfg.batch as u64;
        if !state.position.is_multiple_of(b) {
            return Err(DataError::Config(format!(
                "resume position {} is not a multiple of the batch size {b}",
                state.position
            )));
        }
        if state.position > self.sampler.per_rank() {
            return Err(DataError::Config(format!(
                "resume position {} is beyond the {} rows this rank reads of split {} per epoch (a state saved for other shards?)",
                state.position,
                self.sampler.per_rank(),
                self.cfg.split
            )));
        }
        let total = self.batches_per_epoch();
        let first = (state.position / b).min(total);
        let order = Arc::new(self.sampler.rank_order(state.epoch));
        let stop = Arc::new(AtomicBool::new(false));
        let w = self.cfg.workers;
        let cap = self.cfg.prefetch.div_ceil(w).max(1);
        let mut receivers = Vec::with_capacity(w);
        let mut handles = Vec::with_capacity(w);
        for k in 0..w {
            let (tx, rx) = bounded(cap);
            receivers.push(rx);
            let job = Worker {
                set: Arc::clone(&self.set),
                cfg: Arc::clone(&self.cfg),
                order: Arc::clone(&order),
                pool: Arc::clone(&self.pool),
                stop: Arc::clone(&stop),
                seed: state.seed,
                epoch: state.epoch,
                rows: self.sampler.num_rows(),
                per_rank: self.sampler.per_rank(),
                total,
                classes: self.set.classes().len() as u64,
            };
            let start = first + k as u64;
            let handle = std::thread::Builder::new()
                .name(format!("ebv-load-{k}"))
                .spawn(move || job.run(start, w as u64, tx))
                .map_err(|e| DataError::Config(format!("cannot start a worker thread: {e}")))?;
            handles.push(handle);
        }
        Ok(EpochIter {
            receivers,
            handles,
            stop,
            next: first,
            first,
            total,
            batch: b,
            per_rank: self.sampler.per_rank(),
            seed: state.seed,
            epoch: state.epoch,
            summary: EpochSummary {
                epoch: state.epoch,
                ..EpochSummary::default()
            },
            failed: false,
        })
    }
}

/// Yields the batches of one epoch in order; see the module invariants.
pub struct EpochIter {
    receivers: Vec<Receiver<Result<Batch, DataError>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    next: u64,
    first: u64,
    total: u64,
    batch: u64,
    per_rank: u64,
    seed: u64,
    epoch: u64,
    summary: EpochSummary,
    failed: bool,
}

impl EpochIter {
    /// The state after the last batch yielded; at the end of the epoch,
    /// the start of the next one.
    pub fn state(&self) -> SamplerState {
        if self.next >= self.total && !self.failed {
            SamplerState {
                seed: self.seed,
                epoch: self.epoch + 1,
                position: 0,
            }
        } else {
            SamplerState {
                seed: self.seed,
                epoch: self.epoch,
                position: (self.next * self.batch).min(self.per_rank),
            }
        }
    }

    /// What the batches yielded so far did.
    pub fn summary(&self) -> &EpochSummary {
        &self.summary
    }

    /// Batches this iterator yields in all (from its start position).
    pub fn num_batches(&self) -> u64 {
        self.total - self.first
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Dropping the receivers makes any blocked send fail at once.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.total || self.receivers.is_empty() {
            return None;
        }
        let w = self.receivers.len() as u64;
        let k = ((self.next - self.first) % w) as usize;
        let got = self.receivers[k].recv();
        match got {
            Ok(Ok(batch)) => {
                self.next += 1;
                self.summary.batches += 1;
                self.summary.samples += batch.len() as u64;
                self.summary.replaced += batch.substituted;
                self.summary.skipped += batch.skipped;
                for e in &batch.replaced {
                    if self.summary.errors.len() < KEPT_ERRORS {
                        self.summary.errors.push(e.clone());
                    }
                }
                if self.next >= self.total {
                    self.shutdown();
                }
                Some(Ok(batch))
            }
            Ok(Err(e)) => {
                self.failed = true;
                self.shutdown();
                Some(Err(e))
            }
            Err(_) => {
                self.failed = true;
                let batch = self.next;
                self.shutdown();
                Some(Err(DataError::WorkerLost {
                    epoch: self.epoch,
                    batch,
                }))
            }
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What one worker thread owns.
struct Worker {
    set: Arc<ShardSet>,
    cfg: Arc<LoaderConfig>,
    order: Arc<Vec<(u64, u64)>>,
    pool: Arc<BufferPool>,
    stop: Arc<AtomicBool>,
    seed: u64,
    epoch: u64,
    rows: u64,
    per_rank: u64,
    total: u64,
    /// Labels must be below this (the manifest's class count).
    classes: u64,
}

/// Per-worker scratch, reused for every sample.
struct Scratch {
    renderer: Renderer,
    decoded: Vec<u8>,
    mix: Vec<f32>,
}

impl Worker {
    fn run(self, start: u64, step: u64, tx: Sender<Result<Batch, DataError>>) {
        let mut scratch = Scratch {
            renderer: Renderer::new(&self.cfg.augment),
            decoded: Vec::new(),
            mix: Vec::new(),
        };
        let mut b = start;
        while b < self.total && !self.stop.load(Ordering::Relaxed) {
            let Some(result) = self.build(b, &mut scratch) else {
                return; // stopped mid-batch
            };
            let fatal = result.is_err();
            if tx.send(result).is_err() || fatal {
                return;
            }
            b += step;
        }
    }

    /// Build batch `b`; None when asked to stop part-way.
    fn build(&self, b: u64, scratch: &mut Scratch) -> Option<Result<Batch, DataError>> {
        let bs = self.cfg.batch as u64;
        let lo = b * bs;
        let hi = ((b + 1) * bs).min(self.per_rank);
        let n = (hi - lo) as usize;
        let s = self.cfg.augment.size as usize;
        let len = 3 * s * s;
        let mut images = self.pool.take(n * len);
        let mut labels = Vec::with_capacity(n);
        let mut rows = Vec::with_capacity(n);
        let mut replaced = Vec::new();
        let (mut substituted, mut skipped) = (0u64, 0u64);
        let positions = &self.order[lo as usize..hi as usize];
        if self.cfg.shuffle == Shuffle::Global {
            self.prefetch(positions);
        }
        for &(pos, row) in positions {
            if self.stop.load(Ordering::Relaxed) {
                self.pool.give(images);
                return None;
            }
            // Slots are filled in order; a skipped sample leaves none.
            let k = labels.len();
            let slot = &mut images[k * len..(k + 1) * len];
            let failed_before = replaced.len();
            match self.sample(pos, row, slot, scratch, &mut replaced) {
                Ok(Some((label, used))) => {
                    labels.push(label);
                    rows.push(used);
                    substituted += u64::from(replaced.len() > failed_before);
                }
                Ok(None) => skipped += 1,
                Err(e) => {
                    self.pool.give(images);
                    return Some(Err(e));
                }
            }
        }
        let n = labels.len();
        images.truncate(n * len);
        let mix =
            if self.cfg.augment.mixup_alpha.is_some() || self.cfg.augment.cutmix_alpha.is_some() {
                // Keyed by the batch's position in the padded order of batches,
                // unique across ranks.
                let id = b * u64::from(self.cfg.world) + u64::from(self.cfg.rank);
                let mut rng = SampleRng::new(self.seed, self.epoch, id, Stream::Batch);
                batch_mix(
                    &mut rng,
                    self.cfg.augment.mixup_alpha,
                    self.cfg.augment.cutmix_alpha,
                    s as u32,
                    s as u32,
                )
            } else {
                BatchMix::None
            };
        let mix = if n < 2 { BatchMix::None } else { mix };
        apply_mix(&mut images, n, s, s, &mix, &mut scratch.mix);
        let mix_labels = if matches!(mix, BatchMix::None) {
            labels.clone()
        } else {
            (0..n).map(|i| labels[(i + n - 1) % n]).collect()
        };
        let position = hi;
        let state_after = if b + 1 >= self.total {
            SamplerState {
                seed: self.seed,
                epoch: self.epoch + 1,
                position: 0,
            }
        } else {
            SamplerState {
                seed: self.seed,
                epoch: self.epoch,
                position,
            }
        };
        Some(Ok(Batch {
            epoch: self.epoch,
            index: b,
            size: s as u32,
            labels,
            mix_labels,
            mix,
            rows,
            replaced,
            substituted,
            skipped,
            state_after,
            images,
            pool: Some(Arc::clone(&self.pool)),
        }))
    }

    /// Announce a batch's images to the OS before rendering them, so that
    /// cold ones are read while the first ones render (shards read with
    /// `Access::Random` only; see `shard::Access`). A row group that fails
    /// to open is left to `render`, which reports it.
    fn prefetch(&self, positions: &[(u64, u64)]) {
        for &(_, row) in positions {
            let (si, srow) = self.set.locate(self.cfg.split, row);
            let shard = &self.set.shards()[si];
            if shard.access() != Access::Random {
                continue;
            }
            let (rg, i) = shard.locate(srow);
            if let Ok(group) = shard.row_group(rg) {
                group.prefetch_image(i);
            }
        }
    }

    /// Render the sample at padded position `pos` (split row `row`) into
    /// `slot`, replacing it on failure (or, with [`OnError::Skip`], leaving
    /// it out: `None`). Returns (label, row used).
    fn sample(
        &self,
        pos: u64,
        row: u64,
        slot: &mut [f32],
        scratch: &mut Scratch,
        replaced: &mut Vec<SampleError>,
    ) -> Result<Option<(u32, u64)>, DataError> {
        let mut replace_rng = SampleRng::new(self.seed, self.epoch, pos, Stream::Replace);
        let mut current = row;
        for attempt in 0..=MAX_REPLACEMENTS {
            // A fresh augmentation stream per attempt, so a replacement's
            // transform does not depend on how far the failed one got.
            let mut rng = SampleRng::new(
                self.seed ^ mix64(u64::from(attempt)).wrapping_mul(u64::from(attempt != 0)),
                self.epoch,
                pos,
                Stream::Augment,
            );
            match self.render(current, &mut rng, slot, scratch) {
                // Not a bad image that another row can stand in for: the
                // shards contradict their manifest, and training on such a
                // label would index past the classifier.
                Ok(label) if u64::from(label) >= self.classes => {
                    let (si, srow) = self.set.locate(self.cfg.split, current);
                    return Err(DataError::LabelOutOfRange {
                        shard: self.set.shards()[si].path().display().to_string(),
                        row: srow,
                        label,
                        classes: self.classes,
                    });
                }
                Ok(label) => return Ok(Some((label, current))),
                Err(e) if self.cfg.on_error == OnError::Skip => {
                    replaced.push(e);
                    return Ok(None);
                }
                Err(mut e) => {
                    let next = replace_rng.below(self.rows);
                    let last = attempt == MAX_REPLACEMENTS;
                    e.replaced_by = (!last).then_some(next);
                    if last {
                        return Err(DataError::Unrecoverable {
                            epoch: self.epoch,
                            position: pos,
                            attempts: MAX_REPLACEMENTS,
                            last: Box::new(e),
                        });
                    }
                    replaced.push(e);
                    current = next;
                }
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Load split row `row` and render it; the error names shard, row, key.
    fn render(
        &self,
        row: u64,
        rng: &mut SampleRng,
        slot: &mut [f32],
        scratch: &mut Scratch,
    ) -> Result<u32, SampleError> {
        let (si, srow) = self.set.locate(self.cfg.split, row);
        let shard = &self.set.shards()[si];
        let fail = |key: Option<&str>, detail: String| SampleError {
            shard: shard.file_name(),
            row: srow,
            split_row: row,
            key: key.map(str::to_string),
            detail,
            replaced_by: None,
        };
        let (rg, i) = shard.locate(srow);
        let group = shard.row_group(rg).map_err(|e| fail(None, e.to_string()))?;
        let label = group.label(i);
        let key = group.key(i);
        let bytes = group.image(i);
        let meta = shard.meta();
        let aug = &self.cfg.augment;
        let (pixels, w, h): (&[u8], u32, u32) = match meta.encoding {
            Encoding::Raw => (bytes, meta.width, meta.height),
            Encoding::Jpeg => {
                let (w, h) = decode_rgb8_into(bytes, DecodeLimits::default(), &mut scratch.decoded)
                    .map_err(|e| fail(Some(key), e.to_string()))?;
                (&scratch.decoded, w, h)
            }
        };
        let plan = aug.plan(rng, w, h);
        scratch
            .renderer
            .render(pixels, w, h, &plan, slot)
            .map_err(|e| fail(Some(key), e))?;
        Ok(label)
    }
}
