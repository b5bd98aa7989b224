// GGUF reader: parses the header, metadata and tensor table of a GGUF v2/v3 file in place
// over its memory mapping, and describes each tensor as a StoredTensor.
//
// Format reference: ggml/docs/gguf.md. Every read goes through GgufParser's cursor, which
// checks the bytes that remain first; counts are capped by the smallest encoding of the
// items they announce, so a corrupt count fails before anything is reserved.
#include "engine/gguf.h"

#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <set>
#include <type_traits>
#include <utility>

#include "base/check.h"

namespace glassbox {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF fields are read in place");

// Metadata value types, as numbered on disk.
enum GgufValueType : uint32_t {
  kTypeU8 = 0,
  kTypeI8 = 1,
  kTypeU16 = 2,
  kTypeI16 = 3,
  kTypeU32 = 4,
  kTypeI32 = 5,
  kTypeF32 = 6,
  kTypeBool = 7,
  kTypeString = 8,
  kTypeArray = 9,
  kTypeU64 = 10,
  kTypeI64 = 11,
  kTypeF64 = 12,
};

constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kMaxAlignment = uint64_t{1} << 30;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;
// Each GgufValue costs ~100 bytes in memory whatever its size on disk, so a file of one
// huge u8 array could otherwise cost 100x its size. Real vocabularies need ~1M values.
constexpr uint64_t kMaxMetadataValues = uint64_t{1} << 22;
// Likewise for tensors (~200 bytes each in memory); the largest models have a few thousand.
constexpr uint64_t kMaxTensors = uint64_t{1} << 20;
// Smallest on-disk encodings, used to cap counts against the bytes that remain.
constexpr uint64_t kMinKeyValueBytes = 8 + 4 + 1;        // key length, type, u8
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // name length, n_dims, type, offset
constexpr const char* kSupportedTypes =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, I32, I64";

// Smallest encoding of one value of each type, indexed by type number; strings and arrays
// count only their length fields (and element type).
constexpr uint64_t kMinValueBytes[] = {1, 1, 2, 2, 4, 4, 4, 1, 8, 4 + 8, 8, 8, 8};
static_assert(std::size(kMinValueBytes) == kTypeF64 + 1);

// Smallest encoding of one value of `type`, or 0 for an unknown type.
uint64_t MinValueBytes(uint32_t type) {
  return type < std::size(kMinValueBytes) ? kMinValueBytes[type] : 0;
}

// ggml_type names (ggml.h), for error messages about types Glassbox cannot load.
const char* GgmlTypeName(uint32_t type) {
  static const char* const kNames[] = {
      "F32",   "F16",        "Q4_0",       "Q4_1",       "Q4_2",     "Q4_3",     "Q5_0",
      "Q5_1",  "Q8_0",       "Q8_1",       "Q2_K",       "Q3_K",     "Q4_K",     "Q5_K",
      "Q6_K",  "Q8_K",       "IQ2_XXS",    "IQ2_XS",     "IQ3_XXS",  "IQ1_S",    "IQ4_NL",
      "IQ3_S", "IQ2_S",      "IQ4_XS",     "I8",         "I16",      "I32",      "I64",
      "F64",   "IQ1_M",      "BF16",       "Q4_0_4_4",   "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",
      "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4"};
  return type < std::size(kNames) ? kNames[type] : "unknown";
}

// Maps a ggml type number to the types Glassbox reads; false for the rest.
bool StoredTypeFromGgml(uint32_t type, StoredType* out) {
  static constexpr std::pair<uint32_t, StoredType> kReadable[] = {
      {0, StoredType::kF32},   {1, StoredType::kF16},   {2, StoredType::kQ4_0},
      {3, StoredType::kQ4_1},  {6, StoredType::kQ5_0},  {7, StoredType::kQ5_1},
      {8, StoredType::kQ8_0},  {10, StoredType::kQ2_K}, {11, StoredType::kQ3_K},
      {12, StoredType::kQ4_K}, {13, StoredType::kQ5_K}, {14, StoredType::kQ6_K},
      {15, StoredType::kQ8_K}, {26, StoredType::kI32},  {27, StoredType::kI64},
      {30, StoredType::kBF16}};
  for (const auto& [ggml_type, stored] : kReadable) {
    if (ggml_type == type) {
      *out = stored;
      return true;
    }
  }
  return false;
}

const char* KindName(GgufValue::Kind kind) {
  switch (kind) {
    case GgufValue::Kind::kUInt:
      return "an unsigned integer";
    case GgufValue::Kind::kInt:
      return "a signed integer";
    case GgufValue::Kind::kFloat:
      return "a float";
    case GgufValue::Kind::kBool:
      return "a bool";
    case GgufValue::Kind::kString:
      return "a string";
    case GgufValue::Kind::kArray:
      return "an array";
  }
  return "unknown";
}

bool IsInteger(const GgufValue& v) {
  return v.kind == GgufValue::Kind::kUInt || v.kind == GgufValue::Kind::kInt;
}

// The integer in `v` (kUInt or kInt) as int64, or false if it does not fit.
bool ToInt64(const GgufValue& v, int64_t* out) {
  if (v.kind == GgufValue::Kind::kInt) {
    *out = v.int_value;
    return true;
  }
  if (v.uint_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  *out = static_cast<int64_t>(v.uint_value);
  return true;
}

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

}  // namespace

// One pass over a mapped GGUF file; builds the GgufFile it describes. Error messages are
// relative ("expected X at byte offset N"); Parse() prefixes the path.
class GgufParser {
 public:
  explicit GgufParser(std::shared_ptr<MappedFile> file) : data_(file->data()), size_(file->size()) {
    result_.file_ = std::move(file);
  }
  StatusOr<GgufFile> Parse();

 private:
  // A tensor-table entry before its data is placed and checked.
  struct TensorInfo {
    std::string name;
    std::vector<uint64_t> ne;  // GGUF order: ne[0] is the contiguous dimension
    uint32_t ggml_type = 0;
    uint64_t offset = 0;     // relative to the data section
    size_t info_offset = 0;  // where the entry starts in the file, for messages
  };

  size_t Remaining() const { return size_ - pos_; }
  Status Need(uint64_t n, const char* what) const;
  template <typename T>
  Status Read(T* value, const char* what);
  Status ReadString(std::string* s, const char* what);
  Status ReadCount(uint64_t* count, uint64_t min_item_bytes, const char* what);

  Status ReadHeader(uint64_t* tensor_count, uint64_t* kv_count);
  Status ReadVersion();
  Status ReadMetadata(uint64_t kv_count);
  Status ReadKeyValue();
  Status ReadValueType(uint32_t* type, const char* what);
  Status ReadValue(uint32_t type, int depth, GgufValue* value);
  Status ReadArray(int depth, GgufValue* value);
  template <typename T>
  Status ReadScalar(GgufValue::Kind kind, GgufValue* value, const char* what);
  Status CountValues(uint64_t n);

  Status ReadTensorInfos(uint64_t count, std::vector<TensorInfo>* infos);
  Status ReadTensorInfo(TensorInfo* info);
  StatusOr<uint64_t> Alignment() const;
  Status PlaceTensors(const std::vector<TensorInfo>& infos);
  static StatusOr<uint64_t> TensorBytes(const std::vector<uint64_t>& ne, StoredType type);
  Status PlaceTensor(const TensorInfo& info, StoredType type, uint64_t data_start,
                     uint64_t alignment);
  static Status UnsupportedTypes(const std::vector<const TensorInfo*>& unsupported);

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  uint64_t metadata_values_ = 0;
  GgufFile result_;
};

Status GgufParser::Need(uint64_t n, const char* what) const {
  if (n <= Remaining()) return Status::Ok();
  return DataLoss("truncated: expected " + std::string(what) + " at byte offset " +
                  std::to_string(pos_) + ", but only " + std::to_string(Remaining()) +
                  " of the file's " + std::to_string(size_) + " bytes remain");
}

template <typename T>
Status GgufParser::Read(T* value, const char* what) {
  GLASSBOX_RETURN_IF_ERROR(Need(sizeof(T), what));
  std::memcpy(value, data_ + pos_, sizeof(T));
  pos_ += sizeof(T);
  return Status::Ok();
}

Status GgufParser::ReadString(std::string* s, const char* what) {
  uint64_t length = 0;
  size_t at = pos_;
  GLASSBOX_RETURN_IF_ERROR(Read(&length, "string length (u64)"));
  if (length > Remaining()) {
    return DataLoss("truncated: " + std::string(what) + " at byte offset " + std::to_string(at) +
                    " announces " + std::to_string(length) + " bytes, but only " +
                    std::to_string(Remaining()) + " remain");
  }
  s->assign(reinterpret_cast<const char*>(data_ + pos_), length);
  pos_ += length;
  return Status::Ok();
}

Status GgufParser::ReadCount(uint64_t* count, uint64_t min_item_bytes, const char* what) {
  size_t at = pos_;
  GLASSBOX_RETURN_IF_ERROR(Read(count, what));
  if (*count <= Remaining() / min_item_bytes) return Status::Ok();
  return DataLoss(std::string(what) + " at byte offset " + std::to_string(at) + " is " +
                  std::to_string(*count) + ", but that many items of at least " +
                  std::to_string(min_item_bytes) + " bytes cannot fit in the " +
                  std::to_string(Remaining()) + " bytes that remain (truncated or corrupt file)");
}

StatusOr<GgufFile> GgufParser::Parse() {
  uint64_t tensor_count = 0, kv_count = 0;
  std::vector<TensorInfo> infos;
  Status status = ReadHeader(&tensor_count, &kv_count);
  if (status.ok()) status = ReadMetadata(kv_count);
  if (status.ok()) status = ReadTensorInfos(tensor_count, &infos);
  if (status.ok()) status = PlaceTensors(infos);
  if (!status.ok()) return status.WithContext(result_.file_->path());
  return std::move(result_);
}

Status GgufParser::ReadHeader(uint64_t* tensor_count, uint64_t* kv_count) {
  GLASSBOX_RETURN_IF_ERROR(Need(4, "magic \"GGUF\""));
  if (std::memcmp(data_, "GGUF", 4) != 0) {
    char found[16];
    std::snprintf(found, sizeof(found), "%02x %02x %02x %02x", data_[0], data_[1], data_[2],
                  data_[3]);
    return InvalidArgument(std::string("not a GGUF file: expected magic \"GGUF\" (47 47 55 46) ") +
                           "at byte offset 0, found " + found);
  }
  pos_ = 4;
  GLASSBOX_RETURN_IF_ERROR(ReadVersion());
  GLASSBOX_RETURN_IF_ERROR(ReadCount(tensor_count, kMinTensorInfoBytes, "tensor count (u64)"));
  if (*tensor_count > kMaxTensors) {
    return ResourceExhausted("tensor count " + std::to_string(*tensor_count) +
                             " at byte offset 8 exceeds the limit of " +
                             std::to_string(kMaxTensors));
  }
  return ReadCount(kv_count, kMinKeyValueBytes, "metadata key-value count (u64)");
}

Status GgufParser::ReadVersion() {
  uint32_t version = 0;
  GLASSBOX_RETURN_IF_ERROR(Read(&version, "version (u32)"));
  if (version == 2 || version == 3) {
    result_.version_ = version;
    return Status::Ok();
  }
  if (version == 1) {
    return Unimplemented(
        "GGUF version 1 is not supported (only versions 2 and 3); "
        "re-convert the model with a current llama.cpp");
  }
  if (version == 0x02000000u || version == 0x03000000u) {
    return Unimplemented("big-endian GGUF files are not supported");
  }
  return Unimplemented("unsupported GGUF version " + std::to_string(version) +
                       " at byte offset 4 (supported: 2, 3)");
}

Status GgufParser::ReadMetadata(uint64_t kv_count) {
  GLASSBOX_RETURN_IF_ERROR(CountValues(kv_count));
  for (uint64_t i = 0; i < kv_count; ++i) {
    Status status = ReadKeyValue();
    if (!status.ok()) {
      return status.WithContext("metadata entry " + std::to_string(i) + " of " +
                                std::to_string(kv_count));
    }
  }
  return Status::Ok();
}

Status GgufParser::ReadKeyValue() {
  size_t at = pos_;
  std::string key;
  GLASSBOX_RETURN_IF_ERROR(ReadString(&key, "metadata key"));
  if (result_.metadata_.count(key) != 0) {
    return DataLoss("duplicate metadata key " + Quoted(key) + " at byte offset " +
                    std::to_string(at));
  }
  uint32_t type = 0;
  GgufValue value;
  Status status = ReadValueType(&type, "metadata value type (u32)");
  if (status.ok()) status = ReadValue(type, 0, &value);
  if (!status.ok()) return status.WithContext("key " + Quoted(key));
  result_.metadata_.emplace(std::move(key), std::move(value));
  return Status::Ok();
}

Status GgufParser::ReadValueType(uint32_t* type, const char* what) {
  size_t at = pos_;
  GLASSBOX_RETURN_IF_ERROR(Read(type, what));
  if (MinValueBytes(*type) != 0) return Status::Ok();
  return DataLoss("unknown metadata value type " + std::to_string(*type) + " at byte offset " +
                  std::to_string(at) + " (expected 0..12)");
}

// Counts `n` more values against kMaxMetadataValues.
Status GgufParser::CountValues(uint64_t n) {
  if (n <= kMaxMetadataValues - metadata_values_) {
    metadata_values_ += n;
    return Status::Ok();
  }
  return ResourceExhausted("metadata holds more than " + std::to_string(kMaxMetadataValues) +
                           " values (at byte offset " + std::to_string(pos_) + ")");
}

template <typename T>
Status GgufParser::ReadScalar(GgufValue::Kind kind, GgufValue* value, const char* what) {
  T raw{};
  GLASSBOX_RETURN_IF_ERROR(Read(&raw, what));
  value->kind = kind;
  if constexpr (std::is_floating_point_v<T>) {
    value->float_value = raw;
  } else if constexpr (std::is_signed_v<T>) {
    value->int_value = raw;
  } else {
    value->uint_value = raw;
  }
  return Status::Ok();
}

Status GgufParser::ReadValue(uint32_t type, int depth, GgufValue* value) {
  using Kind = GgufValue::Kind;
  switch (type) {
    case kTypeU8:
      return ReadScalar<uint8_t>(Kind::kUInt, value, "u8 value");
    case kTypeI8:
      return ReadScalar<int8_t>(Kind::kInt, value, "i8 value");
    case kTypeU16:
      return ReadScalar<uint16_t>(Kind::kUInt, value, "u16 value");
    case kTypeI16:
      return ReadScalar<int16_t>(Kind::kInt, value, "i16 value");
    case kTypeU32:
      return ReadScalar<uint32_t>(Kind::kUInt, value, "u32 value");
    case kTypeI32:
      return ReadScalar<int32_t>(Kind::kInt, value, "i32 value");
    case kTypeU64:
      return ReadScalar<uint64_t>(Kind::kUInt, value, "u64 value");
    case kTypeI64:
      return ReadScalar<int64_t>(Kind::kInt, value, "i64 value");
    case kTypeF32:
      return ReadScalar<float>(Kind::kFloat, value, "f32 value");
    case kTypeF64:
      return ReadScalar<double>(Kind::kFloat, value, "f64 value");
    case kTypeBool: {
      uint8_t raw = 0;
      GLASSBOX_RETURN_IF_ERROR(Read(&raw, "bool value"));
      value->kind = Kind::kBool;
      value->bool_value = raw != 0;
      return Status::Ok();
    }
    case kTypeString:
      value->kind = Kind::kString;
      return ReadString(&value->string_value, "string value");
    case kTypeArray:
      return ReadArray(depth + 1, value);
  }
  GLASSBOX_CHECK(false, "ReadValueType admits only known types");
  return Internal("unknown metadata value type");
}

Status GgufParser::ReadArray(int depth, GgufValue* value) {
  if (depth > kMaxArrayDepth) {
    return DataLoss("arrays nested deeper than " + std::to_string(kMaxArrayDepth) +
                    " levels at byte offset " + std::to_string(pos_));
  }
  uint32_t elem_type = 0;
  uint64_t count = 0;
  GLASSBOX_RETURN_IF_ERROR(ReadValueType(&elem_type, "array element type (u32)"));
  GLASSBOX_RETURN_IF_ERROR(ReadCount(&count, MinValueBytes(elem_type), "array length (u64)"));
  GLASSBOX_RETURN_IF_ERROR(CountValues(count));
  value->kind = GgufValue::Kind::kArray;
  value->array.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    Status status = ReadValue(elem_type, depth, &value->array[i]);
    if (!status.ok()) {
      return status.WithContext("array element " + std::to_string(i) + " of " +
                                std::to_string(count));
    }
  }
  return Status::Ok();
}

Status GgufParser::ReadTensorInfos(uint64_t count, std::vector<TensorInfo>* infos) {
  infos->resize(count);  // count was capped against the remaining bytes
  std::set<std::string> names;
  for (uint64_t i = 0; i < count; ++i) {
    TensorInfo& info = (*infos)[i];
    Status status = ReadTensorInfo(&info);
    if (status.ok() && !names.insert(info.name).second) {
      status = DataLoss("duplicate tensor name " + Quoted(info.name) + " at byte offset " +
                        std::to_string(info.info_offset));
    }
    if (!status.ok()) {
      return status.WithContext("tensor info " + std::to_string(i) + " of " +
                                std::to_string(count));
    }
  }
  return Status::Ok();
}

Status GgufParser::ReadTensorInfo(TensorInfo* info) {
  info->info_offset = pos_;
  GLASSBOX_RETURN_IF_ERROR(ReadString(&info->name, "tensor name"));
  uint32_t n_dims = 0;
  size_t dims_at = pos_;
  GLASSBOX_RETURN_IF_ERROR(Read(&n_dims, "tensor dimension count (u32)"));
  if (n_dims > kMaxDims) {
    return DataLoss("tensor " + Quoted(info->name) + " has " + std::to_string(n_dims) +
                    " dimensions at byte offset " + std::to_string(dims_at) + " (at most " +
                    std::to_string(kMaxDims) + ")");
  }
  info->ne.resize(n_dims);
  for (uint64_t& extent : info->ne) {
    GLASSBOX_RETURN_IF_ERROR(Read(&extent, "tensor extent (u64)"));
  }
  GLASSBOX_RETURN_IF_ERROR(Read(&info->ggml_type, "tensor type (u32)"));
  return Read(&info->offset, "tensor data offset (u64)");
}

StatusOr<uint64_t> GgufParser::Alignment() const {
  auto it = result_.metadata_.find("general.alignment");
  if (it == result_.metadata_.end()) return kDefaultAlignment;
  int64_t alignment = 0;
  if (!IsInteger(it->second) || !ToInt64(it->second, &alignment) || alignment <= 0 ||
      static_cast<uint64_t>(alignment) > kMaxAlignment || (alignment & (alignment - 1)) != 0) {
    return DataLoss("general.alignment must be a power of two up to " +
                    std::to_string(kMaxAlignment));
  }
  return static_cast<uint64_t>(alignment);
}

Status GgufParser::PlaceTensors(const std::vector<TensorInfo>& infos) {
  GLASSBOX_ASSIGN_OR_RETURN(uint64_t alignment, Alignment());
  const uint64_t data_start = (pos_ + alignment - 1) / alignment * alignment;
  std::vector<const TensorInfo*> unsupported;
  result_.tensors_.reserve(infos.size());
  for (const TensorInfo& info : infos) {
    StoredType type;
    if (!StoredTypeFromGgml(info.ggml_type, &type)) {
      unsupported.push_back(&info);
      continue;
    }
    Status status = PlaceTensor(info, type, data_start, alignment);
    if (!status.ok()) {
      return status.WithContext("tensor " + Quoted(info.name) + " (info at byte offset " +
                                std::to_string(info.info_offset) + ")");
    }
  }
  if (!unsupported.empty()) return UnsupportedTypes(unsupported);
  return Status::Ok();
}

// Bytes of data for extents `ne` (GGUF order) of `type`; errors say what is wrong.
StatusOr<uint64_t> GgufParser::TensorBytes(const std::vector<uint64_t>& ne, StoredType type) {
  int64_t numel = 1;
  for (uint64_t extent : ne) {
    if (extent > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, static_cast<int64_t>(extent), &numel)) {
      return DataLoss("element count overflows int64");
    }
  }
  const int64_t block = StoredTypeBlockSize(type);
  if (!ne.empty() && ne[0] % block != 0) {  // blocks never straddle rows
    return DataLoss("row length " + std::to_string(ne[0]) + " is not a multiple of the " +
                    StoredTypeName(type) + " block size " + std::to_string(block));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(numel / block),
                             static_cast<uint64_t>(StoredTypeBlockBytes(type)), &nbytes)) {
    return DataLoss("byte size overflows");
  }
  return nbytes;
}

Status GgufParser::PlaceTensor(const TensorInfo& info, StoredType type, uint64_t data_start,
                               uint64_t alignment) {
  GLASSBOX_ASSIGN_OR_RETURN(uint64_t nbytes, TensorBytes(info.ne, type));
  if (info.offset % alignment != 0) {
    return DataLoss("data offset " + std::to_string(info.offset) +
                    " is not a multiple of the alignment " + std::to_string(alignment));
  }
  if (data_start > size_ || info.offset > size_ - data_start ||
      nbytes > size_ - data_start - info.offset) {
    return DataLoss(std::to_string(nbytes) + " bytes of data at data offset " +
                    std::to_string(info.offset) + " (the data section starts at byte offset " +
                    std::to_string(data_start) + ") run past the end of the file (" +
                    std::to_string(size_) + " bytes)");
  }
  StoredTensor tensor;
  tensor.name = info.name;
  tensor.type = type;
  tensor.shape.assign(info.ne.rbegin(), info.ne.rend());
  tensor.data = data_ + data_start + info.offset;
  tensor.nbytes = nbytes;
  tensor.file = result_.file_;
  result_.tensors_.push_back(std::move(tensor));
  return Status::Ok();
}

Status GgufParser::UnsupportedTypes(const std::vector<const TensorInfo*>& unsupported) {
  const TensorInfo& first = *unsupported.front();
  std::string message = "tensor " + Quoted(first.name) + " has ggml type " +
                        std::to_string(first.ggml_type) + " (" + GgmlTypeName(first.ggml_type) +
                        "), which Glassbox cannot load";
  if (unsupported.size() > 1) {
    message += " (nor can it load " + std::to_string(unsupported.size() - 1) + " more)";
  }
  return Unimplemented(message + "; supported tensor types: " + kSupportedTypes);
}

StatusOr<GgufFile> GgufFile::Open(const std::string& path) {
  GLASSBOX_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::Open(path));
  return GgufParser(std::move(file)).Parse();
}

const StoredTensor* GgufFile::FindTensor(const std::string& name) const {
  for (const StoredTensor& tensor : tensors_) {
    if (tensor.name == name) return &tensor;
  }
  return nullptr;
}

namespace {

// The value under `key`, or kNotFound naming the key and the file.
StatusOr<const GgufValue*> Lookup(const std::map<std::string, GgufValue>& metadata,
                                  const std::string& key, const std::string& path) {
  auto it = metadata.find(key);
  if (it == metadata.end()) return NotFound(path + ": no metadata key " + Quoted(key));
  return &it->second;
}

Status WrongKind(const std::string& path, const std::string& key, const GgufValue& value,
                 const char* expected) {
  return InvalidArgument(path + ": metadata key " + Quoted(key) + " holds " + KindName(value.kind) +
                         ", expected " + expected);
}

}  // namespace

StatusOr<std::string> GgufFile::GetString(const std::string& key) const {
  GLASSBOX_ASSIGN_OR_RETURN(const GgufValue* value, Lookup(metadata_, key, path()));
  if (value->kind != GgufValue::Kind::kString) return WrongKind(path(), key, *value, "a string");
  return value->string_value;
}

StatusOr<int64_t> GgufFile::GetInt(const std::string& key) const {
  GLASSBOX_ASSIGN_OR_RETURN(const GgufValue* value, Lookup(metadata_, key, path()));
  if (!IsInteger(*value)) return WrongKind(path(), key, *value, "an integer");
  int64_t result = 0;
  if (!ToInt64(*value, &result)) {
    return InvalidArgument(path() + ": metadata key " + Quoted(key) + " holds " +
                           std::to_string(value->uint_value) + ", out of range for int64");
  }
  return result;
}

StatusOr<double> GgufFile::GetFloat(const std::string& key) const {
  GLASSBOX_ASSIGN_OR_RETURN(const GgufValue* value, Lookup(metadata_, key, path()));
  switch (value->kind) {
    case GgufValue::Kind::kFloat:
      return value->float_value;
    case GgufValue::Kind::kInt:
      return static_cast<double>(value->int_value);
    case GgufValue::Kind::kUInt:
      return static_cast<double>(value->uint_value);
    default:
      return WrongKind(path(), key, *value, "a number");
  }
}

StatusOr<bool> GgufFile::GetBool(const std::string& key) const {
  GLASSBOX_ASSIGN_OR_RETURN(const GgufValue* value, Lookup(metadata_, key, path()));
  if (value->kind != GgufValue::Kind::kBool) return WrongKind(path(), key, *value, "a bool");
  return value->bool_value;
}

StatusOr<std::vector<std::string>> GgufFile::GetStringArray(const std::string& key) const {
  GLASSBOX_ASSIGN_OR_RETURN(const GgufValue* value, Lookup(metadata_, key, path()));
  const char* expected = "an array of strings";
  if (value->kind != GgufValue::Kind::kArray) return WrongKind(path(), key, *value, expected);
  std::vector<std::string> result;
  result.reserve(value->array.size());
  for (const GgufValue& element : value->array) {
    if (element.kind != GgufValue::Kind::kString) {
      return WrongKind(path(), key + "[" + std::to_string(result.size()) + "]", element,
                       "a string");
    }
    result.push_back(element.string_value);
  }
  return result;
}

StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(const std::string& key) const {
  GLASSBOX_ASSIGN_OR_RETURN(const GgufValue* value, Lookup(metadata_, key, path()));
  const char* expected = "an array of integers";
  if (value->kind != GgufValue::Kind::kArray) return WrongKind(path(), key, *value, expected);
  std::vector<int64_t> result(value->array.size());
  for (size_t i = 0; i < result.size(); ++i) {
    const GgufValue& element = value->array[i];
    if (!IsInteger(element) || !ToInt64(element, &result[i])) {
      return WrongKind(path(), key + "[" + std::to_string(i) + "]", element,
                       "an integer that fits in int64");
    }
  }
  return result;
}

}  // namespace glassbox
