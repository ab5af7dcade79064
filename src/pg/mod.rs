//! Postgres glue that the SQL surface builds on: changing identity and settings for a while
//! ([`elevated`]), and waiting or polling for interrupts without raising them on the wrong thread
//! ([`interrupts`]).

pub mod elevated;
pub mod interrupts;
