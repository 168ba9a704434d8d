// Depthwise convolution for XLA:CPU as XLA FFI custom calls (loaded by fkd/models/native.py):
// forward, input gradient and kernel gradient, float32, NHWC, kernel (kh, kw, 1, C), TF-style
// padding given by its top/left part (the bottom/right part follows from the shapes).
//
// Kernel gradient:
// dK[i, j, c] = sum_{n, y, x} X[n, y*s + i - pad_top, x*s + j - pad_left, c] * dY[n, y, x, c]
// (zero outside X). XLA:CPU evaluates this as k*k separate reductions over the batch, each
// streaming X and dY from memory; here one pass per output row keeps a block of channels of each
// tap in registers (float32 over one row, then added into a float64 total per thread), and the
// images are shared out over XLA's intra-op thread pool.
//
// Inference form (fkd_depthwise_bias_swish, frozen EfficientNets): [swish(x + b_in) ->] depthwise
// conv -> + b -> swish, with the per-row channel sums that squeeze-and-excitation pools, in one
// pass: each input row is activated once into a small ring of rows, each output row is activated
// while it is in cache.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs body(worker, begin, end) over [0, n) in chunks of `chunk`, shared between the calling thread
// and up to `tasks` pool tasks; returns when every chunk is done. `worker` (0 .. tasks) is the
// participant's index, for per-thread partial results. The state outlives the call (shared_ptr):
// a task that starts after the work is done finds nothing left and touches nothing else.
struct ParallelState {
  int64_t n, chunk;
  std::function<void(int64_t, int64_t, int64_t)> body;
  std::atomic<int64_t> next{0}, done{0}, workers{0};
  std::mutex mu;
  std::condition_variable cv;

  void Work() {
    const int64_t worker = workers.fetch_add(1);
    for (int64_t begin; (begin = next.fetch_add(chunk)) < n;) {
      const int64_t end = std::min(n, begin + chunk);
      body(worker, begin, end);
      if (done.fetch_add(end - begin) + (end - begin) == n) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t chunk, int64_t tasks,
                 std::function<void(int64_t, int64_t, int64_t)> body) {
  auto state = std::make_shared<ParallelState>();
  state->n = n;
  state->chunk = std::max<int64_t>(1, chunk);
  state->body = std::move(body);
  for (int64_t t = 0; t < tasks; ++t) pool.Schedule([state] { state->Work(); });
  state->Work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() >= n; });
}

// Pool tasks worth starting for `chunks` chunks of work (the calling thread takes one share).
int64_t TasksFor(ffi::ThreadPool& pool, int64_t chunks) {
  return std::max<int64_t>(0, std::min(pool.num_threads(), chunks - 1));
}

// out[k] = the sum over participants of their float64 partial totals[worker][k], as float32.
void SumTotals(const std::vector<std::vector<double>>& totals, float* out) {
  for (size_t k = 0; k < totals[0].size(); ++k) {
    double sum = 0.0;
    for (const auto& total : totals) sum += total[k];
    out[k] = static_cast<float>(sum);
  }
}

// Every kernel here: two float32 operands, one float32 result, the stride and the top/left pads.
auto Binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride")
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left");
}

struct Geometry {
  int64_t b, h, w, c, oh, ow, kh, kw, s, pt, pl;
};

// First and one-past-last output column whose tap j reads inside the image.
inline void ValidColumns(const Geometry& g, int64_t j, int64_t* lo, int64_t* hi) {
  const int64_t first = g.pl - j;  // need x*s >= first
  *lo = first <= 0 ? 0 : (first + g.s - 1) / g.s;
  const int64_t last = g.w - 1 + g.pl - j;  // need x*s <= last
  *hi = last < 0 ? 0 : std::min(g.ow, last / g.s + 1);
}

// Adds sum_x X[row, x*s + j - pad_left, c0 + k] * dY[row, x, c0 + k] over the valid columns
// [lo, hi) to out[c0 + k], k < Block: the Block sums stay in registers.
template <int64_t Block>
inline void TapBlock(const Geometry& g, const float* x_row, const float* dy_row, int64_t j,
                     int64_t lo, int64_t hi, int64_t c0, double* out) {
  float acc[Block] = {0.f};
  for (int64_t ox = lo; ox < hi; ++ox) {
    const float* __restrict xv = x_row + (ox * g.s + j - g.pl) * g.c + c0;
    const float* __restrict gv = dy_row + ox * g.c + c0;
    for (int64_t k = 0; k < Block; ++k) acc[k] += xv[k] * gv[k];
  }
  for (int64_t k = 0; k < Block; ++k) out[c0 + k] += acc[k];
}

void AddImage(const Geometry& g, const float* x, const float* dy, int64_t n, double* total) {
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    const float* dy_row = dy + (n * g.oh + oy) * g.ow * g.c;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t iy = oy * g.s + i - g.pt;
      if (iy < 0 || iy >= g.h) continue;
      const float* x_row = x + (n * g.h + iy) * g.w * g.c;
      for (int64_t j = 0; j < g.kw; ++j) {
        int64_t lo, hi;
        ValidColumns(g, j, &lo, &hi);
        double* out = total + (i * g.kw + j) * g.c;
        int64_t c0 = 0;
        for (; c0 + 32 <= g.c; c0 += 32) TapBlock<32>(g, x_row, dy_row, j, lo, hi, c0, out);
        for (; c0 + 8 <= g.c; c0 += 8) TapBlock<8>(g, x_row, dy_row, j, lo, hi, c0, out);
        for (; c0 < g.c; ++c0) TapBlock<1>(g, x_row, dy_row, j, lo, hi, c0, out);
      }
    }
  }
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t stride, int64_t pad_top,
                      int64_t pad_left) {
  const auto xd = x.dimensions(), gd = dy.dimensions(), kd = dk->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || kd.size() != 4) {
    return ffi::Error::InvalidArgument("fkd depthwise kernel grad: expected NHWC, NHWC, HWIO");
  }
  const Geometry g{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], kd[0], kd[1], stride, pad_top,
                   pad_left};
  if (gd[0] != g.b || gd[3] != g.c || kd[3] != g.c || kd[2] != 1) {
    return ffi::Error::InvalidArgument("fkd depthwise kernel grad: shapes do not agree");
  }
  const int64_t size = g.kh * g.kw * g.c;
  const int64_t tasks = TasksFor(pool, g.b);
  // One float64 total per participant (the partial sums of its images); summed below.
  std::vector<std::vector<double>> totals(tasks + 1, std::vector<double>(size, 0.0));
  const float *xs = x.typed_data(), *dys = dy.typed_data();
  ParallelFor(pool, g.b, 1, tasks, [g, xs, dys, &totals](int64_t worker, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) AddImage(g, xs, dys, n, totals[worker].data());
  });
  SumTotals(totals, dk->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FkdDepthwiseKernelGrad, KernelGrad, Binding());

namespace {

// out[n, oy, ox, c] = sum over taps (i, j) of in[n, oy*s + i - pt, ox*s + j - pl, c] * k[i, j, c]
// ("forward": the depthwise convolution, ForwardRows), or, with `transpose`, the input gradient
// out[n, y, x, c] = sum over taps with y + pt - i = s*oy, x + pl - j = s*ox (oy, ox inside dY) of
// dY[n, oy, ox, c] * k[i, j, c] (InputGradRows). A block of channels at a time, its sums in
// registers.
struct Conv {
  int64_t b, h, w, c;     // `in` (X, or dY when transposed)
  int64_t oh, ow;         // `out`
  int64_t kh, kw, s, pt, pl;
  bool transpose;
  // The inference form (forward only). With `bias`, each output row becomes swish(out + bias)
  // and its per-channel sum goes to row_sums[n * oh + y, c]. With `in_bias`, the input is taken
  // as swish(in + in_bias) (a folded expand-BatchNorm-swish before the convolution), computed
  // once per input row (ForwardRows) instead of in a pass over memory of its own.
  const float* bias = nullptr;
  float* row_sums = nullptr;
  const float* in_bias = nullptr;
};

// exp(x) for x in float32 range, vectorisable (no libm call): 2^n * e^r with n = round(x / ln 2),
// r = x - n ln 2 (two-part ln 2), e^r by its Taylor series to degree 7 (|r| <= ln 2 / 2: relative
// error < 1e-8 before rounding); x clamped to [-87, 88] so that 2^n stays a normal float.
inline float Exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  // round to nearest by adding and removing 1.5 * 2^23 (std::floor would keep the loop scalar)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// swish(v) = v * sigmoid(v).
inline float Swish(float v) { return v / (1.0f + Exp(-v)); }

// out[x, c] = swish(out[x, c] + bias[c]) over one output row; sums[c] = its per-channel sum.
void BiasSwishRow(const Conv& p, float* __restrict out, float* __restrict sums) {
  const float* __restrict bias = p.bias;
  const int64_t channels = p.c, width = p.ow;
  for (int64_t c = 0; c < channels; ++c) sums[c] = 0.f;
  for (int64_t x = 0; x < width; ++x) {
    float* __restrict o = out + x * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float y = Swish(o[c] + bias[c]);
      o[c] = y;
      sums[c] += y;
    }
  }
}

// One pixel of the input gradient. Stride: 1 or 2 known at compile time (no integer division in
// the tap search), 0 = p.s.
template <int64_t Block, int64_t Stride>
inline void InputGradPixel(const Conv& p, const float* dy_img, const float* k, int64_t y,
                           int64_t x, int64_t c0, float* out) {
  const int64_t s = Stride > 0 ? Stride : p.s;
  float acc[Block] = {0.f};
  for (int64_t i = 0; i < p.kh; ++i) {
    const int64_t ty = y + p.pt - i;
    if (ty < 0 || ty % s != 0) continue;
    const int64_t iy = ty / s;
    if (iy >= p.h) continue;
    for (int64_t j = 0; j < p.kw; ++j) {
      const int64_t tx = x + p.pl - j;
      if (tx < 0 || tx % s != 0) continue;
      const int64_t ix = tx / s;
      if (ix >= p.w) continue;
      const float* __restrict v = dy_img + (iy * p.w + ix) * p.c + c0;
      const float* __restrict kv = k + (i * p.kw + j) * p.c + c0;
      for (int64_t q = 0; q < Block; ++q) acc[q] += v[q] * kv[q];
    }
  }
  for (int64_t q = 0; q < Block; ++q) out[c0 + q] = acc[q];
}

template <int64_t Stride>
void InputGradRowsStride(const Conv& p, const float* in, const float* k, float* out, int64_t r0,
                         int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {  // r = n * oh + y
    const int64_t n = r / p.oh, y = r % p.oh;
    const float* in_img = in + n * p.h * p.w * p.c;
    for (int64_t x = 0; x < p.ow; ++x) {
      float* o = out + (r * p.ow + x) * p.c;
      int64_t c0 = 0;
      for (; c0 + 32 <= p.c; c0 += 32) InputGradPixel<32, Stride>(p, in_img, k, y, x, c0, o);
      for (; c0 + 8 <= p.c; c0 += 8) InputGradPixel<8, Stride>(p, in_img, k, y, x, c0, o);
      for (; c0 < p.c; ++c0) InputGradPixel<1, Stride>(p, in_img, k, y, x, c0, o);
    }
  }
}

void InputGradRows(const Conv& p, const float* in, const float* k, float* out, int64_t r0,
                   int64_t r1) {
  if (p.s == 1) return InputGradRowsStride<1>(p, in, k, out, r0, r1);
  if (p.s == 2) return InputGradRowsStride<2>(p, in, k, out, r0, r1);
  InputGradRowsStride<0>(p, in, k, out, r0, r1);
}

// swish(in + bias) of one row of `w` pixels.
void SwishInputRow(const float* __restrict in, const float* __restrict bias, int64_t w, int64_t c,
                   float* __restrict out) {
  for (int64_t x = 0; x < w; ++x) {
    for (int64_t q = 0; q < c; ++q) {
      out[x * c + q] = Swish(in[x * c + q] + bias[q]);
    }
  }
}

// The forward pass of one output pixel's block of channels from the rows its taps read
// (`rows[i]`: input row of tap row i, nullptr outside the image).
template <int64_t Block>
inline void PixelFromRows(const Conv& p, const float* const* rows, const float* k, int64_t x,
                          int64_t c0, float* out) {
  float acc[Block] = {0.f};
  for (int64_t i = 0; i < p.kh; ++i) {
    if (rows[i] == nullptr) continue;
    for (int64_t j = 0; j < p.kw; ++j) {
      const int64_t ix = x * p.s + j - p.pl;
      if (ix < 0 || ix >= p.w) continue;
      const float* __restrict v = rows[i] + ix * p.c + c0;
      const float* __restrict kv = k + (i * p.kw + j) * p.c + c0;
      for (int64_t q = 0; q < Block; ++q) acc[q] += v[q] * kv[q];
    }
  }
  for (int64_t q = 0; q < Block; ++q) out[c0 + q] = acc[q];
}

// Four neighbouring output pixels x .. x+3 whose taps all fall inside the row: each kernel value
// is loaded once for the four (the single-pixel loop is bound by its two loads per multiply-add).
template <int64_t Block>
inline void FourPixelsFromRows(const Conv& p, const float* const* rows, const float* k, int64_t x,
                               int64_t c0, float* out) {
  float acc[4][Block] = {{0.f}};
  const int64_t step = p.s * p.c;
  for (int64_t i = 0; i < p.kh; ++i) {
    if (rows[i] == nullptr) continue;
    for (int64_t j = 0; j < p.kw; ++j) {
      const float* __restrict v = rows[i] + (x * p.s + j - p.pl) * p.c + c0;
      const float* __restrict kv = k + (i * p.kw + j) * p.c + c0;
      for (int64_t q = 0; q < Block; ++q) {
        const float kq = kv[q];
        acc[0][q] += v[q] * kq;
        acc[1][q] += v[step + q] * kq;
        acc[2][q] += v[2 * step + q] * kq;
        acc[3][q] += v[3 * step + q] * kq;
      }
    }
  }
  for (int64_t e = 0; e < 4; ++e) {
    for (int64_t q = 0; q < Block; ++q) out[e * p.c + c0 + q] = acc[e][q];
  }
}

// One output row from its input rows: interior pixels four at a time, the edges one at a time.
void RowFromRows(const Conv& p, const float* const* rows, const float* k, float* out_row) {
  // interior: x*s - pl >= 0 and x*s + kw - 1 - pl <= w - 1
  const int64_t lo = std::min(p.ow, (p.pl + p.s - 1) / p.s);
  const int64_t last = p.w - p.kw + p.pl;  // x*s <= last
  const int64_t hi = last < 0 ? lo : std::max(lo, std::min(p.ow, last / p.s + 1));
  auto single = [&](int64_t x) {
    float* o = out_row + x * p.c;
    int64_t c0 = 0;
    for (; c0 + 32 <= p.c; c0 += 32) PixelFromRows<32>(p, rows, k, x, c0, o);
    for (; c0 + 8 <= p.c; c0 += 8) PixelFromRows<8>(p, rows, k, x, c0, o);
    for (; c0 < p.c; ++c0) PixelFromRows<1>(p, rows, k, x, c0, o);
  };
  int64_t x = 0;
  for (; x < lo; ++x) single(x);
  // Four at a time pays where the input rows sit in cache (activated rows, or an input of at
  // most 12 MB: the bound below) and costs where the input streams from memory (measured on the
  // MobileNetV2 and EfficientNet shapes, docs/cpu-speed.md).
  const bool block4 = p.in_bias != nullptr || p.b * p.h * p.w * p.c <= (3 << 20);
  for (; block4 && x + 4 <= hi; x += 4) {
    float* o = out_row + x * p.c;
    int64_t c0 = 0;
    for (; c0 + 32 <= p.c; c0 += 32) FourPixelsFromRows<32>(p, rows, k, x, c0, o);
    for (; c0 + 8 <= p.c; c0 += 8) FourPixelsFromRows<8>(p, rows, k, x, c0, o);
    for (; c0 < p.c; ++c0) FourPixelsFromRows<1>(p, rows, k, x, c0, o);
  }
  for (; x < p.ow; ++x) single(x);
}

// Forward rows [r0, r1) (r = n * oh + y). With `in_bias` each input row is activated once into a
// ring of kh rows (slot iy % kh, so one output row's kh input rows never share a slot) and reused
// by the output rows that overlap it; without, the taps read the input in place.
void ForwardRows(const Conv& p, const float* in, const float* k, float* out, int64_t r0,
                 int64_t r1) {
  const int64_t row_size = p.w * p.c;
  std::vector<float> ring(p.in_bias != nullptr ? p.kh * row_size : 0);
  std::vector<int64_t> held(p.kh, -1);  // n * h + iy of the row in each slot
  std::vector<const float*> rows(p.kh);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / p.oh, y = r % p.oh;
    for (int64_t i = 0; i < p.kh; ++i) {
      const int64_t iy = y * p.s + i - p.pt;
      if (iy < 0 || iy >= p.h) {
        rows[i] = nullptr;
        continue;
      }
      const int64_t key = n * p.h + iy;
      if (p.in_bias == nullptr) {
        rows[i] = in + key * row_size;
        continue;
      }
      const int64_t slot = iy % p.kh;
      float* dst = ring.data() + slot * row_size;
      if (held[slot] != key) {
        SwishInputRow(in + key * row_size, p.in_bias, p.w, p.c, dst);
        held[slot] = key;
      }
      rows[i] = dst;
    }
    RowFromRows(p, rows.data(), k, out + r * p.ow * p.c);
    if (p.bias != nullptr) BiasSwishRow(p, out + r * p.ow * p.c, p.row_sums + r * p.c);
  }
}

void ConvRows(const Conv& p, const float* in, const float* k, float* out, int64_t r0, int64_t r1) {
  if (p.transpose) return InputGradRows(p, in, k, out, r0, r1);
  ForwardRows(p, in, k, out, r0, r1);
}

// Output rows shared out over the pool, a few chunks per participant.
ffi::Error RunConv(ffi::ThreadPool& pool, const Conv& p, const float* in, const float* k,
                   float* out) {
  const int64_t rows = p.b * p.oh;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunk = std::max<int64_t>(1, rows / (4 * (threads + 1)));
  ParallelFor(pool, rows, chunk, TasksFor(pool, (rows + chunk - 1) / chunk),
              [p, in, k, out](int64_t, int64_t r0, int64_t r1) { ConvRows(p, in, k, out, r0, r1); });
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t pad_top,
                   int64_t pad_left) {
  const auto xd = x.dimensions(), kd = kernel.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4 || kd[3] != xd[3] || yd[3] != xd[3] ||
      yd[0] != xd[0]) {
    return ffi::Error::InvalidArgument("fkd depthwise forward: expected NHWC, HWIO, NHWC");
  }
  const Conv p{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], kd[0], kd[1], stride, pad_top, pad_left,
               false};
  return RunConv(pool, p, x.typed_data(), kernel.typed_data(), y->typed_data());
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                     ffi::ResultBuffer<ffi::F32> dx, int64_t stride, int64_t pad_top,
                     int64_t pad_left) {
  const auto gd = dy.dimensions(), kd = kernel.dimensions(), xd = dx->dimensions();
  if (gd.size() != 4 || kd.size() != 4 || xd.size() != 4 || kd[3] != gd[3] || xd[3] != gd[3] ||
      xd[0] != gd[0]) {
    return ffi::Error::InvalidArgument("fkd depthwise input grad: expected NHWC, HWIO, NHWC");
  }
  const Conv p{gd[0], gd[1], gd[2], gd[3], xd[1], xd[2], kd[0], kd[1], stride, pad_top, pad_left,
               true};
  return RunConv(pool, p, dy.typed_data(), kernel.typed_data(), dx->typed_data());
}

// The folded inference form of [swish(x + in_bias) ->] depthwise conv -> BatchNorm -> swish:
// y = swish(conv(x') + bias), x' = swish(x + in_bias) if input_swish else x, written once, with
// the per-row channel sums that squeeze-and-excitation pools.
ffi::Error ForwardBiasSwish(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> in_bias,
                            ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                            ffi::ResultBuffer<ffi::F32> row_sums, int64_t stride, int64_t pad_top,
                            int64_t pad_left, int64_t input_swish) {
  const auto xd = x.dimensions(), kd = kernel.dimensions(), yd = y->dimensions();
  const auto ibd = in_bias.dimensions(), bd = bias.dimensions(), sd = row_sums->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4 || kd[3] != xd[3] || yd[3] != xd[3] ||
      yd[0] != xd[0] || bd.size() != 1 || bd[0] != xd[3] || ibd.size() != 1 ||
      ibd[0] != xd[3] || sd.size() != 3 || sd[0] != yd[0] || sd[1] != yd[1] || sd[2] != yd[3]) {
    return ffi::Error::InvalidArgument(
        "fkd depthwise bias swish: expected NHWC, HWIO, (C,), (C,) -> NHWC, (N, H, C)");
  }
  Conv p{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], kd[0], kd[1], stride, pad_top, pad_left,
         false};
  p.bias = bias.typed_data();
  p.row_sums = row_sums->typed_data();
  if (input_swish != 0) p.in_bias = in_bias.typed_data();
  return RunConv(pool, p, x.typed_data(), kernel.typed_data(), y->typed_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FkdDepthwiseForward, Forward, Binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FkdDepthwiseBiasSwish, ForwardBiasSwish,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("input_swish"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FkdDepthwiseInputGrad, InputGrad, Binding());

namespace {

// Per-channel sums over the rows of (rows, C) tensors, shared out over the pool in blocks of 128
// rows: float32 within a block, float64 across blocks and threads. `block(r0, r1, acc)` adds its
// sums for rows [r0, r1) into acc (outputs x C floats, zeroed).
void RowSums(ffi::ThreadPool& pool, int64_t rows, int64_t width, int64_t outputs,
             const std::function<void(int64_t, int64_t, float*)>& block, float* out) {
  constexpr int64_t kChunk = 128;
  const int64_t size = outputs * width, tasks = TasksFor(pool, (rows + kChunk - 1) / kChunk);
  std::vector<std::vector<double>> totals(tasks + 1, std::vector<double>(size, 0.0));
  std::vector<std::vector<float>> scratch(tasks + 1, std::vector<float>(size));  // per participant
  ParallelFor(pool, rows, kChunk, tasks,
              [&block, &totals, &scratch, size](int64_t worker, int64_t r0, int64_t r1) {
                std::vector<float>& acc = scratch[worker];
                std::fill(acc.begin(), acc.end(), 0.f);
                block(r0, r1, acc.data());
                std::vector<double>& total = totals[worker];
                for (int64_t k = 0; k < size; ++k) total[k] += acc[k];
              });
  SumTotals(totals, out);
}

int64_t Count(const ffi::Buffer<ffi::F32>& buffer) {
  return static_cast<int64_t>(buffer.element_count());
}

// BatchNorm statistics in one pass: sums (2, C) = [sum x, sum x^2] over every axis but the last.
ffi::Error BatchSums(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                     ffi::ResultBuffer<ffi::F32> sums) {
  const auto xd = x.dimensions(), sd = sums->dimensions();
  if (xd.size() < 1 || sd.size() != 2 || sd[0] != 2 || sd[1] != xd[xd.size() - 1]) {
    return ffi::Error::InvalidArgument("fkd batch sums: expected (..., C) -> (2, C)");
  }
  const int64_t c = xd[xd.size() - 1], rows = c == 0 ? 0 : Count(x) / c;
  const float* data = x.typed_data();
  RowSums(pool, rows, c, 2, [data, c](int64_t r0, int64_t r1, float* acc) {
    float* __restrict s = acc;
    float* __restrict s2 = acc + c;
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict v = data + r * c;
      for (int64_t q = 0; q < c; ++q) {
        s[q] += v[q];
        s2[q] += v[q] * v[q];
      }
    }
  }, sums->typed_data());
  return ffi::Error::Success();
}

// The two channel sums of BatchNorm's backward pass in one pass over dY and X, the activation's
// derivative recomputed: g = act'(a (x - mean) + b) * dy; sums (2, C) = [sum g, sum g (x - mean)].
// activation: 0 none, 1 ReLU, 2 ReLU6, 3 swish.
template <int Activation>
void GradSumsRows(const float* __restrict dy, const float* __restrict x,
                  const float* __restrict mean, const float* __restrict a,
                  const float* __restrict b, int64_t c, int64_t r0, int64_t r1,
                  float* __restrict acc) {
  float* __restrict sg = acc;
  float* __restrict sgx = acc + c;
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict gv = dy + r * c;
    const float* __restrict xv = x + r * c;
    for (int64_t q = 0; q < c; ++q) {
      const float centred = xv[q] - mean[q];
      const float pre = centred * a[q] + b[q];
      float g = gv[q];
      if (Activation == 1) g = pre > 0.f ? g : 0.f;
      if (Activation == 2) g = ((pre > 0.f) & (pre < 6.f)) ? g : 0.f;  // & keeps it branch-free
      if (Activation == 3) {
        const float sig = 1.0f / (1.0f + Exp(-pre));
        g *= sig * (1.0f + pre * (1.0f - sig));
      }
      sg[q] += g;
      sgx[q] += g * centred;
    }
  }
}

ffi::Error BatchNormGradSums(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                             ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mean,
                             ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                             ffi::ResultBuffer<ffi::F32> sums, int64_t activation) {
  const auto xd = x.dimensions(), sd = sums->dimensions();
  const int64_t c = xd.size() < 1 ? -1 : xd[xd.size() - 1];
  if (c < 0 || dy.element_count() != x.element_count() || sd.size() != 2 || sd[0] != 2 ||
      sd[1] != c || Count(mean) != c || Count(a) != c || Count(b) != c || activation < 0 ||
      activation > 3) {
    return ffi::Error::InvalidArgument(
        "fkd batch-norm grad sums: expected dY, X (..., C), three (C,) and an activation 0-3");
  }
  const int64_t rows = c == 0 ? 0 : Count(x) / c;
  const float *g = dy.typed_data(), *xs = x.typed_data(), *m = mean.typed_data(),
              *av = a.typed_data(), *bv = b.typed_data();
  std::function<void(int64_t, int64_t, float*)> block;
  switch (activation) {
    case 0: block = [=](int64_t r0, int64_t r1, float* acc) { GradSumsRows<0>(g, xs, m, av, bv, c, r0, r1, acc); }; break;
    case 1: block = [=](int64_t r0, int64_t r1, float* acc) { GradSumsRows<1>(g, xs, m, av, bv, c, r0, r1, acc); }; break;
    case 2: block = [=](int64_t r0, int64_t r1, float* acc) { GradSumsRows<2>(g, xs, m, av, bv, c, r0, r1, acc); }; break;
    default: block = [=](int64_t r0, int64_t r1, float* acc) { GradSumsRows<3>(g, xs, m, av, bv, c, r0, r1, acc); };
  }
  RowSums(pool, rows, c, 2, block, sums->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FkdBatchSums, BatchSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FkdBatchNormGradSums, BatchNormGradSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("activation"));
