// Element types of model files and their conversion to float32.
//
// The block layouts and arithmetic follow ggml's reference dequantization
// (ggml-quants.c, dequantize_row_*) so results are bit-identical to ggml and to gguf-py;
// tests/fixtures/quant holds golden outputs. The loops run over ~100M elements at model
// load, so they are kept simple enough for the compiler to unroll and vectorise: one
// function per type, dispatched once per tensor, whose inner loops run over a (sub-)block
// with one scale and fixed bit positions.
#include "engine/stored_tensor.h"

#include <array>
#include <cstring>
#include <limits>

namespace glassbox {
namespace {

// ggml block layouts (ggml-common.h). All fields are little-endian; "f16" is IEEE binary16.
constexpr int64_t kQ8_0Block = 32;  // f16 d, int8 qs[32]: x = qs * d
constexpr int64_t kQ4_0Block = 32;  // f16 d, uint8 qs[16]: x = (nibble - 8) * d
constexpr int64_t kQ4_1Block = 32;  // f16 d, f16 m, uint8 qs[16]: x = nibble * d + m
constexpr int64_t kQ5_0Block = 32;  // f16 d, uint32 qh, uint8 qs[16]: x = (q5 - 16) * d
constexpr int64_t kQ5_1Block = 32;  // f16 d, f16 m, uint32 qh, uint8 qs[16]: x = q5 * d + m
constexpr int64_t kQ8_0Bytes = 2 + 32;
constexpr int64_t kQ4_0Bytes = 2 + 16;
constexpr int64_t kQ4_1Bytes = 2 + 2 + 16;
constexpr int64_t kQ5_0Bytes = 2 + 4 + 16;
constexpr int64_t kQ5_1Bytes = 2 + 2 + 4 + 16;
// K-quants: super-blocks of 256 elements in sub-blocks of 16 or 32, each with its own scale
// (and min) quantized against the super-block's f16 d (and dmin). Layouts beside each
// function below.
constexpr int64_t kSuperBlock = 256;
constexpr int64_t kQ2_KBytes = 16 + 64 + 2 + 2;
constexpr int64_t kQ3_KBytes = 32 + 64 + 12 + 2;
constexpr int64_t kQ4_KBytes = 2 + 2 + 12 + 128;
constexpr int64_t kQ5_KBytes = 2 + 2 + 12 + 32 + 128;
constexpr int64_t kQ6_KBytes = 128 + 64 + 16 + 2;
constexpr int64_t kQ8_KBytes = 4 + 256 + 2 * 16;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "model files are little-endian and read in place");

uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

float FloatFromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint32_t BitsFromFloat(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// IEEE binary16 -> binary32, exact for every input: subnormals are normalised, infinities
// stay infinite and NaNs keep their sign and payload.
float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return FloatFromBits(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) {
    return FloatFromBits(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
  }
  // Zero or subnormal: mantissa * 2^-24, exact in binary32.
  float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
  return FloatFromBits(sign | BitsFromFloat(magnitude));
}

void DequantizeF32(const uint8_t* __restrict src, int64_t n, float* __restrict out) {
  std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
}

void DequantizeF16(const uint8_t* __restrict src, int64_t n, float* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = HalfToFloat(LoadU16(src + 2 * i));
}

void DequantizeBF16(const uint8_t* __restrict src, int64_t n, float* __restrict out) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = FloatFromBits(static_cast<uint32_t>(LoadU16(src + 2 * i)) << 16);
  }
}

void DequantizeQ8_0(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  for (int64_t b = 0; b < blocks; ++b, src += kQ8_0Bytes, out += kQ8_0Block) {
    const float d = HalfToFloat(LoadU16(src));
    const int8_t* qs = reinterpret_cast<const int8_t*>(src + 2);
    for (int j = 0; j < kQ8_0Block; ++j) out[j] = static_cast<float>(qs[j]) * d;
  }
}

// In Q4 and Q5 blocks byte j holds element j in its low nibble and element j + 16 in its
// high one; in Q5 blocks bit j of qh is element j's fifth bit.
void DequantizeQ4_0(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  constexpr int kHalf = kQ4_0Block / 2;
  for (int64_t b = 0; b < blocks; ++b, src += kQ4_0Bytes, out += kQ4_0Block) {
    const float d = HalfToFloat(LoadU16(src));
    const uint8_t* qs = src + 2;
    for (int j = 0; j < kHalf; ++j) {
      out[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
      out[j + kHalf] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

// 1 << j: a table, so that testing bit j of qh vectorises (SSE2 has no per-lane shifts).
constexpr std::array<uint32_t, 32> kBit = [] {
  std::array<uint32_t, 32> bits{};
  for (int j = 0; j < 32; ++j) bits[j] = 1u << j;
  return bits;
}();

void DequantizeQ5_0(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  constexpr int kHalf = kQ5_0Block / 2;
  for (int64_t b = 0; b < blocks; ++b, src += kQ5_0Bytes, out += kQ5_0Block) {
    const float d = HalfToFloat(LoadU16(src));
    const uint32_t qh = LoadU32(src + 2);
    const uint8_t* qs = src + 6;
    for (int j = 0; j < kHalf; ++j) {
      const int low = (qs[j] & 0x0f) | ((qh & kBit[j]) ? 0x10 : 0);
      const int high = (qs[j] >> 4) | ((qh & kBit[j + kHalf]) ? 0x10 : 0);
      out[j] = static_cast<float>(low - 16) * d;
      out[j + kHalf] = static_cast<float>(high - 16) * d;
    }
  }
}

// 16 six-bit scales of a Q3_K super-block in 12 bytes: low 4 bits in the nibbles of bytes
// 0-7, high 2 bits in bytes 8-11; stored biased by 32.
int Q3_KScale(const uint8_t* scales, int j) {
  const int low = j < 8 ? scales[j] & 0x0f : scales[j - 8] >> 4;
  const int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | (high << 4)) - 32;
}

// Q3_K super-block: uint8 hmask[32], uint8 qs[64], uint8 scales[12], f16 d. Sub-block g
// (16 elements) is x = d * scale[g] * (q - 4 * !hbit). Element 128h + 32k + l takes bits
// 2k..2k+1 of qs[32h + l] and bit 4h + k of hmask[l].
void DequantizeQ3_K(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  for (int64_t b = 0; b < blocks; ++b, src += kQ3_KBytes, out += kSuperBlock) {
    const uint8_t* hmask = src;
    const uint8_t* qs = src + 32;
    const uint8_t* scales = src + 96;
    const float d = HalfToFloat(LoadU16(src + 108));
    for (int g = 0; g < 16; ++g) {
      const float dl = d * static_cast<float>(Q3_KScale(scales, g));
      const int h = g / 8, k = (g % 8) / 2, l0 = 16 * (g % 2);
      const uint8_t* q = qs + 32 * h + l0;
      const uint8_t* hm = hmask + l0;
      float* y = out + 16 * g;
      for (int l = 0; l < 16; ++l) {
        const int v = ((q[l] >> (2 * k)) & 3) - (((hm[l] >> (4 * h + k)) & 1) ? 0 : 4);
        y[l] = dl * static_cast<float>(v);
      }
    }
  }
}

// Q6_K super-block: uint8 ql[128], uint8 qh[64], int8 scales[16], f16 d. Sub-block g
// (16 elements) is x = d * scale[g] * (q - 32). Element 128h + 32k + l takes its low 4 bits
// from nibble k / 2 of ql[64h + 32(k % 2) + l] and its high 2 bits from bits 2k..2k+1 of
// qh[32h + l].
void DequantizeQ6_K(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  for (int64_t b = 0; b < blocks; ++b, src += kQ6_KBytes, out += kSuperBlock) {
    const uint8_t* ql = src;
    const uint8_t* qh = src + 128;
    const int8_t* scales = reinterpret_cast<const int8_t*>(src + 192);
    const float d = HalfToFloat(LoadU16(src + 208));
    for (int g = 0; g < 16; ++g) {
      const float dl = d * static_cast<float>(scales[g]);
      const int h = g / 8, k = (g % 8) / 2, l0 = 16 * (g % 2);
      const uint8_t* low = ql + 64 * h + 32 * (k % 2) + l0;
      const uint8_t* high = qh + 32 * h + l0;
      float* y = out + 16 * g;
      for (int l = 0; l < 16; ++l) {
        const int v = ((low[l] >> (4 * (k / 2))) & 0x0f) | (((high[l] >> (2 * k)) & 3) << 4);
        y[l] = dl * static_cast<float>(v - 32);
      }
    }
  }
}

// Q8_K super-block: f32 d, int8 qs[256], int16 bsums[16] (sums for dot products, unused
// here): x = d * q.
void DequantizeQ8_K(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  for (int64_t b = 0; b < blocks; ++b, src += kQ8_KBytes, out += kSuperBlock) {
    const float d = FloatFromBits(LoadU32(src));
    const int8_t* qs = reinterpret_cast<const int8_t*>(src + 4);
    for (int j = 0; j < kSuperBlock; ++j) out[j] = d * static_cast<float>(qs[j]);
  }
}

// The types below compute scale * q + m (or - min), rounding the product before the sum as
// ggml and gguf-py do. A fused multiply-add (which compilers may form for targets with FMA)
// gives the same bits: the product of an f16 scale (11 significant bits) times a 6-bit
// sub-block scale times a quant of at most 5 bits is exact in float32.
void DequantizeQ4_1(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  constexpr int kHalf = kQ4_1Block / 2;
  for (int64_t b = 0; b < blocks; ++b, src += kQ4_1Bytes, out += kQ4_1Block) {
    const float d = HalfToFloat(LoadU16(src));
    const float m = HalfToFloat(LoadU16(src + 2));
    const uint8_t* qs = src + 4;
    for (int j = 0; j < kHalf; ++j) {
      out[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
      out[j + kHalf] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

void DequantizeQ5_1(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  constexpr int kHalf = kQ5_1Block / 2;
  for (int64_t b = 0; b < blocks; ++b, src += kQ5_1Bytes, out += kQ5_1Block) {
    const float d = HalfToFloat(LoadU16(src));
    const float m = HalfToFloat(LoadU16(src + 2));
    const uint32_t qh = LoadU32(src + 4);
    const uint8_t* qs = src + 8;
    for (int j = 0; j < kHalf; ++j) {
      const int low = (qs[j] & 0x0f) | ((qh & kBit[j]) ? 0x10 : 0);
      const int high = (qs[j] >> 4) | ((qh & kBit[j + kHalf]) ? 0x10 : 0);
      out[j] = static_cast<float>(low) * d + m;
      out[j + kHalf] = static_cast<float>(high) * d + m;
    }
  }
}

// Q2_K super-block: uint8 scales[16] (low nibble scale, high nibble min), uint8 qs[64],
// f16 d, f16 dmin. Sub-block g (16 elements) is x = d * scale[g] * q - dmin * min[g].
// Element 128h + 32k + l takes bits 2k..2k+1 of qs[32h + l].
void DequantizeQ2_K(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  for (int64_t b = 0; b < blocks; ++b, src += kQ2_KBytes, out += kSuperBlock) {
    const uint8_t* scales = src;
    const uint8_t* qs = src + 16;
    const float d = HalfToFloat(LoadU16(src + 80));
    const float dmin = HalfToFloat(LoadU16(src + 82));
    for (int g = 0; g < 16; ++g) {
      const float dl = d * static_cast<float>(scales[g] & 0x0f);
      const float ml = dmin * static_cast<float>(scales[g] >> 4);
      const int shift = 2 * ((g % 8) / 2);
      const uint8_t* q = qs + 32 * (g / 8) + 16 * (g % 2);
      float* y = out + 16 * g;
      for (int l = 0; l < 16; ++l) y[l] = dl * static_cast<float>((q[l] >> shift) & 3) - ml;
    }
  }
}

// 8 six-bit scales and mins of a Q4_K / Q5_K super-block in 12 bytes (ggml's
// get_scale_min_k4): sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins);
// sub-blocks 4-7 in the nibbles of bytes 8-11 with their top 2 bits in the top bits of
// bytes 0-7.
void Q4_KScaleMin(const uint8_t* q, int j, int* scale, int* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K super-block: f16 d, f16 dmin, uint8 scales[12], uint8 qs[128]. Sub-block s
// (32 elements) is x = d * scale[s] * q - dmin * min[s]; its quants are nibble s % 2 of
// qs[32 (s / 2) + l].
void DequantizeQ4_K(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  for (int64_t b = 0; b < blocks; ++b, src += kQ4_KBytes, out += kSuperBlock) {
    const float d = HalfToFloat(LoadU16(src));
    const float dmin = HalfToFloat(LoadU16(src + 2));
    const uint8_t* scales = src + 4;
    const uint8_t* qs = src + 16;
    for (int s = 0; s < 8; ++s) {
      int scale, min;
      Q4_KScaleMin(scales, s, &scale, &min);
      const float ds = d * static_cast<float>(scale);
      const float ms = dmin * static_cast<float>(min);
      const int shift = 4 * (s % 2);
      const uint8_t* q = qs + 32 * (s / 2);
      float* y = out + 32 * s;
      for (int l = 0; l < 32; ++l) y[l] = ds * static_cast<float>((q[l] >> shift) & 0x0f) - ms;
    }
  }
}

// Q5_K super-block: f16 d, f16 dmin, uint8 scales[12], uint8 qh[32], uint8 qs[128]. As Q4_K,
// with each element's fifth bit in bit s of qh[l].
void DequantizeQ5_K(const uint8_t* __restrict src, int64_t blocks, float* __restrict out) {
  for (int64_t b = 0; b < blocks; ++b, src += kQ5_KBytes, out += kSuperBlock) {
    const float d = HalfToFloat(LoadU16(src));
    const float dmin = HalfToFloat(LoadU16(src + 2));
    const uint8_t* scales = src + 4;
    const uint8_t* qh = src + 16;
    const uint8_t* qs = src + 48;
    for (int s = 0; s < 8; ++s) {
      int scale, min;
      Q4_KScaleMin(scales, s, &scale, &min);
      const float ds = d * static_cast<float>(scale);
      const float ms = dmin * static_cast<float>(min);
      const int shift = 4 * (s % 2);
      const uint8_t* q = qs + 32 * (s / 2);
      float* y = out + 32 * s;
      for (int l = 0; l < 32; ++l) {
        const int v = ((q[l] >> shift) & 0x0f) | (((qh[l] >> s) & 1) << 4);
        y[l] = ds * static_cast<float>(v) - ms;
      }
    }
  }
}

// Converts `count` blocks (or elements, for the plain types) at `src` into `out`.
using Dequantizer = void (*)(const uint8_t* src, int64_t count, float* out);

// The converter for `type`, or nullptr for the types that are not numbers to convert.
Dequantizer DequantizerFor(StoredType type) {
  switch (type) {
    case StoredType::kF32:
      return DequantizeF32;
    case StoredType::kF16:
      return DequantizeF16;
    case StoredType::kBF16:
      return DequantizeBF16;
    case StoredType::kQ8_0:
      return DequantizeQ8_0;
    case StoredType::kQ4_0:
      return DequantizeQ4_0;
    case StoredType::kQ4_1:
      return DequantizeQ4_1;
    case StoredType::kQ5_0:
      return DequantizeQ5_0;
    case StoredType::kQ5_1:
      return DequantizeQ5_1;
    case StoredType::kQ2_K:
      return DequantizeQ2_K;
    case StoredType::kQ3_K:
      return DequantizeQ3_K;
    case StoredType::kQ4_K:
      return DequantizeQ4_K;
    case StoredType::kQ5_K:
      return DequantizeQ5_K;
    case StoredType::kQ6_K:
      return DequantizeQ6_K;
    case StoredType::kQ8_K:
      return DequantizeQ8_K;
    case StoredType::kI32:
    case StoredType::kI64:
    case StoredType::kU8:
    case StoredType::kBool:
      return nullptr;
  }
  return nullptr;
}

// The bytes `tensor` must hold for its type and shape, or an error naming it.
StatusOr<size_t> ExpectedBytes(const StoredTensor& tensor) {
  int64_t n = 1;
  for (int64_t dim : tensor.shape) {
    if (dim < 0 || __builtin_mul_overflow(n, dim, &n)) {
      return InvalidArgument("tensor '" + tensor.name +
                             "' has a negative extent or an element count that overflows");
    }
  }
  const int64_t block = StoredTypeBlockSize(tensor.type);
  // Blocks never straddle rows, so the row length (and hence n) must be whole blocks.
  const int64_t row = tensor.shape.empty() ? 1 : tensor.shape.back();
  if (row % block != 0) {
    return InvalidArgument("tensor '" + tensor.name + "' has rows of " + std::to_string(row) +
                           " elements, not a multiple of the " + StoredTypeName(tensor.type) +
                           " block size " + std::to_string(block));
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(n / block),
                             static_cast<uint64_t>(StoredTypeBlockBytes(tensor.type)), &bytes) ||
      bytes > std::numeric_limits<size_t>::max()) {
    return InvalidArgument("tensor '" + tensor.name + "' has a byte size that overflows");
  }
  return static_cast<size_t>(bytes);
}

}  // namespace

const char* StoredTypeName(StoredType type) {
  switch (type) {
    case StoredType::kF32:
      return "F32";
    case StoredType::kF16:
      return "F16";
    case StoredType::kBF16:
      return "BF16";
    case StoredType::kQ8_0:
      return "Q8_0";
    case StoredType::kQ4_0:
      return "Q4_0";
    case StoredType::kQ4_1:
      return "Q4_1";
    case StoredType::kQ5_0:
      return "Q5_0";
    case StoredType::kQ5_1:
      return "Q5_1";
    case StoredType::kQ2_K:
      return "Q2_K";
    case StoredType::kQ3_K:
      return "Q3_K";
    case StoredType::kQ4_K:
      return "Q4_K";
    case StoredType::kQ5_K:
      return "Q5_K";
    case StoredType::kQ6_K:
      return "Q6_K";
    case StoredType::kQ8_K:
      return "Q8_K";
    case StoredType::kI32:
      return "I32";
    case StoredType::kI64:
      return "I64";
    case StoredType::kU8:
      return "U8";
    case StoredType::kBool:
      return "BOOL";
  }
  return "UNKNOWN";
}

int64_t StoredTypeBlockSize(StoredType type) {
  switch (type) {
    case StoredType::kQ8_0:
      return kQ8_0Block;
    case StoredType::kQ4_0:
      return kQ4_0Block;
    case StoredType::kQ4_1:
      return kQ4_1Block;
    case StoredType::kQ5_0:
      return kQ5_0Block;
    case StoredType::kQ5_1:
      return kQ5_1Block;
    case StoredType::kQ2_K:
    case StoredType::kQ3_K:
    case StoredType::kQ4_K:
    case StoredType::kQ5_K:
    case StoredType::kQ6_K:
    case StoredType::kQ8_K:
      return kSuperBlock;
    default:
      return 1;
  }
}

int64_t StoredTypeBlockBytes(StoredType type) {
  switch (type) {
    case StoredType::kF32:
      return 4;
    case StoredType::kF16:
      return 2;
    case StoredType::kBF16:
      return 2;
    case StoredType::kQ8_0:
      return kQ8_0Bytes;
    case StoredType::kQ4_0:
      return kQ4_0Bytes;
    case StoredType::kQ4_1:
      return kQ4_1Bytes;
    case StoredType::kQ5_0:
      return kQ5_0Bytes;
    case StoredType::kQ5_1:
      return kQ5_1Bytes;
    case StoredType::kQ2_K:
      return kQ2_KBytes;
    case StoredType::kQ3_K:
      return kQ3_KBytes;
    case StoredType::kQ4_K:
      return kQ4_KBytes;
    case StoredType::kQ5_K:
      return kQ5_KBytes;
    case StoredType::kQ6_K:
      return kQ6_KBytes;
    case StoredType::kQ8_K:
      return kQ8_KBytes;
    case StoredType::kI32:
      return 4;
    case StoredType::kI64:
      return 8;
    case StoredType::kU8:
      return 1;
    case StoredType::kBool:
      return 1;
  }
  return 1;
}

int64_t StoredTensor::NumElements() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

Status DequantizeToF32(const StoredTensor& tensor, float* out) {
  const Dequantizer dequantize = DequantizerFor(tensor.type);
  if (dequantize == nullptr) {
    return Unimplemented("cannot convert tensor '" + tensor.name + "' of type " +
                         StoredTypeName(tensor.type) +
                         " to float32 (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
                         "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)");
  }
  GLASSBOX_ASSIGN_OR_RETURN(size_t expected, ExpectedBytes(tensor));
  if (tensor.nbytes < expected) {
    return InvalidArgument("tensor '" + tensor.name + "' holds " + std::to_string(tensor.nbytes) +
                           " bytes, its type and shape need " + std::to_string(expected));
  }
  const int64_t count = tensor.NumElements() / StoredTypeBlockSize(tensor.type);
  if (count > 0) dequantize(tensor.data, count, out);
  return Status::Ok();
}

}  // namespace glassbox
