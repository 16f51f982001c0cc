//! The two passes of `space::pca` over n rows of d floats (100 identities are 57 MB): (1) the rows' mean and the
//! Gram matrix of the centred rows, (2) the combinations W·Xc that turn the Gram matrix's eigenvectors into
//! directions. Both walk the rows in column blocks, in parallel; a block of every row is centred into a scratch
//! buffer that stays in the core's L2 cache, and the block's products run from there.
//!
//! On x86-64 with AVX2 and FMA the products run in register tiles written with `std::arch` intrinsics: a 3 × 4 tile
//! of Gram entries (12 accumulators, 7 loads per 12 fused multiply-adds) and a 4-direction × 16-column tile of W·Xc.
//! Why by hand: the same tiles written as plain Rust and left to LLVM's vectoriser ran 2.5× slower, and the general
//! matrix products we tried (matrixmultiply, gemm, candle's matmul on the Gram) were slower than the blocked dot
//! products these tiles replace (`hyperlora bench space` has the numbers). Elsewhere the blocked dot products and
//! axpys run as plain Rust.

/// Run the plain-Rust products even where AVX2 and FMA are present (for tests and `bench space`, which check both
/// paths against a reference on one machine).
static FORCE_SCALAR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Force (or stop forcing) the plain-Rust products of every later `pca`.
pub fn force_scalar(on: bool) {
    FORCE_SCALAR.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !FORCE_SCALAR.load(std::sync::atomic::Ordering::Relaxed)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Columns per block: 100 rows of a block (200 KB of f32) stay in a core's L2 cache.
const BLOCK: usize = 512;
/// Block widths are padded to this (zeros add nothing to a dot product): the tiles read 16 columns at a time.
const LANES: usize = 16;
/// Scratch rows are padded to this (zero rows), so the 3 × 4 Gram tiles and 4-direction tiles never read past it.
const ROW_PAD: usize = 12;

/// The mean of the rows (f32) and the Gram matrix of the centred rows (n × n, f64, full): f32 products over one
/// block, added up across blocks in f64.
pub(super) fn gram_centred(rows: &[&[f32]], d: usize) -> (Vec<f32>, Vec<f64>) {
    use rayon::prelude::*;
    let n = rows.len();
    let np = n.div_ceil(ROW_PAD) * ROW_PAD;
    let blocks: Vec<usize> = (0..d).step_by(BLOCK).collect();
    let parts: Vec<(usize, Vec<f32>, Vec<f64>)> = blocks
        .par_chunks(blocks.len().div_ceil(rayon::current_num_threads().max(1) * 4).max(1))
        .map(|chunk| {
            let mut g = vec![0f64; n * n];
            let mut scratch = vec![0f32; np * BLOCK.next_multiple_of(LANES)];
            let mut means = Vec::with_capacity(chunk.len() * BLOCK);
            for &j0 in chunk {
                let w = BLOCK.min(d - j0);
                let wp = w.next_multiple_of(LANES);
                let mut mean = vec![0f32; w];
                let inv = 1.0 / n as f32;
                for r in rows {
                    mean.iter_mut().zip(&r[j0..j0 + w]).for_each(|(m, v)| *m += v);
                }
                mean.iter_mut().for_each(|m| *m *= inv);
                let c = &mut scratch[..np * wp];
                centre_into(rows, j0, w, wp, &mean, c);
                gram_block(c, n, np, wp, &mut g);
                means.extend_from_slice(&mean);
            }
            (chunk[0], means, g)
        })
        .collect();
    let mut mean = vec![0f32; d];
    let mut g = vec![0f64; n * n];
    for (j0, m, part) in parts {
        mean[j0..j0 + m.len()].copy_from_slice(&m);
        g.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
    }
    // the blocks filled the lower triangle (and a little of the upper); mirror it
    for a in 0..n {
        for b in 0..a {
            g[b * n + a] = g[a * n + b];
        }
    }
    (mean, g)
}

/// The k rows of W · Xc (W: k × n, row-major; Xc: the rows minus `mean`), one pass over column blocks in parallel.
pub(super) fn directions_centred(rows: &[&[f32]], mean: &[f32], w: &[f32], k: usize) -> Vec<Vec<f32>> {
    use rayon::prelude::*;
    let (n, d) = (rows.len(), mean.len());
    let np = n.div_ceil(ROW_PAD) * ROW_PAD;
    // W padded to whole 4-direction tiles with zero rows
    let kp = k.next_multiple_of(4);
    let mut wm = vec![0f32; kp * n];
    wm[..k * n].copy_from_slice(&w[..k * n]);
    let mut dirs = vec![vec![0f32; d]; k];
    // each block's k output slices, so the blocks write their columns in place
    let mut outs: Vec<Vec<&mut [f32]>> = (0..d.div_ceil(BLOCK)).map(|_| Vec::with_capacity(k)).collect();
    for dir in dirs.iter_mut() {
        for (b, part) in dir.chunks_mut(BLOCK).enumerate() {
            outs[b].push(part);
        }
    }
    outs.par_iter_mut().enumerate().for_each_init(
        || vec![0f32; np * BLOCK.next_multiple_of(LANES)],
        |scratch, (b, out)| {
            let j0 = b * BLOCK;
            let bw = BLOCK.min(d - j0);
            let wp = bw.next_multiple_of(LANES);
            let c = &mut scratch[..np * wp];
            // the means of the first pass: not summed again
            centre_into(rows, j0, bw, wp, &mean[j0..j0 + bw], c);
            combine_block(c, n, wp, &wm, kp, out);
        },
    );
    dirs
}

/// Columns `j0..j0+w` of every row minus `mean`, into the first n rows of `c` (stride `wp`, columns w..wp zero).
/// Rows of `c` past n are never written: they stay zero.
fn centre_into(rows: &[&[f32]], j0: usize, w: usize, wp: usize, mean: &[f32], c: &mut [f32]) {
    for (cr, r) in c.chunks_mut(wp).zip(rows) {
        cr[..w].iter_mut().zip(r[j0..j0 + w].iter().zip(mean)).for_each(|(c, (v, m))| *c = v - m);
        cr[w..].fill(0.0);
    }
}

/// Adds the block's products to the lower triangle of `g` (n × n): `c` holds `np` rows of `wp` columns, rows past
/// n zero.
fn gram_block(c: &[f32], n: usize, np: usize, wp: usize, g: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: the CPU has the features the function was compiled for; the shapes are the ones it asserts.
        return unsafe { avx2::gram_tiles(c, n, np, wp, g) };
    }
    gram_dots(c, n, wp, g)
}

/// `gram_block` anywhere: one blocked dot product per entry.
fn gram_dots(c: &[f32], n: usize, wp: usize, g: &mut [f64]) {
    for a in 0..n {
        for b in 0..=a {
            g[a * n + b] += dot64(&c[a * wp..(a + 1) * wp], &c[b * wp..(b + 1) * wp]) as f64;
        }
    }
}

/// `out[i][..] = Σ_j w[i·n + j] · c[j]` for each output direction i (`w` has `kp` ≥ out.len() rows).
fn combine_block(c: &[f32], n: usize, wp: usize, w: &[f32], kp: usize, out: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: as in `gram_block`.
        return unsafe { avx2::combine_tiles(c, n, wp, w, kp, out) };
    }
    combine_axpy(c, n, wp, w, out)
}

/// `combine_block` anywhere: one axpy per weight.
fn combine_axpy(c: &[f32], n: usize, wp: usize, w: &[f32], out: &mut [&mut [f32]]) {
    for (i, o) in out.iter_mut().enumerate() {
        o.fill(0.0);
        let bw = o.len();
        for j in 0..n {
            let cw = w[i * n + j];
            o.iter_mut().zip(&c[j * wp..j * wp + bw]).for_each(|(o, x)| *o += cw * x);
        }
    }
}

/// Σ a·b with 64 independent f32 accumulators (enough to hide the add latency).
fn dot64(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 64];
    let (ca, cb) = (a.chunks_exact(64), b.chunks_exact(64));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..64 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Pointer steps are `wrapping_add`: every offset is inside the slices the asserts check, and `add`'s own
    //! precondition check (compiled into debug builds) sat in the inner loops and tripled their time.
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// The lower triangle of the block's Gram matrix in 3 × 4 tiles: rows a0..a0+3 against b0..b0+4 for every
    /// b0 ≤ a0 + 2, 8 columns per step, 12 accumulators in registers. Entries past n (zero rows) are dropped.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gram_tiles(c: &[f32], n: usize, np: usize, wp: usize, g: &mut [f64]) {
        assert!(np.is_multiple_of(12) && np >= n && wp.is_multiple_of(8) && c.len() >= np * wp && g.len() >= n * n);
        let p = c.as_ptr();
        let mut a0 = 0;
        while a0 < n {
            let mut b0 = 0;
            while b0 <= a0 + 2 {
                // in bounds: a0 + 2 < np and b0 + 3 < np because both are below n rounded up to 12
                let pa: [*const f32; 3] = std::array::from_fn(|i| p.wrapping_add((a0 + i) * wp));
                let pb: [*const f32; 4] = std::array::from_fn(|i| p.wrapping_add((b0 + i) * wp));
                let mut acc = [_mm256_setzero_ps(); 12];
                let mut j = 0;
                while j < wp {
                    let a = pa.map(|r| _mm256_loadu_ps(r.wrapping_add(j)));
                    for bi in 0..4 {
                        let b = _mm256_loadu_ps(pb[bi].wrapping_add(j));
                        for ai in 0..3 {
                            acc[ai * 4 + bi] = _mm256_fmadd_ps(a[ai], b, acc[ai * 4 + bi]);
                        }
                    }
                    j += 8;
                }
                for ai in 0..3 {
                    for bi in 0..4 {
                        let (x, y) = (a0 + ai, b0 + bi);
                        if x < n && y <= x {
                            g[x * n + y] += hsum(acc[ai * 4 + bi]) as f64;
                        }
                    }
                }
                b0 += 4;
            }
            a0 += 3;
        }
    }

    /// W · C for the block in tiles of 4 directions × 16 columns (8 accumulators): each step loads 16 columns of
    /// one row of C and broadcasts 4 weights.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn combine_tiles(c: &[f32], n: usize, wp: usize, w: &[f32], kp: usize, out: &mut [&mut [f32]]) {
        let k = out.len();
        assert!(wp.is_multiple_of(16) && c.len() >= n * wp && kp.is_multiple_of(4) && kp >= k && w.len() >= kp * n);
        let bw = out.first().map_or(0, |o| o.len());
        assert!(bw <= wp && out.iter().all(|o| o.len() == bw));
        let p = c.as_ptr();
        let mut c0 = 0;
        while c0 < bw {
            let mut i0 = 0;
            while i0 < k {
                // row j of C at column c0, and the 4 weights of row j
                let mut x = p.wrapping_add(c0);
                let mut pw: [*const f32; 4] = std::array::from_fn(|ii| w.as_ptr().wrapping_add((i0 + ii) * n));
                let mut acc = [_mm256_setzero_ps(); 8];
                for _ in 0..n {
                    let x0 = _mm256_loadu_ps(x);
                    let x1 = _mm256_loadu_ps(x.wrapping_add(8));
                    for ii in 0..4 {
                        let b = _mm256_broadcast_ss(&*pw[ii]);
                        acc[2 * ii] = _mm256_fmadd_ps(b, x0, acc[2 * ii]);
                        acc[2 * ii + 1] = _mm256_fmadd_ps(b, x1, acc[2 * ii + 1]);
                        pw[ii] = pw[ii].wrapping_add(1);
                    }
                    x = x.wrapping_add(wp);
                }
                for ii in 0..4.min(k - i0) {
                    let o = &mut out[i0 + ii];
                    if c0 + 16 <= bw {
                        _mm256_storeu_ps(o.as_mut_ptr().wrapping_add(c0), acc[2 * ii]);
                        _mm256_storeu_ps(o.as_mut_ptr().wrapping_add(c0 + 8), acc[2 * ii + 1]);
                    } else {
                        let mut t = [0f32; 16];
                        _mm256_storeu_ps(t.as_mut_ptr(), acc[2 * ii]);
                        _mm256_storeu_ps(t.as_mut_ptr().wrapping_add(8), acc[2 * ii + 1]);
                        o[c0..].copy_from_slice(&t[..bw - c0]);
                    }
                }
                i0 += 4;
            }
            c0 += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows with a large shared offset (as identities have) and odd sizes: n not a multiple of the tiles, d not a
    /// multiple of the block or of 16.
    fn rows(n: usize, d: usize) -> Vec<Vec<f32>> {
        let mut rng = crate::rng::Rng::new(3);
        (0..n)
            .map(|_| {
                let mut v = vec![0f32; d];
                rng.fill(&mut v, 0.0, 1.0);
                v.iter_mut().enumerate().for_each(|(j, x)| *x += 3.0 + (j % 7) as f32);
                v
            })
            .collect()
    }

    /// The plain f64 sums both passes must agree with.
    fn reference(rows: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
        let (n, d) = (rows.len(), rows[0].len());
        let mean: Vec<f64> = (0..d).map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / n as f64).collect();
        let mut g = vec![0f64; n * n];
        for a in 0..n {
            for b in 0..n {
                g[a * n + b] = (0..d).map(|j| (rows[a][j] as f64 - mean[j]) * (rows[b][j] as f64 - mean[j])).sum();
            }
        }
        (mean, g)
    }

    /// The tiles this CPU runs and the plain loops other CPUs run give the same block products.
    #[test]
    fn both_kernels_agree() {
        let (n, wp, k): (usize, usize, usize) = (23, 96, 7);
        let np = n.div_ceil(ROW_PAD) * ROW_PAD;
        let mut c = vec![0f32; np * wp];
        crate::rng::Rng::new(9).fill(&mut c[..n * wp], -1.0, 1.0);
        let (mut g1, mut g2) = (vec![0f64; n * n], vec![0f64; n * n]);
        gram_block(&c, n, np, wp, &mut g1);
        gram_dots(&c, n, wp, &mut g2);
        for a in 0..n {
            for b in 0..=a {
                let (x, y) = (g1[a * n + b], g2[a * n + b]);
                assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "gram[{a},{b}] {x} vs {y}");
            }
        }
        let kp = k.next_multiple_of(4);
        let w: Vec<f32> = (0..kp * n).map(|i| if i < k * n { (i % 13) as f32 / 13.0 - 0.5 } else { 0.0 }).collect();
        let bw = wp - 5;
        let (mut o1, mut o2) = (vec![vec![f32::NAN; bw]; k], vec![vec![f32::NAN; bw]; k]);
        combine_block(&c, n, wp, &w, kp, &mut o1.iter_mut().map(|o| o.as_mut_slice()).collect::<Vec<_>>());
        combine_axpy(&c, n, wp, &w, &mut o2.iter_mut().map(|o| o.as_mut_slice()).collect::<Vec<_>>());
        for (i, (a, b)) in o1.iter().zip(&o2).enumerate() {
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() <= 1e-5, "direction {i}[{j}] {x} vs {y}");
            }
        }
    }

    #[test]
    fn gram_and_directions_match_plain_sums() {
        for (n, d, k) in [(2, 5, 1), (7, 1000, 3), (13, 1543, 5), (25, 2 * BLOCK + 16, 8)] {
            let rs = rows(n, d);
            let refs: Vec<&[f32]> = rs.iter().map(|r| r.as_slice()).collect();
            let (mean, g) = gram_centred(&refs, d);
            let (m64, g64) = reference(&rs);
            for (a, b) in mean.iter().zip(&m64) {
                assert!((*a as f64 - b).abs() <= 1e-5 * b.abs(), "mean {a} vs {b} (n {n}, d {d})");
            }
            let scale = g64.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in g.iter().zip(&g64).enumerate() {
                assert!((a - b).abs() <= 1e-5 * scale, "gram[{i}] {a} vs {b} (n {n}, d {d})");
            }
            // W · Xc against the f64 sums, with W any k × n matrix
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let dirs = directions_centred(&refs, &mean, &w, k);
            assert_eq!(dirs.len(), k);
            for (i, dir) in dirs.iter().enumerate() {
                assert_eq!(dir.len(), d);
                for (j, v) in dir.iter().enumerate() {
                    let want: f64 = (0..n).map(|a| w[i * n + a] as f64 * (rs[a][j] as f64 - m64[j])).sum();
                    assert!((*v as f64 - want).abs() <= 1e-4, "direction {i}[{j}] {v} vs {want} (n {n}, d {d})");
                }
            }
        }
    }
}
