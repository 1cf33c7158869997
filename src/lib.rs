pub use alvryn_core as core;
pub use alvryn_server as server;
