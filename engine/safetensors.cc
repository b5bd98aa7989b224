// safetensors reader: validates the JSON header of a .safetensors file against the file's
// size and describes each tensor as a StoredTensor pointing into the mapping; also resolves
// Hugging Face shard indexes (model.safetensors.index.json).
//
// Format: 8-byte little-endian header length N, N bytes of JSON, then the byte buffer that
// every tensor's data_offsets [begin, end) are relative to.
#include "engine/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

namespace glassbox {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kHeaderLengthBytes = 8;
// The reference implementation refuses larger headers too (safetensors MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kSupportedDtypes = "F32, F16, BF16, I64, I32, U8, BOOL";
constexpr const char* kSingleFileName = "model.safetensors";
constexpr const char* kIndexFileName = "model.safetensors.index.json";

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

bool StoredTypeFromDtype(const std::string& dtype, StoredType* type) {
  static const std::pair<const char*, StoredType> kDtypes[] = {
      {"F32", StoredType::kF32},  {"F16", StoredType::kF16}, {"BF16", StoredType::kBF16},
      {"I64", StoredType::kI64},  {"I32", StoredType::kI32}, {"U8", StoredType::kU8},
      {"BOOL", StoredType::kBool}};
  for (const auto& [name, stored] : kDtypes) {
    if (dtype == name) {
      *type = stored;
      return true;
    }
  }
  return false;
}

// Reads a JSON array of non-negative integers into `out`.
bool ReadUnsignedArray(const Json& json, std::vector<uint64_t>* out) {
  if (!json.is_array()) return false;
  for (const Json& element : json) {
    if (!element.is_number_unsigned()) return false;
    out->push_back(element.get<uint64_t>());
  }
  return true;
}

// The JSON member `key` of `object`, or nullptr.
const Json* Member(const Json& object, const char* key) {
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

}  // namespace

// One pass over a mapped safetensors file; builds the SafetensorsFile it describes. Error
// messages are relative; Parse() prefixes the path.
class SafetensorsParser {
 public:
  explicit SafetensorsParser(std::shared_ptr<MappedFile> file) : file_(std::move(file)) {
    result_.path_ = file_->path();
  }
  StatusOr<SafetensorsFile> Parse();

 private:
  Status ReadHeader(Json* header);
  Status ReadEntries(const Json& header);
  Status ReadMetadata(const Json& metadata);
  Status ReadTensor(const std::string& name, const Json& entry);
  Status CheckDataRange(const StoredTensor& tensor, uint64_t begin, uint64_t end) const;

  std::shared_ptr<MappedFile> file_;
  const uint8_t* buffer_ = nullptr;  // the byte buffer after the header
  uint64_t buffer_size_ = 0;
  std::vector<uint64_t> begins_;  // data_offsets[0] of each tensor, to sort by
  SafetensorsFile result_;
};

StatusOr<SafetensorsFile> SafetensorsParser::Parse() {
  Json header;
  Status status = ReadHeader(&header);
  if (status.ok()) status = ReadEntries(header);
  if (!status.ok()) return status.WithContext(file_->path());
  return std::move(result_);
}

Status SafetensorsParser::ReadHeader(Json* header) {
  const uint64_t size = file_->size();
  if (size < kHeaderLengthBytes) {
    return DataLoss(
        "truncated: expected the 8-byte header length at byte offset 0, but the "
        "file is " +
        std::to_string(size) + " bytes");
  }
  uint64_t length = 0;
  std::memcpy(&length, file_->data(), sizeof(length));  // little-endian on our targets
  if (length > size - kHeaderLengthBytes) {
    return DataLoss("header length " + std::to_string(length) + " runs past the end of the " +
                    "file (" + std::to_string(size) + " bytes)");
  }
  if (length > kMaxHeaderBytes) {
    return ResourceExhausted("header length " + std::to_string(length) + " exceeds the limit of " +
                             std::to_string(kMaxHeaderBytes) + " bytes");
  }
  const uint8_t* begin = file_->data() + kHeaderLengthBytes;
  buffer_ = begin + length;
  buffer_size_ = size - kHeaderLengthBytes - length;
  try {
    *header = Json::parse(begin, buffer_);
  } catch (const Json::exception& e) {
    return DataLoss(std::string("header (bytes 8..") + std::to_string(8 + length) +
                    ") is not valid JSON: " + e.what());
  }
  if (!header->is_object()) return DataLoss("header is not a JSON object");
  return Status::Ok();
}

Status SafetensorsParser::ReadEntries(const Json& header) {
  for (const auto& [key, value] : header.items()) {
    Status status = key == kMetadataKey ? ReadMetadata(value) : ReadTensor(key, value);
    if (!status.ok()) return status;
  }
  // File order (by data offset) rather than the header's key order.
  std::vector<size_t> order(result_.tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [this](size_t a, size_t b) { return begins_[a] < begins_[b]; });
  std::vector<StoredTensor> sorted;
  sorted.reserve(order.size());
  for (size_t i : order) sorted.push_back(std::move(result_.tensors_[i]));
  result_.tensors_ = std::move(sorted);
  return Status::Ok();
}

Status SafetensorsParser::ReadMetadata(const Json& metadata) {
  if (!metadata.is_object()) return DataLoss("__metadata__ is not a JSON object");
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) {
      return DataLoss("__metadata__ value of " + Quoted(key) + " is not a string");
    }
    result_.metadata_[key] = value.get<std::string>();
  }
  return Status::Ok();
}

Status SafetensorsParser::ReadTensor(const std::string& name, const Json& entry) {
  const std::string context = "tensor " + Quoted(name);
  const Json* dtype = entry.is_object() ? Member(entry, "dtype") : nullptr;
  if (dtype == nullptr || !dtype->is_string()) {
    return DataLoss(context + ": expected an object with a string \"dtype\"");
  }
  StoredTensor tensor;
  tensor.name = name;
  const std::string& dtype_name = dtype->get_ref<const std::string&>();
  if (!StoredTypeFromDtype(dtype_name, &tensor.type)) {
    return Unimplemented(context + " has dtype " + dtype_name +
                         ", which Glassbox cannot load (supported: " + kSupportedDtypes + ")");
  }
  std::vector<uint64_t> shape, offsets;
  const Json* shape_json = Member(entry, "shape");
  const Json* offsets_json = Member(entry, "data_offsets");
  if (shape_json == nullptr || !ReadUnsignedArray(*shape_json, &shape)) {
    return DataLoss(context + ": \"shape\" must be an array of non-negative integers");
  }
  if (offsets_json == nullptr || !ReadUnsignedArray(*offsets_json, &offsets) ||
      offsets.size() != 2) {
    return DataLoss(context + ": \"data_offsets\" must be two non-negative integers");
  }
  for (uint64_t extent : shape) {
    if (extent > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return DataLoss(context + ": extent " + std::to_string(extent) + " is too large");
    }
    tensor.shape.push_back(static_cast<int64_t>(extent));
  }
  GLASSBOX_RETURN_IF_ERROR(CheckDataRange(tensor, offsets[0], offsets[1]).WithContext(context));
  tensor.data = buffer_ + offsets[0];
  tensor.nbytes = offsets[1] - offsets[0];
  tensor.file = file_;
  begins_.push_back(offsets[0]);
  result_.tensors_.push_back(std::move(tensor));
  return Status::Ok();
}

// Checks that [begin, end) lies in the byte buffer and holds exactly the tensor's bytes.
Status SafetensorsParser::CheckDataRange(const StoredTensor& tensor, uint64_t begin,
                                         uint64_t end) const {
  const std::string range =
      "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + ")";
  if (end < begin) return DataLoss(range + " end before they begin");
  if (end > buffer_size_) {
    return DataLoss(range + " run past the end of the file: the data buffer starting at byte " +
                    "offset " + std::to_string(buffer_ - file_->data()) + " holds " +
                    std::to_string(buffer_size_) + " bytes");
  }
  uint64_t expected = StoredTypeBlockBytes(tensor.type);
  for (int64_t extent : tensor.shape) {
    if (__builtin_mul_overflow(expected, static_cast<uint64_t>(extent), &expected)) {
      return DataLoss("byte size of the shape overflows");
    }
  }
  if (end - begin == expected) return Status::Ok();
  std::string shape;
  for (int64_t extent : tensor.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(extent);
  return DataLoss(range + " span " + std::to_string(end - begin) + " bytes, but " +
                  StoredTypeName(tensor.type) + " with shape [" + shape + "] needs " +
                  std::to_string(expected));
}

StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  GLASSBOX_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::Open(path));
  return SafetensorsParser(std::move(file)).Parse();
}

namespace {

namespace fs = std::filesystem;

// weight_map of a shard index, grouped by shard: shard file name -> tensor names.
using ShardMap = std::map<std::string, std::vector<std::string>>;

// The shard named `shard` must be a plain file name inside the model directory.
bool IsPlainFileName(const std::string& shard) {
  return !shard.empty() && shard != "." && shard != ".." && shard.find('/') == std::string::npos;
}

StatusOr<ShardMap> ReadShardIndex(const std::string& index_path) {
  GLASSBOX_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::Open(index_path));
  Json index;
  try {
    index = Json::parse(file->data(), file->data() + file->size());
  } catch (const Json::exception& e) {
    return DataLoss(index_path + ": not valid JSON: " + e.what());
  }
  const Json* weight_map = index.is_object() ? Member(index, "weight_map") : nullptr;
  if (weight_map == nullptr || !weight_map->is_object() || weight_map->empty()) {
    return DataLoss(index_path + ": expected a non-empty \"weight_map\" object");
  }
  ShardMap shards;
  for (const auto& [tensor, shard] : weight_map->items()) {
    if (!shard.is_string() || !IsPlainFileName(shard.get<std::string>())) {
      return DataLoss(index_path + ": weight_map entry of " + Quoted(tensor) +
                      " is not a file name in the model directory");
    }
    shards[shard.get<std::string>()].push_back(tensor);
  }
  return shards;
}

// Appends the tensors of `shard` to `out`, checking it holds every tensor the index puts in
// it and none that another shard already provided.
Status AppendShard(const SafetensorsFile& shard, const std::vector<std::string>& expected,
                   std::set<std::string>* seen, std::vector<StoredTensor>* out) {
  std::set<std::string> names;
  for (const StoredTensor& tensor : shard.tensors()) {
    if (!seen->insert(tensor.name).second) {
      return DataLoss(shard.path() + ": tensor " + Quoted(tensor.name) +
                      " is also in another shard");
    }
    names.insert(tensor.name);
    out->push_back(tensor);
  }
  for (const std::string& name : expected) {
    if (names.count(name) == 0) {
      return DataLoss(shard.path() + ": the index puts tensor " + Quoted(name) +
                      " in this shard, but it is not there");
    }
  }
  return Status::Ok();
}

StatusOr<std::vector<StoredTensor>> LoadShards(const fs::path& dir, const std::string& index) {
  GLASSBOX_ASSIGN_OR_RETURN(ShardMap shards, ReadShardIndex(index));
  std::vector<StoredTensor> tensors;
  std::set<std::string> seen;
  for (const auto& [shard_name, expected] : shards) {
    StatusOr<SafetensorsFile> shard = SafetensorsFile::Open((dir / shard_name).string());
    if (!shard.ok()) {
      return shard.status().WithContext(index + ": shard " + Quoted(shard_name));
    }
    GLASSBOX_RETURN_IF_ERROR(AppendShard(*shard, expected, &seen, &tensors));
  }
  return tensors;
}

}  // namespace

StatusOr<std::vector<StoredTensor>> LoadSafetensorsDirectory(const std::string& dir) {
  const fs::path single = fs::path(dir) / kSingleFileName;
  const fs::path index = fs::path(dir) / kIndexFileName;
  std::error_code error;
  if (fs::exists(single, error)) {
    GLASSBOX_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(single.string()));
    return file.tensors();
  }
  if (fs::exists(index, error)) return LoadShards(fs::path(dir), index.string());
  return NotFound("no safetensors model in " + dir + ": neither " + kSingleFileName + " nor " +
                  kIndexFileName + " exists there");
}

}  // namespace glassbox
