// Fused CPU forward+backward of the DAL and beta/gamma losses (tune_losses/losses/fused.py builds and loads it).
//
// At the batch sizes of this field (B = 8..128, C = 10..200) a loss step on CPU costs what PyTorch's per-operator
// dispatch and autograd bookkeeping cost, not arithmetic: cross-entropy is two fused ATen kernels, DAL and
// beta/gamma written as tensor expressions are five to nine. Here each is one autograd node: the forward computes
// the softmax once, the loss and its gradient together (saved), and the backward is one multiplication.
// The formulas are those of dal.py and beta_gamma.py; tests/test_losses.py checks both paths against float64
// references and with gradcheck.

#include <torch/extension.h>

#include <cmath>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

void check_inputs(const torch::Tensor& z, const torch::Tensor& y) {
  TORCH_CHECK(z.dim() == 2 && y.dim() == 1 && y.size(0) == z.size(0), "logits (B, C) and target (B,) expected");
}

void check_target(int64_t target, int64_t classes) {
  TORCH_CHECK(target >= 0 && target < classes, "target ", target, " is not a class index in [0, ", classes, ")");
}

void check_once(const char* name) {
  // The saved gradient is a constant of the graph: a second derivative through it would be silently wrong.
  TORCH_CHECK(!torch::autograd::GradMode::is_enabled(), name,
              ": the fused loss is differentiable once (create_graph=True asks for more); "
              "set TUNE_LOSSES_FUSED=0 to use the tensor-expression version");
}

// DAL:  L = -(1/B) sum_i sum_j S[y_i, j] log p_ij
//       dL/dz_ij = (p_ij * sum_k S[y_i, k] - S[y_i, j]) / B
struct DalFn : public torch::autograd::Function<DalFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& z, const torch::Tensor& y,
                               const torch::Tensor& soft_labels) {
    check_inputs(z, y);
    TORCH_CHECK(soft_labels.dim() == 2 && soft_labels.size(0) == z.size(1) && soft_labels.size(1) == z.size(1),
                "soft labels (C, C) expected");
    auto logp = at::log_softmax(z, 1).contiguous();
    auto grad = logp.exp();
    auto yc = y.to(torch::kLong).contiguous();
    auto sc = soft_labels.to(z.scalar_type()).contiguous();
    auto loss = torch::empty({}, logp.options());
    const int64_t B = logp.size(0), C = logp.size(1);
    AT_DISPATCH_FLOATING_TYPES(logp.scalar_type(), "dal_loss", [&] {
      const scalar_t* lp = logp.data_ptr<scalar_t>();
      const scalar_t* s0 = sc.data_ptr<scalar_t>();
      const int64_t* yp = yc.data_ptr<int64_t>();
      scalar_t* gp = grad.data_ptr<scalar_t>();
      const scalar_t inv_b = scalar_t(1) / scalar_t(B);
      double total = 0;
      for (int64_t i = 0; i < B; ++i) {
        check_target(yp[i], C);
        const scalar_t* s = s0 + yp[i] * C;
        const scalar_t* l = lp + i * C;
        scalar_t* g = gp + i * C;
        scalar_t row_sum = 0, li = 0;
        for (int64_t j = 0; j < C; ++j) {
          row_sum += s[j];
          li -= s[j] * l[j];
        }
        total += li;
        const scalar_t scale = row_sum * inv_b;
        for (int64_t j = 0; j < C; ++j) g[j] = g[j] * scale - s[j] * inv_b;
      }
      loss.fill_(total / B);
    });
    ctx->save_for_backward({grad});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    check_once("dal");
    return {ctx->get_saved_variables()[0] * grad_out[0], torch::Tensor(), torch::Tensor()};
  }
};

// beta/gamma:  L = -(1/B) sum_i f_i log p_t,   f = u^gamma,   u = 1 - p_t^beta = -expm1(beta log p_t)
//              dL_i/dlog p_t = -f + gamma beta (1 - u) u^(gamma - 1) log p_t
//              dlog p_t/dz_ij = [j == t] - p_ij
// u^(gamma - 1) log p_t -> 0 as p_t -> 1 (u ~ -beta log p_t), also for gamma < 1: that limit is taken at u = 0.
struct BetaGammaFn : public torch::autograd::Function<BetaGammaFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& z, const torch::Tensor& y, double beta,
                               double gamma) {
    check_inputs(z, y);
    auto logp = at::log_softmax(z, 1).contiguous();
    auto grad = logp.exp();
    auto yc = y.to(torch::kLong).contiguous();
    auto loss = torch::empty({}, logp.options());
    const int64_t B = logp.size(0), C = logp.size(1);
    AT_DISPATCH_FLOATING_TYPES(logp.scalar_type(), "beta_gamma_loss", [&] {
      const scalar_t* lp = logp.data_ptr<scalar_t>();
      const int64_t* yp = yc.data_ptr<int64_t>();
      scalar_t* gp = grad.data_ptr<scalar_t>();
      const scalar_t b = scalar_t(beta), gm = scalar_t(gamma), inv_b = scalar_t(1) / scalar_t(B);
      double total = 0;
      for (int64_t i = 0; i < B; ++i) {
        check_target(yp[i], C);
        const scalar_t lt = lp[i * C + yp[i]];
        const scalar_t u = -std::expm1(b * lt);
        const scalar_t u_gm1 = u == 0 ? scalar_t(0) : std::pow(u, gm - 1);  // one pow per sample
        const scalar_t f = u == 0 ? std::pow(u, gm) : u_gm1 * u;
        total -= f * lt;
        const scalar_t focus = gm * b * (1 - u) * u_gm1 * lt;
        const scalar_t c = (focus - f) * inv_b;  // dL/dlog p_t of this sample, over B
        scalar_t* g = gp + i * C;
        for (int64_t j = 0; j < C; ++j) g[j] *= -c;
        g[yp[i]] = c * -std::expm1(lt);  // c (1 - p_t), accurate as p_t -> 1
      }
      loss.fill_(total / B);
    });
    ctx->save_for_backward({grad});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    check_once("beta_gamma");
    return {ctx->get_saved_variables()[0] * grad_out[0], torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor dal_loss(const torch::Tensor& z, const torch::Tensor& y, const torch::Tensor& soft_labels) {
  return DalFn::apply(z, y, soft_labels);
}

torch::Tensor beta_gamma_loss(const torch::Tensor& z, const torch::Tensor& y, double beta, double gamma) {
  return BetaGammaFn::apply(z, y, beta, gamma);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dal_loss", &dal_loss, "DAL, mean over the batch (CPU, float32/float64)");
  m.def("beta_gamma_loss", &beta_gamma_loss, "beta/gamma loss, mean over the batch (CPU, float32/float64)");
}
