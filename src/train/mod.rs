//! Training: the loss and its gradients through the frozen SDXL UNet ([`step`]), the optimiser ([`adamw`]), and the
//! fine-tunes that run on them. The differentiable forwards live in the model rooms (`sdxl/` carries LoRA terms as
//! functions of their factors, `hyper/` builds its modules from variables); this room holds the loops, the data
//! and the optimiser state, and the session calls it.
pub mod adamw;
pub mod curriculum;
pub mod data;
pub mod finetune;
pub mod log;
pub mod step;
