//! The SDXL generator that HyperLoRA's LoRAs act on. It knows LoRA *weights* (per-layer up/down/scale), never
//! identities.
pub mod scheduler;
pub mod text;
pub mod unet;
pub mod lora;
pub mod vae;
pub mod pipeline;
pub mod single_file;
pub mod model;
