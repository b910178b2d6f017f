//! nf_tables over netlink: message encoding, expressions, atomic batches. (Being written.)
