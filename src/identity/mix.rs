//! `LoraMix`: a weighted sum of LoRA sources — identities (ID weight and Base weight) and LoRA files. It is a
//! recipe, not weights: `LoraMix::weights` turns it into `LoraWeights`, ΔW = Σᵢ wᵢ · (alpha/rank) · Uᵢ·Dᵢ.
use crate::error::Result;
use crate::hyper::{Branch, HyperLora, ALPHA_RATIO};
use crate::identity::Identity;
use crate::lora::LoraWeights;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
pub enum TermSource {
    Identity(Identity),
    /// A LoRA file imported as weights (its own alpha/rank already in the layer scales).
    File {
        path: PathBuf,
        hash: String,
        weights: Arc<LoraWeights>,
    },
    /// LoRA weights made in the session (a LoRA-space fine-tune), scales included; `name` says how.
    Trained {
        name: String,
        hash: String,
        weights: Arc<LoraWeights>,
    },
}

impl TermSource {
    /// Content key: terms with the same key merge.
    pub fn key(&self) -> String {
        match self {
            TermSource::Identity(id) => format!("id:{}", id.hash()),
            TermSource::File { hash, .. } => format!("file:{hash}"),
            TermSource::Trained { hash, .. } => format!("trained:{hash}"),
        }
    }
    fn label(&self) -> String {
        match self {
            TermSource::Identity(id) => format!(
                "identity {} ({} photo{})",
                id.short_hash(),
                id.photos(),
                if id.photos() == 1 { "" } else { "s" }
            ),
            TermSource::File { path, .. } => format!("file {}", path.display()),
            TermSource::Trained { name, .. } => name.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MixTerm {
    pub source: TermSource,
    /// Strength of the ID LoRA (or of the file's LoRA).
    pub weight: f64,
    /// Strength of the Base LoRA (identities only; 0 by default: drop background/clothing at inference).
    pub base_weight: f64,
}

#[derive(Clone, Default)]
pub struct LoraMix {
    terms: Vec<MixTerm>,
}

impl LoraMix {
    pub fn empty() -> Self {
        Self::default()
    }
    /// `lora(id, w)`: the identity's ID LoRA at strength `w`.
    pub fn lora(id: &Identity, weight: f64) -> Self {
        Self::lora_with_base(id, weight, 0.0)
    }
    pub fn lora_with_base(id: &Identity, weight: f64, base_weight: f64) -> Self {
        LoraMix { terms: vec![MixTerm { source: TermSource::Identity(id.clone()), weight, base_weight }] }.merged()
    }
    /// A LoRA file as a term at strength `weight`.
    pub fn file(path: PathBuf, hash: String, weights: Arc<LoraWeights>, weight: f64) -> Self {
        LoraMix { terms: vec![MixTerm { source: TermSource::File { path, hash, weights }, weight, base_weight: 0.0 }] }
            .merged()
    }
    /// Trained LoRA weights as a term at strength `weight`.
    pub fn trained(name: String, hash: String, weights: Arc<LoraWeights>, weight: f64) -> Self {
        LoraMix {
            terms: vec![MixTerm { source: TermSource::Trained { name, hash, weights }, weight, base_weight: 0.0 }],
        }
        .merged()
    }
    /// `slider(a, b)` = lora(b, 1) − lora(a, 1): the direction from `a` to `b`.
    pub fn slider(a: &Identity, b: &Identity) -> Self {
        Self::lora(b, 1.0).sub(&Self::lora(a, 1.0))
    }

    pub fn terms(&self) -> &[MixTerm] {
        &self.terms
    }
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn add(&self, other: &LoraMix) -> Self {
        LoraMix { terms: self.terms.iter().chain(&other.terms).cloned().collect() }.merged()
    }
    pub fn sub(&self, other: &LoraMix) -> Self {
        self.add(&other.scale(-1.0))
    }
    pub fn scale(&self, s: f64) -> Self {
        LoraMix {
            terms: self
                .terms
                .iter()
                .map(|t| MixTerm { weight: t.weight * s, base_weight: t.base_weight * s, ..t.clone() })
                .collect(),
        }
        .merged()
    }

    /// The same mix with every identity term's Base weight set to `b` (generate's `base_weight` option).
    pub fn with_base_weight(&self, b: f64) -> Self {
        LoraMix {
            terms: self
                .terms
                .iter()
                .map(|t| MixTerm {
                    base_weight: if matches!(t.source, TermSource::Identity(_)) { b } else { t.base_weight },
                    ..t.clone()
                })
                .collect(),
        }
        .merged()
    }

    /// Terms with the same source summed (first-appearance order kept), terms with zero weights dropped.
    fn merged(self) -> Self {
        let mut out: Vec<MixTerm> = Vec::new();
        for t in self.terms {
            let key = t.source.key();
            match out.iter_mut().find(|o| o.source.key() == key) {
                Some(o) => {
                    o.weight += t.weight;
                    o.base_weight += t.base_weight;
                }
                None => out.push(t),
            }
        }
        out.retain(|t| t.weight != 0.0 || t.base_weight != 0.0);
        LoraMix { terms: out }
    }

    /// Source key → (weight, base weight): the mix's meaning, independent of term order.
    pub fn canonical(&self) -> BTreeMap<String, (f64, f64)> {
        self.terms.iter().map(|t| (t.source.key(), (t.weight, t.base_weight))).collect()
    }

    /// Equal meaning within `tol` on every weight.
    pub fn approx_eq(&self, other: &LoraMix, tol: f64) -> bool {
        let (a, b) = (self.canonical(), other.canonical());
        a.len() == b.len()
            && a.iter()
                .zip(&b)
                .all(|((ka, (wa, ba)), (kb, (wb, bb)))| ka == kb && (wa - wb).abs() <= tol && (ba - bb).abs() <= tol)
    }

    /// One line for an image's settings: `NAME:WEIGHT:HASH12` per file term, `identity:HASH12:WEIGHT[:base
    /// WEIGHT]` per identity term, separated by spaces.
    pub fn settings_line(&self) -> String {
        self.terms
            .iter()
            .map(|t| match &t.source {
                TermSource::File { path, hash, .. } => format!(
                    "{}:{}:{}",
                    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    t.weight,
                    crate::files::provenance::short(hash)
                ),
                TermSource::Trained { hash, .. } => {
                    format!("trained:{}:{}", t.weight, crate::files::provenance::short(hash))
                }
                TermSource::Identity(id) => {
                    let base = if t.base_weight != 0.0 { format!(":base {}", t.base_weight) } else { String::new() };
                    format!("identity:{}:{}{base}", id.short_hash(), t.weight)
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn summary(&self) -> String {
        if self.terms.is_empty() {
            return "LoraMix(empty)".into();
        }
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|t| {
                let base = if t.base_weight != 0.0 { format!(", base {:+.3}", t.base_weight) } else { String::new() };
                format!("{:+.3} × {}{base}", t.weight, t.source.label())
            })
            .collect();
        format!("LoraMix[{}]", parts.join("; "))
    }
}

impl fmt::Debug for LoraMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}
impl fmt::Display for LoraMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

impl LoraMix {
    /// The mix as weights: ΔW = Σ wᵢ · (alpha/rank) · Uᵢ·Dᵢ (alpha/rank = 0.5 for HyperLoRA terms; a file's own
    /// scales for file terms).
    pub fn weights(&self, h: &HyperLora) -> Result<LoraWeights> {
        self.weights_with(&mut |id, branch| Ok(std::borrow::Cow::Owned(h.synthesize(id, branch)?)))
    }

    /// The same, with each identity's factors (scale 1) from `synth` — so a caller can cache them.
    pub fn weights_with<'a>(
        &self,
        synth: &mut dyn FnMut(&Identity, Branch) -> Result<std::borrow::Cow<'a, LoraWeights>>,
    ) -> Result<LoraWeights> {
        let mut out = LoraWeights::default();
        for t in self.terms() {
            match &t.source {
                TermSource::Identity(id) => {
                    if t.weight != 0.0 {
                        out.extend(synth(id, Branch::Id)?.scaled(t.weight * ALPHA_RATIO));
                    }
                    if t.base_weight != 0.0 {
                        out.extend(synth(id, Branch::Base)?.scaled(t.base_weight * ALPHA_RATIO));
                    }
                }
                TermSource::File { weights, .. } | TermSource::Trained { weights, .. } => {
                    out.extend(weights.scaled(t.weight))
                }
            }
        }
        Ok(out)
    }
}
