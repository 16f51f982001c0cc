//! Identity space through the session: coefficient values with the loaded variant's module names, PCA,
//! nearest neighbours, walks, and identity libraries checked against the loaded variant.
use super::*;
use crate::identity::library::Library;
use crate::identity::space::{Coeffs, Pca};

impl Session {
    fn module_names(&mut self) -> Result<Arc<Vec<String>>> {
        Ok(Arc::new(self.hyper()?.modules().iter().map(|m| m.name.clone()).collect()))
    }

    /// The raw coefficient tokens of `id`, with the variant's module names.
    pub fn coeffs(&mut self, id: &Identity) -> Result<Coeffs> {
        self.check_identity(id)?;
        let names = self.module_names()?;
        Coeffs::of(id, names)
    }

    /// An identity from whole raw tokens, keeping `like`'s variant.
    pub fn identity_from(&mut self, c: &Coeffs, like: &Identity, how: &str) -> Result<Identity> {
        self.check_identity(like)?;
        c.to_identity(like, how)
    }

    /// Principal directions of a set of identities (raw tokens).
    pub fn pca(&mut self, ids: &[Identity], k: usize) -> Result<Pca> {
        let xs = ids.iter().map(|i| self.coeffs(i)).collect::<Result<Vec<_>>>()?;
        crate::identity::space::pca(&xs, k)
    }

    /// The `k` most similar of `candidates` (by `similarity`), best first, with their cosine.
    pub fn nearest(
        &mut self,
        candidates: &[(String, Identity)],
        id: &Identity,
        k: usize,
    ) -> Result<Vec<(String, f64)>> {
        let mut scored =
            candidates.iter().map(|(n, c)| Ok((n.clone(), id.similarity(c)?))).collect::<Result<Vec<_>>>()?;
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.truncate(k);
        Ok(scored)
    }

    /// `id + t·dir` for each t (raw tokens), as identities.
    pub fn walk(&mut self, id: &Identity, dir: &Coeffs, steps: &[f64]) -> Result<Vec<Identity>> {
        let c = self.coeffs(id)?;
        steps
            .iter()
            .map(|t| {
                let t = finite(*t, "walk step")?;
                c.axpy(t, dir)?.to_identity(
                    id,
                    &format!(
                        "walk from identity {} by {t} along a direction (norm {:.4})",
                        id.short_hash(),
                        dir.norm()
                    ),
                )
            })
            .collect()
    }

    /// Open a library; when it already holds identities they must be of the loaded variant.
    pub fn library(&mut self, dir: &Path) -> Result<Library> {
        Library::open(dir)
    }

    /// Read `name` from a library, checked against the loaded variant.
    pub fn library_get(&mut self, lib: &Library, name: &str) -> Result<Identity> {
        let id = lib.get(name)?;
        self.check_identity(&id)?;
        Ok(id)
    }
}
