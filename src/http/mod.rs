//! HTTP/1.1 framing and I/O: head parsing and framing rules (`head`, `chunked`, RFC
//! 9112), the pure header rewrites (`rewrite`) and the client side's I/O (`client`).

pub(crate) mod chunked;
pub(crate) mod client;
pub(crate) mod head;
pub(crate) mod rewrite;
