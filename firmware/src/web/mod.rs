//! The local web status page for field technicians and analysts (issue 13):
//! its `[web]` settings and its HTTPS identity so far. The listeners, pages,
//! JSON API and `/metrics` build on these.

pub mod cert;
pub mod settings;
