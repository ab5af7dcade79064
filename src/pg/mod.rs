//! Postgres glue that the SQL surface builds on: changing identity and settings for a while
//! ([`elevated`]), waiting or polling for interrupts without raising them on the wrong thread
//! ([`interrupts`]), and a caller's SELECT through SPI ([`spi_select`]).

pub mod elevated;
pub mod interrupts;
pub mod spi_select;
