//! netd's table for the nf_tables layer: the fixed chains and set declarations of
//! `nft-templates/netd.nft`, and the encoding of [`crate::plan::Elem`]s. (Being written.)

use crate::plan::{Desired, Diff};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("nftables: {0}")]
    Nft(String),
}

/// Applies netd's table in the current network namespace.
pub struct Applier {
    table: String,
}

impl Applier {
    pub fn new(table: &str) -> Result<Self, ApplyError> {
        Ok(Applier {
            table: table.to_string(),
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates whatever is missing of the table, chains and sets, replaces the rules of netd's
    /// own chains and the elements of every set with `desired`, in one atomic batch. The
    /// operator's `user_forward` chain is created if missing and otherwise left alone.
    pub fn sync_full(&mut self, desired: &Desired) -> Result<(), ApplyError> {
        let _ = desired;
        todo!()
    }

    /// Applies element removals, then additions, in one atomic batch.
    pub fn apply_diff(&mut self, diff: &Diff) -> Result<(), ApplyError> {
        let _ = diff;
        todo!()
    }
}
