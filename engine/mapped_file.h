// MappedFile: a read-only memory mapping of a whole file, shared by the tensors that point
// into it. Thread-safe to read from any number of threads once opened.
#ifndef GLASSBOX_ENGINE_MAPPED_FILE_H_
#define GLASSBOX_ENGINE_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "base/status.h"

namespace glassbox {

class MappedFile {
 public:
  // Maps `path` read-only. Errors (kNotFound, kInvalidArgument for a directory or an empty
  // file, kInternal for mmap failures) name the path and the OS reason.
  static StatusOr<std::shared_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_MAPPED_FILE_H_
