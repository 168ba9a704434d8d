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
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

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

// Work shared between the calling thread and pool tasks; tasks that start after the work is done
// find nothing left (the state outlives the call through shared_ptr).
struct Shared {
  Geometry g;
  const float* x;
  const float* dy;
  std::atomic<int64_t> next{0}, done{0}, slot{0};
  std::vector<std::vector<double>> totals;
  std::mutex mu;
  std::condition_variable cv;

  void Work() {
    const int64_t id = slot.fetch_add(1);
    std::vector<double>& total = totals[id];
    for (int64_t n; (n = next.fetch_add(1)) < g.b;) {
      AddImage(g, x, dy, n, total.data());
      if (done.fetch_add(1) + 1 == g.b) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

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
  const int64_t tasks = std::max<int64_t>(0, std::min(pool.num_threads(), g.b - 1));
  auto shared = std::make_shared<Shared>();
  shared->g = g;
  shared->x = x.typed_data();
  shared->dy = dy.typed_data();
  shared->totals.assign(tasks + 1, std::vector<double>(size, 0.0));
  for (int64_t t = 0; t < tasks; ++t) pool.Schedule([shared] { shared->Work(); });
  shared->Work();
  {
    std::unique_lock<std::mutex> lock(shared->mu);
    shared->cv.wait(lock, [&] { return shared->done.load() >= g.b; });
  }
  float* out = dk->typed_data();
  for (int64_t k = 0; k < size; ++k) {
    double sum = 0.0;
    for (const auto& total : shared->totals) sum += total[k];
    out[k] = static_cast<float>(sum);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FkdDepthwiseKernelGrad, KernelGrad, Binding());

namespace {

// out[n, oy, ox, c] = sum over taps (i, j) of in[n, oy*s + i - pt, ox*s + j - pl, c] * k[i, j, c]
// ("forward": the depthwise convolution), or, with `transpose`, the input gradient
// out[n, y, x, c] = sum over taps with y + pt - i = s*oy, x + pl - j = s*ox (oy, ox inside dY) of
// dY[n, oy, ox, c] * k[i, j, c]. One output pixel and block of channels at a time, the block's
// sums in registers.
struct Conv {
  int64_t b, h, w, c;     // `in` (X, or dY when transposed)
  int64_t oh, ow;         // `out`
  int64_t kh, kw, s, pt, pl;
  bool transpose;
};

// Stride: 1 or 2 known at compile time (no integer division in the tap search), 0 = p.s.
template <int64_t Block, int64_t Stride>
inline void Pixel(const Conv& p, const float* in_img, const float* k, int64_t y, int64_t x,
                  int64_t c0, float* out) {
  const int64_t s = Stride > 0 ? Stride : p.s;
  float acc[Block] = {0.f};
  for (int64_t i = 0; i < p.kh; ++i) {
    int64_t iy;
    if (p.transpose) {
      const int64_t t = y + p.pt - i;
      if (t < 0 || t % s != 0) continue;
      iy = t / s;
    } else {
      iy = y * s + i - p.pt;
    }
    if (iy < 0 || iy >= p.h) continue;
    for (int64_t j = 0; j < p.kw; ++j) {
      int64_t ix;
      if (p.transpose) {
        const int64_t t = x + p.pl - j;
        if (t < 0 || t % s != 0) continue;
        ix = t / s;
      } else {
        ix = x * s + j - p.pl;
      }
      if (ix < 0 || ix >= p.w) continue;
      const float* __restrict v = in_img + (iy * p.w + ix) * p.c + c0;
      const float* __restrict kv = k + (i * p.kw + j) * p.c + c0;
      for (int64_t q = 0; q < Block; ++q) acc[q] += v[q] * kv[q];
    }
  }
  for (int64_t q = 0; q < Block; ++q) out[c0 + q] = acc[q];
}

template <int64_t Stride>
void ConvRowsStride(const Conv& p, const float* in, const float* k, float* out, int64_t r0,
                    int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {  // r = n * oh + y
    const int64_t n = r / p.oh, y = r % p.oh;
    const float* in_img = in + n * p.h * p.w * p.c;
    for (int64_t x = 0; x < p.ow; ++x) {
      float* o = out + (r * p.ow + x) * p.c;
      int64_t c0 = 0;
      for (; c0 + 32 <= p.c; c0 += 32) Pixel<32, Stride>(p, in_img, k, y, x, c0, o);
      for (; c0 + 8 <= p.c; c0 += 8) Pixel<8, Stride>(p, in_img, k, y, x, c0, o);
      for (; c0 < p.c; ++c0) Pixel<1, Stride>(p, in_img, k, y, x, c0, o);
    }
  }
}

void ConvRows(const Conv& p, const float* in, const float* k, float* out, int64_t r0, int64_t r1) {
  if (p.s == 1) return ConvRowsStride<1>(p, in, k, out, r0, r1);
  if (p.s == 2) return ConvRowsStride<2>(p, in, k, out, r0, r1);
  ConvRowsStride<0>(p, in, k, out, r0, r1);
}

// Rows of the output shared out over the pool in chunks; the caller takes part (see Shared).
struct SharedRows {
  Conv p;
  const float* in;
  const float* k;
  float* out;
  int64_t rows, chunk;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable cv;

  void Work() {
    for (int64_t r0; (r0 = next.fetch_add(chunk)) < rows;) {
      const int64_t r1 = std::min(rows, r0 + chunk);
      ConvRows(p, in, k, out, r0, r1);
      if (done.fetch_add(r1 - r0) + (r1 - r0) == rows) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

ffi::Error RunConv(ffi::ThreadPool& pool, const Conv& p, const float* in, const float* k,
                   float* out) {
  const int64_t rows = p.b * p.oh;
  auto shared = std::make_shared<SharedRows>();
  shared->p = p;
  shared->in = in;
  shared->k = k;
  shared->out = out;
  shared->rows = rows;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  shared->chunk = std::max<int64_t>(1, rows / (4 * (threads + 1)));
  const int64_t tasks = std::min(threads, (rows + shared->chunk - 1) / shared->chunk - 1);
  for (int64_t t = 0; t < tasks; ++t) pool.Schedule([shared] { shared->Work(); });
  shared->Work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() >= rows; });
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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FkdDepthwiseForward, Forward, Binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FkdDepthwiseInputGrad, InputGrad, Binding());
