// oneDNN convolutions for XLA:CPU, as typed FFI handlers (drlx/ops/conv.py registers them).
//
// One 2D convolution family: float32, stride 1, symmetric 'SAME' padding (odd kernel,
// pad = (k - 1) / 2), channels-last activations (NHWC) and HWIO kernels, as in
// drlx.models.layers.conv2d. Three passes:
//   forward          x (N,H,W,I), w (kh,kw,I,O) -> y  (N,H,W,O)
//   backward-data    dy (N,H,W,O), w            -> dx (N,H,W,I)
//   backward-weights x, dy                      -> dw (kh,kw,I,O) and db (O), packed as one
//                                                  (kh*kw*I + 1, O) result: dw's rows, then db
// (db, the bias gradient sum_{n,h,w} dy, comes from the same pass over dy: without it XLA
// would read dy once more for a separate reduction.)
//
// Primitives are created once per (pass, shape) and kept in a process-wide cache, so a
// Langevin chain (a lax.scan of the same shapes) pays oneDNN's primitive creation once.
// Activations stay in XLA's buffers (plain nhwc descriptors, no copy); kernels are given to
// oneDNN in the layout its implementation prefers ("any"), through a reorder when that
// layout is not plain hwio; reordered kernels are cached (see ReorderedWeights). Every oneDNN
// error is returned to XLA as an ffi::Error.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Pass : int { kForward = 0, kBackwardData = 1, kBackwardWeights = 2, kForwardBias = 3 };

const char* PassName(int pass) {
  switch (pass) {
    case kForward:
      return "forward";
    case kForwardBias:
      return "forward-bias";
    case kBackwardData:
      return "backward-data";
    default:
      return "backward-weights";
  }
}

struct Shape {
  int64_t n, h, w, i, o, kh, kw;
};

struct Key {
  int pass;
  Shape s;
  bool operator==(const Key& k) const {
    return pass == k.pass && s.n == k.s.n && s.h == k.s.h && s.w == k.s.w && s.i == k.s.i &&
           s.o == k.s.o && s.kh == k.s.kh && s.kw == k.s.kw;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = static_cast<size_t>(k.pass);
    for (int64_t v : {k.s.n, k.s.h, k.s.w, k.s.i, k.s.o, k.s.kh, k.s.kw}) {
      h = h * 1000003u ^ static_cast<size_t>(v);
    }
    return h;
  }
};

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// A created primitive and the memory descriptors it runs with.
struct Entry {
  dnnl::primitive conv;
  dnnl::memory::desc act_in;     // plain nhwc: x (forward, backward-weights) or dy (backward-data)
  dnnl::memory::desc act_out;    // plain nhwc: y, dx; or dy for backward-weights
  dnnl::memory::desc bias;       // (O): db of backward-weights
  dnnl::memory::desc w_plain;    // hwio, as XLA holds the kernel
  dnnl::memory::desc w_prim;     // the kernel layout the primitive runs with
  bool w_reorder = false;        // w_prim differs from w_plain
  dnnl::reorder reorder;         // w_plain -> w_prim (forward, backward-data), or back (weights)
  dnnl::memory::desc scratch;
  std::string impl;              // oneDNN's implementation name, for tests and tuning
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Kernels in the layout oneDNN prefers (reordered from hwio, the reorder cached: see
// ReorderedWeights), unless DRLX_ONEDNN_PLAIN_WEIGHTS=1 asks for plain hwio (for measurements:
// see bench_network.py).
bool PlainWeights() {
  static const bool plain = [] {
    const char* v = std::getenv("DRLX_ONEDNN_PLAIN_WEIGHTS");
    return v != nullptr && std::string(v) == "1";
  }();
  return plain;
}

std::mutex cache_mutex;
// One convolution at a time: each one already uses every core (OpenMP); XLA may start two
// independent ones on two of its threads, whose OpenMP teams would then fight for the cores.
std::mutex execute_mutex;
std::unordered_map<Key, std::shared_ptr<const Entry>, KeyHash> cache;

dnnl::memory::desc Act(const Shape& s, int64_t c) {
  return dnnl::memory::desc({s.n, c, s.h, s.w}, dt::f32, tag::nhwc);
}

std::shared_ptr<const Entry> Create(const Key& key) {
  const Shape& s = key.s;
  auto& eng = Engine();
  dnnl::memory::dims strides = {1, 1};
  dnnl::memory::dims pad = {(s.kh - 1) / 2, (s.kw - 1) / 2};
  dnnl::memory::desc x = Act(s, s.i), y = Act(s, s.o);
  dnnl::memory::desc w_plain({s.o, s.i, s.kh, s.kw}, dt::f32, tag::hwio);
  dnnl::memory::desc w_any({s.o, s.i, s.kh, s.kw}, dt::f32,
                           PlainWeights() ? tag::hwio : tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, x, w_any,
      y, strides, pad, pad, attr);
  dnnl::memory::desc bias({s.o}, dt::f32, tag::x);
  // with a bias: the forward-bias pass, and the hint of backward-weights (which computes db)
  auto fwd_bias_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, x, w_any,
      bias, y, strides, pad, pad, attr);

  auto e = std::make_shared<Entry>();
  e->w_plain = w_plain;
  if (key.pass == kForward) {
    e->conv = dnnl::convolution_forward(fwd_pd);
    e->act_in = x;
    e->act_out = y;
    e->w_prim = fwd_pd.weights_desc();
    e->scratch = fwd_pd.scratchpad_desc();
    e->impl = fwd_pd.impl_info_str();
  } else if (key.pass == kForwardBias) {
    e->conv = dnnl::convolution_forward(fwd_bias_pd);
    e->act_in = x;
    e->act_out = y;
    e->bias = fwd_bias_pd.bias_desc();
    e->w_prim = fwd_bias_pd.weights_desc();
    e->scratch = fwd_bias_pd.scratchpad_desc();
    e->impl = fwd_bias_pd.impl_info_str();
  } else if (key.pass == kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, x, w_any, y, strides, pad, pad, fwd_pd, attr);
    e->conv = dnnl::convolution_backward_data(pd);
    e->act_in = y;
    e->act_out = x;
    e->w_prim = pd.weights_desc();
    e->scratch = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, x, w_any, bias, y, strides, pad, pad,
        fwd_bias_pd, attr);
    e->conv = dnnl::convolution_backward_weights(pd);
    e->act_in = x;
    e->act_out = y;
    e->w_prim = pd.diff_weights_desc();
    e->bias = pd.diff_bias_desc();
    e->scratch = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
  }
  e->w_reorder = e->w_prim != w_plain;
  if (e->w_reorder) {
    e->reorder = key.pass == kBackwardWeights ? dnnl::reorder(
                                                    dnnl::reorder::primitive_desc(
                                                        eng, e->w_prim, eng, w_plain))
                                              : dnnl::reorder(dnnl::reorder::primitive_desc(
                                                    eng, w_plain, eng, e->w_prim));
  }
  return e;
}

std::shared_ptr<const Entry> Lookup(const Key& key) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto e = Create(key);  // under the lock: two threads never create the same primitive twice
  cache.emplace(key, e);
  return e;
}

// Reordered kernels, kept with a copy of the plain kernel they came from. A Langevin chain runs
// every convolution many times with the same kernel in the same XLA buffer: comparing the
// kernel's bytes (memcmp, a few microseconds) replaces oneDNN's reorder at every call after the
// first. A kernel that changed in place is detected by the comparison and reordered again.
// Guarded by execute_mutex.
struct WeightKey {
  Key key;
  const void* data;
  bool operator==(const WeightKey& k) const { return key == k.key && data == k.data; }
};

struct WeightKeyHash {
  size_t operator()(const WeightKey& k) const {
    return KeyHash()(k.key) ^ std::hash<const void*>()(k.data);
  }
};

struct Reordered {
  std::vector<char> plain;
  std::vector<float> blocked;
};

constexpr size_t kMaxReordered = 1024;  // kernels kept (a network has tens of convolutions)
std::unordered_map<WeightKey, Reordered, WeightKeyHash> reordered_cache;

// The kernel at `plain` in the primitive's layout, from the cache or reordered now.
float* ReorderedWeights(const Key& key, const Entry& e, const void* plain, dnnl::stream& stream) {
  size_t bytes = e.w_plain.get_size();
  if (reordered_cache.size() >= kMaxReordered) reordered_cache.clear();
  Reordered& r = reordered_cache[WeightKey{key, plain}];
  if (r.plain.size() == bytes && std::memcmp(r.plain.data(), plain, bytes) == 0) {
    return r.blocked.data();
  }
  r.plain.assign(static_cast<const char*>(plain), static_cast<const char*>(plain) + bytes);
  r.blocked.resize(e.w_prim.get_size() / sizeof(float) + 1);
  auto& eng = Engine();
  dnnl::memory src(e.w_plain, eng, const_cast<void*>(plain));
  dnnl::memory dst(e.w_prim, eng, r.blocked.data());
  e.reorder.execute(stream, src, dst);
  stream.wait();
  return r.blocked.data();
}

// Per-thread scratch space (the primitives' scratchpads and reordered kernels), grown on
// demand: XLA may run independent convolutions on different threads at once.
float* Scratch(std::vector<float>& buf, size_t bytes) {
  size_t n = (bytes + sizeof(float) - 1) / sizeof(float) + 16;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// extra: db for backward-weights (written), the bias for forward-bias (read); else unused
ffi::Error Run(int pass, const Shape& s, void* act_in, void* w_or_act, void* out,
               void* extra = nullptr) {
  if (s.kh % 2 == 0 || s.kw % 2 == 0) {
    return ffi::Error::InvalidArgument("onednn_conv: the kernel size must be odd, got " +
                                       std::to_string(s.kh) + "x" + std::to_string(s.kw));
  }
  try {
    auto e = Lookup(Key{pass, s});
    auto& eng = Engine();
    std::lock_guard<std::mutex> lock(execute_mutex);
    thread_local dnnl::stream stream(eng);
    thread_local std::vector<float> scratch_buf, weight_buf;
    dnnl::memory scratch(e->scratch, eng, Scratch(scratch_buf, e->scratch.get_size()));
    dnnl::memory a(e->act_in, eng, act_in);
    if (pass == kBackwardWeights) {
      dnnl::memory dy(e->act_out, eng, w_or_act);
      dnnl::memory dw_plain(e->w_plain, eng, out);
      dnnl::memory dw = e->w_reorder
                            ? dnnl::memory(e->w_prim, eng,
                                           Scratch(weight_buf, e->w_prim.get_size()))
                            : dw_plain;
      dnnl::memory db(e->bias, eng, extra);
      e->conv.execute(stream, {{DNNL_ARG_SRC, a},
                               {DNNL_ARG_DIFF_DST, dy},
                               {DNNL_ARG_DIFF_WEIGHTS, dw},
                               {DNNL_ARG_DIFF_BIAS, db},
                               {DNNL_ARG_SCRATCHPAD, scratch}});
      if (e->w_reorder) e->reorder.execute(stream, dw, dw_plain);
    } else {
      dnnl::memory w =
          e->w_reorder
              ? dnnl::memory(e->w_prim, eng, ReorderedWeights(Key{pass, s}, *e, w_or_act, stream))
              : dnnl::memory(e->w_plain, eng, w_or_act);
      dnnl::memory b(e->act_out, eng, out);
      if (pass == kForward) {
        e->conv.execute(stream, {{DNNL_ARG_SRC, a},
                                 {DNNL_ARG_WEIGHTS, w},
                                 {DNNL_ARG_DST, b},
                                 {DNNL_ARG_SCRATCHPAD, scratch}});
      } else if (pass == kForwardBias) {
        e->conv.execute(stream, {{DNNL_ARG_SRC, a},
                                 {DNNL_ARG_WEIGHTS, w},
                                 {DNNL_ARG_BIAS, dnnl::memory(e->bias, eng, extra)},
                                 {DNNL_ARG_DST, b},
                                 {DNNL_ARG_SCRATCHPAD, scratch}});
      } else {
        e->conv.execute(stream, {{DNNL_ARG_DIFF_DST, a},
                                 {DNNL_ARG_WEIGHTS, w},
                                 {DNNL_ARG_DIFF_SRC, b},
                                 {DNNL_ARG_SCRATCHPAD, scratch}});
      }
    }
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("onednn_conv ") + PassName(pass) + " failed: " +
                                err.what() + " (status " + std::to_string(err.status) + ")");
  } catch (const std::exception& err) {
    return ffi::Error::Internal(std::string("onednn_conv ") + PassName(pass) +
                                " failed: " + err.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error CheckRank(const char* what, ffi::Span<const int64_t> dims) {
  if (dims.size() != 4) {
    return ffi::Error::InvalidArgument(std::string("onednn_conv: ") + what +
                                       " must have rank 4, got rank " +
                                       std::to_string(dims.size()));
  }
  return ffi::Error::Success();
}

#define DRLX_CHECK(expr)              \
  do {                                \
    ffi::Error err_ = (expr);         \
    if (err_.failure()) return err_;  \
  } while (0)

ffi::Error Mismatch(const char* what) {
  return ffi::Error::InvalidArgument(std::string("onednn_conv: inconsistent shapes: ") + what);
}

ffi::Error ForwardImpl(F32 x, F32 w, F32Out y) {
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  DRLX_CHECK(CheckRank("x", xd));
  DRLX_CHECK(CheckRank("w", wd));
  Shape s{xd[0], xd[1], xd[2], xd[3], wd[3], wd[0], wd[1]};
  if (wd[2] != s.i) return Mismatch("x channels != kernel input channels");
  if (yd[0] != s.n || yd[1] != s.h || yd[2] != s.w || yd[3] != s.o) return Mismatch("y");
  return Run(kForward, s, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error ForwardBiasImpl(F32 x, F32 w, F32 b, F32Out y) {
  auto xd = x.dimensions(), wd = w.dimensions(), bd = b.dimensions(), yd = y->dimensions();
  DRLX_CHECK(CheckRank("x", xd));
  DRLX_CHECK(CheckRank("w", wd));
  Shape s{xd[0], xd[1], xd[2], xd[3], wd[3], wd[0], wd[1]};
  if (wd[2] != s.i) return Mismatch("x channels != kernel input channels");
  if (bd.size() != 1 || bd[0] != s.o) return Mismatch("the bias must be (output channels,)");
  if (yd[0] != s.n || yd[1] != s.h || yd[2] != s.w || yd[3] != s.o) return Mismatch("y");
  return Run(kForwardBias, s, x.untyped_data(), w.untyped_data(), y->untyped_data(),
             b.untyped_data());
}

ffi::Error BackwardDataImpl(F32 dy, F32 w, F32Out dx) {
  auto dyd = dy.dimensions(), wd = w.dimensions(), dxd = dx->dimensions();
  DRLX_CHECK(CheckRank("dy", dyd));
  DRLX_CHECK(CheckRank("w", wd));
  Shape s{dyd[0], dyd[1], dyd[2], wd[2], dyd[3], wd[0], wd[1]};
  if (wd[3] != s.o) return Mismatch("dy channels != kernel output channels");
  if (dxd[0] != s.n || dxd[1] != s.h || dxd[2] != s.w || dxd[3] != s.i) return Mismatch("dx");
  return Run(kBackwardData, s, dy.untyped_data(), w.untyped_data(), dx->untyped_data());
}

// kernel: the spatial size of dw, an attribute (the packed result does not show it)
ffi::Error BackwardWeightsImpl(F32 x, F32 dy, F32Out packed, int64_t kh, int64_t kw) {
  auto xd = x.dimensions(), dyd = dy.dimensions(), pd = packed->dimensions();
  DRLX_CHECK(CheckRank("x", xd));
  DRLX_CHECK(CheckRank("dy", dyd));
  Shape s{xd[0], xd[1], xd[2], xd[3], dyd[3], kh, kw};
  if (dyd[0] != s.n || dyd[1] != s.h || dyd[2] != s.w) return Mismatch("x and dy batch/space");
  if (pd.size() != 2 || pd[0] != kh * kw * s.i + 1 || pd[1] != s.o) {
    return Mismatch("the packed (dw, db) result must be (kh * kw * I + 1, O)");
  }
  float* dw = static_cast<float*>(packed->untyped_data());
  return Run(kBackwardWeights, s, x.untyped_data(), dy.untyped_data(), dw,
             dw + kh * kw * s.i * s.o);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DrlxOnednnConvForward, ForwardImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DrlxOnednnConvForwardBias, ForwardBiasImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DrlxOnednnConvBackwardData, BackwardDataImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DrlxOnednnConvBackwardWeights, BackwardWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw"));

// For tests and tuning: "impl|weights-reordered" oneDNN chose for a pass and shape, or
// "error: ..." when the primitive cannot be created.
extern "C" const char* DrlxOnednnConvImpl(int pass, int64_t n, int64_t h, int64_t w, int64_t i,
                                          int64_t o, int64_t kh, int64_t kw) {
  thread_local std::string name;
  try {
    auto e = Lookup(Key{pass, Shape{n, h, w, i, o, kh, kw}});
    name = e->impl + (e->w_reorder ? "|reorder" : "|plain");
  } catch (const std::exception& err) {
    name = std::string("error: ") + err.what();
  }
  return name.c_str();
}
