// Tests for the safetensors reader: synthetic files written here (well-formed, truncated,
// corrupt, unsupported) and Hugging Face model directories, single-file and sharded.
#include "engine/safetensors.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace glassbox {
namespace {

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Bytes = std::vector<uint8_t>;
using Json = nlohmann::json;

// A per-process scratch directory, removed when the tests end.
class ScratchDir {
 public:
  ScratchDir()
      : dir_(fs::temp_directory_path() /
             ("glassbox_safetensors_test_" + std::to_string(::getpid()))) {
    fs::create_directories(dir_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  // Writes `bytes` to `name` (which may contain a subdirectory) and returns its path.
  std::string Write(const std::string& name, const Bytes& bytes) const {
    const fs::path path = dir_ / name;
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return path.string();
  }
  std::string Write(const std::string& name, const std::string& text) const {
    return Write(name, Bytes(text.begin(), text.end()));
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

 private:
  fs::path dir_;
};

const ScratchDir& Scratch() {
  static const ScratchDir scratch;
  return scratch;
}

struct TensorSpec {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  Bytes data;
};

// An 8-byte little-endian length, `header` and `buffer`.
Bytes WithHeader(const std::string& header, const Bytes& buffer) {
  const uint64_t length = header.size();
  Bytes bytes(8 + header.size() + buffer.size());
  std::memcpy(bytes.data(), &length, 8);
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  if (!buffer.empty()) std::memcpy(bytes.data() + 8 + header.size(), buffer.data(), buffer.size());
  return bytes;
}

// A well-formed file holding `tensors` back to back, header padded with spaces to 8 bytes
// as the reference writer does.
Bytes BuildFile(const std::vector<TensorSpec>& tensors, const Json& metadata = nullptr) {
  Json header = Json::object();
  Bytes buffer;
  for (const TensorSpec& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {buffer.size(), buffer.size() + t.data.size()}}};
    buffer.insert(buffer.end(), t.data.begin(), t.data.end());
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  return WithHeader(text, buffer);
}

Bytes FloatBytes(const std::vector<float>& values) {
  Bytes bytes(values.size() * sizeof(float));
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

Status OpenStatus(const Bytes& bytes, const std::string& name = "test.safetensors") {
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(Scratch().Write(name, bytes));
  return file.ok() ? Status::Ok() : file.status();
}

// Writes a header whose only tensor entry is `entry` over a buffer of `buffer_bytes`.
Status OpenWithEntry(const Json& entry, size_t buffer_bytes = 24) {
  return OpenStatus(WithHeader(Json{{"t", entry}}.dump(), Bytes(buffer_bytes)));
}

TEST_CASE("safetensors: a valid file with every supported dtype", "[engine][safetensors]") {
  const Bytes bytes = BuildFile({{"w", "F32", {2, 3}, FloatBytes({1, 2, 3, 4, 5, 6})},
                                 {"half", "F16", {1, 2}, Bytes{0x00, 0x3c, 0x00, 0xc0}},
                                 {"bf", "BF16", {4}, Bytes(8)},
                                 {"pos", "I64", {2}, Bytes(16)},
                                 {"ids", "I32", {}, Bytes(4)},
                                 {"mask", "BOOL", {2}, Bytes{1, 0}},
                                 {"bytes", "U8", {3, 0}, Bytes{}},
                                 {"u8", "U8", {3}, Bytes{7, 8, 9}}},
                                {{"format", "pt"}});
  const std::string path = Scratch().Write("valid.safetensors", bytes);
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  REQUIRE(file.ok());
  CHECK(file->path() == path);
  CHECK(file->metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  const std::vector<StoredTensor>& tensors = file->tensors();
  REQUIRE(tensors.size() == 8);
  CHECK(tensors[0].name == "w");  // file order, not the header's alphabetical order
  CHECK(tensors[0].type == StoredType::kF32);
  CHECK(tensors[0].shape == std::vector<int64_t>{2, 3});
  CHECK(tensors[0].nbytes == 24);
  std::vector<float> values(6);
  REQUIRE(DequantizeToF32(tensors[0], values.data()).ok());
  CHECK(values == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(tensors[1].type == StoredType::kF16);
  REQUIRE(DequantizeToF32(tensors[1], values.data()).ok());
  CHECK(values[0] == 1.0f);
  CHECK(values[1] == -2.0f);
  CHECK(tensors[2].type == StoredType::kBF16);
  CHECK(tensors[3].type == StoredType::kI64);
  CHECK(tensors[4].type == StoredType::kI32);
  CHECK(tensors[4].shape.empty());
  CHECK(tensors[4].NumElements() == 1);
  CHECK(tensors[5].type == StoredType::kBool);
  const StoredTensor& u8 = tensors[7].name == "u8" ? tensors[7] : tensors[6];
  CHECK(u8.type == StoredType::kU8);
  CHECK(u8.data[2] == 9);
  CHECK(u8.data == u8.file->data() + u8.file->size() - 3);
}

TEST_CASE("safetensors: every truncation of a file fails cleanly", "[engine][safetensors]") {
  const Bytes full =
      BuildFile({{"a", "F32", {2}, FloatBytes({1, 2})}, {"b", "I64", {1}, Bytes(8, 1)}});
  REQUIRE(OpenStatus(full).ok());
  for (size_t length = 0; length < full.size(); ++length) {
    INFO("prefix of " << length << " of " << full.size() << " bytes");
    const Status status = OpenStatus(Bytes(full.begin(), full.begin() + length), "cut.st");
    REQUIRE(!status.ok());
    CHECK_THAT(status.message(), Contains("cut.st"));
  }
}

TEST_CASE("safetensors: corrupt headers", "[engine][safetensors]") {
  SECTION("shorter than the length field") {
    const Status status = OpenStatus(Bytes{1, 2, 3});
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("8-byte header length"));
  }
  SECTION("header length past the end") {
    Bytes bytes = WithHeader("{}", {});
    bytes[0] = 200;
    const Status status = OpenStatus(bytes, "long.safetensors");
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("long.safetensors") && Contains("header length 200") &&
                                     Contains("past the end"));
  }
  SECTION("header length near 2^64") {
    Bytes bytes = WithHeader("{}", {});
    std::memset(bytes.data(), 0xff, 8);
    CHECK(OpenStatus(bytes).code() == StatusCode::kDataLoss);
  }
  SECTION("bad JSON") {
    const Status status = OpenStatus(WithHeader("{\"a\": [1, 2", {}));
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("not valid JSON"));
  }
  SECTION("JSON that is not an object") {
    CHECK_THAT(OpenStatus(WithHeader("[1, 2]", {})).message(), Contains("not a JSON object"));
  }
  SECTION("metadata that is not a map of strings") {
    const Bytes bytes = WithHeader(R"({"__metadata__": {"n": 3}})", {});
    CHECK_THAT(OpenStatus(bytes).message(), Contains("__metadata__") && Contains("'n'"));
  }
  SECTION("malformed tensor entries") {
    CHECK_THAT(OpenWithEntry(3).message(), Contains("'t'") && Contains("dtype"));
    CHECK_THAT(
        OpenWithEntry({{"dtype", "F32"}, {"shape", {-1}}, {"data_offsets", {0, 4}}}).message(),
        Contains("shape"));
    CHECK_THAT(OpenWithEntry({{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0}}}).message(),
               Contains("data_offsets"));
    CHECK_THAT(
        OpenWithEntry({{"dtype", "F32"}, {"shape", {1.5}}, {"data_offsets", {0, 4}}}).message(),
        Contains("shape"));
  }
}

TEST_CASE("safetensors: data offsets must match dtype, shape and file", "[engine][safetensors]") {
  SECTION("span does not match the shape") {
    const Status status =
        OpenWithEntry({{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 20}}});
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("'t'") && Contains("20 bytes") && Contains("needs 24"));
  }
  SECTION("range past the end of the file") {
    const Status status =
        OpenWithEntry({{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {8, 32}}});
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("'t'") && Contains("past the end"));
  }
  SECTION("end before begin") {
    const Status status =
        OpenWithEntry({{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {8, 4}}});
    CHECK_THAT(status.message(), Contains("end before they begin"));
  }
  SECTION("shape whose byte size overflows") {
    const uint64_t big = uint64_t{1} << 62;
    const Status status =
        OpenWithEntry({{"dtype", "F32"}, {"shape", {big, big}}, {"data_offsets", {0, 0}}});
    CHECK_THAT(status.message(), Contains("overflows"));
  }
}

TEST_CASE("safetensors: unsupported dtypes name the dtype and tensor", "[engine][safetensors]") {
  const Bytes bytes = BuildFile({{"ok", "F32", {1}, Bytes(4)}, {"scores", "F64", {2}, Bytes(16)}});
  const Status status = OpenStatus(bytes);
  CHECK(status.code() == StatusCode::kUnimplemented);
  CHECK_THAT(status.message(), Contains("'scores'") && Contains("F64") && Contains("BF16"));
}

TEST_CASE("safetensors directory: a single model.safetensors", "[engine][safetensors]") {
  Scratch().Write("single/model.safetensors",
                  BuildFile({{"a", "F32", {1}, Bytes(4)}, {"b", "F16", {2}, Bytes(4)}}));
  StatusOr<std::vector<StoredTensor>> tensors = LoadSafetensorsDirectory(Scratch().Path("single"));
  REQUIRE(tensors.ok());
  REQUIRE(tensors->size() == 2);
  CHECK((*tensors)[0].name == "a");
  CHECK((*tensors)[1].type == StoredType::kF16);
}

TEST_CASE("safetensors directory: shards listed by an index", "[engine][safetensors]") {
  const std::string shard1 = "model-00001-of-00002.safetensors";
  const std::string shard2 = "model-00002-of-00002.safetensors";
  Scratch().Write("sharded/" + shard1, BuildFile({{"embed", "F32", {2}, FloatBytes({1, 2})},
                                                  {"norm", "F32", {1}, FloatBytes({3})}}));
  Scratch().Write("sharded/" + shard2, BuildFile({{"head", "BF16", {2}, Bytes(4)}}));
  Json index = {{"metadata", {{"total_size", 16}}},
                {"weight_map", {{"embed", shard1}, {"norm", shard1}, {"head", shard2}}}};
  const std::string index_path =
      Scratch().Write("sharded/model.safetensors.index.json", index.dump());

  SECTION("all tensors, each shard mapped once") {
    StatusOr<std::vector<StoredTensor>> tensors =
        LoadSafetensorsDirectory(Scratch().Path("sharded"));
    REQUIRE(tensors.ok());
    REQUIRE(tensors->size() == 3);
    CHECK((*tensors)[0].name == "embed");
    CHECK((*tensors)[1].name == "norm");
    CHECK((*tensors)[2].name == "head");
    CHECK((*tensors)[0].file == (*tensors)[1].file);
    CHECK((*tensors)[0].file != (*tensors)[2].file);
    CHECK((*tensors)[2].file->path() == Scratch().Path("sharded/" + shard2));
  }
  SECTION("a missing shard is named") {
    index["weight_map"]["extra"] = "model-00003-of-00002.safetensors";
    Scratch().Write("sharded/model.safetensors.index.json", index.dump());
    const Status status = LoadSafetensorsDirectory(Scratch().Path("sharded")).status();
    CHECK(status.code() == StatusCode::kNotFound);
    CHECK_THAT(status.message(), Contains("model-00003-of-00002.safetensors"));
  }
  SECTION("a tensor missing from its shard") {
    index["weight_map"]["ghost"] = shard2;
    Scratch().Write("sharded/model.safetensors.index.json", index.dump());
    const Status status = LoadSafetensorsDirectory(Scratch().Path("sharded")).status();
    CHECK(status.code() == StatusCode::kDataLoss);
    CHECK_THAT(status.message(), Contains("'ghost'") && Contains(shard2));
  }
  SECTION("a shard outside the directory") {
    index["weight_map"]["head"] = "../elsewhere.safetensors";
    Scratch().Write("sharded/model.safetensors.index.json", index.dump());
    CHECK(LoadSafetensorsDirectory(Scratch().Path("sharded")).status().code() ==
          StatusCode::kDataLoss);
  }
  SECTION("an index that is not JSON") {
    Scratch().Write("sharded/model.safetensors.index.json", std::string("{weight_map"));
    CHECK_THAT(LoadSafetensorsDirectory(Scratch().Path("sharded")).status().message(),
               Contains("model.safetensors.index.json") && Contains("not valid JSON"));
  }
}

TEST_CASE("safetensors directory: neither file present", "[engine][safetensors]") {
  fs::create_directories(Scratch().Path("nothing"));
  const Status status = LoadSafetensorsDirectory(Scratch().Path("nothing")).status();
  CHECK(status.code() == StatusCode::kNotFound);
  CHECK_THAT(status.message(), Contains("nothing") && Contains("model.safetensors ") &&
                                   Contains("model.safetensors.index.json"));
}

}  // namespace
}  // namespace glassbox
