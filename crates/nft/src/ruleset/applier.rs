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
        match self.sock.commit(batch) {
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
