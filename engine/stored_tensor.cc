// Element types of model files and their conversion to float32.
//
// The block layouts and arithmetic follow ggml's reference dequantization
// (ggml-quants.c, dequantize_row_*) so results are bit-identical to ggml and to gguf-py;
// tests/fixtures/quant holds golden outputs. The loops run over ~100M elements at model
// load, so they are kept simple enough for the compiler to unroll and vectorise.
#include "engine/stored_tensor.h"

#include <cstring>

namespace glassbox {
namespace {

// ggml block layouts (ggml-common.h). All fields are little-endian.
constexpr int64_t kQ8_0Block = 32;  // f16 d, int8 qs[32]: x = qs * d
constexpr int64_t kQ4_0Block = 32;  // f16 d, uint8 qs[16]: x = (nibble - 8) * d
constexpr int64_t kQ4_1Block = 32;  // f16 d, f16 m, uint8 qs[16]: x = nibble * d + m
constexpr int64_t kQ8_0Bytes = 2 + 32;
constexpr int64_t kQ4_0Bytes = 2 + 16;
constexpr int64_t kQ4_1Bytes = 2 + 2 + 16;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "model files are little-endian and read in place");

uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
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

void DequantizeF16(const uint8_t* src, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = HalfToFloat(LoadU16(src + 2 * i));
}

void DequantizeBF16(const uint8_t* src, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = FloatFromBits(static_cast<uint32_t>(LoadU16(src + 2 * i)) << 16);
  }
}

void DequantizeQ8_0(const uint8_t* src, int64_t blocks, float* out) {
  for (int64_t b = 0; b < blocks; ++b, src += kQ8_0Bytes, out += kQ8_0Block) {
    const float d = HalfToFloat(LoadU16(src));
    const int8_t* qs = reinterpret_cast<const int8_t*>(src + 2);
    for (int j = 0; j < kQ8_0Block; ++j) out[j] = static_cast<float>(qs[j]) * d;
  }
}

// In Q4 blocks byte j holds element j in its low nibble and element j + 16 in its high one.
void DequantizeQ4_0(const uint8_t* src, int64_t blocks, float* out) {
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

// ggml and gguf-py round the product before adding m; a fused multiply-add (which compilers
// form on their own for targets with FMA, e.g. -march=haswell or aarch64) would differ in
// the last bit, so contraction is switched off for this function.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
void DequantizeQ4_1(const uint8_t* src, int64_t blocks, float* out) {
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
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// The bytes `tensor` must hold for its type and shape, or an error naming it.
StatusOr<size_t> ExpectedBytes(const StoredTensor& tensor) {
  const int64_t n = tensor.NumElements();
  const int64_t block = StoredTypeBlockSize(tensor.type);
  // Blocks never straddle rows, so the row length (and hence n) must be whole blocks.
  const int64_t row = tensor.shape.empty() ? 1 : tensor.shape.back();
  if (n < 0 || row % block != 0) {
    return InvalidArgument("tensor '" + tensor.name + "' has rows of " + std::to_string(row) +
                           " elements, not a multiple of the " + StoredTypeName(tensor.type) +
                           " block size " + std::to_string(block));
  }
  return static_cast<size_t>(n / block * StoredTypeBlockBytes(tensor.type));
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
  GLASSBOX_ASSIGN_OR_RETURN(size_t expected, ExpectedBytes(tensor));
  if (tensor.nbytes < expected) {
    return InvalidArgument("tensor '" + tensor.name + "' holds " + std::to_string(tensor.nbytes) +
                           " bytes, its type and shape need " + std::to_string(expected));
  }
  const int64_t n = tensor.NumElements();
  const int64_t blocks = n / StoredTypeBlockSize(tensor.type);
  const uint8_t* src = tensor.data;
  switch (tensor.type) {
    case StoredType::kF32:
      if (n > 0) std::memcpy(out, src, expected);
      return Status::Ok();
    case StoredType::kF16:
      DequantizeF16(src, n, out);
      return Status::Ok();
    case StoredType::kBF16:
      DequantizeBF16(src, n, out);
      return Status::Ok();
    case StoredType::kQ8_0:
      DequantizeQ8_0(src, blocks, out);
      return Status::Ok();
    case StoredType::kQ4_0:
      DequantizeQ4_0(src, blocks, out);
      return Status::Ok();
    case StoredType::kQ4_1:
      DequantizeQ4_1(src, blocks, out);
      return Status::Ok();
    default:
      return Unimplemented("cannot convert tensor '" + tensor.name + "' of type " +
                           StoredTypeName(tensor.type) +
                           " to float32 (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)");
  }
}

}  // namespace glassbox
