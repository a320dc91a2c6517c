#include "engine/model/routers/linear_router.hpp"

namespace moelab {

LinearRouterImpl::LinearRouterImpl(const ModelConfig& m) : RouterImpl(m) {
  proj_ = register_module("proj", torch::nn::Linear(m.d_model, m.total_experts()));
}

}  // namespace moelab
