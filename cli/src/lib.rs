//! The `intattention` command's modules: the subcommands ([`cli`]), accuracy reports against
//! an f64 reference ([`accuracy`]), seeded inputs ([`data`]), `.npy` files ([`npy`]), the
//! IntAttention settings commands override ([`settings`]) and the command's thread pools
//! ([`threads`]). The binary (`src/main.rs`) only parses arguments and
//! prints errors.

pub mod accuracy;
pub mod cli;
pub mod data;
pub mod error;
pub mod npy;
pub mod settings;
pub mod threads;
