//! HTTP/1.1 on the client side: the connection lifetime (`conn`), head parsing and
//! framing rules (`head`, `chunked`, RFC 9112) and the pure header rewrites (`rewrite`).

pub mod chunked;
pub mod conn;
pub mod head;
pub mod rewrite;
