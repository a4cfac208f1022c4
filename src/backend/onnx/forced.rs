//! Teacher-forced log-probabilities: how likely a model finds a given answer
//! to a prompt, token by token, as full distributions over its vocabulary
//! (for probes that compare two checkpoints position by position, such as
//! the KL divergence of a fine-tuned model from its base along a refusal).
//!
//! Requests go through the backend's worker thread and are batched like the
//! judges' prefills: sorted by length, left-padded, one run per batch, the
//! batch sized to the memory budget. A row's memory is dominated by its
//! logits (its whole length times the vocabulary) and its answer's
//! distributions (the answer's length times the vocabulary), so both are
//! counted against `kv_cache_mb`.

use tokio::sync::oneshot;
use tracing::debug;

use super::{model_error, BackendError, Msg, OnnxBackend, Worker};

/// A prompt and an answer to run once, for the answer's distributions.
pub(super) struct Forced {
    prompt: Vec<u32>,
    answer: Vec<u32>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, BackendError>>,
}

impl OnnxBackend {
    /// The log-softmax over the whole vocabulary at each position of
    /// `answer_ids` after `prompt_ids` (`answer_ids.len()` vectors: entry
    /// `k` is the distribution that predicts answer token `k`), from one
    /// teacher-forced run batched with the other requests waiting. `Err`
    /// (kind `bad_request`) when the prompt or the answer is empty, an id
    /// is outside the vocabulary, or the two together are longer than the
    /// model takes; kind `model` when the runtime fails.
    pub async fn forced_log_probs(
        &self,
        prompt_ids: Vec<u32>,
        answer_ids: Vec<u32>,
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Forced(Forced {
                prompt: prompt_ids,
                answer: answer_ids,
                reply,
            }))
            .map_err(|_| model_error("the inference thread has stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(model_error("the inference thread has stopped")))
    }
}

/// A prompt and answer the model can take: neither empty, every id in the
/// vocabulary (when it is known), and both together within the context.
pub(super) fn check_forced(
    prompt: &[u32],
    answer: &[u32],
    vocab: Option<usize>,
    max_positions: Option<usize>,
) -> Result<(), BackendError> {
    let bad = |message: String| {
        Err(BackendError {
            kind: "bad_request",
            message,
        })
    };
    if prompt.is_empty() {
        return bad("the prompt has no tokens".into());
    }
    if answer.is_empty() {
        return bad("the answer has no tokens".into());
    }
    if let Some(vocab) = vocab {
        let outside = |ids: &[u32]| ids.iter().copied().find(|&id| id as usize >= vocab);
        for (what, ids) in [("prompt", prompt), ("answer", answer)] {
            if let Some(id) = outside(ids) {
                return bad(format!(
                    "the {what} has token {id}, outside the model's vocabulary of {vocab}"
                ));
            }
        }
    }
    let total = prompt.len() + answer.len();
    if let Some(limit) = max_positions.filter(|&limit| total > limit) {
        return bad(format!(
            "the prompt and the answer have {total} tokens ({} + {}); the model takes at most {limit}",
            prompt.len(),
            answer.len()
        ));
    }
    Ok(())
}

impl Worker {
    /// Queues a request the model can take, answers the others at once.
    pub(super) fn accept_forced(&self, f: Forced, queue: &mut Vec<Forced>) {
        let vocab = self.decoder.vocab_size().or(self.model.config.vocab_size);
        match check_forced(&f.prompt, &f.answer, vocab, self.model.config.max_positions) {
            Ok(()) => queue.push(f),
            Err(e) => {
                let _ = f.reply.send(Err(e));
            }
        }
    }

    /// Runs one batch of the queue (the shortest requests that fit the
    /// budget), dropping those whose caller has gone.
    pub(super) fn serve_forced(&mut self, queue: &mut Vec<Forced>) {
        queue.retain(|f| !f.reply.is_closed());
        if queue.is_empty() {
            return;
        }
        let length = |f: &Forced| f.prompt.len() + f.answer.len();
        queue.sort_by_key(|f| std::cmp::Reverse(length(f)));
        // The logits of the whole row, plus its answer's distributions.
        let batch = self.next_batch(queue, |f| (length(f) + f.answer.len(), 0));
        debug!(
            batch = batch.len(),
            longest = batch.iter().map(length).max().unwrap_or(0),
            "teacher-forced batch"
        );
        let rows: Vec<(&[u32], &[u32])> = batch
            .iter()
            .map(|f| (&f.prompt[..], &f.answer[..]))
            .collect();
        match self.decoder.forced_log_probs(&rows) {
            Ok(read) => {
                for (f, log_probs) in batch.into_iter().zip(read) {
                    let _ = f.reply.send(Ok(log_probs));
                }
            }
            Err(e) => {
                for f in batch {
                    let _ = f.reply.send(Err(model_error(e.0.clone())));
                }
            }
        }
    }
}

/// KL(P || Q) = Σ_v exp(p_v) (p_v - q_v) at each position, for two
/// sequences of log-softmaxed distributions over the same vocabulary (as
/// [`OnnxBackend::forced_log_probs`] returns them), over the positions both
/// have and the tokens both vectors have. Accumulated in f64; tokens
/// impossible under P add nothing, a token possible under P and impossible
/// under Q makes it infinite. Rounding can take a divergence of nearly
/// identical distributions a hair below zero: it is clamped at 0 (NaN stays
/// NaN).
pub fn kl_per_position(p_log: &[Vec<f32>], q_log: &[Vec<f32>]) -> Vec<f64> {
    p_log
        .iter()
        .zip(q_log)
        .map(|(p, q)| {
            let kl: f64 = p
                .iter()
                .zip(q)
                .map(|(&p, &q)| {
                    let (p, q) = (f64::from(p), f64::from(q));
                    let weight = p.exp();
                    if weight == 0.0 {
                        0.0
                    } else {
                        weight * (p - q)
                    }
                })
                .sum();
            if kl < 0.0 {
                0.0
            } else {
                kl
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_softmax(logits: &[f64]) -> Vec<f32> {
        let total = logits.iter().map(|x| x.exp()).sum::<f64>().ln();
        logits.iter().map(|x| (x - total) as f32).collect()
    }

    #[test]
    fn kl_is_zero_on_itself_and_positive_elsewhere() {
        let p = vec![log_softmax(&[1.0, 2.0, 3.0]), log_softmax(&[0.0, 0.0, 5.0])];
        let q = vec![log_softmax(&[3.0, 2.0, 1.0]), log_softmax(&[0.0, 0.0, 5.0])];
        assert_eq!(kl_per_position(&p, &p), vec![0.0, 0.0]);
        let kl = kl_per_position(&p, &q);
        assert_eq!(kl.len(), 2);
        // Σ p (log p - log q) by hand for the first position.
        let pp: Vec<f64> = p[0].iter().map(|v| f64::from(*v).exp()).collect();
        let want: f64 = (0..3)
            .map(|i| pp[i] * (f64::from(p[0][i]) - f64::from(q[0][i])))
            .sum();
        assert!((kl[0] - want).abs() < 1e-12 && kl[0] > 1.0, "{kl:?}");
        assert_eq!(kl[1], 0.0);
        // Over the positions both have.
        assert_eq!(kl_per_position(&p[..1], &q).len(), 1);
        assert!(kl_per_position(&p, &[]).is_empty());
    }

    #[test]
    fn kl_handles_impossible_tokens() {
        let ninf = f32::NEG_INFINITY;
        let p = vec![vec![ninf, 0.0]];
        let q = vec![vec![0.5f32.ln(), 0.5f32.ln()]];
        let kl = kl_per_position(&p, &q);
        assert!((kl[0] - std::f64::consts::LN_2).abs() < 1e-6, "{kl:?}");
        assert_eq!(kl_per_position(&q, &p), vec![f64::INFINITY]);
        assert!(kl_per_position(&[vec![f32::NAN, 0.0]], &q)[0].is_nan());
    }

    #[test]
    fn bad_requests_are_named() {
        let check = |p: &[u32], a: &[u32]| check_forced(p, a, Some(10), Some(5));
        assert!(check(&[1, 2], &[3, 4, 5]).is_ok());
        for (p, a, says) in [
            (&[][..], &[1][..], "prompt has no tokens"),
            (&[1], &[], "answer has no tokens"),
            (
                &[10],
                &[1],
                "prompt has token 10, outside the model's vocabulary of 10",
            ),
            (&[1], &[1, 11], "answer has token 11"),
            (
                &[1, 2, 3],
                &[4, 5, 6],
                "have 6 tokens (3 + 3); the model takes at most 5",
            ),
        ] {
            let e = check(p, a).unwrap_err();
            assert_eq!(e.kind, "bad_request");
            assert!(e.message.contains(says), "{}", e.message);
        }
        assert!(check_forced(&[1000], &[1000], None, None).is_ok());
    }
}
