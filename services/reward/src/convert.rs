//! Request validation and conversion for the reward service: the aggregation a request asks
//! for (parsed once, here, with the config's defaults), its samples tokenised and checked, and
//! scores as proto messages. Every bad request is INVALID_ARGUMENT naming the field.

use rrlhf_proto::reward::v1::{
    HeadReward, Sample, SampleScore, ScoreRequest, UncertaintySet as ProtoSet,
};
use rrlhf_robust::{HeadOutputs, Lambda, Strategy, StrategyName, UncertaintySet};

use crate::config::Overlong;
use crate::error::ServiceError;
use crate::service::RewardServer;

impl RewardServer {
    /// The strategy a request asks for: empty `strategy` is the config's default, a bare name
    /// takes `lambda` / `uwo_c` or the config's defaults, and `name:param` is taken as written
    /// (an explicit `lambda` field still overrides its λ).
    pub(crate) fn strategy(&self, req: &ScoreRequest) -> Result<Strategy, ServiceError> {
        let invalid = |field: &str| {
            let field = field.to_string();
            move |e: rrlhf_robust::RobustError| ServiceError::invalid(field, e.to_string())
        };
        let lambda = req
            .lambda
            .map(Lambda::new)
            .transpose()
            .map_err(invalid("lambda"))?;
        if let Some(c) = req.uwo_c {
            Strategy::from_name(StrategyName::Uwo, None, Some(c)).map_err(invalid("uwo_c"))?;
        }
        let settings = &self.cfg.service;
        let text = req.strategy.trim();
        let strategy = if text.is_empty() {
            settings.strategy(settings.default_strategy, None, req.uwo_c)
        } else if text.contains([':', '=']) {
            text.parse::<Strategy>()
        } else {
            text.parse::<StrategyName>()
                .and_then(|name| settings.strategy(name, None, req.uwo_c))
        }
        .map_err(invalid("strategy"))?;
        match lambda {
            Some(l) => strategy.with_lambda(l).map_err(invalid("lambda")),
            None => Ok(strategy),
        }
    }

    /// Token ids of every sample, validated.
    pub(crate) fn encode(&self, samples: &[Sample]) -> Result<Vec<Vec<i64>>, ServiceError> {
        if samples.is_empty() {
            return Err(ServiceError::invalid(
                "samples",
                "at least one sample is required",
            ));
        }
        let vocab = self.engine.info.vocab_size;
        let max = self.cfg.max_length;
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if !s.token_ids.is_empty() {
                    if let Some(t) = s.token_ids.iter().find(|&&t| t < 0 || t >= vocab) {
                        return Err(ServiceError::invalid(format!("samples[{i}].token_ids"), format!("id {t} is outside [0, {vocab})")));
                    }
                    if s.token_ids.len() > max {
                        return Err(ServiceError::invalid(format!("samples[{i}].token_ids"), format!("{} tokens exceed max_length {max}", s.token_ids.len())));
                    }
                    return Ok(s.token_ids.clone());
                }
                if s.response.trim().is_empty() {
                    return Err(ServiceError::invalid(format!("samples[{i}].response"), "must not be empty"));
                }
                let (ids, full) = self.tokenizer.encode_pair(&s.prompt, &s.response, max)?;
                if full > max && self.cfg.service.overlong == Overlong::Reject {
                    return Err(ServiceError::invalid(format!("samples[{i}]"), format!("{full} tokens exceed max_length {max} (the server rejects longer samples)")));
                }
                Ok(ids)
            })
            .collect()
    }
}

/// The uncertainty set a request asks for (unspecified: the heads' means).
pub(crate) fn uncertainty_set(value: i32) -> Result<UncertaintySet, ServiceError> {
    match ProtoSet::try_from(value) {
        Ok(ProtoSet::Unspecified | ProtoSet::Mean) => Ok(UncertaintySet::Mean),
        Ok(ProtoSet::Sampled) => Ok(UncertaintySet::Sampled),
        Err(_) => Err(ServiceError::invalid(
            "uncertainty_set",
            format!("unknown value {value}"),
        )),
    }
}

pub(crate) fn to_proto(
    id: &str,
    h: HeadOutputs,
    a: rrlhf_robust::strategy::Aggregated,
    num_tokens: usize,
) -> SampleScore {
    let s = a.summary;
    SampleScore {
        id: id.to_string(),
        heads: h
            .mu
            .iter()
            .zip(&h.sigma)
            .map(|(&mu, &sigma)| HeadReward { mu, sigma })
            .collect(),
        nominal_head: s.nominal_head as u32,
        nominal: s.nominal,
        min: s.min,
        max: s.max,
        mean: s.mean,
        median: s.median,
        variance: s.variance,
        reward: a.reward,
        num_tokens: num_tokens as u32,
    }
}
