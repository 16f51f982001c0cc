//! Pictures made from results: labelled contact sheets of images and line charts of numbers. Scripts (through
//! the session), `gather` and the front ends share these.
pub mod grid;
pub mod plot;
pub mod text;
