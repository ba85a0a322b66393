//! Where this process sits in a data-parallel job, read from the
//! environment the usual launchers set: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`
//! (torchrun, `ebv-train --gpus N`), or Slurm's `SLURM_PROCID`,
//! `SLURM_NTASKS`, `SLURM_LOCALID` under `srun`.
//!
//! Invariant: a `World` always has `rank < size` and `local_rank < size`.

use super::DistError;

/// Rank, world size and the rank on this host (which picks the GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
}

impl World {
    /// A single process.
    pub fn solo() -> World {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
        }
    }

    /// The rank that writes checkpoints, logs and the summary.
    pub fn is_primary(&self) -> bool {
        self.rank == 0
    }

    /// From the process environment; `None` when no launcher variables are
    /// set (a plain single-process run).
    pub fn from_env() -> Result<Option<World>, DistError> {
        World::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<World>, DistError> {
        let (rank_var, size_var, local_var) =
            if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
                ("RANK", "WORLD_SIZE", "LOCAL_RANK")
            } else if get("SLURM_PROCID").is_some() && get("SLURM_NTASKS").is_some() {
                ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
            } else {
                return Ok(None);
            };
        let parse = |var: &'static str, required: bool| -> Result<Option<usize>, DistError> {
            match get(var) {
                None if required => Err(DistError::Env {
                    var,
                    detail: "not set (RANK and WORLD_SIZE go together)".into(),
                }),
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| DistError::Env {
                        var,
                        detail: format!("'{v}' is not a non-negative integer"),
                    }),
            }
        };
        let rank = parse(rank_var, true)?.unwrap_or(0);
        let size = parse(size_var, true)?.unwrap_or(1);
        if size == 0 {
            return Err(DistError::Env {
                var: size_var,
                detail: "must be at least 1".into(),
            });
        }
        if rank >= size {
            return Err(DistError::Env {
                var: rank_var,
                detail: format!("rank {rank} is not below {size_var}={size}"),
            });
        }
        // Without a local rank (one rank per host), the GPU is cuda:0.
        let local_rank = parse(local_var, false)?.unwrap_or(0);
        if local_rank >= size {
            return Err(DistError::Env {
                var: local_var,
                detail: format!("local rank {local_rank} is not below {size_var}={size}"),
            });
        }
        Ok(Some(World {
            rank,
            size,
            local_rank,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<Option<World>, DistError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_and_slurm_variables() {
        assert_eq!(world(&[]).unwrap(), None);
        assert_eq!(
            world(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")]).unwrap(),
            Some(World {
                rank: 3,
                size: 8,
                local_rank: 1
            })
        );
        assert_eq!(
            world(&[
                ("SLURM_PROCID", "5"),
                ("SLURM_NTASKS", "16"),
                ("SLURM_LOCALID", "5")
            ])
            .unwrap(),
            Some(World {
                rank: 5,
                size: 16,
                local_rank: 5
            })
        );
        // torchrun's variables win over Slurm's when both are set.
        let w = world(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("SLURM_PROCID", "7"),
            ("SLURM_NTASKS", "9"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((w.rank, w.size, w.local_rank), (0, 2, 0));
        assert!(w.is_primary());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = world(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(
            e.to_string().contains("RANK") && e.to_string().contains("not below"),
            "{e}"
        );
        let e = world(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("'x'"), "{e}");
        let e = world(&[("RANK", "0")]).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE"), "{e}");
        let e = world(&[("RANK", "0"), ("WORLD_SIZE", "0")]).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = world(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "4")]).unwrap_err();
        assert!(e.to_string().contains("LOCAL_RANK"), "{e}");
    }
}
