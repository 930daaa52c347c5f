//! One integration binary (style habit 10): every black-box test of the
//! `keyledger` binary links once.

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
mod util;
