//! hyperlora: tuning-free portrait personalisation with HyperLoRA, in Rust.
//!
//! Data flows one way: photo → [`face`] + [`vision`] ([`encode`]) → [`hyper`] (hypernetwork) → [`Identity`]
//! ([`identity`]: algebra, coefficient space, libraries, [`LoraMix`]) → LoRA weights ([`lora`]) → [`sdxl`] → image
//! → [`render`] / [`term`]. The [`session`] owns the models and caches; [`script`], [`tui`] and [`cli`] (through
//! [`front`]) are thin shells over it. [`models`] finds the files, [`files`] reads and writes them, [`weights`]
//! loads safetensors strictly, [`pixels`] is the RGB image below `face` and `vision`, [`synthetic`] writes models from code for the demo, tests and benchmarks.

// basics
pub mod cancel;
pub mod error;
pub mod files;
pub mod nn;
pub mod pixels;
pub mod pool;
pub mod rng;
pub mod weights;

// the data flow
pub mod clip;
pub mod encode;
pub mod face;
pub mod hyper;
pub mod identity;
pub mod lora;
pub mod render;
pub mod sdxl;
pub mod term;
pub mod vision;

// the session and its front ends
pub mod cli;
pub mod front;
pub mod models;
pub mod script;
pub mod session;
pub mod sweep;
pub mod train;
pub mod tui;

// models written from code
pub mod synthetic;

pub use error::{Error, Result};
pub use hyper::HyperLora;
pub use identity::mix::LoraMix;
pub use identity::Identity;
