mod admission;
mod api;
mod clients;
mod conformance;
mod lifecycle;
mod node_proxy;
mod support;
