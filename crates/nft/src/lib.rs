//! nf_tables over netlink: message encoding, expressions, atomic batches.
//!
//! netd owns this small layer instead of using a crate because what its table needs (named
//! maps and verdict maps, intervals, concatenations on 32-bit registers, `fib`, `ct status`,
//! batches of any size) is not covered by the available ones (docs/ARCHITECTURE.md says what
//! was measured).
//!
//! * [`attr`]-level TLV encoding and [`expr`] expressions are pure;
//! * [`Batch`] builds a transaction (pure; [`Batch::encode`] gives the wire bytes);
//! * [`Socket`] sends a batch with one `sendmsg` and reads every acknowledgement.
//! * [`monitor`] watches change notifications and dumps a table for consistency checks.

mod attr;
mod batch;
pub mod expr;
pub mod monitor;
pub mod ruleset;
mod socket;

pub use batch::{
    BaseChain, Batch, ChainType, ElemData, ElemGroup, Encoded, Family, HookNum, Policy, SetElem,
    SetSpec, DATA_TYPE_VERDICT, MAX_ELEMS_BYTES, SET_ELEM_F_INTERVAL_END, SET_F_CONCAT,
    SET_F_INTERVAL, SET_F_MAP,
};
pub use expr::{Expr, Reg, Verdict};
pub use socket::{Rejection, Socket};

use std::fmt;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel rejected one or more messages; nothing of the batch was applied.
    #[error("{}", rejected_text(first, elem_text.as_deref(), *more))]
    Rejected {
        first: Box<Rejection>,
        /// The caller's description of the rejected element, if it filled it in.
        elem_text: Option<String>,
        more: usize,
    },
    /// The kernel rejected the batch as a whole (answer to the batch-begin message).
    #[error("batch rejected: {} (errno {errno}){}", strerror(*errno), extack.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Batch { errno: i32, extack: Option<String> },
    #[error("no answer from the kernel for {missing} of {total} messages")]
    Timeout { missing: usize, total: usize },
    #[error("message too large to encode: {0}")]
    TooLarge(String),
}

impl NftError {
    /// The errno of a kernel rejection.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Rejected { first, .. } => Some(first.errno),
            NftError::Batch { errno, .. } => Some(*errno),
            NftError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn rejected_text(r: &Rejection, elem_text: Option<&str>, more: usize) -> String {
    let mut s = format!("{}: {} (errno {})", r.desc, strerror(r.errno), r.errno);
    match (elem_text, r.elem) {
        (Some(t), _) => s.push_str(&format!(" [element {t}]")),
        (None, Some((_, i))) => s.push_str(&format!(" [element #{i}]")),
        _ => {}
    }
    if let Some(m) = &r.extack {
        s.push_str(&format!(": {m}"));
    }
    if more > 0 {
        s.push_str(&format!(" (and {more} more rejected messages)"));
    }
    s
}

/// The C library's text for an errno ("File exists").
pub fn strerror(errno: i32) -> impl fmt::Display {
    let text = io::Error::from_raw_os_error(errno).to_string();
    // io::Error appends " (os error N)"; the errno is printed separately.
    match text.rfind(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_message_names_the_message() {
        let e = NftError::Rejected {
            first: Box::new(Rejection {
                desc: "add element to set dnat4_any".into(),
                errno: 17,
                elem: Some((ElemGroup(0), 3)),
                extack: None,
            }),
            elem_text: Some("tcp . 8080 : 10.88.0.2 . 80".into()),
            more: 0,
        };
        assert_eq!(
            e.to_string(),
            "add element to set dnat4_any: File exists (errno 17) [element tcp . 8080 : 10.88.0.2 . 80]"
        );
        assert_eq!(e.errno(), Some(17));
    }
}
