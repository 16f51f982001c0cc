//! Text drawn into RGB pixels with the public-domain 8×8 bitmap font of the `font8x8` crate.
use font8x8::UnicodeFonts;

/// Draw `s` at (x, y) (top-left), each font pixel `scale` × `scale`, clipped to the image; characters the
/// font lacks are drawn as `?`. Returns the width drawn in pixels.
pub fn draw(
    rgb: &mut [u8],
    width: usize,
    height: usize,
    x: usize,
    y: usize,
    s: &str,
    scale: usize,
    colour: [u8; 3],
) -> usize {
    let scale = scale.max(1);
    let mut cx = x;
    for ch in s.chars() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (cx + col * scale + dx, y + row * scale + dy);
                        if px < width && py < height {
                            let o = (py * width + px) * 3;
                            rgb[o..o + 3].copy_from_slice(&colour);
                        }
                    }
                }
            }
        }
        cx += 8 * scale;
    }
    cx - x
}

/// `s` cut to at most `max` characters, with `…` when cut.
pub fn fit(s: &str, max: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= max {
        return s.to_string();
    }
    if max < 5 {
        return chars[chars.len() - max..].iter().collect();
    }
    // names differ most at their ends (seeds, indices, weights): keep the end, a third of the start, and ".."
    // between (the 8×8 font has no ellipsis)
    let head = (max - 2) / 3;
    let tail = max - 2 - head;
    chars[..head].iter().chain(['.', '.'].iter()).chain(&chars[chars.len() - tail..]).collect()
}
