//! The SDXL generator that HyperLoRA's LoRAs act on. It knows LoRA *weights* (per-layer up/down/scale), never
//! identities.
pub mod lora;
pub mod model;
pub mod pipeline;
pub mod profile;
pub mod scheduler;
pub mod single_file;
pub mod text;
pub mod unet;
pub mod vae;
