// GGUF reader (versions 2 and 3): metadata, tensor table and alignment, over a mapping.
//
// Every error names the file, what was expected and the byte offset where reading failed;
// no input can make the reader crash or allocate without bound (counts and lengths are
// checked against the bytes that remain before anything is reserved).
#ifndef GLASSBOX_ENGINE_GGUF_H_
#define GLASSBOX_ENGINE_GGUF_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/stored_tensor.h"

namespace glassbox {

// One metadata value. Scalars keep their widest form; arrays keep a homogeneous list.
struct GgufValue {
  enum class Kind { kUInt, kInt, kFloat, kBool, kString, kArray };
  Kind kind = Kind::kUInt;
  uint64_t uint_value = 0;
  int64_t int_value = 0;
  double float_value = 0;
  bool bool_value = false;
  std::string string_value;
  std::vector<GgufValue> array;  // for kArray
};

class GgufFile {
 public:
  static StatusOr<GgufFile> Open(const std::string& path);

  uint32_t version() const { return version_; }
  const std::string& path() const { return file_->path(); }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  // Tensors in file order; shapes already in PyTorch order (GGUF's ne[] reversed).
  const std::vector<StoredTensor>& tensors() const { return tensors_; }
  const StoredTensor* FindTensor(const std::string& name) const;

  // Typed metadata lookups: kNotFound if absent, kInvalidArgument if of another kind.
  // Integer getters accept any integer kind; GetFloat accepts integers too.
  StatusOr<std::string> GetString(const std::string& key) const;
  StatusOr<int64_t> GetInt(const std::string& key) const;
  StatusOr<double> GetFloat(const std::string& key) const;
  StatusOr<bool> GetBool(const std::string& key) const;
  StatusOr<std::vector<std::string>> GetStringArray(const std::string& key) const;
  StatusOr<std::vector<int64_t>> GetIntArray(const std::string& key) const;

 private:
  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<StoredTensor> tensors_;
  friend class GgufParser;
};

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_GGUF_H_
