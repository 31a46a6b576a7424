//! Request validation for the reference service: every sequence is checked here
//! (INVALID_ARGUMENT naming the field) so a merged model batch never fails for one bad one.

use rrlhf_proto::common::v1::LogProbsRequest;
use rrlhf_runtime::validate::sequence_pairs;
use tonic::Status;

use crate::engine::Pair;
use crate::service::ReferenceServer;

impl ReferenceServer {
    /// The (prompt, response) pairs of a `LogProbs` request, validated.
    pub(crate) fn pairs(&self, req: &LogProbsRequest) -> Result<Vec<Pair>, Status> {
        sequence_pairs(&req.sequences, self.vocab_size, self.cfg.max_length)
    }
}
