// Tanh router: each score's tanh, then the top k.
#include "engine/model/routers/linear_router.hpp"

namespace moelab {
namespace {

torch::Tensor tanh_gate(const torch::Tensor& s) { return torch::tanh(s); }
[[maybe_unused]] const bool registered = register_gate_router<tanh_gate>("tanh");

}  // namespace
}  // namespace moelab
