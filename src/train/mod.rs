//! Training: the per-step code ([`step`]), trainers, evaluation.
pub mod eval;
pub mod lake;
pub mod step;
pub mod trainer;
