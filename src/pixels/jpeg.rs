//! A check the JPEG decoder does not make: that every scan of a baseline (sequential Huffman) JPEG holds as many
//! blocks as its frame header claims. zune-jpeg (the decoder `image` uses) runs past the end of the scan data
//! silently, even in strict mode, and fills the rest of the image with whatever zero bits decode to, so a header
//! patched to claim 4096² over 512² of data decodes as a flat image and would be used. Here the Huffman codes are
//! walked (symbols and their extra bits skipped; no coefficients, no pixels) and the blocks counted per scan.
//! Progressive and arithmetic-coded files are left to the decoder.

/// Canonical Huffman table: for each code length, the first code, the count and where its symbols start.
#[derive(Clone, Default)]
struct Huffman {
    first: [u32; 17],
    count: [u32; 17],
    offset: [usize; 17],
    symbols: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8], symbols: &[u8]) -> Self {
        let mut h = Huffman { symbols: symbols.to_vec(), ..Default::default() };
        let (mut code, mut at) = (0u32, 0usize);
        for len in 1..=16 {
            let n = counts[len - 1] as u32;
            h.first[len] = code;
            h.count[len] = n;
            h.offset[len] = at;
            code = (code + n) << 1;
            at += n as usize;
        }
        h
    }
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u32,
    n: u32,
    /// A marker other than RSTn was reached: the scan's data has ended.
    ended: bool,
}

impl Bits<'_> {
    /// One bit, or None once the scan's data has run out.
    fn bit(&mut self) -> Option<u32> {
        if self.n == 0 {
            if self.ended || self.pos >= self.data.len() {
                self.ended = true;
                return None;
            }
            let b = self.data[self.pos];
            if b == 0xFF {
                match self.data.get(self.pos + 1) {
                    Some(0x00) => self.pos += 2,
                    _ => {
                        self.ended = true;
                        return None;
                    }
                }
            } else {
                self.pos += 1;
            }
            self.acc = b as u32;
            self.n = 8;
        }
        self.n -= 1;
        Some((self.acc >> self.n) & 1)
    }
    fn bits(&mut self, k: u32) -> Option<()> {
        for _ in 0..k {
            self.bit()?;
        }
        Some(())
    }
    fn symbol(&mut self, h: &Huffman) -> Option<u8> {
        let mut code = 0u32;
        for len in 1..=16 {
            code = (code << 1) | self.bit()?;
            if h.count[len] > 0 && code >= h.first[len] && code < h.first[len] + h.count[len] {
                return h.symbols.get(h.offset[len] + (code - h.first[len]) as usize).copied();
            }
        }
        None
    }
    /// At a restart marker: drop the partial byte and step over the marker.
    fn restart(&mut self) -> bool {
        self.n = 0;
        match (self.data.get(self.pos), self.data.get(self.pos + 1)) {
            (Some(0xFF), Some(m)) if (0xD0..=0xD7).contains(m) => {
                self.pos += 2;
                true
            }
            _ => false,
        }
    }
}

#[derive(Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
}

/// Skip one block's Huffman-coded coefficients; None when the data ran out.
fn block(bits: &mut Bits, dc: &Huffman, ac: &Huffman) -> Option<()> {
    let s = bits.symbol(dc)?;
    bits.bits(s as u32 & 15)?;
    let mut k = 1;
    while k < 64 {
        let rs = bits.symbol(ac)?;
        let (r, s) = (rs >> 4, rs & 15);
        if s == 0 {
            if r == 15 {
                k += 16;
                continue;
            }
            break;
        }
        k += r as usize + 1;
        bits.bits(s as u32)?;
    }
    Some(())
}

/// Ok when every scan of a baseline JPEG holds the blocks its frame claims (or the file is not a baseline Huffman
/// JPEG this check reads); Err saying how many blocks a scan holds of how many.
pub fn check_scans(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return Ok(());
    }
    let mut pos = 2;
    let (mut width, mut height) = (0usize, 0usize);
    let mut comps: Vec<Component> = Vec::new();
    let mut dc = vec![Huffman::default(); 4];
    let mut ac = vec![Huffman::default(); 4];
    let mut restart = 0usize;
    while pos + 4 <= bytes.len() {
        if bytes[pos] != 0xFF {
            return Ok(()); // not where a marker should be: the decoder will say what is wrong
        }
        let marker = bytes[pos + 1];
        if marker == 0xFF {
            pos += 1;
            continue;
        }
        if marker == 0xD9 {
            return Ok(());
        }
        let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
        let seg = match bytes.get(pos + 4..pos + 2 + len) {
            Some(s) if len >= 2 => s,
            _ => return Ok(()),
        };
        match marker {
            0xC0 | 0xC1 => {
                if seg.len() < 6 {
                    return Ok(());
                }
                height = u16::from_be_bytes([seg[1], seg[2]]) as usize;
                width = u16::from_be_bytes([seg[3], seg[4]]) as usize;
                let n = seg[5] as usize;
                comps = (0..n)
                    .filter_map(|i| seg.get(6 + 3 * i..9 + 3 * i))
                    .map(|c| Component { id: c[0], h: (c[1] >> 4).max(1) as usize, v: (c[1] & 15).max(1) as usize })
                    .collect();
            }
            // progressive, lossless, arithmetic: left to the decoder
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Ok(()),
            0xC4 => {
                let mut at = 0;
                while at + 17 <= seg.len() {
                    let (class, id) = (seg[at] >> 4, (seg[at] & 3) as usize);
                    let counts = &seg[at + 1..at + 17];
                    let total: usize = counts.iter().map(|&c| c as usize).sum();
                    let Some(symbols) = seg.get(at + 17..at + 17 + total) else { return Ok(()) };
                    let t = Huffman::new(counts, symbols);
                    if class == 0 {
                        dc[id] = t;
                    } else {
                        ac[id] = t;
                    }
                    at += 17 + total;
                }
            }
            0xDD if seg.len() >= 2 => restart = u16::from_be_bytes([seg[0], seg[1]]) as usize,
            0xDA => {
                if comps.is_empty() || width == 0 || height == 0 {
                    return Ok(());
                }
                let ns = seg.first().copied().unwrap_or(0) as usize;
                let mut scan = Vec::new();
                for i in 0..ns {
                    let Some(c) = seg.get(1 + 2 * i..3 + 2 * i) else { return Ok(()) };
                    let Some(comp) = comps.iter().find(|x| x.id == c[0]) else { return Ok(()) };
                    scan.push((*comp, (c[1] >> 4) as usize & 3, (c[1] & 15) as usize & 3));
                }
                let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
                let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
                // MCUs and blocks per MCU: interleaved scans by the frame's sampling, one component alone by its own
                let (mcus, per_mcu) = if scan.len() == 1 {
                    let c = scan[0].0;
                    let cw = (width * c.h).div_ceil(hmax);
                    let ch = (height * c.v).div_ceil(vmax);
                    (cw.div_ceil(8) * ch.div_ceil(8), vec![(0usize, 1usize)])
                } else {
                    let m = width.div_ceil(8 * hmax) * height.div_ceil(8 * vmax);
                    (m, scan.iter().enumerate().map(|(i, (c, _, _))| (i, c.h * c.v)).collect())
                };
                let data = &bytes[pos + 2 + len..];
                let mut bits = Bits { data, pos: 0, acc: 0, n: 0, ended: false };
                let expected = mcus * per_mcu.iter().map(|(_, n)| n).sum::<usize>();
                let mut done = 0usize;
                'mcus: for m in 0..mcus {
                    if restart > 0 && m > 0 && m % restart == 0 && !bits.restart() {
                        break 'mcus;
                    }
                    for &(i, n) in &per_mcu {
                        let (_, td, ta) = scan[i];
                        for _ in 0..n {
                            if block(&mut bits, &dc[td], &ac[ta]).is_none() {
                                break 'mcus;
                            }
                            done += 1;
                        }
                    }
                }
                if done < expected {
                    return Err(format!(
                        "a scan holds {done} of the {expected} blocks its {width}×{height} header claims"
                    ));
                }
                // the next marker after the scan data
                let mut at = pos + 2 + len + bits.pos;
                while at + 1 < bytes.len()
                    && !(bytes[at] == 0xFF && bytes[at + 1] != 0x00 && !(0xD0..=0xD7).contains(&bytes[at + 1]))
                {
                    at += 1;
                }
                pos = at;
                continue;
            }
            _ => {}
        }
        pos += 2 + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_photo_is_whole_and_a_patched_header_is_not() {
        let good = include_bytes!("../../assets/astronaut.jpg");
        assert_eq!(super::check_scans(good), Ok(()));
        let mut bad = good.to_vec();
        let sof = (0..bad.len() - 1).find(|&i| bad[i] == 0xFF && bad[i + 1] == 0xC0).unwrap();
        bad[sof + 5..sof + 7].copy_from_slice(&4096u16.to_be_bytes());
        bad[sof + 7..sof + 9].copy_from_slice(&4096u16.to_be_bytes());
        let e = super::check_scans(&bad).unwrap_err();
        assert!(e.contains("4096×4096"), "{e}");
    }
}
