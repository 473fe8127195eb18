//! What the order module drives: its own database.

pub mod sql;
