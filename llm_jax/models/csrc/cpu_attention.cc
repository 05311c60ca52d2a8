// Fused causal attention for XLA:CPU, called from JAX through the XLA FFI
// (llm_jax/models/cpu_attention.py builds and registers it; see its docstring).
//
// Forward:  o = softmax(q·kᵀ·scale, masked) · v, and the probabilities p as the residual.
// Backward: dq, dk, dv from do and p (no recomputation of the scores).
//
// Layouts are the model's: q, o, dq [B, T, N, H]; k, v, dk, dv [B, S, K, H]; mask
// [B, T, S] (true = may attend); p [B, N, T, Sp] with Sp = S rounded up to 16. Query
// head n reads kv head n / (N / K) (grouped-query attention).
//
// Semantics match llm_jax.models.attention.xla_attention exactly, fully masked rows
// included: a row with no key it may attend to gets uniform probabilities over all S
// keys (XLA's softmax over logits that are all float32-min), and no gradient flows to
// its logits. With `causal`, keys after a query's 4-row tile are never computed (the
// mask hides them); without it every key is.
//
// Each (batch, kv head) is one work item, spread over XLA's intra-op thread pool. The
// products use one register-blocked kernel, C[R, 16·NV] (+)= A[R, K] · B[K, 16·NV] (and
// its transposed twin `outer`), reading q, k, v and do in place where H is a multiple of
// 16; only kᵀ (forward) and vᵀ (backward) are packed per item, into thread-local buffers.
// GCC's vector extensions compile it to AVX-512, AVX2 or NEON, whatever -march=native
// gives (tested with GCC 12 on AVX-512).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

constexpr int kRows = 4;  // query rows per tile: the causal bound moves in steps of this

inline v16 load(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void store(float* p, v16 x) { *reinterpret_cast<v16u*>(p) = x; }
// Pins x to a vector register: GCC would otherwise fold B's loads into every FMA,
// loading each B vector once per row instead of once, and the loads, not the FMAs,
// would bound the products. Only where 16 floats fit one register (AVX-512): with
// AVX2 or NEON a v16 spans several registers and no asm constraint can name it.
inline void in_register(v16& x) {
#if defined(__AVX512F__)
  asm("" : "+v"(x));
#else
  (void)x;
#endif
}

inline v16 splat(float x) { return x - v16{}; }  // x - 0 is x exactly: a bare broadcast
inline int64_t round16(int64_t x) { return (x + 15) / 16 * 16; }

// C[R, 16·NV] (+)= A[R, K] · B[K, 16·NV]; row strides lda, ldb, ldc.
template <int R, int NV>
inline void micro(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                  float* C, int64_t ldc, bool accumulate) {
  v16 c[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = accumulate ? load(C + r * ldc + 16 * v) : v16{};
  for (int64_t k = 0; k < K; ++k) {
    v16 b[NV];
    for (int v = 0; v < NV; ++v) {
      b[v] = load(B + k * ldb + 16 * v);
      in_register(b[v]);
    }
    for (int r = 0; r < R; ++r) {
      const v16 a = splat(A[r * lda + k]);
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store(C + r * ldc + 16 * v, c[r][v]);
}

// C[R, N] (+)= A[R, K] · B[K, N], N a multiple of 16: 64 columns at a time, then the
// remaining 16, 32 or 48 in one pass (each pass re-reads A's rows once per k).
template <int R>
inline void row_block(int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                      float* C, int64_t ldc, bool accumulate) {
  int64_t j = 0;
  for (; j + 64 <= N; j += 64) micro<R, 4>(K, A, lda, B + j, ldb, C + j, ldc, accumulate);
  switch ((N - j) / 16) {
    case 3: micro<R, 3>(K, A, lda, B + j, ldb, C + j, ldc, accumulate); break;
    case 2: micro<R, 2>(K, A, lda, B + j, ldb, C + j, ldc, accumulate); break;
    case 1: micro<R, 1>(K, A, lda, B + j, ldb, C + j, ldc, accumulate); break;
    default: break;
  }
}

// C[rows, N] (+)= A[rows, K] · B[K, N] for rows <= kRows and N a multiple of 16.
inline void tile(int64_t rows, int64_t N, int64_t K, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  if (rows == kRows) {
    row_block<kRows>(N, K, A, lda, B, ldb, C, ldc, accumulate);
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    row_block<1>(N, K, A + r * lda, lda, B, ldb, C + r * ldc, ldc, accumulate);
}

// C[j, 16·NV] += Σ_r A[r, j] · B[r, 16·NV] for j < J: the transposed product Aᵀ·B as
// R-row rank updates, so neither operand is transposed in memory.
template <int R, int NV>
inline void outer(int64_t J, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                  int64_t ldc) {
  v16 b[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      b[r][v] = load(B + r * ldb + 16 * v);
      in_register(b[r][v]);
    }
  for (int64_t j = 0; j < J; ++j) {
    v16 c[NV];
    for (int v = 0; v < NV; ++v) c[v] = load(C + j * ldc + 16 * v);
    for (int r = 0; r < R; ++r) {
      const v16 a = splat(A[r * lda + j]);
      for (int v = 0; v < NV; ++v) c[v] += a * b[r][v];
    }
    for (int v = 0; v < NV; ++v) store(C + j * ldc + 16 * v, c[v]);
  }
}

// C[J, N] += A[R, J]ᵀ · B[R, N], N a multiple of 16: 64 columns at a time, then 16.
template <int R>
inline void outer_block(int64_t N, int64_t J, const float* A, int64_t lda, const float* B, int64_t ldb,
                        float* C, int64_t ldc) {
  int64_t c = 0;
  for (; c + 64 <= N; c += 64) outer<R, 4>(J, A, lda, B + c, ldb, C + c, ldc);
  for (; c < N; c += 16) outer<R, 1>(J, A, lda, B + c, ldb, C + c, ldc);
}

// C[J, N] += A[rows, J]ᵀ · B[rows, N] for rows <= kRows and N a multiple of 16.
inline void outer_tile(int64_t rows, int64_t N, int64_t J, const float* A, int64_t lda,
                       const float* B, int64_t ldb, float* C, int64_t ldc) {
  if (rows == kRows) {
    outer_block<kRows>(N, J, A, lda, B, ldb, C, ldc);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) outer_block<1>(N, J, A + r * lda, lda, B + r * ldb, ldb, C, ldc);
}

typedef int32_t v16i __attribute__((vector_size(64)));

inline float sum(v16 x) {
  float t = 0.0f;
  for (int i = 0; i < 16; ++i) t += x[i];
  return t;
}

inline float max(v16 x) {
  float t = x[0];
  for (int i = 1; i < 16; ++i) t = std::max(t, x[i]);
  return t;
}

// Lanes j..j+15 of a mask row that are true and before `keys` (<= the row's length):
// reads the 16 mask bytes at once, through a copy where they would run past `keys`.
inline v16i visible(const bool* m, int64_t j, int64_t keys) {
  typedef uint8_t v16b __attribute__((vector_size(16)));
  typedef uint8_t v16bu __attribute__((vector_size(16), aligned(1)));
  v16b bytes;
  if (j + 16 <= keys) {
    bytes = *reinterpret_cast<const v16bu*>(m + j);
  } else {
    bytes = v16b{};
    std::memcpy(&bytes, m + j, std::max<int64_t>(0, keys - j));
  }
  return __builtin_convertvector(bytes, v16i) != 0;
}

// exp(x) for 16 arguments, to about 2 ulp for -87 <= x <= 0 (softmax's range once the
// row maximum is subtracted); larger arguments are taken as 0, smaller ones give 0.
inline v16 exp_nonpositive(v16 x) {
  x = x > 0.0f ? v16{} : x;
  x = x < -87.0f ? splat(-87.0f) : x;
  const v16i n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, v16i);  // round
  const v16 nf = __builtin_convertvector(n, v16);
  const v16 r = (x - nf * 0.693145751953125f) - nf * 1.428606765330187045e-06f;
  v16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v16i bits = (n + 127) << 23;
  return p * (v16)bits;
}

// Query tile starting at row i0 computes keys [0, cols(i0)).
struct Shape {
  int64_t B, T, N, K, H, S, G, Hp, Sp, Sl;  // Sl: row stride of kᵀ and vᵀ (Sp + 16)
  bool causal;
  int64_t keys(int64_t i0) const { return causal ? std::min(S, i0 + kRows) : S; }
  int64_t cols(int64_t i0) const { return round16(keys(i0)); }
};

Shape shape_of(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& kv, bool causal) {
  auto qd = q.dimensions(), kd = kv.dimensions();
  Shape s;
  s.B = qd[0], s.T = qd[1], s.N = qd[2], s.H = qd[3], s.S = kd[1], s.K = kd[2];
  s.G = s.N / s.K, s.Hp = round16(s.H), s.Sp = round16(s.S), s.Sl = s.Sp + 16, s.causal = causal;
  return s;
}

// Runs body(i) for i in [0, n) on the calling thread and on the pool's threads. A
// helper that starts after the caller has finished finds the work closed and returns,
// so the caller never waits on a task the pool has not started (no deadlock when every
// pool thread is busy, or when the caller is itself a pool thread).
template <class F>
void parallel_for(ffi::ThreadPool& pool, int64_t n, const F& body) {
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::mutex mu;
    std::condition_variable done;
    int active = 0;
    bool closed = false;
  };
  auto shared = std::make_shared<Shared>();
  const F* fn = &body;
  auto work = [shared, fn, n] {
    for (int64_t i; (i = shared->next.fetch_add(1)) < n;) (*fn)(i);
  };
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([shared, work] {
      {
        std::lock_guard<std::mutex> lock(shared->mu);
        if (shared->closed) return;
        ++shared->active;
      }
      work();
      std::lock_guard<std::mutex> lock(shared->mu);
      if (--shared->active == 0) shared->done.notify_all();
    });
  }
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->closed = true;
  shared->done.wait(lock, [&] { return shared->active == 0; });
}

// Thread-local scratch, grown as needed and kept: no allocation per work item.
float* scratch(int slot, int64_t size) {
  thread_local std::vector<float> buffers[8];
  auto& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < size) b.resize(size);
  return b.data();
}

// Transposes 16 rows of 16 floats in registers: four rounds that swap the off-diagonal
// blocks of 8, 4, 2 and 1 lanes between rows 8, 4, 2 and 1 apart.
#define LLM_JAX_SWAP(b, ...)                                                   \
  for (int r = 0; r < 16; ++r)                                                 \
    if (!(r & b)) {                                                            \
      const v16 lo = __builtin_shufflevector(x[r], x[r + b], __VA_ARGS__);     \
      x[r + b] = __builtin_shufflevector(x[r], x[r + b], LLM_JAX_HI_##b);      \
      x[r] = lo;                                                               \
    }
#define LLM_JAX_HI_8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LLM_JAX_HI_4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define LLM_JAX_HI_2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define LLM_JAX_HI_1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
inline void transpose16(v16 x[16]) {
  LLM_JAX_SWAP(8, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
  LLM_JAX_SWAP(4, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27)
  LLM_JAX_SWAP(2, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29)
  LLM_JAX_SWAP(1, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)
}
#undef LLM_JAX_SWAP

// dst[c * ld + r] = src[r * stride + c] for r < S and c < H, zero for S <= r < Sp: a
// [S, H] slice of rows `stride` apart, transposed into rows ld = Sp + 16 apart (no power
// of two, so they do not share cache sets), 16 x 16 in registers where H allows.
void pack_transposed(const float* src, int64_t S, int64_t Sp, int64_t ld, int64_t stride, int64_t H,
                     float* dst) {
  const int64_t H16 = H / 16 * 16;
  for (int64_t r0 = 0; r0 < Sp; r0 += 16) {
    for (int64_t c0 = 0; c0 < H16; c0 += 16) {
      v16 x[16];
      for (int i = 0; i < 16; ++i) x[i] = r0 + i < S ? load(src + (r0 + i) * stride + c0) : v16{};
      transpose16(x);
      for (int i = 0; i < 16; ++i) store(dst + (c0 + i) * ld + r0, x[i]);
    }
    for (int64_t c = H16; c < H; ++c)
      for (int64_t r = r0; r < r0 + 16; ++r) dst[c * ld + r] = r < S ? src[r * stride + c] : 0.0f;
  }
}

// has_key[b * T + i]: query i of batch row b may attend to some key (else its softmax is
// uniform over all S keys). PRED bytes are 0 or 1.
std::vector<char> rows_with_keys(const bool* mask, const Shape& s) {
  std::vector<char> has_key(s.B * s.T);
  for (int64_t i = 0; i < s.B * s.T; ++i) has_key[i] = std::memchr(mask + i * s.S, 1, s.S) != nullptr;
  return has_key;
}

// dst[r, c] = src[r * stride + c] for c < H, zero for H <= c < Hp.
void pack_rows(const float* src, int64_t rows, int64_t stride, int64_t H, int64_t Hp, float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    float* d = dst + r * Hp;
    const float* x = src + r * stride;
    for (int64_t c = 0; c < H; ++c) d[c] = x[c];
    for (int64_t c = H; c < Hp; ++c) d[c] = 0.0f;
  }
}

ffi::Error check(const Shape& s, ffi::Buffer<ffi::PRED>& mask) {
  auto md = mask.dimensions();
  if (s.K == 0 || s.N % s.K != 0)
    return ffi::Error::InvalidArgument("llm_jax attention: query heads must be a multiple of kv heads");
  if (md.size() != 3 || md[0] != s.B || md[1] != s.T || md[2] != s.S)
    return ffi::Error::InvalidArgument("llm_jax attention: mask must be [B, T, S]");
  return ffi::Error::Success();
}

// Rows of a [rows, H] slice `stride` apart, as a B operand (row reads of Hp floats):
// the slice itself when H is a multiple of 16, else a zero-padded copy in `buffer`.
struct Rows {
  const float* data;
  int64_t stride;
};

Rows operand_rows(const float* src, int64_t rows, int64_t stride, const Shape& s, float* buffer) {
  if (s.H == s.Hp) return {src, stride};
  pack_rows(src, rows, stride, s.H, s.Hp, buffer);
  return {buffer, s.Hp};
}

ffi::Error forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                   ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> p, bool causal,
                   float scale) {
  const Shape s = shape_of(q, k, causal);
  if (auto e = check(s, mask); e.failure()) return e;
  const float* Q = q.typed_data();
  const float* Kd = k.typed_data();
  const float* V = v.typed_data();
  const bool* M = mask.typed_data();
  float* O = o->typed_data();
  float* P = p->typed_data();
  const std::vector<char> has_key = rows_with_keys(M, s);

  auto item = [&](int64_t index) {
    const int64_t b = index / s.K, kh = index % s.K, kv_stride = s.K * s.H, q_stride = s.N * s.H;
    float* kth = scratch(0, s.H * s.Sl);  // kᵀ [H, Sp], rows Sl apart
    pack_transposed(Kd + (b * s.S * s.K + kh) * s.H, s.S, s.Sp, s.Sl, kv_stride, s.H, kth);
    float* ob = scratch(1, kRows * s.Hp);
    const Rows vr = operand_rows(V + (b * s.S * s.K + kh) * s.H, s.S, kv_stride, s, scratch(2, s.S * s.Hp));
    const bool* mb = M + b * s.T * s.S;
    for (int64_t g = 0; g < s.G; ++g) {
      const int64_t n = kh * s.G + g;
      const float* qn = Q + (b * s.T * s.N + n) * s.H;
      float* pn = P + (b * s.N + n) * s.T * s.Sp;
      for (int64_t i0 = 0; i0 < s.T; i0 += kRows) {
        const int64_t rows = std::min<int64_t>(kRows, s.T - i0), keys = s.keys(i0), cols = s.cols(i0);
        float* pt = pn + i0 * s.Sp;
        tile(rows, cols, s.H, qn + i0 * q_stride, q_stride, kth, s.Sl, pt, s.Sp, false);  // q·kᵀ
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r;
          float* pr = pt + r * s.Sp;
          const bool* m = mb + i * s.S;
          if (!has_key[b * s.T + i]) {  // uniform over all S keys, as XLA's softmax gives
            for (int64_t j = 0; j < s.Sp; ++j) pr[j] = j < s.S ? 1.0f / s.S : 0.0f;
            continue;
          }
          // softmax(scale·x) over the keys [0, keys) the mask shows; 0 elsewhere in the tile.
          v16 top = splat(-std::numeric_limits<float>::infinity());
          for (int64_t j = 0; j < cols; j += 16) {
            const v16 x = load(pr + j);
            top = visible(m, j, keys) && x > top ? x : top;
          }
          const float high = max(top);
          v16 total{};
          for (int64_t j = 0; j < cols; j += 16) {
            const v16 e = visible(m, j, keys) ? exp_nonpositive((load(pr + j) - high) * scale) : v16{};
            store(pr + j, e);
            total += e;
          }
          const v16 inv = splat(1.0f / sum(total));
          for (int64_t j = 0; j < cols; j += 16) store(pr + j, load(pr + j) * inv);
        }
        tile(rows, s.Hp, keys, pt, s.Sp, vr.data, vr.stride, ob, s.Hp, false);  // p·v
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r;
          if (!has_key[b * s.T + i]) tile(1, s.Hp, s.S, pt + r * s.Sp, s.Sp, vr.data, vr.stride, ob + r * s.Hp, s.Hp, false);
          std::memcpy(O + ((b * s.T + i) * s.N + n) * s.H, ob + r * s.Hp, s.H * sizeof(float));
        }
      }
    }
  };
  parallel_for(pool, s.B * s.K, item);
  return ffi::Error::Success();
}

ffi::Error backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::F32> p,
                    ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv, bool causal,
                    float scale) {
  const Shape s = shape_of(q, k, causal);
  if (auto e = check(s, mask); e.failure()) return e;
  const float* Q = q.typed_data();
  const float* Kd = k.typed_data();
  const float* V = v.typed_data();
  const bool* M = mask.typed_data();
  const float* P = p.typed_data();
  const float* DO = dout.typed_data();
  float* DQ = dq->typed_data();
  float* DK = dk->typed_data();
  float* DV = dv->typed_data();
  const std::vector<char> has_key = rows_with_keys(M, s);

  auto item = [&](int64_t index) {
    const int64_t b = index / s.K, kh = index % s.K, kv_stride = s.K * s.H, q_stride = s.N * s.H;
    float* vth = scratch(0, s.H * s.Sl);  // vᵀ [H, Sp], rows Sl apart
    pack_transposed(V + (b * s.S * s.K + kh) * s.H, s.S, s.Sp, s.Sl, kv_stride, s.H, vth);
    float* ds = scratch(1, kRows * s.Sp);  // a tile of dlogits
    float* acc = scratch(2, 2 * s.Sp * s.Hp + 2 * kRows * s.Hp);
    float* dka = acc, *dva = acc + s.Sp * s.Hp;  // dk/scale, dv [Sp, Hp]
    float* dqt = dva + s.Sp * s.Hp, *dot = dqt + kRows * s.Hp;  // a dq tile; a do tile
    const Rows kr = operand_rows(Kd + (b * s.S * s.K + kh) * s.H, s.S, kv_stride, s, scratch(3, s.S * s.Hp));
    std::fill(acc, acc + 2 * s.Sp * s.Hp, 0.0f);
    for (int64_t g = 0; g < s.G; ++g) {
      const int64_t n = kh * s.G + g;
      const float* dn = DO + (b * s.T * s.N + n) * s.H;
      const Rows qr = operand_rows(Q + (b * s.T * s.N + n) * s.H, s.T, q_stride, s, scratch(4, s.T * s.Hp));
      const float* pn = P + (b * s.N + n) * s.T * s.Sp;
      for (int64_t i0 = 0; i0 < s.T; i0 += kRows) {
        const int64_t rows = std::min<int64_t>(kRows, s.T - i0), keys = s.keys(i0), cols = s.cols(i0);
        const float* pt = pn + i0 * s.Sp;
        tile(rows, cols, s.H, dn + i0 * q_stride, q_stride, vth, s.Sl, ds, s.Sp, false);  // dp = do·vᵀ
        for (int64_t r = 0; r < rows; ++r) {
          float* d = ds + r * s.Sp;
          const float* pr = pt + r * s.Sp;
          const bool live = has_key[b * s.T + i0 + r];
          if (!live) {  // no gradient reaches the logits of a fully masked row
            std::fill(d, d + cols, 0.0f);
          } else {  // dlogits = p ⊙ (dp − Σ p·dp)
            v16 dots{};
            for (int64_t j = 0; j < cols; j += 16) dots += load(pr + j) * load(d + j);
            const float dot_p = sum(dots);
            for (int64_t j = 0; j < cols; j += 16) store(d + j, load(pr + j) * (load(d + j) - dot_p));
          }
          // The do rows for dv += pᵀ·do; fully masked rows reach dv below, not through p.
          for (int64_t c = 0; c < s.Hp; ++c) dot[r * s.Hp + c] = live && c < s.H ? dn[(i0 + r) * q_stride + c] : 0.0f;
        }
        tile(rows, s.Hp, keys, ds, s.Sp, kr.data, kr.stride, dqt, s.Hp, false);  // dq = ds·k·scale
        for (int64_t r = 0; r < rows; ++r) {
          float* out = DQ + ((b * s.T + i0 + r) * s.N + n) * s.H;
          for (int64_t c = 0; c < s.H; ++c) out[c] = dqt[r * s.Hp + c] * scale;
        }
        outer_tile(rows, s.Hp, keys, ds, s.Sp, qr.data + i0 * qr.stride, qr.stride, dka, s.Hp);  // dk += dsᵀ·q
        outer_tile(rows, s.Hp, keys, pt, s.Sp, dot, s.Hp, dva, s.Hp);  // dv += pᵀ·do
      }
      for (int64_t i = 0; i < s.T; ++i) {  // fully masked rows: dv += do / S for every key
        if (has_key[b * s.T + i]) continue;
        for (int64_t j = 0; j < s.S; ++j)
          for (int64_t c = 0; c < s.H; ++c) dva[j * s.Hp + c] += dn[i * q_stride + c] / s.S;
      }
    }
    for (int64_t j = 0; j < s.S; ++j) {
      float* out = DK + ((b * s.S + j) * s.K + kh) * s.H;
      for (int64_t c = 0; c < s.H; ++c) out[c] = dka[j * s.Hp + c] * scale;
      std::memcpy(DV + ((b * s.S + j) * s.K + kh) * s.H, dva + j * s.Hp, s.H * sizeof(float));
    }
  };
  parallel_for(pool, s.B * s.K, item);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmJaxAttentionForward, forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("causal")
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmJaxAttentionBackward, backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("causal")
                                  .Attr<float>("scale"));
