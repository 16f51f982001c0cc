//! Photo → CLIP features: the CLIP ViT-L/14 vision tower (transformers layout) and the CLIP image processor
//! with Pillow's exact bicubic resampling (spec §1.3).
pub mod clip;
pub mod processor;
