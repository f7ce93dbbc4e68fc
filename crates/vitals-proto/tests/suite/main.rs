//! Integration suite: the protocol on virtual time through a two-peer simulator.

mod auth;
mod bulk;
mod decoders;
mod enforcement;
mod json_compat;
mod liveness;
mod sessions;
mod sim;
