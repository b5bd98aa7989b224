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
// elements into `BlockBytes()` bytes, as ggml defines them.
enum class StoredType { kF32, kF16, kBF16, kQ8_0, kQ4_0, kQ4_1, kI32, kI64, kU8, kBool };

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
// tensor.NumElements() floats. Supports F32, F16, BF16, Q8_0, Q4_0, Q4_1 (bit-exact with
// ggml's reference dequantization); other types give kUnimplemented naming the tensor.
Status DequantizeToF32(const StoredTensor& tensor, float* out);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_STORED_TENSOR_H_
