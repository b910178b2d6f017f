//! Links through rtnetlink: bridges, veth pairs, and configuration inside container network
//! namespaces. (Being written.)
