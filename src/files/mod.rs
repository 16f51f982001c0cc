//! Files in and out: atomic no-clobber writes and safetensors bytes (`output`), PNGs with their settings
//! (`png_meta`), content hashes and provenance records (`provenance`), hub downloads (`download`).
pub mod download;
pub mod output;
pub mod png_meta;
pub mod provenance;
