//! Load generator; see the load-generator issue. Only options exist so far.
