//! The script API's names and help texts (for `help()`, tab completion and the TUI's help overlay).

/// (name, signature, what it does)
pub const API: &[(&str, &str, &str)] = &[
    ("identity", "identity(path) | identity([paths]) | identity(#{ path, face, box, grayscale, keep_background })", "encode photos of one person into an identity (several photos are averaged the HyperLoRA way); `box: [x1, y1, x2, y2]` skips face detection, `face: n` picks the n-th face by score"),
    ("load_identity", "load_identity(path)", "read an identity saved with save_identity (it must belong to the loaded HyperLoRA variant)"),
    ("save_identity", "save_identity(id, path) | save_identity(id, path, #{ overwrite: true })", "write an identity (.safetensors); never replaces a file unless overwrite is true"),
    ("mean", "mean([ids]) | mean([ids], [weights])", "the (weighted) mean of identities, as if their photos had been encoded together"),
    ("mix", "mix(a, b, t)", "(1 − t)·a + t·b: t = 0 is a, t = 1 is b"),
    ("similarity", "similarity(a, b)", "cosine similarity of two identities' coefficients (1 = same)"),
    ("lora", "lora(id) | lora(id, weight) | lora(id, #{ weight, base_weight }) | lora(\"file.safetensors\", weight)", "a LoRA mix term: an identity's LoRA at a strength, or a LoRA file (kohya/diffusers/PEFT)"),
    ("slider", "slider(a, b)", "lora(b) − lora(a): the direction from a to b; scale it with * and add it to a look"),
    ("generate", "generate(prompt) | generate(prompt, #{ lora, negative, seed, steps, cfg, sampler, width, height, base_weight })", "generate an image; the trigger words are prefixed when the LoRA has an identity and the prompt lacks them"),
    ("show", "show(img)", "preview an image in the terminal (and print where it was saved)"),
    ("save", "save(img, path) | save(img, path, #{ overwrite: true })", "write a PNG with its settings; never replaces a file unless overwrite is true"),
    ("export_lora", "export_lora(mix, path) | export_lora(mix, path, #{ overwrite, dtype: \"f16\" })", "write a mix as one kohya LoRA file (ComfyUI LoraLoaderModelOnly, diffusers)"),
    ("face_score", "face_score(img, id) | face_score(img, id, #{ box, face })", "ArcFace cosine between the face in img and the identity's photos"),
    ("models", "models()", "the models this session uses and whether they are loaded"),
    ("unload", "unload(name)", "free sdxl, hyperlora, clip, antelopev2, encoders or all (values you made stay usable)"),
    ("help", "help() | help(\"name\")", "this help"),
];

/// Operators and properties, for `help()`.
pub const OPERATORS: &str = "identities: a + b, a - b, a * 0.5, 0.5 * a; properties .photos .hash .sources\n\
LoRA mixes: m1 + m2, m1 - m2, m * 0.7, 0.7 * m; property .terms\n\
images: properties .width .height .seed .prompt .path";

pub fn help(name: Option<&str>) -> String {
    match name {
        None => {
            let mut s = String::from("hyperlora script API (help(\"name\") for one):\n");
            for (n, _, what) in API {
                s.push_str(&format!("  {n:<14} {what}\n"));
            }
            s.push_str(OPERATORS);
            s
        }
        Some(n) => match API.iter().find(|(name, ..)| *name == n) {
            Some((_, sig, what)) => format!("{sig}\n  {what}"),
            None => format!("no function `{n}`; help() lists them"),
        },
    }
}
