// MappedFile: opens a model file and maps it read-only (MAP_PRIVATE), so loaders can point
// tensors straight into the page cache instead of copying hundreds of megabytes.
#include "engine/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace glassbox {
namespace {

std::string OsError(const std::string& what, const std::string& path, int err) {
  return what + " " + path + ": " + std::strerror(err);
}

// open(2) failures: a missing file is kNotFound; everything else (permissions, a path
// component that is a file, ...) is the caller's input being wrong.
Status OpenError(const std::string& path, int err) {
  std::string message = OsError("cannot open", path, err);
  if (err == ENOENT || err == ENOTDIR) return NotFound(message);
  if (err == EMFILE || err == ENFILE || err == ENOMEM) return ResourceExhausted(message);
  return InvalidArgument(message);
}

// Checks that `st` describes a non-empty regular file.
Status CheckMappable(const std::string& path, const struct stat& st) {
  if (S_ISDIR(st.st_mode)) return InvalidArgument("cannot map " + path + ": is a directory");
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgument("cannot map " + path + ": not a regular file");
  }
  if (st.st_size == 0) return InvalidArgument("cannot map " + path + ": file is empty");
  return Status::Ok();
}

}  // namespace

StatusOr<std::shared_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  // O_NONBLOCK keeps a FIFO from hanging the open; it is rejected just below.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return OpenError(path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Internal(OsError("cannot stat", path, err));
  }
  Status mappable = CheckMappable(path, st);
  if (!mappable.ok()) {
    ::close(fd);
    return mappable;
  }
  size_t size = static_cast<size_t>(st.st_size);
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int mmap_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (addr == MAP_FAILED) return Internal(OsError("cannot mmap", path, mmap_errno));
  // Loaders read the whole file once, front to back; start readahead now. Advisory only.
  ::madvise(addr, size, MADV_WILLNEED);
  return std::shared_ptr<MappedFile>(new MappedFile(path, static_cast<const uint8_t*>(addr), size));
}

MappedFile::~MappedFile() { ::munmap(const_cast<uint8_t*>(data_), size_); }

}  // namespace glassbox
