//! One integration binary (docs/style.md, *One integration binary*): every
//! black-box test of the `keyledger` binary links once.

mod audit;
mod cli;
mod crash;
mod damage;
mod datadir;
mod http;
mod integrity;
mod leaks;
mod limits;
mod live;
mod nodes;
mod policy;
mod scan;
mod snapshots;
mod stream;
mod transparency;
mod util;
mod webhooks;
mod witness;
