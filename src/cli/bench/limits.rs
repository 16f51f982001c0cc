//! `hyperlora bench limits`: the limits chosen, and SDXL base's memory estimates by size against this machine.

/// The limits table: constants, then SDXL base's estimate per size and batch (the same function the refusal uses).
pub(super) fn run() -> anyhow::Result<()> {
    use crate::sdxl::model::{available_memory, memory_needed, sdxl_base_unet_config, MAX_BATCH, MAX_SIDE};
    println!("| limit | value |\n| --- | --- |");
    let rows = [
        ("photo side (JPEG/PNG/WebP)", format!("{} px", crate::pixels::photo::MAX_PHOTO_SIDE)),
        ("photo decoded size", format!("{} MiB", crate::pixels::photo::MAX_PHOTO_BYTES >> 20)),
        ("PNG side (settings, gather, load_image)", format!("{} px", crate::files::png_meta::MAX_PNG_SIDE)),
        ("generation side", format!("{MAX_SIDE} px")),
        ("batch", format!("1 to {MAX_BATCH}")),
        ("attention scores at once", format!("{} M elements", crate::sdxl::unet::attention::ATTENTION_CHUNK >> 20)),
        ("contact sheet", format!("{} M pixels", crate::render::grid::MAX_PIXELS / 1_000_000)),
        ("numbers from users", "finite, magnitude ≤ 1e6".to_string()),
    ];
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    let avail = available_memory();
    let gb = |b: u128| format!("{:.1} GB", b as f64 / 1e9);
    println!(
        "\nSDXL base, CPU: memory a generation needs beyond the weights ({} available here)\n",
        avail.map(gb).unwrap_or_else(|| "unknown".into())
    );
    println!("| size | batch | f16 | f32 | f32 fits here |\n| --- | --- | --- | --- | --- |");
    let unet = sdxl_base_unet_config();
    for side in [1024, 2048, 4096, 8192] {
        for batch in [1, 4] {
            let (h, f) =
                (memory_needed(&unet, 128, 2, batch, side, side), memory_needed(&unet, 128, 4, batch, side, side));
            let fits = avail.map(|a| if f <= a { "yes" } else { "no: refused" }).unwrap_or("?");
            println!("| {side}² | {batch} | {} | {} | {fits} |", gb(h), gb(f));
        }
    }
    Ok(())
}
