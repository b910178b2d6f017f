//! Batches of the table (whole, or a diff of elements) and the socket that applies them.

use super::*;

// ---------------------------------------------------------------------------------------
// Applier
// ---------------------------------------------------------------------------------------

/// Which elements each element group of a batch carried (kernel element index -> plan
/// element), to name a rejected element.
pub type Groups = HashMap<ElemGroup, (SetId, Vec<Elem>)>;

/// Applies netd's table in the network namespace the Applier was created in (its netlink
/// socket is opened by [`Applier::new`] and stays bound to that namespace).
pub struct Applier {
    table: String,
    sock: Socket,
}

impl Applier {
    pub fn new(table: &str) -> Result<Self, ApplyError> {
        Ok(Applier {
            table: table.to_string(),
            sock: Socket::open()?,
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The batch [`Applier::sync_full`] sends.
    pub fn sync_full_batch(&self, desired: &Desired) -> Result<(Batch, Groups), ApplyError> {
        full_batch(&self.table, desired)
    }

    /// The batch [`Applier::apply_diff`] sends.
    pub fn diff_batch(&self, diff: &Diff) -> Result<(Batch, Groups), ApplyError> {
        diff_batch(&self.table, diff)
    }

    /// Creates whatever is missing of the table, chains and sets, replaces the rules of netd's
    /// own chains and the elements of every set with `desired`, in one atomic batch. The
    /// operator's `user_forward` chain is created if missing and otherwise left alone.
    pub fn sync_full(&mut self, desired: &Desired) -> Result<(), ApplyError> {
        let (b, groups) = self.sync_full_batch(desired)?;
        self.commit(&b, &groups)
    }

    /// Applies element removals, then additions, in one atomic batch. Strict: removing a
    /// missing element or adding an existing one fails the whole batch, which means the
    /// kernel drifted from netd's view and a [`Applier::sync_full`] is due.
    pub fn apply_diff(&mut self, diff: &Diff) -> Result<(), ApplyError> {
        let (b, groups) = self.diff_batch(diff)?;
        self.commit(&b, &groups)
    }

    /// Sends any batch on this Applier's socket.
    pub fn commit(&mut self, batch: &Batch, groups: &Groups) -> Result<(), ApplyError> {
        self.commit_at(batch, groups, None)
    }

    /// Commits `batch` while nobody listens to the ruleset's notifications, so that the
    /// kernel builds none: nf_tables builds one notification per set element, but only when
    /// a socket is subscribed to `NFNLGRP_NFTABLES` (or the batch asks for an echo), and for
    /// thousands of elements that is a third of the commit. `deafen` takes the listener (the
    /// healer's socket) out of the group and `hear` puts it back.
    ///
    /// What the listener would have heard from others meanwhile is accounted for with the
    /// ruleset's generation, which every transaction raises by one:
    /// 1. read the generation `g` while the listener still hears everything;
    /// 2. an empty batch waits for any transaction in flight (the kernel counts one in `g`
    ///    before it sends its notifications, which could otherwise go out after step 3);
    /// 3. deafen, and commit the batch *at generation `g`*: the kernel refuses it
    ///    (`ERESTART`) if anyone committed since step 1, so a success means nobody did;
    /// 4. hear again, and read the generation: anything but `g + 1` means someone committed
    ///    after us and before the listener was back.
    ///
    /// Whenever the listener may have missed a transaction, [`Unheard::others_committed`]
    /// says so and the caller must have the table dumped and compared once the listener is
    /// back (that dump sees whatever was missed, and the listener hears what follows). A
    /// batch refused at step 3 is therefore committed again at once, without a generation.
    /// A failure to read the generation or to deafen falls back to a plain commit.
    pub fn commit_unheard(
        &mut self,
        batch: &Batch,
        groups: &Groups,
        deafen: &mut dyn FnMut() -> std::io::Result<()>,
        hear: &mut dyn FnMut(),
    ) -> Unheard {
        let before = match self.sock.generation().and_then(|g| {
            self.sock.barrier()?;
            Ok(g)
        }) {
            Ok(g) => g,
            Err(_) => return Unheard::heard(self.commit(batch, groups)),
        };
        if deafen().is_err() {
            hear();
            return Unheard::heard(self.commit(batch, groups));
        }
        let mut others_committed = false;
        let mut result = self.commit_at(batch, groups, Some(before));
        if matches!(&result, Err(ApplyError::Nft(NftError::Batch { errno, .. })) if *errno == libc::ERESTART)
        {
            // Someone committed since step 1, perhaps unheard; ours was not applied.
            others_committed = true;
            result = self.commit(batch, groups);
        }
        hear();
        let after = self.sock.generation().ok();
        others_committed |= match result {
            // Ours is the one transaction expected since step 1.
            Ok(()) if !others_committed => after != Some(next_generation(before)),
            // Ours was not applied: any transaction since step 1 is someone else's.
            Err(_) if !others_committed => after != Some(before),
            _ => true,
        };
        Unheard {
            result,
            others_committed,
        }
    }

    fn commit_at(
        &mut self,
        batch: &Batch,
        groups: &Groups,
        genid: Option<u32>,
    ) -> Result<(), ApplyError> {
        match self.sock.commit_at(batch, genid) {
            Ok(()) => Ok(()),
            Err(NftError::Rejected {
                first,
                elem_text: None,
                more,
            }) => {
                let text = first.elem.and_then(|(g, i)| {
                    let (_, elems) = groups.get(&g)?;
                    elems.get(i).map(elem_text)
                });
                Err(NftError::Rejected {
                    first,
                    elem_text: text,
                    more,
                }
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// How [`Applier::commit_unheard`] went.
#[derive(Debug)]
pub struct Unheard {
    /// The commit's own outcome, as [`Applier::commit`] reports it.
    pub result: Result<(), ApplyError>,
    /// Someone else may have committed while the listener was away: check the table.
    pub others_committed: bool,
}

impl Unheard {
    fn heard(result: Result<(), ApplyError>) -> Unheard {
        Unheard {
            result,
            others_committed: false,
        }
    }
}

/// The generation after `g`: the kernel skips 0 when the counter wraps.
pub fn next_generation(g: u32) -> u32 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// The one batch of a full sync of table `table` to `desired` (pure; see
/// [`Applier::sync_full`]).
pub fn full_batch(table: &str, desired: &Desired) -> Result<(Batch, Groups), ApplyError> {
    let t = table;
    let mut b = Batch::new(Family::Inet);
    let mut groups = Groups::new();
    b.add_table(t);
    // Chains before sets, as nft does, so that a fresh table gets the same object handles
    // as one loaded from the template with `nft -f`.
    for (name, base) in chains() {
        b.add_chain(t, name, base.as_ref());
    }
    for set in SetId::ALL {
        b.add_set(t, &set_spec(set));
    }
    for (name, _) in chains() {
        if name != USER_CHAIN {
            b.flush_chain(t, name);
        }
    }
    for (chain, text, exprs) in rules() {
        b.add_rule(t, chain, &exprs, text);
    }
    for set in SetId::ALL {
        b.flush_set(t, set.name());
        let elems: Vec<Elem> = desired.normalized(set).into_iter().collect();
        push_elems(&mut b, &mut groups, t, set, elems, false, false)?;
    }
    Ok((b, groups))
}

/// The one batch applying `diff`: every removal, then every addition (pure; see
/// [`Applier::apply_diff`]).
pub fn diff_batch(table: &str, diff: &Diff) -> Result<(Batch, Groups), ApplyError> {
    let t = table;
    let mut b = Batch::new(Family::Inet);
    let mut groups = Groups::new();
    for (set, elems) in &diff.remove {
        push_elems(&mut b, &mut groups, t, *set, elems.clone(), true, false)?;
    }
    for (set, elems) in &diff.add {
        push_elems(&mut b, &mut groups, t, *set, elems.clone(), false, true)?;
    }
    Ok((b, groups))
}

/// Adds the kernel elements of `elems` as one group; the group's indices refer to kernel
/// elements, so intervals map back through `owner`.
pub(super) fn push_elems(
    b: &mut Batch,
    groups: &mut Groups,
    table: &str,
    set: SetId,
    elems: Vec<Elem>,
    delete: bool,
    excl: bool,
) -> Result<(), ApplyError> {
    if elems.is_empty() {
        return Ok(());
    }
    let mut kernel = Vec::with_capacity(elems.len());
    let mut owner = Vec::with_capacity(elems.len());
    for e in &elems {
        for k in encode_elem(set, e)? {
            kernel.push(k);
            owner.push(e.clone());
        }
    }
    let g = if delete {
        b.del_elems(table, set.name(), &kernel)
    } else {
        b.add_elems(table, set.name(), &kernel, excl)
    };
    groups.insert(g, (set, owner));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::next_generation;

    #[test]
    fn the_generation_after_the_last_skips_zero() {
        assert_eq!(next_generation(41), 42);
        assert_eq!(next_generation(u32::MAX), 1);
    }
}
