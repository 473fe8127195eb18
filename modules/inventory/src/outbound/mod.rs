//! What the inventory module drives: its store, SQLite or MongoDB.

pub mod mongo;
pub mod sqlite;
