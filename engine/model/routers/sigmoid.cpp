// Sigmoid router: each score's sigmoid, then the top k.
#include "engine/model/routers/linear_router.hpp"

namespace moelab {
namespace {

torch::Tensor sigmoid_gate(const torch::Tensor& s) { return torch::sigmoid(s); }
[[maybe_unused]] const bool registered = register_gate_router<sigmoid_gate>("sigmoid");

}  // namespace
}  // namespace moelab
