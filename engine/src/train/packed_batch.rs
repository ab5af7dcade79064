//! Training examples packed into one batch without padding, a shared prompt prefix packed once.

/// Token sequences packed back to back for training: no padding, each sequence attends only to
/// itself and to the segment it continues, if any; its positions restart at 0 or go on from there.
#[derive(Debug, Clone, Default)]
pub struct PackedBatch {
    pub ids: Vec<u32>,
    /// (start, len) of each sequence in `ids`.
    pub segments: Vec<(usize, usize)>,
    /// For each segment, the segment whose tokens come before its own ([`Self::push_shared`]: a prompt
    /// prefix packed once for several examples). Its tokens attend to that segment's as to their own
    /// earlier ones, and their positions continue from its end.
    pub continues: Vec<Option<usize>>,
    /// Position of each token within its sequence.
    pub positions: Vec<u32>,
    /// Indices into `ids` whose next-token logits are scored.
    pub loss_positions: Vec<u32>,
    /// The token expected after each of `loss_positions`.
    pub targets: Vec<u32>,
}

impl PackedBatch {
    pub fn push(&mut self, ids: &[u32], first_target: usize) {
        self.push_segment(ids, 0, None, first_target);
    }

    /// Examples `(ids, first target)` with the tokens they all start with packed once. In a causal model
    /// a shared prefix's hidden states are the same in every example, and the gradient reaching them is
    /// the sum of what each example sends back, so the loss and gradients are those of [`Self::push`]
    /// on each example (to rounding), for the prefix's compute once instead of once per example. The
    /// prefix stops before the first scored position of any example (a scored token's target differs
    /// between examples). With fewer than two examples or nothing shared, the same as `push` on each.
    pub fn push_shared(&mut self, examples: &[(&[u32], usize)]) {
        let Some(&(first, _)) = examples.first() else { return };
        let shared = Self::shared_prefix(examples);
        if examples.len() < 2 || shared == 0 {
            examples.iter().for_each(|&(ids, t)| self.push(ids, t));
            return;
        }
        let prefix = self.segments.len();
        self.push_segment(&first[..shared], 0, None, usize::MAX);
        for &(ids, t) in examples {
            self.push_segment(&ids[shared..], shared, Some(prefix), t);
        }
    }

    /// How many tokens [`push_shared`](Self::push_shared) packs once for these examples: those they
    /// all start with, up to the position before the first scored one of any of them.
    pub fn shared_prefix(examples: &[(&[u32], usize)]) -> usize {
        let Some(&(first, _)) = examples.first() else { return 0 };
        let mut shared = examples.iter().map(|&(ids, t)| ids.len().min(t.max(1)).saturating_sub(1)).min().unwrap_or(0);
        for &(ids, _) in &examples[1..] {
            shared = first.iter().zip(ids).take(shared).take_while(|(a, b)| a == b).count();
        }
        shared
    }

    /// `ids` are the tokens from position `offset` of an example (the earlier ones are segment
    /// `continues`); `first_target` counts from the example's start (usize::MAX: none scored).
    fn push_segment(&mut self, ids: &[u32], offset: usize, continues: Option<usize>, first_target: usize) {
        let start = self.ids.len();
        self.ids.extend_from_slice(ids);
        self.segments.push((start, ids.len()));
        self.continues.push(continues);
        self.positions.extend((offset..offset + ids.len()).map(|p| p as u32));
        // Example position t is predicted at position t - 1, which lies in this segment (t - 1 >= offset).
        for t in first_target.max(1).max(offset + 1)..offset + ids.len() {
            self.loss_positions.push((start + t - 1 - offset) as u32);
            self.targets.push(ids[t - offset]);
        }
    }
}
