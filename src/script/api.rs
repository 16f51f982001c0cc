//! The script API's names and help texts (for `help()`, tab completion and the TUI's help overlay).

/// (name, signature, what it does)
pub const API: &[(&str, &str, &str)] = &[
    ("identity", "identity(path) | identity([paths]) | identity(#{ path, face, box, grayscale, keep_background, base })", "encode photos of one person into an identity (several photos are averaged the HyperLoRA way); `box: [x1, y1, x2, y2]` skips face detection, `face: n` picks the n-th face by score, `base: true` also feeds the Base branch (variants with Base weights only; the released ones have none)"),
    ("load_identity", "load_identity(path)", "read an identity saved with save_identity (it must belong to the loaded HyperLoRA variant)"),
    ("save_identity", "save_identity(id, path) | save_identity(id, path, #{ overwrite: true })", "write an identity (.safetensors); never replaces a file unless overwrite is true"),
    ("mean", "mean([ids]) | mean([ids], [weights])", "the (weighted) mean of identities, as if their photos had been encoded together"),
    ("mix", "mix(a, b, t)", "(1 − t)·a + t·b: t = 0 is a, t = 1 is b"),
    ("similarity", "similarity(a, b)", "cosine similarity of two identities' coefficients (1 = same)"),
    ("coeffs", "coeffs(id) | id.coeffs", "an identity's raw coefficient tokens [Q, K] as a value: .normalized .shape c[i] .module(name|i) .proj(\"to_q\") .down .up, to_array()"),
    ("coeffs_from", "coeffs_from(rows, like)", "coefficients from numbers (rows × K), shaped like `like`"),
    ("identity_from", "identity_from(c, #{ like: id })", "an identity from whole raw coefficients (keeps like's variant; its source says how it was made)"),
    ("dot", "dot(a, b) | norm(a) | cosine(a, b)", "inner product, length, cosine of identities (raw tokens) or coefficient values"),
    ("norm", "norm(a)", "length of an identity's raw tokens or of a coefficient value"),
    ("cosine", "cosine(a, b)", "cosine of two identities' raw tokens or of two coefficient values"),
    ("direction", "direction(a, b)", "b − a as coefficients (raw tokens)"),
    ("project", "project(x, dir)", "the component of x along dir"),
    ("reject", "reject(x, dir)", "x without its component along dir (e.g. a slider made orthogonal to an identity)"),
    ("orthogonalize", "orthogonalize([dirs])", "an orthonormal set spanning the directions (Gram–Schmidt)"),
    ("similarity_by_module", "similarity_by_module(a, b)", "per module: index, module, UNet block, cosine — which blocks differ most"),
    ("pca", "pca([ids], k)", "#{ directions, explained, scores, mean }: principal directions of a set of identities (raw tokens)"),
    ("nearest", "nearest([ids] | library, id, k)", "the k most similar identities, best first, with their cosine"),
    ("walk", "walk(id, dir) | walk(id, dir, [steps])", "the identities id + t·dir (default t = −1, −0.5, 0, 0.5, 1), ready for grid"),
    ("library", "library(dir)", "a folder of saved identities: lib.save(name, id[, #{ overwrite, dtype: \"f16\" }]), lib.get(name), lib.list(), lib.remove(name)"),
    ("lora", "lora(id) | lora(id, weight) | lora(id, #{ weight, base_weight }) | lora(\"file.safetensors\", weight)", "a LoRA mix term: an identity's LoRA at a strength, or a LoRA file (kohya/diffusers/PEFT)"),
    ("slider", "slider(a, b)", "lora(b) − lora(a): the direction from a to b; scale it with * and add it to a look"),
    ("generate", "generate(prompt) | generate(prompt, #{ lora: none, base_weight: 0.0, negative: none, seed: 0, steps: 20, cfg: 5.0, sampler: \"dpmpp_2m_karras\", width: native, height: native, batch: 1, init: none, strength: 0.6 })", "generate an image (batch > 1: an array, seeds seed, seed + 1, …); width/height default to the model's native size (1024 for SDXL, the demo set's own), or with init (img2img: an image or a file) to its size; the trigger words are prefixed when the LoRA has an identity and the prompt lacks them"),
    ("refine_face", "refine_face(img) | refine_face(img, #{ lora, prompt, negative, strength: 0.4, padding: 0.3, size: 1024, face, box, seed, steps, cfg, sampler })", "the face-detail pass: find the face (or use box), crop it with padding, upscale to size, img2img it with the LoRA at strength, paste it back through a feathered ellipse; the settings record both passes"),
    ("load_image", "load_image(path)", "an image value from a PNG/JPEG/WebP file (a PNG keeps its settings)"),
    ("show", "show(img)", "preview an image in the terminal (and print where it was saved)"),
    ("grid", "grid([images]) | grid([images], #{ cols, labels, title })", "a labelled contact sheet as one image (show it, save it: its PNG keeps every cell's settings)"),
    ("plot", "plot(xs, ys) | plot(xs, ys, #{ title, x, y })", "a line chart of numbers (the TUI's preview pane, or a text chart in the REPL and run)"),
    ("save", "save(img, path) | save(img, path, #{ overwrite: true })", "write a PNG with its settings; never replaces a file unless overwrite is true"),
    ("export_lora", "export_lora(mix, path) | export_lora(mix, path, #{ overwrite, dtype: \"f16\" })", "write a mix as one kohya LoRA file (ComfyUI LoraLoaderModelOnly, diffusers)"),
    ("face_score", "face_score(img, id) | face_score(img, id, #{ box, face })", "ArcFace cosine between the face in img and the identity's photos (recorded in img: a later save writes it into the PNG)"),
    ("shard", "shard(items)", "this process's share of a sweep's items (item k goes to shard k mod n): from run --shard i/n, a Slurm array task or a Kubernetes Indexed Job; all items otherwise"),
    ("shard_info", "shard_info()", "#{ index, count } of this process's shard (0 of 1 when not sharded)"),
    ("pending", "pending(path)", "true while an output is still to be made; an existing one is an error, or with run --resume skipped when complete (and made again when broken)"),
    ("finetune", "finetune(id, #{ photos, steps: 50, lr: 0.01, prompt, size, seed: 0, warmup: 0, schedule: \"constant\", max_grad_norm: 1.0, min_snr_gamma, strength: 1.0, sample_steps: 0, gradient_checkpointing: \"auto\" })", "fine-tune an identity on its photos (identity space): a new identity; printing it shows its origin and eval loss"),
    ("finetune_lora", "finetune_lora(id | lora, #{ photos, steps: 50, lr: 0.01, … as finetune })", "fine-tune a LoRA's factors on photos (LoRA space): a LoRA for generate, mixes and export_lora"),
    ("training_log", "training_log()", "the last fine-tune's steps as #{ step, loss, lr, grad_norm } (arrays; as far as it got if cancelled)"),
    (
        "plot_loss",
        "plot_loss() | plot_loss(\"run/log.csv\")",
        "plot the last fine-tune's loss by step, or a loss log's (train's log.csv, finetune's .loss.csv)",
    ),
    ("models", "models()", "the models this session uses and whether they are loaded"),
    ("unload", "unload(name)", "free sdxl, hyperlora, clip, antelopev2, encoders or all (values you made stay usable)"),
    ("help", "help() | help(\"name\")", "this help"),
];

/// Operators and properties, for `help()`.
pub const OPERATORS: &str = "identities: a + b, a - b, a * 0.5, 0.5 * a; properties .photos .hash .sources .coeffs\n\
coefficients: a + b, a - b, c * 0.5; .normalized .shape .down .up; c[i]; .module(name|i) .proj(p)\n\
spaces: identity algebra, coeffs and directions act on the raw tokens (before per-token normalisation); the LoRA\n\
  normalises per token, so lora(a + b) is one LoRA of the summed tokens while lora(a) + lora(b) adds two LoRAs' ΔW\n\
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
