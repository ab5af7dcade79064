//! Postgres glue that the SQL surface builds on, and all of the extension's `unsafe` code: the
//! backend's own state ([`backend`]), changing identity and settings for a while ([`elevated`]),
//! waiting or polling for interrupts without raising them on the wrong thread ([`interrupts`]), a
//! caller's SELECT through SPI ([`spi_select`]), shared memory ([`shmem`]) and the worker's own
//! transactions ([`transaction`]).

pub mod backend;
pub mod elevated;
pub mod interrupts;
pub mod shmem;
pub mod spi_select;
pub mod transaction;
