//! How embedding inputs are grouped into requests: contiguous runs in input order, each with
//! at most `max_inputs` inputs and at most `max_tokens` tokens. Pure, so it is tested alone.

use std::ops::Range;

/// Splits inputs with the given token counts into contiguous batches, in order.
///
/// Each batch holds at most `max_inputs` inputs (0 counts as 1) and at most `max_tokens`
/// tokens in total, except that an input larger than `max_tokens` on its own forms a batch of
/// one (it was already truncated to the model's input limit; sending it alone is the best
/// that can be done). Concatenating the ranges gives `0..token_counts.len()`.
pub fn plan_batches(token_counts: &[usize], max_inputs: usize, max_tokens: usize) -> Vec<Range<usize>> {
    let max_inputs = max_inputs.max(1);
    let mut batches = Vec::new();
    let mut start = 0;
    let mut tokens = 0usize;
    for (i, &t) in token_counts.iter().enumerate() {
        let len = i - start;
        if len > 0 && (len == max_inputs || tokens.saturating_add(t) > max_tokens) {
            batches.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens = tokens.saturating_add(t);
    }
    if start < token_counts.len() {
        batches.push(start..token_counts.len());
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(counts: &[usize], max_inputs: usize, max_tokens: usize) -> Vec<Range<usize>> {
        let plan = plan_batches(counts, max_inputs, max_tokens);
        let mut next = 0;
        for r in &plan {
            assert_eq!(r.start, next, "batches are contiguous and in order: {plan:?}");
            assert!(!r.is_empty() && r.len() <= max_inputs.max(1), "{plan:?}");
            let sum: usize = counts[r.clone()].iter().sum();
            assert!(
                sum <= max_tokens || r.len() == 1,
                "batch {r:?} has {sum} tokens: {plan:?}"
            );
            next = r.end;
        }
        assert_eq!(next, counts.len());
        plan
    }

    #[test]
    fn splits_by_count() {
        assert_eq!(check(&[1; 7], 3, 1000), vec![0..3, 3..6, 6..7]);
        assert_eq!(check(&[], 3, 1000), Vec::<Range<usize>>::new());
    }

    #[test]
    fn splits_by_tokens() {
        assert_eq!(check(&[40, 40, 40, 10, 90, 5], 100, 100), vec![0..2, 2..4, 4..6]);
    }

    #[test]
    fn oversized_input_goes_alone() {
        assert_eq!(check(&[10, 500, 10], 10, 100), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn invariants_hold_on_many_shapes() {
        let mut seed = 7u64;
        for _ in 0..500 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = (seed >> 33) as usize % 50;
            let counts: Vec<usize> = (0..n).map(|i| ((seed >> (i % 30)) as usize % 300) + 1).collect();
            let max_inputs = (seed >> 20) as usize % 10;
            let max_tokens = (seed >> 40) as usize % 600 + 1;
            check(&counts, max_inputs, max_tokens);
        }
    }
}
