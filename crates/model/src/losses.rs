//! Training losses for the RLHF pipeline, on tensors so that autograd flows through them:
//! Bradley–Terry (reward model stage 1), the BRME MSE of the paper's eq. (8) with the
//! reparameterisation trick (stage 2), PPO's clipped policy loss, the clipped value loss and the
//! token entropy. Every `mask` is 1 on positions that count and 0 elsewhere.

use tch::{Kind, Tensor};

/// Mean of `x` over positions where `mask` is 1 (0 when the mask is empty).
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    let mask = mask.to_kind(Kind::Float);
    (x * &mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
}

/// Next-token negative log-likelihood averaged over masked target positions.
pub fn nll(token_logprobs: &Tensor, mask: &Tensor) -> Tensor {
    masked_mean(&token_logprobs.neg(), mask)
}

/// `−log σ(r⁺ − r⁻)` averaged over pairs.
pub fn bradley_terry(chosen: &Tensor, rejected: &Tensor) -> Tensor {
    (chosen - rejected).log_sigmoid().neg().mean(Kind::Float)
}

/// One BRME head's loss on a batch of pairs (eq. 8): the head samples `r = μ + ε·σ` for the
/// chosen and the rejected response and regresses them onto `α(p̂ − ½)` and `α((1 − p̂) − ½)`,
/// where `p̂ = σ(r₁⁺ − r₁⁻)` comes from the frozen stage-1 model. `eps_*` are standard normal
/// draws of the same shape as `mu_*` (passed in so that tests can fix them).
#[allow(clippy::too_many_arguments)]
pub fn brme_mse(
    mu_chosen: &Tensor,
    sigma_chosen: &Tensor,
    mu_rejected: &Tensor,
    sigma_rejected: &Tensor,
    p_hat: &Tensor,
    alpha: f64,
    eps_chosen: &Tensor,
    eps_rejected: &Tensor,
) -> Tensor {
    let r_pos = mu_chosen + eps_chosen * sigma_chosen;
    let r_neg = mu_rejected + eps_rejected * sigma_rejected;
    let target_pos = (p_hat - 0.5) * alpha;
    let target_neg = (p_hat.ones_like() - p_hat - 0.5) * alpha;
    ((r_pos - target_pos).square() + (r_neg - target_neg).square()).mean(Kind::Float)
}

/// Statistics of a PPO policy-loss evaluation.
#[derive(Debug)]
pub struct PolicyLoss {
    pub loss: Tensor,
    /// Fraction of tokens whose ratio left `[1 − ε, 1 + ε]` in the loss-increasing direction.
    pub clip_fraction: Tensor,
    /// `E[(r − 1) − log r]` (Schulman's k3 estimator of KL(old ‖ new)), always ≥ 0.
    pub approx_kl: Tensor,
}

/// PPO's clipped surrogate (Schulman et al. 2017): `max(−A·r, −A·clip(r, 1−ε, 1+ε))` with
/// `r = exp(logp − old_logp)`, averaged over masked tokens.
pub fn ppo_policy_loss(
    logprobs: &Tensor,
    old_logprobs: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip_eps: f64,
) -> PolicyLoss {
    let log_ratio = logprobs - old_logprobs;
    let ratio = log_ratio.exp();
    let unclipped = advantages.neg() * &ratio;
    let clipped = advantages.neg() * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps);
    let loss = masked_mean(&unclipped.maximum(&clipped), mask);
    let clip_fraction = masked_mean(&clipped.gt_tensor(&unclipped).to_kind(Kind::Float), mask);
    let approx_kl = masked_mean(&((&ratio - 1.0) - &log_ratio), mask);
    PolicyLoss {
        loss,
        clip_fraction: clip_fraction.detach(),
        approx_kl: approx_kl.detach(),
    }
}

/// Clipped value loss: `½·max((V − R)², (V_clip − R)²)` with
/// `V_clip = V_old + clip(V − V_old, −c, c)`; `clip = None` gives the plain squared error.
pub fn value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    clip: Option<f64>,
) -> Tensor {
    let plain = (values - returns).square();
    let per_token = match clip {
        Some(c) => {
            let v_clip = old_values + (values - old_values).clamp(-c, c);
            plain.maximum(&(v_clip - returns).square())
        }
        None => plain,
    };
    masked_mean(&per_token, mask) * 0.5
}

/// Mean entropy of the token distributions `logits` `[.., V]` over masked positions.
pub fn entropy(logits: &Tensor, mask: &Tensor) -> Tensor {
    let logp = logits.log_softmax(-1, Kind::Float);
    let h = (logp.exp() * &logp)
        .sum_dim_intlist(-1, false, Kind::Float)
        .neg();
    masked_mean(&h, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn ppo_at_ratio_one_is_minus_mean_advantage() {
        let adv = t(&[1.0, -2.0, 0.5, 3.0]);
        let lp = t(&[-1.0, -0.5, -2.0, -0.1]);
        let mask = t(&[1.0, 1.0, 1.0, 0.0]);
        let out = ppo_policy_loss(&lp, &lp, &adv, &mask, 0.2);
        assert!((scalar(&out.loss) - (-(1.0 - 2.0 + 0.5) / 3.0)).abs() < 1e-6);
        assert_eq!(scalar(&out.clip_fraction), 0.0);
        assert!(scalar(&out.approx_kl).abs() < 1e-7);
    }

    #[test]
    fn ppo_clipping_engages_beyond_epsilon() {
        let old = t(&[0.0, 0.0]);
        // Ratio 1.5 with positive advantage: the gain is capped at 1.2·A and has no gradient.
        let new = t(&[1.5, 0.5]).log().set_requires_grad(true);
        let adv = t(&[2.0, -1.0]);
        let out = ppo_policy_loss(&new, &old, &adv, &t(&[1.0, 1.0]), 0.2);
        // token 0: max(−3, −2.4) = −2.4; token 1: max(0.5, 0.8) = 0.8 (ratio clipped to 0.8).
        assert!((scalar(&out.loss) - (-2.4 + 0.8) / 2.0).abs() < 1e-6);
        assert_eq!(scalar(&out.clip_fraction), 1.0);
        out.loss.backward();
        let g = Vec::<f32>::try_from(new.grad()).unwrap();
        assert_eq!(g, vec![0.0, 0.0], "clipped tokens carry no gradient");
        // Inside the clip range the gradient is −A·r / n.
        let inside = t(&[1.1]).log().set_requires_grad(true);
        let out = ppo_policy_loss(&inside, &t(&[0.0]), &t(&[2.0]), &t(&[1.0]), 0.2);
        out.loss.backward();
        assert!((scalar(&inside.grad()) + 2.2).abs() < 1e-5);
    }

    #[test]
    fn bradley_terry_pushes_chosen_up_and_rejected_down() {
        let c = t(&[0.3, -1.0]).set_requires_grad(true);
        let r = t(&[0.1, 0.5]).set_requires_grad(true);
        let loss = bradley_terry(&c, &r);
        loss.backward();
        assert!(
            Vec::<f32>::try_from(c.grad())
                .unwrap()
                .iter()
                .all(|&g| g < 0.0)
        );
        assert!(
            Vec::<f32>::try_from(r.grad())
                .unwrap()
                .iter()
                .all(|&g| g > 0.0)
        );
        // Equal rewards: loss is log 2.
        let same = bradley_terry(&t(&[1.0]), &t(&[1.0]));
        assert!((scalar(&same) - 2f64.ln()).abs() < 1e-6);
    }

    /// Appendix B.1: with `r = μ + εσ`, `E_ε[∂ℓ/∂σ] = 2σ ≥ 0` whatever μ and the target are, so
    /// gradient descent shrinks σ where the head is trained. Checked by Monte Carlo.
    #[test]
    fn brme_expected_sigma_gradient_is_non_negative() {
        tch::manual_seed(7);
        let n = 200_000;
        for &(mu, sigma, p_hat) in &[(0.8f32, 0.5f32, 0.9f32), (-2.0, 1.5, 0.2), (0.0, 0.05, 0.5)] {
            let mu_c = Tensor::full([n], mu as f64, (Kind::Float, tch::Device::Cpu));
            let sig_c = Tensor::full([n], sigma as f64, (Kind::Float, tch::Device::Cpu))
                .set_requires_grad(true);
            let mu_r = mu_c.neg();
            let sig_r = sig_c.shallow_clone();
            let p = Tensor::full([n], p_hat as f64, (Kind::Float, tch::Device::Cpu));
            let loss = brme_mse(
                &mu_c,
                &sig_c,
                &mu_r,
                &sig_r,
                &p,
                2.0,
                &Tensor::randn([n], (Kind::Float, tch::Device::Cpu)),
                &Tensor::randn([n], (Kind::Float, tch::Device::Cpu)),
            ) * n as f64;
            loss.backward();
            let mean_grad = scalar(&sig_c.grad().mean(Kind::Float));
            // Two terms share σ: E[∂/∂σ] = 2σ + 2σ.
            let expected = 4.0 * sigma as f64;
            assert!(mean_grad >= 0.0, "σ gradient {mean_grad} < 0");
            assert!(
                (mean_grad - expected).abs() < 0.05 * expected + 0.02,
                "{mean_grad} vs {expected}"
            );
        }
    }

    #[test]
    fn value_loss_clips_large_moves() {
        let old = t(&[0.0]);
        let ret = t(&[1.0]);
        let v = t(&[3.0]);
        // Unclipped (3−1)² = 4; clipped V = 0.5 → (0.5−1)² = 0.25; max = 4 → ½·4.
        assert!((scalar(&value_loss(&v, &old, &ret, &t(&[1.0]), Some(0.5))) - 2.0).abs() < 1e-6);
        let v = t(&[0.8]);
        // Unclipped 0.04; clipped V = 0.5 → 0.25; max = 0.25 → 0.125.
        assert!((scalar(&value_loss(&v, &old, &ret, &t(&[1.0]), Some(0.5))) - 0.125).abs() < 1e-6);
        assert!((scalar(&value_loss(&v, &old, &ret, &t(&[1.0]), None)) - 0.02).abs() < 1e-6);
    }

    #[test]
    fn entropy_of_uniform_is_log_vocab() {
        let logits = Tensor::zeros([2, 3, 5], (Kind::Float, tch::Device::Cpu));
        let mask = t(&[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]).view([2, 3]);
        assert!((scalar(&entropy(&logits, &mask)) - 5f64.ln()).abs() < 1e-6);
    }
}
