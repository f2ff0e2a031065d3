//! The contract every engine passes, as executable checks any engine can run: the embedded and memory
//! engines here, a shared engine in its own module or crate (with the `contract` feature).
//!
//! Two levels:
//! - [`catalog`]: what the [`crate::store::catalog::Catalog`] trait promises on its own (guarded writes
//!   all or nothing, reads of what was written), with two handles on one backing store where the engine
//!   can share one: that is what two hub processes on one database are.
//! - [`rules`]: the hub's behaviour through the [`crate::ledger::Ledger`] over the engine, which must not
//!   depend on the engine.
//!
//! Each level has a harness trait the engine's tests implement and a macro that instantiates every check
//! as a test: [`crate::catalog_contract!`], [`crate::rules_contract!`].

pub mod catalog;
pub mod rules;
