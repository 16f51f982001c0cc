//! Sweeps beyond one machine: which share of a recipe's items this process runs ([`shard`]), and the index and
//! contact sheets made afterwards from every shard's images ([`gather`]). No scheduler of our own: the share
//! comes from a flag or from what Slurm or a Kubernetes Indexed Job put in the environment.
pub mod gather;
pub mod shard;

pub use shard::{Shard, ShardSource};
