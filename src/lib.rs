//! hyperlora: tuning-free portrait personalisation with HyperLoRA, in Rust.
//!
//! Data flows one way: photo → encoders → [`hyper`] (hypernetwork) → [`Identity`] → [`LoraMix`] → LoRA weights
//! ([`lora`]) → SDXL. The session owns the models; scripts, the TUI and the CLI are thin shells over it.
pub mod cli;
pub mod clip;
pub mod download;
pub mod encode;
pub mod error;
pub mod face;
pub mod features;
pub mod front;
pub mod hyper;
pub mod identity;
pub mod library;
pub mod lora;
pub mod mix;
pub mod models;
pub mod output;
pub mod png_meta;
pub mod provenance;
pub mod render;
pub mod rng;
pub mod script;
pub mod sdxl;
pub mod session;
pub mod space;
pub mod synthetic;
pub mod tui;
pub use synthetic::demo;
pub mod term;
pub mod vision;
pub mod weights;

pub use error::{Error, Result};
pub use hyper::HyperLora;
pub use identity::Identity;
pub use mix::LoraMix;
