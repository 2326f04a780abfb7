mod api;
mod clients;
mod support;
