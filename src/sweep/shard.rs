//! This process's share of a sweep: `--shard i/n`, a Slurm array task, or a Kubernetes Indexed Job completion.
use crate::error::{Error, Result};

/// Shard `index` of `count` (0-based). Item k of a list belongs to shard k mod count: deterministic, disjoint,
/// complete, and the shares' sizes differ by at most one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard::ALL
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The whole sweep in one process.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 {
            return Err(Error::InvalidValue("shard count must be at least 1".into()));
        }
        if index >= count {
            return Err(Error::InvalidValue(format!(
                "shard index {index} is out of range for {count} shard(s) (indices run 0 to {})",
                count - 1
            )));
        }
        Ok(Shard { index, count })
    }

    /// `i/n`, 0-based (`0/4` … `3/4`).
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || Error::InvalidValue(format!("--shard {s}: expected INDEX/COUNT, 0-based, e.g. 0/4 … 3/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        Shard::new(i, n).map_err(|e| Error::InvalidValue(format!("--shard {s}: {e}")))
    }

    /// Whether item `k` of a list is this shard's.
    pub fn owns(&self, k: usize) -> bool {
        k % self.count == self.index
    }

    /// The positions of this shard's items in a list of `len`.
    pub fn positions(&self, len: usize) -> impl Iterator<Item = usize> {
        (self.index..len).step_by(self.count)
    }

    /// This shard's items, in their order.
    pub fn take<T: Clone>(&self, items: &[T]) -> Vec<T> {
        self.positions(items.len()).map(|k| items[k].clone()).collect()
    }
}

/// Where the shard came from (printed, and named in conflicts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardSource {
    /// No flag and no scheduler variables: the whole sweep.
    None,
    Flag,
    Slurm,
    Kubernetes,
}

impl std::fmt::Display for ShardSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShardSource::None => "no shard given: the whole sweep",
            ShardSource::Flag => "--shard",
            ShardSource::Slurm => "the Slurm array (SLURM_ARRAY_TASK_*)",
            ShardSource::Kubernetes => "the Kubernetes Indexed Job (JOB_COMPLETION_INDEX)",
        })
    }
}

/// Decide the shard from the flags and the environment (`env` looks a variable up; tests pass a map).
///
/// Precedence: `--shard i/n`, else the Slurm array task (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`, divided
/// by `SLURM_ARRAY_TASK_STEP`, of `SLURM_ARRAY_TASK_COUNT`), else `JOB_COMPLETION_INDEX` of `--shards N` or
/// `HYPERLORA_SHARDS`. Every source present must agree with the one used: two that say different things are an
/// error naming both (a `--shard` written into an array job would otherwise make every task run the same share).
pub fn resolve(
    flag: Option<Shard>,
    shards: Option<usize>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Shard, ShardSource)> {
    let var = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let number = |k: &str| -> Result<Option<usize>> {
        var(k)
            .map(|v| {
                v.parse::<usize>().map_err(|_| Error::InvalidValue(format!("{k}={v}: expected a whole number ≥ 0")))
            })
            .transpose()
    };
    let conflict = |a: String, b: String| {
        Error::InvalidValue(format!(
            "conflicting shard settings: {a} but {b}; give one (unset the variable, or drop the flag)"
        ))
    };

    // the count given on its own: --shards or HYPERLORA_SHARDS
    let env_shards = number("HYPERLORA_SHARDS")?;
    let count_given = match (shards, env_shards) {
        (Some(a), Some(b)) if a != b => {
            return Err(conflict(format!("--shards {a}"), format!("HYPERLORA_SHARDS={b}")));
        }
        (Some(0), _) | (None, Some(0)) => return Err(Error::InvalidValue("the shard count must be at least 1".into())),
        (Some(a), _) => Some((a, format!("--shards {a}"))),
        (None, Some(b)) => Some((b, format!("HYPERLORA_SHARDS={b}"))),
        (None, None) => None,
    };

    // Slurm: present when SLURM_ARRAY_TASK_ID is set (a job that is not an array has none)
    let slurm = match number("SLURM_ARRAY_TASK_ID")? {
        None => None,
        Some(id) => {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let count = number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                Error::InvalidValue(format!(
                    "SLURM_ARRAY_TASK_ID={id} is set but SLURM_ARRAY_TASK_COUNT is not: cannot tell how many shards"
                ))
            })?;
            let what = format!("SLURM_ARRAY_TASK_ID={id} (min {min}, step {step}, count {count})");
            if id < min || (id - min) % step != 0 {
                return Err(Error::InvalidValue(format!(
                    "{what}: the task is not on the array's range; use a contiguous array such as --array=0-{}",
                    count.saturating_sub(1)
                )));
            }
            let s = Shard::new((id - min) / step, count).map_err(|e| {
                Error::InvalidValue(format!(
                    "{what}: {e}; use a contiguous array such as --array=0-{}",
                    count.saturating_sub(1)
                ))
            })?;
            Some((s, what))
        }
    };

    // Kubernetes: JOB_COMPLETION_INDEX with the count from --shards / HYPERLORA_SHARDS
    let k8s = match number("JOB_COMPLETION_INDEX")? {
        None => None,
        Some(i) => {
            let what = format!("JOB_COMPLETION_INDEX={i}");
            match &count_given {
                Some((n, from)) => {
                    let s = Shard::new(i, *n).map_err(|e| Error::InvalidValue(format!("{what} with {from}: {e}")))?;
                    Some((s, format!("{what} of {from}")))
                }
                // without a count, a Slurm or flag source may still supply it; checked below
                None => Some((Shard { index: i, count: 0 }, what)),
            }
        }
    };

    let flagged = flag.map(|s| (s, format!("--shard {s}")));
    let mut sources: Vec<(Shard, String, ShardSource)> = Vec::new();
    if let Some((s, w)) = flagged {
        sources.push((s, w, ShardSource::Flag));
    }
    if let Some((s, w)) = slurm {
        sources.push((s, w, ShardSource::Slurm));
    }
    if let Some((s, w)) = k8s {
        sources.push((s, w, ShardSource::Kubernetes));
    }
    let Some((first, first_what, source)) = sources.first().cloned() else {
        return match count_given {
            Some((n, from)) if n != 1 => Err(Error::InvalidValue(format!(
                "{from} is set but no shard index is: pass --shard INDEX/{n}, or run as a Slurm array or a \
                 Kubernetes Indexed Job (JOB_COMPLETION_INDEX)"
            ))),
            _ => Ok((Shard::ALL, ShardSource::None)),
        };
    };
    if first.count == 0 {
        return Err(Error::InvalidValue(format!(
            "{first_what} is set but the shard count is not: pass --shards N or set HYPERLORA_SHARDS (the Job's \
             completions)"
        )));
    }
    for (s, what, _) in &sources[1..] {
        // a Kubernetes index without a count agrees if its index matches
        let same = if s.count == 0 { s.index == first.index } else { *s == first };
        if !same {
            return Err(conflict(first_what.clone(), what.clone()));
        }
    }
    if let Some((n, from)) = count_given {
        if n != first.count {
            return Err(conflict(first_what, from));
        }
    }
    Ok((first, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn shards_cover_every_item_once_and_balance() {
        for n in 1..=7 {
            for len in 0..=20 {
                let mut seen = vec![0usize; len];
                let mut sizes = Vec::new();
                for i in 0..n {
                    let s = Shard::new(i, n).unwrap();
                    let mine: Vec<usize> = s.positions(len).collect();
                    assert!(mine.windows(2).all(|w| w[0] < w[1]), "order kept");
                    for &k in &mine {
                        assert!(s.owns(k));
                        seen[k] += 1;
                    }
                    sizes.push(mine.len());
                    let items: Vec<usize> = (0..len).collect();
                    assert_eq!(s.take(&items), mine);
                }
                assert!(seen.iter().all(|&c| c == 1), "n={n} len={len}: {seen:?}");
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "n={n} len={len}: sizes {sizes:?}");
                assert_eq!(sizes.iter().sum::<usize>(), len);
            }
        }
    }

    #[test]
    fn parse_and_range() {
        assert_eq!(Shard::parse("2/3").unwrap(), Shard { index: 2, count: 3 });
        for bad in ["3/3", "1/0", "1", "a/2", "-1/2", "1/2/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn precedence_and_conflicts() {
        let none = env(&[]);
        assert_eq!(resolve(None, None, &none).unwrap(), (Shard::ALL, ShardSource::None));
        assert_eq!(resolve(Some(Shard::new(1, 4).unwrap()), None, &none).unwrap().1, ShardSource::Flag);
        // Slurm: id − min, divided by the step
        let slurm =
            env(&[("SLURM_ARRAY_TASK_ID", "7"), ("SLURM_ARRAY_TASK_MIN", "5"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert_eq!(resolve(None, None, &slurm).unwrap(), (Shard::new(2, 4).unwrap(), ShardSource::Slurm));
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(resolve(None, None, &stepped).unwrap().0, Shard::new(2, 4).unwrap());
        assert!(resolve(None, None, &env(&[("SLURM_ARRAY_TASK_ID", "3")])).is_err(), "no count");
        let sparse =
            env(&[("SLURM_ARRAY_TASK_ID", "9"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "3")]);
        assert!(resolve(None, None, &sparse).unwrap_err().to_string().contains("--array=0-2"));
        // the flag agreeing with Slurm is fine; disagreeing names both
        assert!(resolve(Some(Shard::new(2, 4).unwrap()), None, &slurm).is_ok());
        let e = resolve(Some(Shard::new(0, 1).unwrap()), None, &slurm).unwrap_err().to_string();
        assert!(e.contains("--shard 0/1") && e.contains("SLURM_ARRAY_TASK_ID=7"), "{e}");
        // Kubernetes: the index with --shards or HYPERLORA_SHARDS
        let k8s = env(&[("JOB_COMPLETION_INDEX", "3")]);
        assert_eq!(resolve(None, Some(5), &k8s).unwrap(), (Shard::new(3, 5).unwrap(), ShardSource::Kubernetes));
        let k8s_env = env(&[("JOB_COMPLETION_INDEX", "3"), ("HYPERLORA_SHARDS", "5")]);
        assert_eq!(resolve(None, None, &k8s_env).unwrap().0, Shard::new(3, 5).unwrap());
        let e = resolve(None, None, &k8s).unwrap_err().to_string();
        assert!(e.contains("JOB_COMPLETION_INDEX=3") && e.contains("HYPERLORA_SHARDS"), "{e}");
        let e = resolve(None, Some(4), &k8s_env).unwrap_err().to_string();
        assert!(e.contains("--shards 4") && e.contains("HYPERLORA_SHARDS=5"), "{e}");
        assert!(resolve(None, Some(3), &k8s).is_err(), "index 3 of 3");
        // Slurm before Kubernetes; both present and different is a conflict
        let both = env(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("JOB_COMPLETION_INDEX", "2"),
            ("HYPERLORA_SHARDS", "4"),
        ]);
        let e = resolve(None, None, &both).unwrap_err().to_string();
        assert!(e.contains("SLURM_ARRAY_TASK_ID=1") && e.contains("JOB_COMPLETION_INDEX=2"), "{e}");
        // a count with no index anywhere
        let e = resolve(None, Some(4), &none).unwrap_err().to_string();
        assert!(e.contains("--shards 4") && e.contains("--shard INDEX/4"), "{e}");
        assert_eq!(resolve(None, Some(1), &none).unwrap().0, Shard::ALL);
        // --shard with a different --shards
        let e = resolve(Some(Shard::new(0, 2).unwrap()), Some(3), &none).unwrap_err().to_string();
        assert!(e.contains("--shard 0/2") && e.contains("--shards 3"), "{e}");
        assert!(resolve(None, None, &env(&[("JOB_COMPLETION_INDEX", "x"), ("HYPERLORA_SHARDS", "2")])).is_err());
    }
}
