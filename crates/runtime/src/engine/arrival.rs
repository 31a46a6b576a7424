//! How an engine runs a merged batch of mixed work in the order it arrived, one forward pass
//! per run of batchable items.

/// Runs a merged batch of `work` in arrival order: each maximal run of consecutive items that
/// `batched` picks (e.g. log-probability requests) shares one call of `batch` — one forward
/// pass — and every other item runs alone through `single`. One output per item, in order.
pub fn run_in_arrival_order<W, P: Clone, D, E>(
    work: &[W],
    batched: impl Fn(&W) -> Option<&P>,
    mut batch: impl FnMut(&[P]) -> Result<Vec<D>, E>,
    mut single: impl FnMut(&W) -> Result<D, E>,
) -> Result<Vec<D>, E> {
    let mut out = Vec::with_capacity(work.len());
    let mut i = 0;
    while i < work.len() {
        let mut run = Vec::new();
        while let Some(p) = work.get(i).and_then(&batched) {
            run.push(p.clone());
            i += 1;
        }
        if run.is_empty() {
            out.push(single(&work[i])?);
            i += 1;
        } else {
            out.extend(batch(&run)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_batchable_items_share_one_call() {
        // Even numbers batch; odd ones run alone. Outputs tag how each item ran.
        let mut calls = vec![];
        let out = run_in_arrival_order(
            &[2, 4, 1, 6, 3, 5, 8],
            |x: &i64| (x % 2 == 0).then_some(x),
            |run: &[i64]| {
                calls.push(run.to_vec());
                Ok::<_, ()>(run.iter().map(|x| x * 10).collect())
            },
            |x| Ok(-x),
        )
        .unwrap();
        assert_eq!(out, vec![20, 40, -1, 60, -3, -5, 80]);
        assert_eq!(calls, vec![vec![2, 4], vec![6], vec![8]]);
    }
}
