//! Photo → ArcFace embedding and face geometry, as insightface's antelopev2 stack does it (spec §1.4, §3):
//! SCRFD detection (letterbox, anchor decoding, NMS), 5-point similarity alignment to the ArcFace template.
pub mod align;
pub mod analyser;
pub mod cutout;
pub mod landmark;
pub mod onnx;
pub mod scrfd;
