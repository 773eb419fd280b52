//! NetworkPolicy on this node (decision 91): the inputs it is compiled from ([`inputs`]),
//! the table a compiled plan becomes ([`table`]), and the loop that keeps the kernel's table
//! in line ([`engine`]).

pub mod drops;
pub mod engine;
mod inputs;
pub mod table;

pub use engine::Policy;
