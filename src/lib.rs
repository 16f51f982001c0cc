//! hyperlora: tuning-free portrait personalisation with HyperLoRA, in Rust.
//!
//! Data flows one way: photo → encoders → [`hyper`] (hypernetwork) → [`Identity`] → [`LoraMix`] → LoRA weights
//! ([`lora`]) → SDXL. The CLI (and later the session, scripts and TUI) are thin shells over these.
pub mod cli;
pub mod clip;
pub mod demo;
pub mod download;
pub mod encode;
pub mod error;
pub mod face;
pub mod features;
pub mod hyper;
pub mod identity;
pub mod lora;
pub mod mix;
pub mod models;
pub mod output;
pub mod session;
pub mod tui;
pub mod png_meta;
pub mod preview;
pub mod script;
pub mod sdxl;
pub mod vision;
pub mod weights;

pub use error::{Error, Result};
pub use hyper::HyperLora;
pub use identity::Identity;
pub use mix::LoraMix;
