//! The life of the process itself: a graceful stop ([`stop`]: leaving the
//! group if it is in one, listeners closed, calls kept for a grace, then a
//! Close 1001 to both sides), the addresses it announces to its group
//! ([`announce`]), and a binary upgrade's old side ([`upgrade`]: the new
//! process started with the sockets, ready or abandoned). The new side's part of the handover
//! is [`crate::control::handover`]; [`crate::daemon`] wires both in.

pub mod announce;
pub mod stop;
pub mod upgrade;
