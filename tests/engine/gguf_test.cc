// Tests for the GGUF reader, MappedFile and dequantization: synthetic files written here
// (well-formed, truncated, corrupt), golden dequantization fixtures from gguf-py
// (tests/fixtures/quant, made by scripts/fixtures/make_quant_fixtures.py) and, tagged
// [model], the real SmolLM2 model under models/.
#include "engine/gguf.h"

#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/mapped_file.h"
#include "engine/stored_tensor.h"

namespace glassbox {
namespace {

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Bytes = std::vector<uint8_t>;

// GGUF metadata value types and ggml tensor types, as numbered on disk.
enum : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
enum : uint32_t {
  kGgmlF32 = 0,
  kGgmlQ4_1 = 3,
  kGgmlQ5_0 = 6,
  kGgmlQ8_0 = 8,
  kGgmlQ4_K = 12,
  kGgmlQ6_K = 14,
  kGgmlIQ2_XXS = 16,
  kGgmlI32 = 26
};

// A per-process scratch directory, removed when the tests end.
class ScratchDir {
 public:
  ScratchDir()
      : dir_(fs::temp_directory_path() / ("glassbox_gguf_test_" + std::to_string(::getpid()))) {
    fs::create_directories(dir_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  std::string Write(const std::string& name, const Bytes& bytes) const {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return path;
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

 private:
  fs::path dir_;
};

const ScratchDir& Scratch() {
  static const ScratchDir scratch;
  return scratch;
}

// Appends little-endian fields to a byte buffer.
class ByteWriter {
 public:
  template <typename T>
  ByteWriter& Put(T value) {
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
    return *this;
  }
  ByteWriter& Str(const std::string& s) {
    Put<uint64_t>(s.size());
    bytes_.insert(bytes_.end(), s.begin(), s.end());
    return *this;
  }
  ByteWriter& Append(const Bytes& b) {
    bytes_.insert(bytes_.end(), b.begin(), b.end());
    return *this;
  }
  void PadTo(size_t size) {
    if (bytes_.size() < size) bytes_.resize(size, 0);
  }
  const Bytes& bytes() const { return bytes_; }
  size_t size() const { return bytes_.size(); }

 private:
  Bytes bytes_;
};

// Builds small GGUF files. Tensor data is laid out at aligned offsets with no padding after
// the last tensor, so every proper prefix of a file with tensor data is invalid.
class GgufWriter {
 public:
  explicit GgufWriter(uint32_t version = 3) : version_(version) {}

  template <typename T>
  GgufWriter& Scalar(const std::string& key, uint32_t type, T value) {
    kv_.Str(key).Put<uint32_t>(type).Put<T>(value);
    ++kv_count_;
    return *this;
  }
  GgufWriter& String(const std::string& key, const std::string& value) {
    kv_.Str(key).Put<uint32_t>(kString).Str(value);
    ++kv_count_;
    return *this;
  }
  template <typename T>
  GgufWriter& Array(const std::string& key, uint32_t elem_type, const std::vector<T>& values) {
    kv_.Str(key).Put<uint32_t>(kArray).Put<uint32_t>(elem_type).Put<uint64_t>(values.size());
    for (const T& v : values) kv_.Put<T>(v);
    ++kv_count_;
    return *this;
  }
  GgufWriter& StringArray(const std::string& key, const std::vector<std::string>& values) {
    kv_.Str(key).Put<uint32_t>(kArray).Put<uint32_t>(kString).Put<uint64_t>(values.size());
    for (const std::string& v : values) kv_.Str(v);
    ++kv_count_;
    return *this;
  }
  // Writes general.alignment (u32) and lays tensors out with it.
  GgufWriter& Alignment(uint32_t alignment) {
    alignment_ = alignment;
    return Scalar<uint32_t>("general.alignment", kU32, alignment);
  }
  // Adds a tensor; `offset` overrides the computed data offset (its data is then not written
  // unless it fits just after the previous tensor's).
  GgufWriter& Tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, Bytes data,
                     std::optional<uint64_t> offset = std::nullopt) {
    tensors_.push_back({name, std::move(ne), type, std::move(data), offset});
    return *this;
  }
  Bytes Build() const;

 private:
  struct TensorEntry {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    Bytes data;
    std::optional<uint64_t> offset;
  };
  std::vector<uint64_t> Offsets() const;

  uint32_t version_;
  uint64_t alignment_ = 32;
  ByteWriter kv_;
  uint64_t kv_count_ = 0;
  std::vector<TensorEntry> tensors_;
};

std::vector<uint64_t> GgufWriter::Offsets() const {
  std::vector<uint64_t> offsets;
  uint64_t next = 0;
  for (const TensorEntry& t : tensors_) {
    offsets.push_back(t.offset.value_or(next));
    next = (offsets.back() + t.data.size() + alignment_ - 1) / alignment_ * alignment_;
  }
  return offsets;
}

Bytes GgufWriter::Build() const {
  ByteWriter out;
  out.Put<char>('G').Put<char>('G').Put<char>('U').Put<char>('F');
  out.Put<uint32_t>(version_).Put<uint64_t>(tensors_.size()).Put<uint64_t>(kv_count_);
  out.Append(kv_.bytes());
  const std::vector<uint64_t> offsets = Offsets();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    out.Str(tensors_[i].name).Put<uint32_t>(tensors_[i].ne.size());
    for (uint64_t extent : tensors_[i].ne) out.Put<uint64_t>(extent);
    out.Put<uint32_t>(tensors_[i].type).Put<uint64_t>(offsets[i]);
  }
  if (tensors_.empty()) return out.bytes();
  const size_t data_start = (out.size() + alignment_ - 1) / alignment_ * alignment_;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (offsets[i] > (1u << 20)) continue;  // deliberately out of range
    out.PadTo(data_start + offsets[i]);
    out.Append(tensors_[i].data);
  }
  return out.bytes();
}

Bytes FloatBytes(const std::vector<float>& values) {
  Bytes bytes(values.size() * sizeof(float));
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

Bytes ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Opens `bytes` written to a scratch file and returns the status.
Status OpenStatus(const Bytes& bytes, const std::string& name = "test.gguf") {
  StatusOr<GgufFile> file = GgufFile::Open(Scratch().Write(name, bytes));
  return file.ok() ? Status::Ok() : file.status();
}

// A header (magic, version 3, counts) with nothing after it yet.
ByteWriter Header(uint64_t tensor_count, uint64_t kv_count) {
  ByteWriter w;
  w.Put<uint32_t>(0x46554747u).Put<uint32_t>(3).Put<uint64_t>(tensor_count).Put<uint64_t>(kv_count);
  return w;
}

// A file with metadata of several kinds and two tensors; small enough to truncate everywhere.
Bytes SmallModelFile() {
  std::vector<float> weights = {1, 2, 3, 4, 5, 6};
  Bytes q8(34, 0);
  q8[1] = 0x3c;  // d = 1.0
  for (int i = 0; i < 32; ++i) q8[2 + i] = static_cast<uint8_t>(i - 16);
  return GgufWriter()
      .String("general.architecture", "llama")
      .Scalar<uint32_t>("llama.block_count", kU32, 2)
      .Scalar<float>("llama.rope.freq_base", kF32, 10000.0f)
      .Scalar<uint8_t>("tokenizer.ggml.add_bos_token", kBool, 1)
      .StringArray("tokenizer.ggml.tokens", {"<s>", "a", "bc"})
      .Array<int32_t>("tokenizer.ggml.token_type", kI32, {3, 1, 1})
      .Tensor("output_norm.weight", {3, 2}, kGgmlF32, FloatBytes(weights))
      .Tensor("token_embd.weight", {32, 1}, kGgmlQ8_0, q8)
      .Build();
}

TEST_CASE("GGUF metadata of every kind reads back", "[engine][gguf]") {
  const uint32_t version = GENERATE(2u, 3u);
  const Bytes bytes = GgufWriter(version)
                          .Scalar<uint8_t>("u8", kU8, 200)
                          .Scalar<int8_t>("i8", kI8, -100)
                          .Scalar<uint16_t>("u16", kU16, 60000)
                          .Scalar<int16_t>("i16", kI16, -30000)
                          .Scalar<uint32_t>("u32", kU32, 4000000000u)
                          .Scalar<int32_t>("i32", kI32, -2000000000)
                          .Scalar<float>("f32", kF32, 0.15625f)
                          .Scalar<uint8_t>("bool", kBool, 1)
                          .String("string", "héllo")
                          .Scalar<uint64_t>("u64", kU64, 1ull << 40)
                          .Scalar<int64_t>("i64", kI64, -(1ll << 40))
                          .Scalar<double>("f64", kF64, 1e-300)
                          .Scalar<uint64_t>("huge", kU64, ~0ull)
                          .StringArray("strings", {"a", "", "ccc"})
                          .Array<int32_t>("ints", kI32, {-1, 0, 7})
                          .Array<uint8_t>("bytes", kU8, {1, 2, 255})
                          .Array<float>("floats", kF32, {0.5f, -2.0f})
                          .Array<uint8_t>("empty", kU16, {})
                          .Build();
  StatusOr<GgufFile> file = GgufFile::Open(Scratch().Write("kinds.gguf", bytes));
  REQUIRE(file.ok());
  CHECK(file->version() == version);
  CHECK(file->metadata().size() == 18);
  CHECK(file->tensors().empty());
  CHECK(*file->GetInt("u8") == 200);
  CHECK(*file->GetInt("i8") == -100);
  CHECK(*file->GetInt("u16") == 60000);
  CHECK(*file->GetInt("i16") == -30000);
  CHECK(*file->GetInt("u32") == 4000000000ll);
  CHECK(*file->GetInt("i32") == -2000000000);
  CHECK(*file->GetFloat("f32") == 0.15625);
  CHECK(*file->GetBool("bool"));
  CHECK(*file->GetString("string") == "héllo");
  CHECK(*file->GetInt("u64") == (1ll << 40));
  CHECK(*file->GetInt("i64") == -(1ll << 40));
  CHECK(*file->GetFloat("f64") == 1e-300);
  CHECK(*file->GetFloat("u32") == 4e9);
  CHECK(file->metadata().at("huge").uint_value == ~0ull);
  CHECK(*file->GetStringArray("strings") == std::vector<std::string>{"a", "", "ccc"});
  CHECK(*file->GetIntArray("ints") == std::vector<int64_t>{-1, 0, 7});
  CHECK(*file->GetIntArray("bytes") == std::vector<int64_t>{1, 2, 255});
  CHECK(file->GetIntArray("empty")->empty());
  const GgufValue& floats = file->metadata().at("floats");
  REQUIRE(floats.kind == GgufValue::Kind::kArray);
  REQUIRE(floats.array.size() == 2);
  CHECK(floats.array[1].kind == GgufValue::Kind::kFloat);
  CHECK(floats.array[1].float_value == -2.0);
}

TEST_CASE("GGUF typed getters report missing keys and wrong kinds", "[engine][gguf]") {
  const Bytes bytes = GgufWriter()
                          .String("name", "x")
                          .Scalar<uint64_t>("huge", kU64, ~0ull)
                          .Array<float>("floats", kF32, {1.0f})
                          .Build();
  const std::string path = Scratch().Write("getters.gguf", bytes);
  StatusOr<GgufFile> file = GgufFile::Open(path);
  REQUIRE(file.ok());
  CHECK(file->GetString("missing").status().code() == StatusCode::kNotFound);
  CHECK_THAT(file->GetString("missing").status().message(), Contains("missing"));
  CHECK(file->GetInt("name").status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(file->GetInt("name").status().message(), Contains("name") && Contains(path));
  CHECK(file->GetInt("huge").status().code() == StatusCode::kInvalidArgument);
  CHECK(file->GetBool("name").status().code() == StatusCode::kInvalidArgument);
  CHECK(file->GetFloat("name").status().code() == StatusCode::kInvalidArgument);
  CHECK(file->GetString("floats").status().code() == StatusCode::kInvalidArgument);
  CHECK(file->GetStringArray("floats").status().code() == StatusCode::kInvalidArgument);
  CHECK(file->GetIntArray("floats").status().code() == StatusCode::kInvalidArgument);
  CHECK(file->GetIntArray("name").status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("GGUF tensors: PyTorch-order shapes, aligned data, float values", "[engine][gguf]") {
  const uint32_t alignment = GENERATE(1u, 32u, 64u);
  const Bytes bytes = GgufWriter()
                          .Alignment(alignment)
                          .Tensor("a", {3, 2}, kGgmlF32, FloatBytes({1, 2, 3, 4, 5, 6}))
                          .Tensor("ids", {5}, kGgmlI32, Bytes(20, 7))
                          .Tensor("b", {2, 1, 1, 1}, kGgmlF32, FloatBytes({-1, 0.5f}))
                          .Build();
  StatusOr<GgufFile> file = GgufFile::Open(Scratch().Write("tensors.gguf", bytes));
  REQUIRE(file.ok());
  REQUIRE(file->tensors().size() == 3);
  CHECK(file->tensors()[0].name == "a");
  const StoredTensor* a = file->FindTensor("a");
  REQUIRE(a != nullptr);
  CHECK(a->shape == std::vector<int64_t>{2, 3});
  CHECK(a->type == StoredType::kF32);
  CHECK(a->nbytes == 24);
  CHECK(a->NumElements() == 6);
  const auto base = reinterpret_cast<uintptr_t>(a->file->data());
  CHECK((reinterpret_cast<uintptr_t>(a->data) - base) % alignment == 0);
  std::vector<float> values(6);
  REQUIRE(DequantizeToF32(*a, values.data()).ok());
  CHECK(values == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(file->FindTensor("ids")->type == StoredType::kI32);
  CHECK(file->FindTensor("b")->shape == std::vector<int64_t>{1, 1, 1, 2});
  CHECK(file->FindTensor("missing") == nullptr);
}

TEST_CASE("GGUF: every truncation of a file fails cleanly", "[engine][gguf]") {
  const Bytes full = SmallModelFile();
  REQUIRE(OpenStatus(full).ok());
  for (size_t length = 0; length < full.size(); ++length) {
    INFO("prefix of " << length << " of " << full.size() << " bytes");
    const Status status = OpenStatus(Bytes(full.begin(), full.begin() + length), "cut.gguf");
    REQUIRE(!status.ok());
    CHECK_THAT(status.message(), Contains("cut.gguf"));
    if (length > 0) CHECK_THAT(status.message(), Contains("byte offset"));
  }
}

TEST_CASE("GGUF: wrong magic and unsupported versions", "[engine][gguf]") {
  Bytes bytes = SmallModelFile();
  bytes[0] = 'X';
  Status status = OpenStatus(bytes);
  CHECK(status.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(status.message(), Contains("GGUF") && Contains("magic"));

  ByteWriter v1;
  v1.Put<uint32_t>(0x46554747u).Put<uint32_t>(1).Put<uint32_t>(0).Put<uint32_t>(0);
  status = OpenStatus(v1.bytes());
  CHECK(status.code() == StatusCode::kUnimplemented);
  CHECK_THAT(status.message(), Contains("version 1"));

  bytes = GgufWriter(4).String("k", "v").Build();
  status = OpenStatus(bytes);
  CHECK(status.code() == StatusCode::kUnimplemented);
  CHECK_THAT(status.message(), Contains("version 4"));

  bytes = GgufWriter(0x03000000u).Build();
  CHECK_THAT(OpenStatus(bytes).message(), Contains("big-endian"));
}

TEST_CASE("GGUF: absurd counts and lengths fail before allocating", "[engine][gguf]") {
  const uint64_t huge = uint64_t{1} << 60;
  SECTION("tensor count") {
    const Status status = OpenStatus(Header(huge, 0).bytes());
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("tensor count") && Contains(std::to_string(huge)));
  }
  SECTION("key-value count") {
    CHECK(OpenStatus(Header(0, huge).bytes()).code() == StatusCode::kDataLoss);
  }
  SECTION("key length") {
    ByteWriter w = Header(0, 1);
    w.Put<uint64_t>(huge).Put<uint32_t>(kU8).Put<uint8_t>(0);
    const Status status = OpenStatus(w.bytes());
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("byte offset 24"));
  }
  SECTION("array length") {
    ByteWriter w = Header(0, 1);
    w.Str("a").Put<uint32_t>(kArray).Put<uint32_t>(kString).Put<uint64_t>(huge);
    const Status status = OpenStatus(w.bytes());
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("array length") && Contains("'a'"));
  }
  SECTION("total metadata values") {
    ByteWriter w = Header(0, 1);
    const uint64_t count = (uint64_t{1} << 22) + 1;
    w.Str("big").Put<uint32_t>(kArray).Put<uint32_t>(kU8).Put<uint64_t>(count);
    w.PadTo(w.size() + count);
    CHECK(OpenStatus(w.bytes()).code() == StatusCode::kResourceExhausted);
  }
  SECTION("nested arrays") {
    ByteWriter w = Header(0, 1);
    w.Str("deep").Put<uint32_t>(kArray);
    for (int i = 0; i < 100; ++i) w.Put<uint32_t>(kArray).Put<uint64_t>(1);
    w.Put<uint32_t>(kU8).Put<uint64_t>(0);
    CHECK_THAT(OpenStatus(w.bytes()).message(), Contains("nested"));
  }
  SECTION("tensor dimensions") {
    ByteWriter w = Header(1, 0);
    w.Str("t").Put<uint32_t>(5);
    for (int i = 0; i < 5; ++i) w.Put<uint64_t>(1);
    w.Put<uint32_t>(kGgmlF32).Put<uint64_t>(0);
    w.PadTo(64 + 4);
    CHECK_THAT(OpenStatus(w.bytes()).message(), Contains("5 dimensions"));
  }
  SECTION("tensor extents whose product overflows") {
    const Bytes bytes = GgufWriter().Tensor("t", {huge, huge}, kGgmlF32, Bytes(4)).Build();
    CHECK_THAT(OpenStatus(bytes).message(), Contains("overflows") && Contains("'t'"));
  }
}

TEST_CASE("GGUF: corrupt tables and data ranges", "[engine][gguf]") {
  const Bytes data = FloatBytes({1, 2, 3, 4});
  SECTION("unknown metadata value type") {
    ByteWriter w = Header(0, 1);
    w.Str("k").Put<uint32_t>(13).Put<uint64_t>(0);
    const Status status = OpenStatus(w.bytes());
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("value type 13") && Contains("byte offset 33"));
  }
  SECTION("duplicate key") {
    const Bytes bytes = GgufWriter().String("k", "a").String("k", "b").Build();
    CHECK_THAT(OpenStatus(bytes).message(), Contains("duplicate metadata key 'k'"));
  }
  SECTION("duplicate tensor") {
    const Bytes bytes =
        GgufWriter().Tensor("t", {4}, kGgmlF32, data).Tensor("t", {4}, kGgmlF32, data).Build();
    CHECK_THAT(OpenStatus(bytes).message(), Contains("duplicate tensor name 't'"));
  }
  SECTION("misaligned data offset") {
    const Bytes bytes = GgufWriter().Tensor("t", {4}, kGgmlF32, data, 4).Build();
    CHECK_THAT(OpenStatus(bytes).message(), Contains("'t'") && Contains("alignment 32"));
  }
  SECTION("data past the end of the file") {
    const Bytes bytes = GgufWriter().Tensor("t", {4}, kGgmlF32, data, 1ull << 40).Build();
    const Status status = OpenStatus(bytes);
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("'t'") && Contains("past the end"));
  }
  SECTION("data offset near 2^64") {
    const Bytes bytes = GgufWriter().Tensor("t", {4}, kGgmlF32, data, ~uint64_t{31}).Build();
    CHECK_THAT(OpenStatus(bytes).message(), Contains("past the end"));
  }
  SECTION("alignment that is not a power of two") {
    const Bytes bytes = GgufWriter().Alignment(24).Tensor("t", {4}, kGgmlF32, data).Build();
    CHECK_THAT(OpenStatus(bytes).message(), Contains("general.alignment"));
  }
  SECTION("quantized row not a multiple of the block") {
    const Bytes bytes = GgufWriter().Tensor("q", {16, 2}, kGgmlQ8_0, Bytes(34)).Build();
    CHECK_THAT(OpenStatus(bytes).message(), Contains("'q'") && Contains("block size 32"));
  }
  SECTION("K-quant row not a multiple of the super-block") {
    const Bytes bytes = GgufWriter().Tensor("k", {128, 2}, kGgmlQ4_K, Bytes(144)).Build();
    CHECK_THAT(OpenStatus(bytes).message(), Contains("'k'") && Contains("Q4_K block size 256"));
  }
  SECTION("K-quant tensor announcing more super-blocks than the file holds") {
    // 3 rows of 256 need 3 * 210 bytes; the file ends after 2 super-blocks.
    const Bytes bytes = GgufWriter().Tensor("k", {256, 3}, kGgmlQ6_K, Bytes(420)).Build();
    const Status status = OpenStatus(bytes);
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(),
               Contains("'k'") && Contains("630 bytes") && Contains("past the end"));
  }
}

TEST_CASE("GGUF: unsupported tensor types name the tensor", "[engine][gguf]") {
  const Bytes bytes = GgufWriter()
                          .String("general.architecture", "llama")
                          .Tensor("ok", {4}, kGgmlF32, FloatBytes({1, 2, 3, 4}))
                          .Tensor("blk.0.ffn_down.weight", {256}, kGgmlIQ2_XXS, Bytes(66))
                          .Tensor("odd", {4}, 200, Bytes(4))
                          .Build();
  const Status status = OpenStatus(bytes, "iquant.gguf");
  CHECK(status.code() == StatusCode::kUnimplemented);
  CHECK_THAT(status.message(),
             Contains("iquant.gguf") && Contains("'blk.0.ffn_down.weight'") &&
                 Contains("type 16 (IQ2_XXS)") && Contains("1 more") &&
                 Contains("Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K"));
}

TEST_CASE("GGUF: an unknown tensor type id names the tensor and the id", "[engine][gguf]") {
  const uint32_t type = GENERATE(40u, 200u, 0xffffffffu);
  const Bytes bytes = GgufWriter()
                          .Tensor("ok", {4}, kGgmlF32, FloatBytes({1, 2, 3, 4}))
                          .Tensor("blk.3.mystery", {256}, type, Bytes(256))
                          .Build();
  const Status status = OpenStatus(bytes, "unknown.gguf");
  CHECK(status.code() == StatusCode::kUnimplemented);
  CHECK_THAT(status.message(), Contains("unknown.gguf") && Contains("'blk.3.mystery'") &&
                                   Contains("ggml type " + std::to_string(type) + " (unknown)"));
}

TEST_CASE("MappedFile: missing files, directories and empty files", "[engine][gguf]") {
  const std::string missing = Scratch().Path("no-such-file.gguf");
  auto status = MappedFile::Open(missing).status();
  CHECK(status.code() == StatusCode::kNotFound);
  CHECK_THAT(status.message(), Contains(missing) && Contains("No such file"));
  CHECK(MappedFile::Open(Scratch().Path("")).status().code() == StatusCode::kInvalidArgument);
  const std::string empty = Scratch().Write("empty.gguf", {});
  status = MappedFile::Open(empty).status();
  CHECK(status.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(status.message(), Contains(empty) && Contains("empty"));
  StatusOr<std::shared_ptr<MappedFile>> file =
      MappedFile::Open(Scratch().Write("3.bin", {1, 2, 3}));
  REQUIRE(file.ok());
  CHECK((*file)->size() == 3);
  CHECK((*file)->data()[2] == 3);
}

// Dequantizes tests/fixtures/quant/<type>.bin, rows of one block (of 32 elements for the
// plain types), and compares with <type>.f32 bit for bit.
void CheckGolden(StoredType type) {
  const std::string name = StoredTypeName(type);
  const Bytes raw = ReadAll("tests/fixtures/quant/" + name + ".bin");
  const Bytes golden = ReadAll("tests/fixtures/quant/" + name + ".f32");
  const int64_t n = static_cast<int64_t>(golden.size() / sizeof(float));
  const int64_t row = std::max<int64_t>(StoredTypeBlockSize(type), 32);
  StoredTensor tensor;
  tensor.name = name;
  tensor.type = type;
  tensor.shape = {n / row, row};
  tensor.data = raw.data();
  tensor.nbytes = raw.size();
  REQUIRE(n % row == 0);
  REQUIRE(static_cast<int64_t>(raw.size()) ==
          n / StoredTypeBlockSize(type) * StoredTypeBlockBytes(type));
  std::vector<float> out(n);
  REQUIRE(DequantizeToF32(tensor, out.data()).ok());
  for (size_t i = 0; i < out.size(); ++i) {
    uint32_t got, want;
    std::memcpy(&got, &out[i], 4);
    std::memcpy(&want, golden.data() + 4 * i, 4);
    INFO(name << " element " << i << ": got " << out[i]);
    REQUIRE(got == want);
  }
}

TEST_CASE("Dequantization matches gguf-py bit for bit", "[engine][gguf][quant]") {
  CheckGolden(StoredType::kF16);
  CheckGolden(StoredType::kBF16);
  CheckGolden(StoredType::kQ8_0);
  CheckGolden(StoredType::kQ4_0);
  CheckGolden(StoredType::kQ4_1);
  CheckGolden(StoredType::kQ5_0);
  CheckGolden(StoredType::kQ5_1);
}

// gguf-py has no Q8_K dequantizer: its golden is ggml's formula, computed by numpy.
TEST_CASE("K-quant dequantization matches gguf-py bit for bit", "[engine][gguf][quant]") {
  CheckGolden(StoredType::kQ2_K);
  CheckGolden(StoredType::kQ3_K);
  CheckGolden(StoredType::kQ4_K);
  CheckGolden(StoredType::kQ5_K);
  CheckGolden(StoredType::kQ6_K);
  CheckGolden(StoredType::kQ8_K);
}

TEST_CASE("Block sizes of every quantized type are ggml's", "[engine][gguf][quant]") {
  // GGML_QUANT_SIZES in gguf-py (elements, bytes per block).
  const std::vector<std::tuple<StoredType, int64_t, int64_t>> sizes = {
      {StoredType::kQ4_0, 32, 18},   {StoredType::kQ4_1, 32, 20},   {StoredType::kQ5_0, 32, 22},
      {StoredType::kQ5_1, 32, 24},   {StoredType::kQ8_0, 32, 34},   {StoredType::kQ2_K, 256, 84},
      {StoredType::kQ3_K, 256, 110}, {StoredType::kQ4_K, 256, 144}, {StoredType::kQ5_K, 256, 176},
      {StoredType::kQ6_K, 256, 210}, {StoredType::kQ8_K, 256, 292}};
  for (const auto& [type, elements, bytes] : sizes) {
    INFO(StoredTypeName(type));
    CHECK(StoredTypeBlockSize(type) == elements);
    CHECK(StoredTypeBlockBytes(type) == bytes);
    // One byte short of two blocks is refused, naming the bytes needed.
    const Bytes raw(2 * bytes - 1);
    StoredTensor tensor;
    tensor.name = "short";
    tensor.type = type;
    tensor.shape = {2, elements};
    tensor.data = raw.data();
    tensor.nbytes = raw.size();
    std::vector<float> out(2 * elements);
    const Status status = DequantizeToF32(tensor, out.data());
    CHECK(status.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(status.message(), Contains("'short'") && Contains(std::to_string(2 * bytes)));
  }
}

TEST_CASE("Dequantization of Gemma 3's tensor types read from a GGUF file",
          "[engine][gguf][quant]") {
  const std::vector<std::pair<uint32_t, StoredType>> types = {{kGgmlQ4_K, StoredType::kQ4_K},
                                                              {kGgmlQ6_K, StoredType::kQ6_K},
                                                              {kGgmlQ5_0, StoredType::kQ5_0},
                                                              {kGgmlQ8_0, StoredType::kQ8_0}};
  GgufWriter writer;
  for (const auto& [ggml_type, type] : types) {
    const std::string name = StoredTypeName(type);
    const uint64_t rows = ReadAll("tests/fixtures/quant/" + name + ".f32").size() / 4 / 256;
    writer.Tensor(name, {256, rows}, ggml_type, ReadAll("tests/fixtures/quant/" + name + ".bin"));
  }
  StatusOr<GgufFile> file = GgufFile::Open(Scratch().Write("gemma_types.gguf", writer.Build()));
  REQUIRE(file.ok());
  for (const auto& [ggml_type, type] : types) {
    const std::string name = StoredTypeName(type);
    const Bytes golden = ReadAll("tests/fixtures/quant/" + name + ".f32");
    const StoredTensor* tensor = file->FindTensor(name);
    REQUIRE(tensor != nullptr);
    CHECK(tensor->type == type);
    CHECK(tensor->shape ==
          std::vector<int64_t>{static_cast<int64_t>(golden.size() / sizeof(float) / 256), 256});
    std::vector<float> out(tensor->NumElements());
    REQUIRE(out.size() * sizeof(float) == golden.size());
    REQUIRE(DequantizeToF32(*tensor, out.data()).ok());
    INFO(name);
    CHECK(std::memcmp(out.data(), golden.data(), golden.size()) == 0);
  }
}

TEST_CASE("Dequantization of a Q4_1 tensor read from a GGUF file", "[engine][gguf][quant]") {
  const Bytes raw = ReadAll("tests/fixtures/quant/Q4_1.bin");
  const Bytes golden = ReadAll("tests/fixtures/quant/Q4_1.f32");
  const Bytes bytes = GgufWriter().Tensor("w", {64, 4}, kGgmlQ4_1, raw).Build();
  StatusOr<GgufFile> file = GgufFile::Open(Scratch().Write("q4_1.gguf", bytes));
  REQUIRE(file.ok());
  const StoredTensor& w = file->tensors().at(0);
  CHECK(w.shape == std::vector<int64_t>{4, 64});
  CHECK(w.nbytes == raw.size());
  std::vector<float> out(256);
  REQUIRE(DequantizeToF32(w, out.data()).ok());
  CHECK(std::memcmp(out.data(), golden.data(), golden.size()) == 0);
}

// binary16 -> float by arithmetic, independent of the bit manipulation under test.
float ReferenceHalf(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  float magnitude;
  if (exponent == 0x1f) {
    magnitude = mantissa != 0 ? NAN : INFINITY;
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa + 1024), exponent - 25);
  }
  return (h & 0x8000) ? -magnitude : magnitude;
}

TEST_CASE("F16 conversion is exact for all 65536 values", "[engine][gguf][quant]") {
  std::vector<uint16_t> halves(65536);
  for (size_t i = 0; i < halves.size(); ++i) halves[i] = static_cast<uint16_t>(i);
  StoredTensor tensor;
  tensor.name = "all_halves";
  tensor.type = StoredType::kF16;
  tensor.shape = {65536};
  tensor.data = reinterpret_cast<const uint8_t*>(halves.data());
  tensor.nbytes = halves.size() * 2;
  std::vector<float> out(65536);
  REQUIRE(DequantizeToF32(tensor, out.data()).ok());
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = ReferenceHalf(static_cast<uint16_t>(h));
    uint32_t got_bits, want_bits;
    std::memcpy(&got_bits, &out[h], 4);
    std::memcpy(&want_bits, &want, 4);
    if (std::isnan(want)) {  // NaNs keep sign and payload
      want_bits = ((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13);
    }
    INFO("half 0x" << std::hex << h);
    REQUIRE(got_bits == want_bits);
  }
}

TEST_CASE("DequantizeToF32 rejects unsupported types and short data", "[engine][gguf][quant]") {
  const Bytes raw(64);
  StoredTensor tensor;
  tensor.name = "ids";
  tensor.type = StoredType::kI64;
  tensor.shape = {8};
  tensor.data = raw.data();
  tensor.nbytes = raw.size();
  std::vector<float> out(64);
  Status status = DequantizeToF32(tensor, out.data());
  CHECK(status.code() == StatusCode::kUnimplemented);
  CHECK_THAT(status.message(), Contains("'ids'") && Contains("I64"));
  tensor.type = StoredType::kQ8_0;
  tensor.shape = {2, 32};
  CHECK_THAT(DequantizeToF32(tensor, out.data()).message(), Contains("68"));
  tensor.shape = {2, 16};
  CHECK_THAT(DequantizeToF32(tensor, out.data()).message(), Contains("block size 32"));
  CHECK(StoredTypeBlockSize(StoredType::kQ4_0) == 32);
  CHECK(StoredTypeBlockBytes(StoredType::kQ4_0) == 18);
  CHECK(StoredTypeBlockBytes(StoredType::kQ4_1) == 20);
  CHECK(std::string(StoredTypeName(StoredType::kBF16)) == "BF16");
}

TEST_CASE("GGUF reads the SmolLM2-135M model", "[engine][gguf][model]") {
  const std::string path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) FAIL(path << " is missing: run scripts/fetch_model.sh");
  StatusOr<GgufFile> file = GgufFile::Open(path);
  REQUIRE(file.ok());
  CHECK(file->version() == 3);
  CHECK(file->tensors().size() == 272);
  CHECK(*file->GetString("general.architecture") == "llama");
  CHECK(*file->GetInt("llama.block_count") == 30);
  CHECK(file->GetStringArray("tokenizer.ggml.tokens")->size() == 49152);
  const StoredTensor* embd = file->FindTensor("token_embd.weight");
  REQUIRE(embd != nullptr);
  CHECK(embd->shape == std::vector<int64_t>{49152, 576});
  CHECK(embd->type == StoredType::kQ8_0);
  const StoredTensor* q = file->FindTensor("blk.0.attn_q.weight");
  REQUIRE(q != nullptr);
  CHECK(q->type == StoredType::kQ4_1);
  CHECK(q->shape == std::vector<int64_t>{576, 576});
  for (const StoredTensor& tensor : file->tensors()) {
    std::vector<float> values(tensor.NumElements());
    REQUIRE(DequantizeToF32(tensor, values.data()).ok());
    INFO(tensor.name);
    CHECK(std::all_of(values.begin(), values.end(), [](float v) { return std::isfinite(v); }));
  }
}

}  // namespace
}  // namespace glassbox
