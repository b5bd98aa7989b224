// safetensors reader: one file, or a Hugging Face directory sharded through
// model.safetensors.index.json. Tensors point into the mapping; nothing is copied.
#ifndef GLASSBOX_ENGINE_SAFETENSORS_H_
#define GLASSBOX_ENGINE_SAFETENSORS_H_

#include <map>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/stored_tensor.h"

namespace glassbox {

class SafetensorsFile {
 public:
  // Errors name the file and what was wrong (header length past the end, bad JSON, a
  // tensor whose byte range does not match its dtype and shape or lies outside the file,
  // an unsupported dtype).
  static StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<StoredTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::vector<StoredTensor> tensors_;
  std::map<std::string, std::string> metadata_;
  friend class SafetensorsParser;
};

// All tensors of a Hugging Face model directory: `model.safetensors`, or the shards listed
// by `model.safetensors.index.json`. kNotFound names the directory and both file names
// when neither exists.
StatusOr<std::vector<StoredTensor>> LoadSafetensorsDirectory(const std::string& dir);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_SAFETENSORS_H_
