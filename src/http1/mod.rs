//! The HTTP/1.1 front end: the connection loop (`conn`: heads, routing, keep-alive) and
//! the client connection it reads and writes (`client`).

pub(crate) mod client;
mod conn;

pub(crate) use conn::serve;
