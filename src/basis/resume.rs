//! The state of an unfinished `generate` run, kept beside its output so that
//! running the same command again continues the run exactly where it stood.
//!
//! A checkpoint of the best matrix (`--out`) lets a killed run be continued
//! with `--start`, but that is a new optimisation: step size, momentum,
//! Adam's moments, the `--alpha auto` threshold and the guard's counters
//! start afresh, so a run in rounds follows another path than one run. This
//! file holds everything the optimiser loop carries from one step to the
//! next, as it stood at the top of one step (rows renormalised, nothing yet
//! evaluated): the working rows, the optimiser's moments, the best rows when
//! they are not the working ones, and every scalar (floats as their bits).
//! The loop is deterministic for its inputs, so a run resumed from the state
//! of step k takes the same steps as the run that wrote it, and ends with
//! the same matrix, bit for bit.
//!
//! Invariants: the file is `OUT.resume` (safetensors: F32 [N, d] tensors
//! `b`, `velocity`, `second` and `best` as the run has them; metadata
//! `format` = `ebv-basis-resume`, `identity` = the options that determine
//! the path, `state` = the scalars) and is written atomically, like every
//! output; it exists only while the run is unfinished (killed or stopped
//! with Ctrl-C) and is removed when the run ends. A state is only ever
//! resumed under the identity it was written with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::BasisError;
use super::generate::{AlphaSpec, GenerateConfig, Plan};
use super::io::{read_tensors, write_tensors};

/// `format` of a state file's metadata.
const FORMAT: &str = "ebv-basis-resume";
/// Bumped whenever the loop's state or its meaning changes: a state of
/// another version is refused rather than resumed on another path.
const VERSION: &str = "1";

/// Where the state of a run writing `out` is kept: `OUT.resume`.
pub fn state_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".resume");
    PathBuf::from(s)
}

/// The scalars the optimiser loop carries between steps, as they stood at
/// the top of step `step`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scalars {
    pub step: u64,
    /// The p-norm's reference maximum.
    pub m_ref: f32,
    pub tau: f64,
    pub lr: f64,
    pub prev_loss: Option<f64>,
    pub best_max: f32,
    pub best_mean: f64,
    pub best_step: u64,
    pub last_gain: u64,
    pub own_best: f32,
    pub own_gain: u64,
    pub continuation: bool,
    pub recoveries: u32,
    pub adam_steps: i32,
    /// The SGD guard's count of steps above the best.
    pub above_best: u64,
    /// The Gram kernel's dense-path prediction (it picks the summation).
    pub dense_hint: bool,
    /// Wall time the run had taken before this state, seconds.
    pub seconds: f64,
}

impl Scalars {
    fn to_map(self) -> BTreeMap<String, String> {
        let f32s = |x: f32| format!("{:08x}", x.to_bits());
        let f64s = |x: f64| format!("{:016x}", x.to_bits());
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("step", self.step.to_string());
        put("m_ref", f32s(self.m_ref));
        put("tau", f64s(self.tau));
        put("lr", f64s(self.lr));
        put(
            "prev_loss",
            self.prev_loss.map(f64s).unwrap_or_else(|| "none".into()),
        );
        put("best_max", f32s(self.best_max));
        put("best_mean", f64s(self.best_mean));
        put("best_step", self.best_step.to_string());
        put("last_gain", self.last_gain.to_string());
        put("own_best", f32s(self.own_best));
        put("own_gain", self.own_gain.to_string());
        put("continuation", self.continuation.to_string());
        put("recoveries", self.recoveries.to_string());
        put("adam_steps", self.adam_steps.to_string());
        put("above_best", self.above_best.to_string());
        put("dense_hint", self.dense_hint.to_string());
        put("seconds", f64s(self.seconds));
        m
    }

    fn from_map(m: &BTreeMap<String, String>) -> Result<Self, String> {
        let get = |k: &str| m.get(k).ok_or_else(|| format!("no `{k}` in its state"));
        let bad = |k: &str| format!("`{k}` of its state is not readable");
        let int = |k: &str| get(k)?.parse::<u64>().map_err(|_| bad(k));
        let boolean = |k: &str| get(k)?.parse::<bool>().map_err(|_| bad(k));
        let f32b = |k: &str| {
            u32::from_str_radix(get(k)?, 16)
                .map(f32::from_bits)
                .map_err(|_| bad(k))
        };
        let f64b = |k: &str| {
            u64::from_str_radix(get(k)?, 16)
                .map(f64::from_bits)
                .map_err(|_| bad(k))
        };
        Ok(Scalars {
            step: int("step")?,
            m_ref: f32b("m_ref")?,
            tau: f64b("tau")?,
            lr: f64b("lr")?,
            prev_loss: match get("prev_loss")?.as_str() {
                "none" => None,
                _ => Some(f64b("prev_loss")?),
            },
            best_max: f32b("best_max")?,
            best_mean: f64b("best_mean")?,
            best_step: int("best_step")?,
            last_gain: int("last_gain")?,
            own_best: f32b("own_best")?,
            own_gain: int("own_gain")?,
            continuation: boolean("continuation")?,
            recoveries: u32::try_from(int("recoveries")?).map_err(|_| bad("recoveries"))?,
            adam_steps: get("adam_steps")?
                .parse::<i32>()
                .map_err(|_| bad("adam_steps"))?,
            above_best: int("above_best")?,
            dense_hint: boolean("dense_hint")?,
            seconds: f64b("seconds")?,
        })
    }
}

/// An unfinished run, read back from its state file.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    /// The options it ran with ([`identity`]).
    pub identity: BTreeMap<String, String>,
    pub scalars: Scalars,
    /// The working rows (unit, as renormalised at the top of the step).
    pub b: Vec<f32>,
    /// Momentum (`adaptive`) or Adam's first moment (`pnorm`); empty for `sgd`.
    pub velocity: Vec<f32>,
    /// Adam's second moment (`pnorm`); empty otherwise.
    pub second: Vec<f32>,
    /// The best rows so far, when they are not `b`.
    pub best: Option<Vec<f32>>,
}

/// A run's state lent for writing, without copying its matrices.
#[derive(Debug, Clone, Copy)]
pub struct StateView<'a> {
    pub identity: &'a BTreeMap<String, String>,
    pub scalars: Scalars,
    pub b: &'a [f32],
    pub velocity: &'a [f32],
    pub second: &'a [f32],
    pub best: Option<&'a [f32]>,
}

impl StateView<'_> {
    /// An owned copy (tests and callers that keep states in memory).
    pub fn to_owned_state(&self) -> RunState {
        RunState {
            identity: self.identity.clone(),
            scalars: self.scalars,
            b: self.b.to_vec(),
            velocity: self.velocity.to_vec(),
            second: self.second.to_vec(),
            best: self.best.map(<[f32]>::to_vec),
        }
    }
}

/// What fixes the path of a run: the options whose change would make a
/// resumed run go elsewhere than the one that was stopped. Wall-clock
/// limits, checkpoint cadence and output forms are not among them.
pub fn identity(cfg: &GenerateConfig, plan: &Plan) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("classes", cfg.n.to_string());
    put("dim", cfg.d.to_string());
    put(
        "alpha",
        match cfg.alpha {
            AlphaSpec::Value(a) => a.to_string(),
            AlphaSpec::Auto => "auto".into(),
        },
    );
    put("seed", cfg.seed.to_string());
    put(
        "init",
        match (&cfg.start, &plan.start) {
            (Some(_), _) => "--start (a given matrix)".into(),
            (None, Some(c)) => format!("{} ({})", plan.init.name(), c.rows_of(cfg.n)),
            (None, None) => plan.init.name().into(),
        },
    );
    put("jitter", cfg.jitter.to_string());
    put("method", cfg.method.name().into());
    put("lr", plan.lr.to_string());
    put("steps", cfg.max_steps.to_string());
    put("tol", cfg.tol.to_string());
    put("slice", plan.slice.to_string());
    // Besides the slice, the budget caps the sparse pair list, which
    // decides where the gradient is summed densely.
    put("mem", cfg.mem_bytes.to_string());
    put("device", plan.device.clone());
    put("no_guard", (!cfg.guard).to_string());
    put("patience", cfg.patience.to_string());
    put("grad_path", format!("{:?}", cfg.grad_path).to_lowercase());
    put("version", env!("CARGO_PKG_VERSION").into());
    m
}

/// The options that differ between a saved identity and the current one,
/// in words ("--alpha: 0.05 in the saved run, 0.06 now").
pub fn differences(
    saved: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = saved.keys().chain(now.keys()).collect();
    keys.into_iter()
        .filter(|k| saved.get(*k) != now.get(*k))
        .map(|k| {
            let flag = match k.as_str() {
                "device" | "version" | "grad_path" => k.clone(),
                "init" => "--init/--start".into(),
                "mem" => "--mem (bytes)".into(),
                other => format!("--{}", other.replace('_', "-")),
            };
            let show = |v: Option<&String>| v.map_or("(not set)".to_string(), |s| s.clone());
            format!(
                "{flag}: {} in the saved run, {} now",
                show(saved.get(k)),
                show(now.get(k))
            )
        })
        .collect()
}

/// Writes a run's state to `path` atomically.
pub fn write_state(path: &Path, n: usize, d: usize, s: &StateView) -> Result<(), BasisError> {
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("resume_version".to_string(), VERSION.to_string());
    let json = |m: &BTreeMap<String, String>| {
        serde_json::to_string(m).map_err(|e| BasisError::format(path, e.to_string()))
    };
    meta.insert("identity".to_string(), json(s.identity)?);
    meta.insert("state".to_string(), json(&s.scalars.to_map())?);
    let mut tensors: Vec<(&str, &[f32])> = vec![("b", s.b)];
    if !s.velocity.is_empty() {
        tensors.push(("velocity", s.velocity));
    }
    if !s.second.is_empty() {
        tensors.push(("second", s.second));
    }
    if let Some(best) = s.best {
        tensors.push(("best", best));
    }
    write_tensors(path, n, d, &tensors, &meta)
}

/// Reads the state a run writing an N × d matrix left at `path`.
pub fn read_state(path: &Path, n: usize, d: usize) -> Result<RunState, BasisError> {
    let (mut t, meta) = read_tensors(path, n, d, &["b", "velocity", "second", "best"])?;
    let bad = |r: String| {
        BasisError::format(
            path,
            format!("not the state of an ebv-basis run ({r}); remove it or pass --fresh"),
        )
    };
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!("metadata `format` is not `{FORMAT}`")));
    }
    match meta.get("resume_version") {
        Some(v) if v == VERSION => {}
        v => {
            return Err(bad(format!(
                "written by a version of ebv-basis whose state is {}; this one reads {VERSION}",
                v.map_or("unversioned", |s| s.as_str())
            )))
        }
    }
    let map = |k: &str| -> Result<BTreeMap<String, String>, BasisError> {
        let s = meta.get(k).ok_or_else(|| bad(format!("no `{k}`")))?;
        serde_json::from_str(s).map_err(|e| bad(format!("`{k}`: {e}")))
    };
    let identity = map("identity")?;
    let scalars = Scalars::from_map(&map("state")?).map_err(bad)?;
    let best = t[3].take();
    let second = t[2].take().unwrap_or_default();
    let velocity = t[1].take().unwrap_or_default();
    let b = t[0].take().ok_or_else(|| bad("no tensor `b`".into()))?;
    let state = RunState {
        identity,
        scalars,
        b,
        velocity,
        second,
        best,
    };
    state.check(d).map_err(bad)?;
    Ok(state)
}

impl RunState {
    /// What a run that wrote this state can have held: unit rows (they are
    /// saved as renormalised), finite moments, a positive step size, a best
    /// max |cos| that is a cosine (or not yet evaluated: ∞), steps in order.
    /// A state edited or damaged on disk is refused here rather than run on
    /// to a NaN matrix reported as reached.
    pub fn check(&self, d: usize) -> Result<(), String> {
        let unit = |what: &str, rows: &[f32]| -> Result<(), String> {
            for (i, row) in rows.chunks(d.max(1)).enumerate() {
                let norm = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                if !(norm - 1.0).abs().le(&1e-3) {
                    return Err(format!("{what} row {i} has norm {norm}, not 1"));
                }
            }
            Ok(())
        };
        unit("working", &self.b)?;
        if let Some(best) = &self.best {
            unit("best", best)?;
        }
        if let Some(i) = self.velocity.iter().position(|x| !x.is_finite()) {
            return Err(format!("velocity value {i} is {}", self.velocity[i]));
        }
        if let Some(i) = self
            .second
            .iter()
            .position(|x| !(x.is_finite() && *x >= 0.0))
        {
            return Err(format!("second moment value {i} is {}", self.second[i]));
        }
        let s = &self.scalars;
        let cosine = |x: f64| (0.0..=1.0 + 1e-3).contains(&x);
        let checks: [(&str, bool); 11] = [
            ("m_ref", s.m_ref.is_finite() && s.m_ref > 0.0),
            ("tau", cosine(s.tau)),
            ("lr", s.lr.is_finite() && s.lr > 0.0),
            ("prev_loss", s.prev_loss.is_none_or(f64::is_finite)),
            (
                "best_max",
                cosine(s.best_max as f64) || s.best_max == f32::INFINITY,
            ),
            ("best_mean", cosine(s.best_mean)),
            (
                "own_best",
                cosine(s.own_best as f64) || s.own_best == f32::INFINITY,
            ),
            ("best_step", s.best_step <= s.step),
            ("last_gain", s.last_gain <= s.step),
            ("own_gain", s.own_gain <= s.step + 1 && s.adam_steps >= 0),
            ("seconds", s.seconds.is_finite() && s.seconds >= 0.0),
        ];
        match checks.iter().find(|(_, ok)| !ok) {
            Some((name, _)) => Err(format!("its `{name}` cannot be a run's")),
            None => Ok(()),
        }
    }
}

/// Reads only the identity of the state at `path` (cheap: the header), to
/// compare it with the current options before reading the matrices.
pub fn read_identity(path: &Path) -> Result<BTreeMap<String, String>, BasisError> {
    let (_, meta) = read_tensors(path, 0, 0, &[])?;
    let s = meta
        .get("identity")
        .filter(|_| meta.get("format").map(String::as_str) == Some(FORMAT))
        .ok_or_else(|| {
            BasisError::format(
                path,
                "not the state of an ebv-basis run; remove it or pass --fresh",
            )
        })?;
    serde_json::from_str(s).map_err(|e| BasisError::format(path, format!("`identity`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_round_trip_bit_for_bit() {
        let s = Scalars {
            step: 17,
            m_ref: 0.123_456_79,
            tau: std::f64::consts::PI / 31.0,
            lr: 1.0e-3 * 1.02f64.powi(9),
            prev_loss: Some(0.1 + 0.2),
            best_max: f32::INFINITY,
            best_mean: 1.0 / 3.0,
            best_step: 4,
            last_gain: 3,
            own_best: f32::MIN_POSITIVE,
            own_gain: 9,
            continuation: true,
            recoveries: 2,
            adam_steps: -1,
            above_best: 5,
            dense_hint: true,
            seconds: 12.5,
        };
        assert_eq!(Scalars::from_map(&s.to_map()), Ok(s));
        let none = Scalars {
            prev_loss: None,
            ..s
        };
        assert_eq!(Scalars::from_map(&none.to_map()), Ok(none));
        let mut m = s.to_map();
        m.remove("tau");
        assert!(Scalars::from_map(&m).unwrap_err().contains("tau"));
    }

    /// A state damaged or edited on disk is refused on reading, naming
    /// what no run can have held, instead of running on to a NaN matrix.
    #[test]
    fn a_damaged_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.resume");
        let identity = BTreeMap::new();
        let good = Scalars {
            step: 3,
            m_ref: 0.8,
            tau: 0.5,
            lr: 0.1,
            prev_loss: Some(1.5),
            best_max: 0.8,
            best_mean: 0.5,
            best_step: 2,
            last_gain: 2,
            own_best: f32::INFINITY,
            own_gain: 4,
            continuation: false,
            recoveries: 1,
            adam_steps: 0,
            above_best: 0,
            dense_hint: false,
            seconds: 0.25,
        };
        let unit = [1.0f32, 0.0, 0.0, 1.0, 0.6, 0.8];
        let try_read = |b: &[f32], v: &[f32], best: Option<&[f32]>, s: Scalars| {
            let view = StateView {
                identity: &identity,
                scalars: s,
                b,
                velocity: v,
                second: &[],
                best,
            };
            write_state(&path, 3, 2, &view).unwrap();
            read_state(&path, 3, 2)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(try_read(&unit, &[0.0; 6], Some(&unit), good), Ok(()));
        let mut nan = unit;
        nan[3] = f32::NAN;
        let mut zero = unit;
        zero[4..].fill(0.0);
        let mut inf_v = [0.0f32; 6];
        inf_v[1] = f32::INFINITY;
        let cases: Vec<(&str, Result<(), String>)> = vec![
            ("working row 1", try_read(&nan, &[], None, good)),
            ("working row 2 has norm 0", try_read(&zero, &[], None, good)),
            ("best row 1", try_read(&unit, &[], Some(&nan), good)),
            (
                "velocity value 1 is inf",
                try_read(&unit, &inf_v, None, good),
            ),
            (
                "`lr`",
                try_read(
                    &unit,
                    &[],
                    None,
                    Scalars {
                        lr: f64::NAN,
                        ..good
                    },
                ),
            ),
            (
                "`best_max`",
                try_read(
                    &unit,
                    &[],
                    None,
                    Scalars {
                        best_max: f32::NAN,
                        ..good
                    },
                ),
            ),
            (
                "`tau`",
                try_read(&unit, &[], None, Scalars { tau: -0.1, ..good }),
            ),
            (
                "`best_step`",
                try_read(
                    &unit,
                    &[],
                    None,
                    Scalars {
                        best_step: 9,
                        ..good
                    },
                ),
            ),
        ];
        for (what, got) in cases {
            let e = got.expect_err(what);
            assert!(e.contains(what) && e.contains("--fresh"), "{what}: {e}");
        }
    }

    #[test]
    fn a_state_file_round_trips_and_names_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir.path().join("x.safetensors"));
        assert!(path.to_str().unwrap().ends_with("x.safetensors.resume"));
        let (n, d) = (3, 2);
        let identity: BTreeMap<String, String> = [("alpha".to_string(), "0.1".to_string())].into();
        let b = [1.0f32, 0.0, 0.0, 1.0, 0.6, 0.8];
        let v = [0.5f32; 6];
        let best = [-1.0f32, 0.0, 0.0, -1.0, 0.8, 0.6];
        let view = StateView {
            identity: &identity,
            scalars: Scalars {
                step: 3,
                m_ref: 0.8,
                tau: 0.5,
                lr: 0.1,
                prev_loss: None,
                best_max: 0.8,
                best_mean: 0.5,
                best_step: 2,
                last_gain: 2,
                own_best: 0.8,
                own_gain: 2,
                continuation: false,
                recoveries: 0,
                adam_steps: 0,
                above_best: 0,
                dense_hint: false,
                seconds: 0.25,
            },
            b: &b,
            velocity: &v,
            second: &[],
            best: Some(&best),
        };
        write_state(&path, n, d, &view).unwrap();
        let back = read_state(&path, n, d).unwrap();
        assert_eq!(back, view.to_owned_state());
        assert_eq!(read_identity(&path).unwrap(), identity);
        // The wrong shape is refused, naming the tensor.
        let e = read_state(&path, 2, 3).unwrap_err().to_string();
        assert!(e.contains("`b`"), "{e}");
        // A matrix file is not a state.
        let m = dir.path().join("m.safetensors");
        super::super::io::write_safetensors(
            &m,
            &super::super::matrix::Basis::from_vec(n, d, b.to_vec()).unwrap(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(read_state(&m, n, d)
            .unwrap_err()
            .to_string()
            .contains("--fresh"));
        assert!(read_identity(&m).is_err());

        let now: BTreeMap<String, String> = [
            ("alpha".to_string(), "0.2".to_string()),
            ("seed".to_string(), "1".to_string()),
        ]
        .into();
        let diff = differences(&identity, &now);
        assert_eq!(
            diff,
            [
                "--alpha: 0.1 in the saved run, 0.2 now",
                "--seed: (not set) in the saved run, 1 now"
            ]
        );
        assert!(differences(&identity, &identity).is_empty());
    }
}
