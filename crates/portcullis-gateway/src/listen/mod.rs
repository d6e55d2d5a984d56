//! The public listener's connections: TLS termination and its certificate
//! reload, HTTP/1.1 or HTTP/2 per connection, and the connection caps and
//! accept back-off.

pub(crate) mod conn;
pub(crate) mod limits;
pub(crate) mod tls;
