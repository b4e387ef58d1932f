//! HTTP/1.1 codecs, pure (no buffers of the worker, no sockets): head parsing and framing
//! rules (`head`, `chunked`, RFC 9112) and the header rewrites (`rewrite`).

pub(crate) mod chunked;
pub(crate) mod head;
pub(crate) mod rewrite;
