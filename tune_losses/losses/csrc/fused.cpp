// Fused CPU forward+backward of the DAL, beta/gamma and CC losses (tune_losses/losses/fused.py builds it).
//
// At the batch sizes of this field (B = 8..128, C = 10..200) a loss step on CPU costs what PyTorch's
// per-operator dispatch and autograd bookkeeping cost, not arithmetic: cross-entropy is two fused ATen kernels;
// DAL and beta/gamma as tensor expressions are five to nine, CC-Loss about twenty. Here each is one operator
// (TORCH_LIBRARY: tune_losses::dal_loss, beta_gamma_loss, cc_loss) with one autograd node: the CPU kernel
// computes the softmax once and returns the loss together with its gradient, which the autograd kernel saves;
// the backward is one multiplication. Logits (..., B, C): leading dimensions are independent replicas, each with
// its own mean over its B rows (fused.py's vmap rule passes vmap's replicas that way), and its own loss
// parameters (beta, gamma, lambda: tensors of the leading shape, or one value for all; a fused group of configs
// gives each replica its config's). The formulas are those of
// dal.py, beta_gamma.py and cc.py; tests/losses/test_losses.py checks both paths against float64 references and with
// gradcheck, and against each other.

#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// Logits (..., B, C) and target (..., B): the number of replicas K (the product of the leading dimensions).
int64_t check_inputs(const torch::Tensor& z, const torch::Tensor& y) {
  TORCH_CHECK(z.dim() >= 2 && y.dim() == z.dim() - 1 && y.sizes() == z.sizes().slice(0, z.dim() - 1),
              "logits (..., B, C) and target (..., B) expected");
  int64_t k = 1;
  for (int64_t d = 0; d < z.dim() - 2; ++d) k *= z.size(d);
  return k;
}

std::vector<int64_t> leading(const torch::Tensor& z) { return z.sizes().slice(0, z.dim() - 2).vec(); }

// A loss parameter, one value per replica (..., as the leading dimensions of z) or one for all (a 0-d tensor):
// as doubles, one per replica, read at k.
torch::Tensor per_replica_values(const torch::Tensor& param, const torch::Tensor& z, const char* name) {
  TORCH_CHECK(param.dim() == 0 || param.sizes() == z.sizes().slice(0, z.dim() - 2), name,
              ": one value, or one per replica (the leading dimensions of the logits), expected");
  return param.to(torch::kCPU, torch::kDouble).expand(leading(z)).contiguous();
}


void check_once(const char* name) {
  // The saved gradient is a constant of the graph: a second derivative through it would be silently wrong.
  TORCH_CHECK(!torch::autograd::GradMode::is_enabled(), name,
              ": the fused loss is differentiable once (create_graph=True asks for more); "
              "set TUNE_LOSSES_FUSED=0 to use the tensor-expression version");
}

// The saved gradient (..., B, X) times the incoming gradient of each replica's loss (...).
torch::Tensor per_replica(const torch::Tensor& grad, const torch::Tensor& grad_loss) {
  if (grad_loss.dim() == 0) return grad * grad_loss;
  auto dims = grad_loss.sizes().vec();
  dims.insert(dims.end(), {1, 1});
  return grad * grad_loss.reshape(dims);
}

void check_target(int64_t target, int64_t classes) {
  TORCH_CHECK(target >= 0 && target < classes, "target ", target, " is not a class index in [0, ", classes, ")");
}

// log p_t of a row z with softmax p (one ATen softmax per batch: no second pass of exp or log); every other
// log p_j is then (z_j - z_t) + log p_t, logits subtracted first. Accurate where log_softmax in float32 is not:
//   p_t >= 1/2:   log p_t = -log1p(sum_{j != t} p_j / p_t)   (p_t -> 1, where the beta/gamma loss lives)
//   p_t normal:   log p_t = log(p_t)                          (p_t keeps its relative precision)
//   p_t too small to hold (underflow): (z_t - z_m) - log1p(sum_{j != m} p_j / p_m), m the largest logit.
template <typename T>
T sum_except(const T* p, int64_t skip, int64_t C) {
  T rest = 0;
#pragma omp simd reduction(+ : rest)
  for (int64_t j = 0; j < skip; ++j) rest += p[j];
#pragma omp simd reduction(+ : rest)
  for (int64_t j = skip + 1; j < C; ++j) rest += p[j];
  return rest;
}

template <typename T>
T log_p_target(const T* z, const T* p, int64_t t, int64_t C) {
  if (p[t] >= T(0.5)) return -std::log1p(sum_except(p, t, C) / p[t]);
  if (p[t] >= std::numeric_limits<T>::min()) return std::log(p[t]);
  int64_t m = 0;
  for (int64_t j = 1; j < C; ++j) {
    if (z[j] > z[m]) m = j;
  }
  return (z[t] - z[m]) - std::log1p(sum_except(p, m, C) / p[m]);
}

// DAL:  L = -(1/B) sum_i sum_j S[y_i, j] log p_ij
//       dL/dz_ij = (p_ij * sum_k S[y_i, k] - S[y_i, j]) / B
std::tuple<torch::Tensor, torch::Tensor> dal_forward(const torch::Tensor& z, const torch::Tensor& y,
                                                     const torch::Tensor& soft_labels) {
  const int64_t K = check_inputs(z, y), B = z.size(-2), C = z.size(-1);
  TORCH_CHECK(soft_labels.dim() == z.dim() && soft_labels.sizes().slice(0, z.dim() - 2) == leading(z) &&
              soft_labels.size(-2) == C && soft_labels.size(-1) == C, "soft labels (..., C, C) expected");
  auto zc = z.contiguous();  // replica k's rows start at k * B * C (likewise below)
  auto grad = at::softmax(zc, -1);  // p, turned into the gradient in place
  auto yc = y.to(torch::kLong).contiguous();
  auto sc = soft_labels.to(z.scalar_type()).contiguous();
  auto loss = at::empty(leading(z), zc.options());
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "dal_loss", [&] {
    const scalar_t inv_b = scalar_t(1) / scalar_t(B);
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* z0 = zc.data_ptr<scalar_t>() + k * B * C;
      const scalar_t* s0 = sc.data_ptr<scalar_t>() + k * C * C;
      const int64_t* yp = yc.data_ptr<int64_t>() + k * B;
      scalar_t* gp = grad.data_ptr<scalar_t>() + k * B * C;
      double total = 0;
      for (int64_t i = 0; i < B; ++i) {
        check_target(yp[i], C);
        const scalar_t* s = s0 + yp[i] * C;
        const scalar_t* zi = z0 + i * C;
        scalar_t* g = gp + i * C;
        const scalar_t zt = zi[yp[i]], lt = log_p_target(zi, g, yp[i], C);
        scalar_t row_sum = 0, li = 0;
        _Pragma("omp simd reduction(+ : row_sum, li)")
        for (int64_t j = 0; j < C; ++j) {
          row_sum += s[j];
          li -= s[j] * ((zi[j] - zt) + lt);  // S[y_i, j] log p_ij
        }
        total += li;
        const scalar_t scale = row_sum * inv_b;
        _Pragma("omp simd")
        for (int64_t j = 0; j < C; ++j) g[j] = g[j] * scale - s[j] * inv_b;
      }
      loss.data_ptr<scalar_t>()[k] = static_cast<scalar_t>(total / B);
    }
  });
  return {loss, grad};
}

// beta/gamma:  L = -(1/B) sum_i f_i log p_t,   f = u^gamma,   u = 1 - p_t^beta = -expm1(beta log p_t)
//              dL_i/dlog p_t = -f + gamma beta (1 - u) u^(gamma - 1) log p_t
//              dlog p_t/dz_ij = [j == t] - p_ij
// u^(gamma - 1) log p_t -> 0 as p_t -> 1 (u ~ -beta log p_t), also for gamma < 1: that limit is taken at u = 0.
std::tuple<torch::Tensor, torch::Tensor> beta_gamma_forward(const torch::Tensor& z, const torch::Tensor& y,
                                                            const torch::Tensor& beta, const torch::Tensor& gamma) {
  const int64_t K = check_inputs(z, y), B = z.size(-2), C = z.size(-1);
  auto betas = per_replica_values(beta, z, "beta"), gammas = per_replica_values(gamma, z, "gamma");
  auto zc = z.contiguous();
  auto grad = at::softmax(zc, -1);
  auto yc = y.to(torch::kLong).contiguous();
  auto loss = at::empty(leading(z), zc.options());
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "beta_gamma_loss", [&] {
    const scalar_t inv_b = scalar_t(1) / scalar_t(B);
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t b = scalar_t(betas.data_ptr<double>()[k]), gm = scalar_t(gammas.data_ptr<double>()[k]);
      const scalar_t* z0 = zc.data_ptr<scalar_t>() + k * B * C;
      const int64_t* yp = yc.data_ptr<int64_t>() + k * B;
      scalar_t* gp = grad.data_ptr<scalar_t>() + k * B * C;
      double total = 0;
      for (int64_t i = 0; i < B; ++i) {
        check_target(yp[i], C);
        scalar_t* g = gp + i * C;
        const scalar_t lt = log_p_target(z0 + i * C, g, yp[i], C);
        const scalar_t u = -std::expm1(b * lt);
        const scalar_t u_gm1 = u == 0 ? scalar_t(0) : std::pow(u, gm - 1);  // one pow per sample
        const scalar_t f = u == 0 ? std::pow(u, gm) : u_gm1 * u;
        total -= f * lt;
        const scalar_t c = (gm * b * (1 - u) * u_gm1 * lt - f) * inv_b;  // dL/dlog p_t of this sample, over B
        _Pragma("omp simd")
        for (int64_t j = 0; j < C; ++j) g[j] *= -c;
        g[yp[i]] = c * -std::expm1(lt);  // c (1 - p_t), accurate as p_t -> 1
      }
      loss.data_ptr<scalar_t>()[k] = static_cast<scalar_t>(total / B);
    }
  });
  return {loss, grad};
}

// CC-Loss:  L = CE + lam * L_CC, over logits z and channel-attention vectors w (cc.py gives L_CC):
//   D_ij = max(||w_i - w_j||^2, 0) from the Gram matrix of the batch-centred vectors,
//   r_i = intra_i / (inter_i + eps), intra_i / inter_i the mean same-class (j != i) / other-class D_ij,
//   L_CC = sum_{i valid} r_i / max(#valid, 1).
// dL_CC/dD_ij = W_ij (row i's share), dD_ij/dw_i = 2 (w_i - w_j), so with V = W + W^T:
//   dL_CC/dw = 2 (diag(V 1) w - V w),   and dCE/dz_ij = (p_ij - [j == y_i]) / B.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> cc_forward(const torch::Tensor& z, const torch::Tensor& y,
                                                                   const torch::Tensor& attention,
                                                                   const torch::Tensor& lam, double eps) {
  const int64_t K = check_inputs(z, y), B = z.size(-2), C = z.size(-1);
  auto lams = per_replica_values(lam, z, "lam");
  TORCH_CHECK(attention.dim() == z.dim() && attention.sizes().slice(0, z.dim() - 1) == y.sizes(),
              "attention (..., B, channels) expected");
  auto zc = z.contiguous();
  auto grad_z = at::softmax(zc, -1);
  auto yc = y.to(torch::kLong).contiguous();
  auto w = attention.to(z.scalar_type());
  w = (w - w.mean(-2, true)).contiguous();  // distances unchanged; the Gram form loses less precision
  auto gram = at::matmul(w, w.transpose(-1, -2)).contiguous();
  auto weights = torch::zeros_like(gram);
  auto loss = at::empty(leading(z), zc.options());
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "cc_loss", [&] {
    const scalar_t inv_b = scalar_t(1) / scalar_t(B), e = scalar_t(eps);
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* z0 = zc.data_ptr<scalar_t>() + k * B * C;
      const int64_t* yp = yc.data_ptr<int64_t>() + k * B;
      scalar_t* gz = grad_z.data_ptr<scalar_t>() + k * B * C;
      const scalar_t* g = gram.data_ptr<scalar_t>() + k * B * B;
      scalar_t* wt = weights.data_ptr<scalar_t>() + k * B * B;
      double ce = 0;
      for (int64_t i = 0; i < B; ++i) {
        check_target(yp[i], C);
        const scalar_t lt = log_p_target(z0 + i * C, gz + i * C, yp[i], C);
        ce -= lt;
        _Pragma("omp simd")
        for (int64_t j = 0; j < C; ++j) gz[i * C + j] *= inv_b;
        gz[i * C + yp[i]] = std::expm1(lt) * inv_b;  // (p_t - 1) / B, accurate as p_t -> 1
      }
      auto dist = [&](int64_t i, int64_t j) { return g[i * B + i] + g[j * B + j] - 2 * g[i * B + j]; };
      std::vector<scalar_t> intra(B, 0), inter(B, 0);
      std::vector<int64_t> n_intra(B, 0), n_inter(B, 0);
      for (int64_t i = 0; i < B; ++i) {
        for (int64_t j = 0; j < B; ++j) {
          if (j == i) continue;
          const scalar_t d = std::max(dist(i, j), scalar_t(0));
          if (yp[j] == yp[i]) { intra[i] += d; ++n_intra[i]; } else { inter[i] += d; ++n_inter[i]; }
        }
      }
      int64_t valid = 0;
      for (int64_t i = 0; i < B; ++i) valid += (n_intra[i] > 0 && n_inter[i] > 0);
      const scalar_t inv_valid = scalar_t(1) / scalar_t(std::max<int64_t>(valid, 1));
      double cc = 0;
      for (int64_t i = 0; i < B; ++i) {
        if (n_intra[i] == 0 || n_inter[i] == 0) continue;
        const scalar_t mean_intra = intra[i] / n_intra[i], denom = inter[i] / n_inter[i] + e;
        cc += mean_intra / denom;
        const scalar_t w_intra = inv_valid / denom / n_intra[i];
        const scalar_t w_inter = -inv_valid * mean_intra / (denom * denom) / n_inter[i];
        for (int64_t j = 0; j < B; ++j) {
          if (j == i || dist(i, j) < 0) continue;  // the clamp at 0 passes no gradient
          wt[i * B + j] = yp[j] == yp[i] ? w_intra : w_inter;
        }
      }
      loss.data_ptr<scalar_t>()[k] = static_cast<scalar_t>(ce / B + lams.data_ptr<double>()[k] * cc * inv_valid);
    }
  });
  auto v = weights + weights.transpose(-1, -2);
  auto twice_lam = (2 * lams).to(w.scalar_type()).unsqueeze(-1).unsqueeze(-1);  // (..., 1, 1)
  auto grad_w = twice_lam * (v.sum(-1, true) * w - at::matmul(v, w));
  return {loss, grad_z, grad_w.to(attention.scalar_type())};
}

// The autograd kernels: the CPU kernel's gradient outputs are saved, not differentiated.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Kernel>
auto operator_named(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Kernel>();
}

struct DalFn : public torch::autograd::Function<DalFn> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& z, const torch::Tensor& y,
                               const torch::Tensor& soft_labels) {
    static auto op = operator_named<decltype(dal_forward)>("tune_losses::dal_loss");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad] = op.call(z, y, soft_labels);
    ctx->save_for_backward({grad});
    ctx->mark_non_differentiable({grad});
    ctx->set_materialize_grads(false);
    return {loss, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    check_once("dal");
    if (!grad_out[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
    return {per_replica(ctx->get_saved_variables()[0], grad_out[0]), torch::Tensor(), torch::Tensor()};
  }
};

struct BetaGammaFn : public torch::autograd::Function<BetaGammaFn> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& z, const torch::Tensor& y,
                               const torch::Tensor& beta, const torch::Tensor& gamma) {
    static auto op = operator_named<decltype(beta_gamma_forward)>("tune_losses::beta_gamma_loss");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad] = op.call(z, y, beta, gamma);
    ctx->save_for_backward({grad});
    ctx->mark_non_differentiable({grad});
    ctx->set_materialize_grads(false);
    return {loss, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    check_once("beta_gamma");
    const torch::Tensor none;
    if (!grad_out[0].defined()) return {none, none, none, none};
    return {per_replica(ctx->get_saved_variables()[0], grad_out[0]), none, none, none};
  }
};

struct CcFn : public torch::autograd::Function<CcFn> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& z, const torch::Tensor& y,
                               const torch::Tensor& attention, const torch::Tensor& lam, double eps) {
    static auto op = operator_named<decltype(cc_forward)>("tune_losses::cc_loss");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad_z, grad_w] = op.call(z, y, attention, lam, eps);
    ctx->save_for_backward({grad_z, grad_w});
    ctx->mark_non_differentiable({grad_z, grad_w});
    ctx->set_materialize_grads(false);
    return {loss, grad_z, grad_w};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    check_once("cc");
    const torch::Tensor none;
    if (!grad_out[0].defined()) return {none, none, none, none, none};
    auto saved = ctx->get_saved_variables();
    return {per_replica(saved[0], grad_out[0]), none, per_replica(saved[1], grad_out[0]), none, none};
  }
};

std::tuple<torch::Tensor, torch::Tensor> dal_autograd(const torch::Tensor& z, const torch::Tensor& y,
                                                      const torch::Tensor& soft_labels) {
  auto out = DalFn::apply(z, y, soft_labels);
  return {out[0], out[1]};
}

std::tuple<torch::Tensor, torch::Tensor> beta_gamma_autograd(const torch::Tensor& z, const torch::Tensor& y,
                                                             const torch::Tensor& beta, const torch::Tensor& gamma) {
  auto out = BetaGammaFn::apply(z, y, beta, gamma);
  return {out[0], out[1]};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> cc_autograd(const torch::Tensor& z, const torch::Tensor& y,
                                                                    const torch::Tensor& attention,
                                                                    const torch::Tensor& lam, double eps) {
  auto out = CcFn::apply(z, y, attention, lam, eps);
  return {out[0], out[1], out[2]};
}

}  // namespace

// Each returns the loss (one per replica: shape (...)) and its gradients (what the autograd kernel saves).
TORCH_LIBRARY(tune_losses, m) {
  m.def("dal_loss(Tensor logits, Tensor target, Tensor soft_labels) -> (Tensor, Tensor)");
  m.def("beta_gamma_loss(Tensor logits, Tensor target, Tensor beta, Tensor gamma) -> (Tensor, Tensor)");
  m.def("cc_loss(Tensor logits, Tensor target, Tensor attention, Tensor lam, float eps) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tune_losses, CPU, m) {
  m.impl("dal_loss", &dal_forward);
  m.impl("beta_gamma_loss", &beta_gamma_forward);
  m.impl("cc_loss", &cc_forward);
}

TORCH_LIBRARY_IMPL(tune_losses, Autograd, m) {
  m.impl("dal_loss", &dal_autograd);
  m.impl("beta_gamma_loss", &beta_gamma_autograd);
  m.impl("cc_loss", &cc_autograd);
}

// The losses for Python: the operator's first output, called through the dispatcher (so vmap's rule applies)
// without torch.ops' Python argument parsing (about 10 us a call, as much as the kernel at B = 8).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dal_loss", [](const torch::Tensor& z, const torch::Tensor& y, const torch::Tensor& soft_labels) {
    static auto op = operator_named<decltype(dal_forward)>("tune_losses::dal_loss");
    return std::get<0>(op.call(z, y, soft_labels));
  }, "DAL, mean over B per replica (CPU, float32/float64)");
  m.def("beta_gamma_loss", [](const torch::Tensor& z, const torch::Tensor& y, const torch::Tensor& beta,
                              const torch::Tensor& gamma) {
    static auto op = operator_named<decltype(beta_gamma_forward)>("tune_losses::beta_gamma_loss");
    return std::get<0>(op.call(z, y, beta, gamma));
  }, "beta/gamma loss, mean over B per replica (CPU, float32/float64)");
  m.def("cc_loss", [](const torch::Tensor& z, const torch::Tensor& y, const torch::Tensor& attention,
                      const torch::Tensor& lam, double eps) {
    static auto op = operator_named<decltype(cc_forward)>("tune_losses::cc_loss");
    return std::get<0>(op.call(z, y, attention, lam, eps));
  }, "CE + lam * L_CC, mean over B per replica (CPU, float32/float64)");
}
