//! Matching a standard `LabelSelector` (as in `IPPool.spec.nodeSelector`) against labels: the
//! one implementation lives in the pure policy crate, which NetworkPolicy selectors share.

pub use sinew_policy::selector::matches;
