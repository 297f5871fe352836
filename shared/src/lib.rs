//! The library of the DataHub serverless executor.
//!
//! It owns the domain logic shared by the binaries: the execution-request model, recipe variables,
//! secret stores and masking, the GMS client and DataHub's status format, venv selection and the job
//! runner that drives the real `datahub ingest` CLI. Binaries (`functions/*`) only wire these parts;
//! they must not hold logic of their own.
//!
//! Secret values live only in memory here: they never go to disk, to a child's environment, to a
//! log line or to a GMS request, and error types carry names, never values.

pub mod admission;
#[cfg(feature = "aws-sm")]
pub mod aws_error;
pub mod cloud_secrets;
pub mod config;
pub mod error;
pub mod gcp;
pub mod gms;
pub mod job;
pub mod launcher;
pub mod masking;
pub mod memory;
pub mod message;
pub mod pyfmt;
pub mod recipe;
pub mod relay;
pub mod report;
pub mod request;
pub mod runner;
pub mod secrets;
pub mod status;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod venv;
