//! The built-in load generator and the raw journal benchmark.
//!
//! - `payrail loadtest` ([`http_load`]): HTTP load against a node, closed loop (N
//!   connections) or open loop (`--rate`, latency from the intended send time), over many
//!   merchants it creates itself, with a Zipf skew; scenarios `create`, `lifecycle` and
//!   `mixed` ([`scenario`]).
//! - `payrail bench journal` ([`bench`]): the same `payment.created` records appended with
//!   the node's producer and options, no HTTP and no actors; the ceiling the write path is
//!   compared against.
//!
//! Both print a human report or one JSON object ([`report::Report`]). It reaches a node
//! only over HTTP and the broker only through `kafka_journal`; it must not know the actors,
//! the pools or the fallback.

pub mod bench;
pub mod http_load;
pub mod lag;
pub mod limits;
pub mod mix;
mod replies;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
mod shared;
pub mod zipf;

pub use bench::{BenchError, BenchJournalArgs};
pub use http_load::{LoadtestArgs, LoadtestError, Scenario};
pub use report::Report;

/// Prints `report` on stdout: one JSON object with `json`, else the human table.
pub fn print_report(report: &Report, json: bool) -> Result<(), serde_json::Error> {
    if json {
        println!("{}", report.to_json()?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
