// Softmax router: the softmax of all E scores, then the top k (renormalised only with model.renormalize).
#include "engine/model/routers/linear_router.hpp"

namespace moelab {
namespace {

torch::Tensor softmax_gate(const torch::Tensor& s) { return torch::softmax(s, -1); }
[[maybe_unused]] const bool registered = register_gate_router<softmax_gate>("softmax");

}  // namespace
}  // namespace moelab
