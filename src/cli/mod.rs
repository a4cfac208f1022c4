//! The subcommands of the command line, one module each.

pub(crate) mod distill;
pub(crate) mod eval;
pub(crate) mod history;
pub(crate) mod judge_eval;
pub(crate) mod store;
