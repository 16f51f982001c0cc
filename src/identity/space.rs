//! Identity space: an identity's coefficient tokens as values (`Coeffs`), the vector operations on them, PCA
//! over a set of identities, nearest neighbours and walks along a direction.
//!
//! Which space: every operation here acts on the coefficients as it is given them. `coeffs(id)` is the *raw*
//! fused tokens [Q, K] — the mean of the resampler's outputs before the per-token L2 normalisation — the space in
//! which identities average exactly like multi-photo fusion and in which `a + b`, `mix` and `mean` of identities
//! work. `.normalized` is the per-token unit-length form that the LoRA synthesis reads. Because that
//! normalisation is not linear, `lora(a + b)` (one LoRA of the summed raw tokens, renormalised per token) is not
//! `lora(a) + lora(b)` (two LoRAs whose ΔW add up); directions made here are applied to raw tokens and the
//! result renormalised when its LoRA is made. Raw and normalised values never mix in one operation.
use crate::error::{Error, Result};
use crate::identity::{Identity, Source, Variant};
use candle_core::{Device, Tensor};
use std::fmt;
use std::sync::Arc;

/// Which form the numbers are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// The raw fused tokens (before per-token normalisation).
    Raw,
    /// Per-token unit L2 (what the LoRA synthesis uses).
    Normalized,
}

/// Tokens of an identity's coefficients: all of them, or a module's, a projection's or one factor's.
#[derive(Clone)]
pub struct Coeffs {
    /// rows × k, row-major.
    data: Arc<Vec<f32>>,
    /// The global token index (0..q) of each row.
    tokens: Arc<Vec<usize>>,
    k: usize,
    /// Tokens of a whole identity of this variant.
    q: usize,
    space: Space,
    variant: Variant,
    /// Module names in token order (module m owns tokens 8m..8m+8); empty when unknown.
    modules: Arc<Vec<String>>,
}

/// Projections in token order within a module.
pub const PROJECTIONS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out"];

impl Coeffs {
    /// The raw tokens of `id`; `modules` names the variant's modules in file order (may be empty).
    pub fn of(id: &Identity, modules: Arc<Vec<String>>) -> Result<Coeffs> {
        let (q, k) = id.dims();
        let data = id.raw().flatten_all()?.to_vec1::<f32>()?;
        Ok(Coeffs {
            data: Arc::new(data),
            tokens: Arc::new((0..q).collect()),
            k,
            q,
            space: Space::Raw,
            variant: id.variant().clone(),
            modules,
        })
    }

    fn with(&self, data: Vec<f32>) -> Coeffs {
        Coeffs { data: Arc::new(data), ..self.clone() }
    }

    pub fn rows(&self) -> usize {
        self.tokens.len()
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn space(&self) -> Space {
        self.space
    }
    pub fn values(&self) -> &[f32] {
        &self.data
    }
    pub fn tokens(&self) -> &[usize] {
        &self.tokens
    }
    pub fn variant(&self) -> &Variant {
        &self.variant
    }
    pub fn is_whole(&self) -> bool {
        self.rows() == self.q && self.tokens.iter().enumerate().all(|(i, t)| i == *t)
    }

    /// Per-token unit L2 with ε = 1e-8 inside the square root (the LoRA synthesis' form).
    pub fn normalized(&self) -> Coeffs {
        if self.space == Space::Normalized {
            return self.clone();
        }
        let mut out = self.data.as_ref().clone();
        for row in out.chunks_mut(self.k) {
            let n = (row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() + 1e-8).sqrt();
            row.iter_mut().for_each(|v| *v = (*v as f64 / n) as f32);
        }
        Coeffs { space: Space::Normalized, ..self.with(out) }
    }

    /// Row `i` of this view (K numbers).
    pub fn token(&self, i: usize) -> Result<Vec<f32>> {
        if i >= self.rows() {
            return Err(Error::InvalidValue(format!(
                "token {i}: this value has {} token(s) (0..{})",
                self.rows(),
                self.rows()
            )));
        }
        Ok(self.data[i * self.k..(i + 1) * self.k].to_vec())
    }

    fn select(&self, global: &[usize], what: &str) -> Result<Coeffs> {
        let mut data = Vec::with_capacity(global.len() * self.k);
        for g in global {
            let Some(r) = self.tokens.iter().position(|t| t == g) else {
                return Err(Error::InvalidValue(format!(
                    "{what}: token {g} is not part of this value (it holds {})",
                    self.describe_tokens()
                )));
            };
            data.extend_from_slice(&self.data[r * self.k..(r + 1) * self.k]);
        }
        Ok(Coeffs { data: Arc::new(data), tokens: Arc::new(global.to_vec()), ..self.clone() })
    }

    /// The module's index from its name (as in `hyper_lora_modules.json`, with or without `lora_unet_`, dots or
    /// underscores) or its number.
    pub fn module_index(&self, name: &str) -> Result<usize> {
        let n = self.q / 8;
        if let Ok(i) = name.parse::<usize>() {
            return if i < n {
                Ok(i)
            } else {
                Err(Error::InvalidValue(format!("module {i}: this variant has {n} modules (0..{n})")))
            };
        }
        let canon = |s: &str| s.trim_start_matches("lora_unet_").replace('.', "_");
        let want = canon(name);
        self.modules.iter().position(|m| canon(m) == want).ok_or_else(|| {
            let near: Vec<&String> = self.modules.iter().filter(|m| canon(m).contains(&want) || want.contains(&canon(m))).take(3).collect();
            Error::InvalidValue(format!(
                "no module `{name}` in this variant (expected a name from hyper_lora_modules.json such as `{}`, or a number 0..{n}){}",
                self.modules.first().map(String::as_str).unwrap_or("lora_unet_…"),
                if near.is_empty() { String::new() } else { format!("; close: {near:?}") }
            ))
        })
    }

    /// The 8 tokens of one module.
    pub fn module(&self, m: usize) -> Result<Coeffs> {
        let g: Vec<usize> = (8 * m..8 * m + 8).collect();
        self.select(&g, &format!("module {m}"))
    }

    /// The 2 tokens (down, up) of one projection of a one-module view.
    pub fn proj(&self, p: &str) -> Result<Coeffs> {
        let j = PROJECTIONS
            .iter()
            .position(|x| *x == p)
            .ok_or_else(|| Error::InvalidValue(format!("projection `{p}`: expected one of {PROJECTIONS:?}")))?;
        let m = self.single_module().ok_or_else(|| {
            Error::InvalidValue(format!(
                ".proj(\"{p}\") needs one module's tokens (use .module(name) first); this value holds {}",
                self.describe_tokens()
            ))
        })?;
        self.select(&[8 * m + 2 * j, 8 * m + 2 * j + 1], p)
    }

    /// The down (`up = false`) or up factor's token of a one-projection view.
    pub fn factor(&self, up: bool) -> Result<Coeffs> {
        if self.rows() != 2 || !self.tokens[0].is_multiple_of(2) || self.tokens[1] != self.tokens[0] + 1 {
            return Err(Error::InvalidValue(format!(
                ".{} needs one projection's two tokens (use .proj(\"to_q\") first); this value holds {}",
                if up { "up" } else { "down" },
                self.describe_tokens()
            )));
        }
        self.select(&[self.tokens[usize::from(up)]], if up { "up" } else { "down" })
    }

    fn single_module(&self) -> Option<usize> {
        let m = self.tokens.first()? / 8;
        (self.rows() == 8 && self.tokens.iter().enumerate().all(|(i, t)| *t == 8 * m + i)).then_some(m)
    }

    fn describe_tokens(&self) -> String {
        if self.is_whole() {
            return format!("all {} tokens", self.q);
        }
        let first = self.tokens.first().copied().unwrap_or(0);
        let name = self.modules.get(first / 8).map(|n| format!(" of {n}")).unwrap_or_default();
        match self.rows() {
            8 if self.single_module().is_some() => format!("module {}{name}", first / 8),
            2 => format!("tokens {first}–{} ({}{name})", first + 1, PROJECTIONS.get((first % 8) / 2).unwrap_or(&"?")),
            1 => format!(
                "token {first} ({} {}{name})",
                PROJECTIONS.get((first % 8) / 2).unwrap_or(&"?"),
                if first % 2 == 0 { "down" } else { "up" }
            ),
            n => format!("{n} tokens"),
        }
    }

    /// Both values must be of one variant, one space and the same tokens.
    pub fn check_same(&self, o: &Coeffs, what: &str) -> Result<()> {
        if self.variant.hash != o.variant.hash {
            return Err(Error::Incompatible(format!(
                "{what}: coefficients of two variants ({} and {})",
                self.variant.label, o.variant.label
            )));
        }
        if self.space != o.space {
            return Err(Error::Incompatible(format!(
                "{what}: one value is raw and the other normalised; use .normalized on both or on neither"
            )));
        }
        if self.tokens != o.tokens || self.k != o.k {
            return Err(Error::Incompatible(format!(
                "{what}: shapes differ ({} vs {}; expected the same tokens)",
                self.describe_tokens(),
                o.describe_tokens()
            )));
        }
        Ok(())
    }

    pub fn add(&self, o: &Coeffs) -> Result<Coeffs> {
        self.check_same(o, "+")?;
        Ok(self.with(self.data.iter().zip(o.data.iter()).map(|(a, b)| a + b).collect()))
    }
    pub fn sub(&self, o: &Coeffs) -> Result<Coeffs> {
        self.check_same(o, "-")?;
        Ok(self.with(self.data.iter().zip(o.data.iter()).map(|(a, b)| a - b).collect()))
    }
    pub fn scale(&self, s: f64) -> Coeffs {
        let s = s as f32;
        self.with(self.data.iter().map(|a| a * s).collect())
    }
    /// x + s·d.
    pub fn axpy(&self, s: f64, d: &Coeffs) -> Result<Coeffs> {
        self.check_same(d, "walk")?;
        Ok(self.with(self.data.iter().zip(d.data.iter()).map(|(a, b)| (*a as f64 + s * *b as f64) as f32).collect()))
    }
    pub fn dot(&self, o: &Coeffs) -> Result<f64> {
        self.check_same(o, "dot")?;
        Ok(dot(&self.data, &o.data))
    }
    pub fn norm(&self) -> f64 {
        dot(&self.data, &self.data).sqrt()
    }
    pub fn cosine(&self, o: &Coeffs) -> Result<f64> {
        let d = self.dot(o)?;
        Ok(d / (self.norm() * o.norm()).max(1e-30))
    }
    /// x·d / d·d: how much of `d` is in `self`.
    fn along(&self, d: &Coeffs, what: &str) -> Result<f64> {
        let dd = d.dot(d)?;
        if dd <= 0.0 {
            return Err(Error::InvalidValue(format!("{what}: the direction is zero")));
        }
        Ok(self.dot(d)? / dd)
    }
    /// The component of `self` along `d`: (x·d / d·d) d.
    pub fn project(&self, d: &Coeffs) -> Result<Coeffs> {
        Ok(d.scale(self.along(d, "project")?))
    }
    /// `self` without its component along `d` (one pass).
    pub fn reject(&self, d: &Coeffs) -> Result<Coeffs> {
        let c = self.along(d, "reject")? as f32;
        Ok(self.with(self.data.iter().zip(d.data.iter()).map(|(x, y)| x - c * y).collect()))
    }

    /// Back to `[Q, K]` raw tokens for an identity: only a whole, raw value can become one.
    pub fn to_tensor(&self) -> Result<Tensor> {
        if !self.is_whole() {
            return Err(Error::InvalidValue(format!(
                "an identity needs all {} tokens; this value holds {}",
                self.q,
                self.describe_tokens()
            )));
        }
        if self.space != Space::Raw {
            return Err(Error::InvalidValue(
                "an identity is made from raw tokens; this value is normalised (its scale is lost)".into(),
            ));
        }
        Ok(Tensor::from_vec(self.data.as_ref().clone(), (self.q, self.k), &Device::Cpu)?)
    }

    /// A value of `like`'s shape, space and variant from numbers (rows × K).
    pub fn from_rows(rows: &[Vec<f64>], like: &Coeffs) -> Result<Coeffs> {
        if rows.len() != like.rows() {
            return Err(Error::InvalidValue(format!(
                "coeffs_from: {} rows given, expected {} ({} × {})",
                rows.len(),
                like.rows(),
                like.rows(),
                like.k
            )));
        }
        let mut data = Vec::with_capacity(rows.len() * like.k);
        for (i, r) in rows.iter().enumerate() {
            if r.len() != like.k {
                return Err(Error::InvalidValue(format!(
                    "coeffs_from: row {i} has {} numbers, expected {}",
                    r.len(),
                    like.k
                )));
            }
            if let Some(v) = r.iter().find(|v| !v.is_finite()) {
                return Err(Error::InvalidValue(format!("coeffs_from: row {i} holds {v}; only finite numbers")));
            }
            data.extend(r.iter().map(|v| *v as f32));
        }
        Ok(like.with(data))
    }

    /// An identity from whole raw tokens, keeping `like`'s variant and photo count; its source says how it was made.
    pub fn to_identity(&self, like: &Identity, how: &str) -> Result<Identity> {
        if like.variant().hash != self.variant.hash {
            return Err(Error::Incompatible(format!(
                "identity_from: coefficients of {} but `like` is of {}",
                self.variant.label,
                like.variant().label
            )));
        }
        let src = Source {
            hash: crate::files::provenance::sha256_hex(crate::weights::as_bytes(&self.data)),
            label: how.to_string(),
        };
        Identity::new(self.to_tensor()?, like.photos().max(1), None, vec![src], like.variant().clone())
    }

    pub fn summary(&self) -> String {
        let space = match self.space {
            Space::Raw => "raw (before per-token normalisation)",
            Space::Normalized => "normalised (per-token unit L2, as the LoRA synthesis reads)",
        };
        format!("coeffs [{}×{}] {}, {space}, norm {:.4}", self.rows(), self.k, self.describe_tokens(), self.norm())
    }
}

impl fmt::Debug for Coeffs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    // f64 accumulation in 8 lanes: exact enough for 143,360-long vectors, and vectorised
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] as f64 * y[i] as f64;
        }
    }
    acc.iter().sum::<f64>() + ra.iter().zip(rb).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>()
}

/// Gram–Schmidt (modified, twice for stability): an orthonormal set spanning `dirs`; directions that add nothing
/// (what is left is below 1e-5 of the longest input: f32 rounding) are dropped.
pub fn orthogonalize(dirs: &[Coeffs]) -> Result<Vec<Coeffs>> {
    let Some(first) = dirs.first() else { return Ok(Vec::new()) };
    for d in dirs {
        first.check_same(d, "orthogonalize")?;
    }
    let scale = dirs.iter().map(|d| d.norm()).fold(0.0, f64::max);
    let mut out: Vec<Coeffs> = Vec::new();
    for d in dirs {
        let mut v = d.clone();
        for _ in 0..2 {
            for u in &out {
                v = v.sub(&u.scale(v.dot(u)?))?;
            }
        }
        let n = v.norm();
        if n > 1e-5 * scale.max(1e-30) {
            out.push(v.scale(1.0 / n));
        }
    }
    Ok(out)
}

/// The result of `pca`.
pub struct Pca {
    pub mean: Coeffs,
    /// Unit directions, largest variance first.
    pub directions: Vec<Coeffs>,
    /// Each direction's share of the total variance.
    pub explained: Vec<f64>,
    /// scores[i][j]: identity j's coordinate along direction i.
    pub scores: Vec<Vec<f64>>,
}

/// Principal components of `xs` (all of one shape and space): the eigen-decomposition of the n × n Gram matrix of
/// the centred rows (nalgebra's `SymmetricEigen`), then the directions Xᵀu/√λ. Components with no variance
/// (below 1e-5 of the largest) are left out, so at most n − 1 come back.
pub fn pca(xs: &[Coeffs], k: usize) -> Result<Pca> {
    let n = xs.len();
    if n < 2 {
        return Err(Error::InvalidValue(format!("pca: needs at least 2 identities, got {n}")));
    }
    if k == 0 {
        return Err(Error::InvalidValue("pca: k must be at least 1".into()));
    }
    if k > n {
        return Err(Error::InvalidValue(format!(
            "pca: k = {k} directions from {n} identities: {n} centred points span at most {} directions",
            n - 1
        )));
    }
    for x in xs {
        xs[0].check_same(x, "pca")?;
    }
    let d = xs[0].data.len();
    let rows: Vec<&[f32]> = xs.iter().map(|x| x.data.as_slice()).collect();
    // one pass over column blocks, in parallel: the block's mean, its centred rows in a scratch buffer that stays
    // in cache, and their Gram partial sum (f32 products over one block, added up in f64) — see `gram`
    let (mean32, g) = super::gram::gram_centred(&rows, d);
    let gm = nalgebra::DMatrix::<f64>::from_fn(n, n, |i, j| 0.5 * (g[i * n + j] + g[j * n + i]));
    let eig = nalgebra::SymmetricEigen::new(gm);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| eig.eigenvalues[*b].total_cmp(&eig.eigenvalues[*a]));
    let total: f64 = eig.eigenvalues.iter().map(|l| l.max(0.0)).sum();
    let top = eig.eigenvalues[order[0]].max(0.0);
    let like = xs[0].clone();
    // kept components: λ above rounding (the Gram matrix is f32: below 1e-5 of the largest is not variance)
    let kept: Vec<usize> = order
        .iter()
        .copied()
        .take(k)
        .take_while(|&i| eig.eigenvalues[i] > 1e-5 * top && eig.eigenvalues[i] > 0.0)
        .collect();
    if kept.is_empty() {
        return Ok(Pca { mean: like.with(mean32), directions: Vec::new(), explained: Vec::new(), scores: Vec::new() });
    }
    // directions Xcᵀu/√λ for all kept components: a second pass over the blocks
    let (vals, vecs) = (&eig.eigenvalues, &eig.eigenvectors);
    let w: Vec<f32> = kept
        .iter()
        .flat_map(|&i| {
            let s = vals[i].sqrt();
            (0..n).map(move |j| (vecs[(j, i)] / s) as f32)
        })
        .collect();
    let dirs = super::gram::directions_centred(&rows, &mean32, &w, kept.len());
    let directions = dirs.into_iter().map(|v| like.with(v)).collect();
    let explained = kept.iter().map(|&i| if total > 0.0 { eig.eigenvalues[i] / total } else { 0.0 }).collect();
    let scores = kept
        .iter()
        .map(|&i| {
            let s = eig.eigenvalues[i].sqrt();
            (0..n).map(|j| eig.eigenvectors[(j, i)] * s).collect()
        })
        .collect();
    Ok(Pca { mean: like.with(mean32), directions, explained, scores })
}

/// The UNet block a HyperLoRA module name belongs to (`lora_unet_down_blocks_1_attentions_0_…` → `down_blocks.1`).
pub fn block_of(module: &str) -> String {
    let m = module.trim_start_matches("lora_unet_");
    let parts: Vec<&str> = m.split('_').collect();
    match parts.as_slice() {
        ["down", "blocks", i, ..] => format!("down_blocks.{i}"),
        ["up", "blocks", i, ..] => format!("up_blocks.{i}"),
        ["mid", "block", ..] => "mid_block".into(),
        _ => m.to_string(),
    }
}

/// Per module: the mean over its 8 tokens of the per-token cosine of `a` and `b` (the same measure as
/// `similarity`, restricted to one module).
pub fn similarity_by_module(a: &Coeffs, b: &Coeffs) -> Result<Vec<(usize, String, f64)>> {
    a.check_same(b, "similarity_by_module")?;
    if !a.is_whole() {
        return Err(Error::InvalidValue("similarity_by_module: needs whole identities' coefficients".into()));
    }
    let k = a.k;
    let cos = |x: &[f32], y: &[f32]| dot(x, y) / (dot(x, x).sqrt() * dot(y, y).sqrt()).max(1e-30);
    Ok((0..a.q / 8)
        .map(|m| {
            let c: f64 =
                (8 * m..8 * m + 8).map(|t| cos(&a.data[t * k..(t + 1) * k], &b.data[t * k..(t + 1) * k])).sum::<f64>()
                    / 8.0;
            (m, a.modules.get(m).cloned().unwrap_or_else(|| format!("module {m}")), c)
        })
        .collect())
}
