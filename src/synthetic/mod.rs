//! Models written from code, in the real file layouts: random-weight HyperLoRA variants (`hyper`), ONNX face
//! models built from tract's protobuf types (`onnx`), and the embedded tiny demo set (`demo`) that uses both. The
//! demo, the tests and the real-size benchmarks share them; no model is downloaded.
pub mod demo;
pub mod hyper;
pub mod onnx;
