//! opr-loadtest's end-to-end tests over real sockets, as one test binary: the mock
//! executor, the load generator and the cold-start harness.

mod coldstart;
mod gen;
mod mock;
