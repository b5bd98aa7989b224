// StoredTensor: a tensor as it lies in a model file (GGUF or safetensors), before LibTorch.
//
// Loaders describe every tensor of a file with one of these: its element type as stored,
// its shape in PyTorch order (outermost dimension first) and a pointer into the file's
// memory mapping, which the shared MappedFile keeps alive. Nothing here is copied.
#ifndef GLASSBOX_ENGINE_STORED_TENSOR_H_
#define GLASSBOX_ENGINE_STORED_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/mapped_file.h"

namespace glassbox {

// Element types a model file may hold. Block-quantized types (Q*) pack `BlockSize()`
// elements into `BlockBytes()` bytes, as ggml defines them; the K-quants (Q*_K) use
// super-blocks of 256 elements.
enum class StoredType {
  kF32,
  kF16,
  kBF16,
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ2_K,
  kQ3_K,
  kQ4_K,
  kQ5_K,
  kQ6_K,
  kQ8_K,
  kI32,
  kI64,
  kU8,
  kBool
};

const char* StoredTypeName(StoredType type);
int64_t StoredTypeBlockSize(StoredType type);   // elements per block (1 for plain types)
int64_t StoredTypeBlockBytes(StoredType type);  // bytes per block

struct StoredTensor {
  std::string name;
  StoredType type = StoredType::kF32;
  std::vector<int64_t> shape;  // PyTorch order: shape.back() is the contiguous dimension
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::shared_ptr<MappedFile> file;  // keeps `data` valid

  int64_t NumElements() const;
};

// Converts every element of `tensor` to float32 into `out`, which must hold
// tensor.NumElements() floats. Supports F32, F16, BF16 and every Q* type above (bit-exact
// with ggml's reference dequantization and gguf-py); the integer types give kUnimplemented
// naming the tensor. A shape whose rows are not whole blocks, or data shorter than the
// type and shape need, gives kInvalidArgument naming the tensor; nothing is read then.
Status DequantizeToF32(const StoredTensor& tensor, float* out);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_STORED_TENSOR_H_
