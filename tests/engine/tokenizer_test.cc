// Tokenizer tests: hand-built vocabularies for the mechanics, golden ids from Hugging Face
// `tokenizers` and transformers for exactness (tests/fixtures/tokenizer/, made by
// scripts/fixtures/make_tokenizer_fixtures.py and make_gemma_tokenizer_fixtures.py), and
// random bytes for the round trip.
#include "engine/tokenizer.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/gguf.h"
#include "engine/sentencepiece.h"

namespace glassbox {
namespace {

using Json = nlohmann::json;

const char* const kFixtureDir = "tests/fixtures/tokenizer/";
const char* const kModelPath = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const char* const kGemmaPath = "models/gemma-3-270m-q4_k_m.gguf";

Json ReadJson(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return Json::parse(in);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
  REQUIRE(out.good());
}

// A fresh directory under the system's temporary directory for files a test writes.
std::string TempDir(const std::string& name) {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("glassbox_tokenizer_test_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string() + "/";
}

// GPT-2's byte -> character mapping, written independently of the implementation.
std::string ByteToken(unsigned char b) {
  int code = b;
  if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
    int n = 0;
    for (int c = 0; c < b; ++c) {
      if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) ++n;
    }
    code = 256 + n;
  }
  std::string out;
  if (code < 0x80) {
    out.push_back(static_cast<char>(code));
  } else {
    out.push_back(static_cast<char>(0xC0 | (code >> 6)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  }
  return out;
}

// Readable text for a failure message: the ids around `pos` and the token texts.
std::string Context(const Tokenizer& tokenizer, const std::vector<int64_t>& ids, size_t pos) {
  std::string out;
  size_t first = pos < 5 ? 0 : pos - 5;
  for (size_t i = first; i < ids.size() && i < pos + 6; ++i) {
    out += (i == pos ? " >>" : " ") + std::to_string(ids[i]) + "(" +
           tokenizer.TokenText(ids[i]) + ")";
  }
  return out;
}

// Compares ids exactly; on failure reports the first differing position with context.
void CheckIds(const Tokenizer& tokenizer, const std::string& name, const std::string& text,
              const std::vector<int64_t>& actual, const std::vector<int64_t>& expected) {
  size_t pos = 0;
  while (pos < actual.size() && pos < expected.size() && actual[pos] == expected[pos]) ++pos;
  if (pos == actual.size() && pos == expected.size()) return;
  INFO("case " << name << ": first mismatch at id index " << pos << " of " << expected.size()
               << " expected / " << actual.size() << " actual");
  INFO("text: " << text.substr(0, 300));
  INFO("expected:" << Context(tokenizer, expected, pos));
  INFO("actual:  " << Context(tokenizer, actual, pos));
  FAIL("token ids differ from Hugging Face");
}

// Encodes each golden case without special tokens (or with them when marked) and checks
// the ids and that decoding gives back the text.
void CheckGoldenCases(const Tokenizer& tokenizer, const Json& cases) {
  for (const Json& c : cases) {
    std::string name = c["name"], text = c["text"];
    bool with_bos = c.value("with_bos", false);
    std::vector<int64_t> expected = c["ids"].get<std::vector<int64_t>>();
    std::vector<int64_t> ids = tokenizer.Encode(text, with_bos);
    CheckIds(tokenizer, name, text, ids, expected);
    StatusOr<std::string> decoded = tokenizer.Decode(ids);
    REQUIRE(decoded.ok());
    std::string want = with_bos ? tokenizer.TokenText(tokenizer.bos_id()) + text : text;
    INFO("case " << name);
    CHECK(*decoded == want);
  }
}

// Checks each case of a tiny_<family>_golden.json: the ids with and without special tokens,
// and that decoding gives Hugging Face's text (the input, or its NFC form).
void CheckFamilyCases(const Tokenizer& tokenizer, const Json& cases) {
  for (const Json& c : cases) {
    std::string name = c["name"], text = c["text"];
    std::vector<int64_t> expected = c["ids"].get<std::vector<int64_t>>();
    CheckIds(tokenizer, name, text, tokenizer.Encode(text, false), expected);
    std::vector<int64_t> expected_special = c.value("ids_special", expected);
    CheckIds(tokenizer, name + " with special tokens", text, tokenizer.Encode(text, true),
             expected_special);
    StatusOr<std::string> decoded = tokenizer.Decode(expected);
    REQUIRE(decoded.ok());
    INFO("case " << name);
    CHECK(*decoded == c.value("decoded", text));
  }
}

// Checks each case of a SentencePiece golden file: ids without and with special tokens (Gemma
// adds BOS) and transformers' decode of the latter.
void CheckSentencePieceCases(const Tokenizer& tokenizer, const Json& cases) {
  const std::string bos = tokenizer.TokenText(tokenizer.bos_id());
  for (const Json& c : cases) {
    std::string name = c["name"], text = c["text"];
    std::vector<int64_t> expected = c["ids"].get<std::vector<int64_t>>();
    CheckIds(tokenizer, name, text, tokenizer.Encode(text, false), expected);
    std::vector<int64_t> expected_bos = {tokenizer.bos_id()};
    expected_bos.insert(expected_bos.end(), expected.begin(), expected.end());
    expected_bos = c.value("ids_bos", expected_bos);
    CheckIds(tokenizer, name + " with BOS", text, tokenizer.Encode(text, true), expected_bos);
    StatusOr<std::string> decoded = tokenizer.Decode(expected_bos);
    REQUIRE(decoded.ok());
    INFO("case " << name);
    CHECK(*decoded == c.value("decoded", bos + text));
  }
}

// A vocabulary of the 256 byte tokens, then the given extra tokens.
TokenizerSpec ByteSpec(const std::vector<std::string>& extra) {
  TokenizerSpec spec;
  for (int b = 0; b < 256; ++b) spec.tokens.push_back(ByteToken(static_cast<unsigned char>(b)));
  for (const std::string& token : extra) spec.tokens.push_back(token);
  return spec;
}

int64_t IdOf(const TokenizerSpec& spec, const std::string& token) {
  for (size_t i = 0; i < spec.tokens.size(); ++i) {
    if (spec.tokens[i] == token) return static_cast<int64_t>(i);
  }
  FAIL("no token " << token);
  return -1;
}

// Writes GGUF v3 files holding only metadata, for the loader's error paths.
class GgufMetadataWriter {
 public:
  void String(const std::string& key, const std::string& value) {
    Key(key, kString);
    Str(value);
  }
  void UInt32(const std::string& key, uint32_t value) {
    Key(key, kUInt32);
    Raw(value);
  }
  void Bool(const std::string& key, bool value) {
    Key(key, kBool);
    Raw(static_cast<uint8_t>(value));
  }
  void StringArray(const std::string& key, const std::vector<std::string>& values) {
    Key(key, kArray);
    Raw(kString);
    Raw(static_cast<uint64_t>(values.size()));
    for (const std::string& value : values) Str(value);
  }
  void Int32Array(const std::string& key, const std::vector<int32_t>& values) {
    Key(key, kArray);
    Raw(kInt32);
    Raw(static_cast<uint64_t>(values.size()));
    for (int32_t value : values) Raw(value);
  }
  void Save(const std::string& path) const {
    std::string header = "GGUF";
    Append(&header, uint32_t{3});
    Append(&header, uint64_t{0});  // tensors
    Append(&header, count_);
    WriteFile(path, header + body_);
  }

 private:
  static constexpr uint32_t kUInt32 = 4, kInt32 = 5, kBool = 7, kString = 8, kArray = 9;
  template <typename T>
  static void Append(std::string* out, T value) {
    out->append(reinterpret_cast<const char*>(&value), sizeof(value));
  }
  template <typename T>
  void Raw(T value) { Append(&body_, value); }
  void Str(const std::string& s) {
    Raw(static_cast<uint64_t>(s.size()));
    body_ += s;
  }
  void Key(const std::string& key, uint32_t type) {
    Str(key);
    Raw(type);
    ++count_;
  }
  std::string body_;
  uint64_t count_ = 0;
};

// A byte-level gpt2 vocabulary: 256 byte tokens, "ab", "abc", and a control token.
GgufMetadataWriter SmallGguf(const std::string& model, const std::string& pre,
                             const std::vector<std::string>& merges = {"a b", "1 2"}) {
  GgufMetadataWriter writer;
  writer.String("tokenizer.ggml.model", model);
  if (!pre.empty()) writer.String("tokenizer.ggml.pre", pre);
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(ByteToken(static_cast<unsigned char>(b)));
  tokens.insert(tokens.end(), {"ab", "abc", "12", "<s>"});
  std::vector<int32_t> types(tokens.size(), 1);
  types.back() = 3;
  writer.StringArray("tokenizer.ggml.tokens", tokens);
  writer.StringArray("tokenizer.ggml.merges", merges);
  writer.Int32Array("tokenizer.ggml.token_type", types);
  writer.UInt32("tokenizer.ggml.bos_token_id", 259);
  writer.UInt32("tokenizer.ggml.eos_token_id", 259);
  writer.Bool("tokenizer.ggml.add_bos_token", true);
  return writer;
}

StatusOr<Tokenizer> LoadGguf(const std::string& path) {
  StatusOr<GgufFile> gguf = GgufFile::Open(path);
  INFO(gguf.status().ToString());
  REQUIRE(gguf.ok());
  return Tokenizer::FromGguf(*gguf);
}

std::string RandomBytes(std::mt19937& rng, size_t max_length) {
  // Bytes biased towards what makes the splitter and UTF-8 decoder work: ASCII letters,
  // digits, spaces and newlines, apostrophes, lead and continuation bytes.
  static const std::string kInteresting = "aZ09 \n\r\t'sS<|>!";
  std::uniform_int_distribution<size_t> length(0, max_length);
  std::uniform_int_distribution<int> pick(0, 3), byte(0, 255);
  std::string out;
  for (size_t n = length(rng); out.size() < n;) {
    switch (pick(rng)) {
      case 0: out.push_back(kInteresting[byte(rng) % kInteresting.size()]); break;
      case 1: out.push_back(static_cast<char>(0x80 + byte(rng) % 0x40)); break;
      case 2: out.push_back(static_cast<char>(0xC2 + byte(rng) % 0x33)); break;
      default: out.push_back(static_cast<char>(byte(rng))); break;
    }
  }
  return out;
}

// ---- Mechanics on hand-built vocabularies -------------------------------------------

TEST_CASE("Encode merges by rank and decodes back", "[engine][tokenizer]") {
  TokenizerSpec spec = ByteSpec({"aa", "aaa", "ab", "Ġa", "<|end|>", "<|end|>!"});
  spec.merges = {{"a", "a"}, {"aa", "a"}, {"a", "b"}, {"Ġ", "a"}};
  spec.special_ids = {IdOf(spec, "<|end|>"), IdOf(spec, "<|end|>!")};
  spec.bos_id = IdOf(spec, "<|end|>");
  spec.add_bos = true;
  StatusOr<Tokenizer> tokenizer = Tokenizer::FromSpec(spec);
  REQUIRE(tokenizer.ok());
  const int64_t aa = IdOf(spec, "aa"), aaa = IdOf(spec, "aaa"), ab = IdOf(spec, "ab");

  SECTION("leftmost pair first on equal rank, then by rank") {
    CHECK(tokenizer->Encode("aaa", false) == std::vector<int64_t>{aaa});
    CHECK(tokenizer->Encode("aaaa", false) == std::vector<int64_t>{aa, aa});
    CHECK(tokenizer->Encode("aab", false) == std::vector<int64_t>{aa, 'b'});
    CHECK(tokenizer->Encode("abab", false) == std::vector<int64_t>{ab, ab});
  }
  SECTION("bos only with add_special_tokens") {
    CHECK(tokenizer->Encode("", true) == std::vector<int64_t>{spec.bos_id});
    CHECK(tokenizer->Encode("", false).empty());
  }
  SECTION("special tokens match verbatim, longest first") {
    const int64_t end = IdOf(spec, "<|end|>"), end_bang = IdOf(spec, "<|end|>!");
    CHECK(tokenizer->Encode("<|end|>!", false) == std::vector<int64_t>{end_bang});
    CHECK(tokenizer->Encode("aa<|end|>aa", false) == std::vector<int64_t>{aa, end, aa});
    CHECK(tokenizer->Decode({end_bang, aa}).value() == "<|end|>!aa");
  }
  SECTION("decode errors and token texts") {
    CHECK(tokenizer->Decode({aaa, IdOf(spec, "Ġa")}).value() == "aaa a");
    CHECK(tokenizer->Decode({-1}).status().code() == StatusCode::kInvalidArgument);
    CHECK(tokenizer->Decode({tokenizer->vocab_size()}).status().code() ==
          StatusCode::kInvalidArgument);
    CHECK(tokenizer->TokenText(aa) == "aa");
    CHECK(tokenizer->TokenText(-3).empty());
    CHECK(tokenizer->TokenText(tokenizer->vocab_size()).empty());
  }
}

TEST_CASE("Pre-tokenizers split where their regexes do", "[engine][tokenizer]") {
  // With a merge for every adjacent pair of these letters, a word only stays apart from
  // its neighbour if the pre-tokenizer split them.
  TokenizerSpec spec = ByteSpec({"Ġx", "x1", "12"});
  spec.merges = {{"Ġ", "x"}, {"x", "1"}, {"1", "2"}};
  const int64_t space_x = IdOf(spec, "Ġx"), d12 = IdOf(spec, "12");
  const int64_t x = 'x', one = '1', two = '2';
  for (PreTokenizer pre : {PreTokenizer::kGpt2, PreTokenizer::kSmolLm, PreTokenizer::kLlama3,
                           PreTokenizer::kQwen2}) {
    spec.pre_tokenizer = pre;
    StatusOr<Tokenizer> tokenizer = Tokenizer::FromSpec(spec);
    REQUIRE(tokenizer.ok());
    CHECK(tokenizer->Encode(" x", false) == std::vector<int64_t>{space_x});
    CHECK(tokenizer->Encode("x1", false) == std::vector<int64_t>{x, one});
    std::vector<int64_t> digits = tokenizer->Encode("12", false);
    if (pre == PreTokenizer::kSmolLm || pre == PreTokenizer::kQwen2) {
      CHECK(digits == std::vector<int64_t>{one, two});
    } else {
      CHECK(digits == std::vector<int64_t>{d12});
    }
  }
}

TEST_CASE("NFC runs between raw added tokens, before the normalized ones",
          "[engine][tokenizer]") {
  TokenizerSpec spec = ByteSpec({"<s>", "  "});
  const int64_t s = IdOf(spec, "<s>"), two_spaces = IdOf(spec, "  ");
  spec.normalizer = Normalizer::kNfc;
  spec.special_ids = {s};
  spec.normalized_ids = {two_spaces};
  StatusOr<Tokenizer> tokenizer = Tokenizer::FromSpec(spec);
  REQUIRE(tokenizer.ok());
  CHECK(tokenizer->special_ids() == std::vector<int64_t>{s, two_spaces});
  // Byte tokens have the byte's value as id here.
  CHECK(tokenizer->Encode("e\u0301", false) == std::vector<int64_t>{0xC3, 0xA9});
  // ">" + U+0338 would compose to U+226F, but "<s>" is cut out first.
  CHECK(tokenizer->Encode("<s>\u0338", false) == std::vector<int64_t>{s, 0xCC, 0xB8});
  CHECK(tokenizer->Encode("a  b", false) == std::vector<int64_t>{'a', two_spaces, 'b'});
  // Hugging Face's Unicode 9 tables give U+1ABF (Unicode 13) combining class 0: no reordering.
  CHECK(tokenizer->Decode(tokenizer->Encode("a\u0345\u1abf", false)).value() ==
        "a\u0345\u1abf");
  CHECK(tokenizer->Decode(tokenizer->Encode("a\u0345\u0316", false)).value() ==
        "a\u0316\u0345");
  CHECK(tokenizer->Decode(tokenizer->Encode("x\xff e\u0301", false)).value() ==
        "x\xff \u00e9");
}

TEST_CASE("ignore_merges takes in-vocabulary words whole", "[engine][tokenizer]") {
  TokenizerSpec spec = ByteSpec({"ab", "abc"});
  spec.merges = {{"a", "b"}};  // nothing merges into "abc"
  const int64_t ab = IdOf(spec, "ab"), abc = IdOf(spec, "abc");
  CHECK(Tokenizer::FromSpec(spec)->Encode("abc", false) == std::vector<int64_t>{ab, 'c'});
  spec.ignore_merges = true;
  CHECK(Tokenizer::FromSpec(spec)->Encode("abc", false) == std::vector<int64_t>{abc});
  CHECK(Tokenizer::FromSpec(spec)->Encode("abcc", false) == std::vector<int64_t>{ab, 'c', 'c'});
}

TEST_CASE("FromSpec rejects inconsistent specs", "[engine][tokenizer]") {
  TokenizerSpec spec = ByteSpec({"ab"});
  SECTION("a merge whose result is missing") {
    spec.merges = {{"a", "c"}};
    StatusOr<Tokenizer> tokenizer = Tokenizer::FromSpec(spec);
    CHECK(tokenizer.status().code() == StatusCode::kInvalidArgument);
    CHECK(tokenizer.status().message().find("merge 0") != std::string::npos);
  }
  SECTION("ids outside the vocabulary") {
    spec.special_ids = {300};
    CHECK(Tokenizer::FromSpec(spec).status().code() == StatusCode::kInvalidArgument);
    spec.special_ids.clear();
    spec.eos_id = 257;
    CHECK(Tokenizer::FromSpec(spec).status().code() == StatusCode::kInvalidArgument);
  }
  SECTION("add_bos without a bos id") {
    spec.add_bos = true;
    CHECK(Tokenizer::FromSpec(spec).status().code() == StatusCode::kInvalidArgument);
  }
  SECTION("an empty vocabulary") {
    CHECK(Tokenizer::FromSpec(TokenizerSpec()).status().code() ==
          StatusCode::kInvalidArgument);
  }
}

TEST_CASE("Random bytes survive a round trip", "[engine][tokenizer]") {
  std::mt19937 rng(20240607);
  const Json golden = ReadJson(std::string(kFixtureDir) + "tiny_golden.json");
  for (const Json& entry : golden["tokenizers"]) {
    StatusOr<Tokenizer> tokenizer = Tokenizer::FromTokenizerJson(entry["file"]);
    REQUIRE(tokenizer.ok());
    for (int i = 0; i < 300; ++i) {
      std::string text = RandomBytes(rng, 80);
      std::vector<int64_t> ids = tokenizer->Encode(text, false);
      StatusOr<std::string> decoded = tokenizer->Decode(ids);
      REQUIRE(decoded.ok());
      INFO(entry["file"].get<std::string>() << ", sample " << i);
      REQUIRE(*decoded == text);
    }
  }
}

// ---- tokenizer.json -------------------------------------------------------------------

TEST_CASE("Tiny tokenizer.json files encode like Hugging Face", "[engine][tokenizer]") {
  const Json golden = ReadJson(std::string(kFixtureDir) + "tiny_golden.json");
  REQUIRE(golden["tokenizers"].size() == 3);
  for (const Json& entry : golden["tokenizers"]) {
    const std::string file = entry["file"];
    INFO("fixture " << file);
    StatusOr<Tokenizer> tokenizer = Tokenizer::FromTokenizerJson(file);
    INFO(tokenizer.status().ToString());
    REQUIRE(tokenizer.ok());
    CHECK(tokenizer->bos_id() == entry.value("bos_id", int64_t{-1}));
    CheckGoldenCases(*tokenizer, entry["cases"]);
  }
}

TEST_CASE("FromTokenizerJson errors name the file and the part", "[engine][tokenizer]") {
  const std::string dir = TempDir("errors");
  const Json original = ReadJson(std::string(kFixtureDir) + "tiny_tokenizer.json");
  auto load_modified = [&](const std::string& name, const std::function<void(Json&)>& edit) {
    Json json = original;
    edit(json);
    WriteFile(dir + name, json.dump());
    return Tokenizer::FromTokenizerJson(dir + name);
  };
  auto expect = [](const StatusOr<Tokenizer>& result, StatusCode code,
                   const std::vector<std::string>& words) {
    INFO(result.status().ToString());
    CHECK(result.status().code() == code);
    for (const std::string& word : words) {
      CHECK(result.status().message().find(word) != std::string::npos);
    }
  };

  expect(Tokenizer::FromTokenizerJson(dir + "missing.json"), StatusCode::kNotFound,
         {"missing.json"});
  WriteFile(dir + "broken.json", "{\"model\": ");
  expect(Tokenizer::FromTokenizerJson(dir + "broken.json"), StatusCode::kInvalidArgument,
         {"broken.json"});
  expect(load_modified("metaspace.json",
                       [](Json& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}}; }),
         StatusCode::kUnimplemented, {"metaspace.json", "Metaspace"});
  expect(load_modified("prefix.json",
                       [](Json& j) {
                         j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true;
                       }),
         StatusCode::kUnimplemented, {"prefix.json", "add_prefix_space=true"});
  expect(load_modified("wordpiece.json", [](Json& j) { j["model"]["type"] = "WordPiece"; }),
         StatusCode::kUnimplemented, {"wordpiece.json", "WordPiece"});
  expect(load_modified("nfkc.json", [](Json& j) { j["normalizer"] = {{"type", "NFKC"}}; }),
         StatusCode::kUnimplemented, {"nfkc.json", "NFKC"});
  expect(load_modified("lstrip.json", [](Json& j) { j["added_tokens"][0]["lstrip"] = true; }),
         StatusCode::kUnimplemented, {"lstrip.json", "lstrip"});
  expect(load_modified("vocab_type.json", [](Json& j) { j["model"]["vocab"] = 3; }),
         StatusCode::kInvalidArgument, {"vocab_type.json", "model.vocab"});
  expect(load_modified("unk.json",
                       [](Json& j) {
                         Json& vocab = j["model"]["vocab"];
                         j["model"]["unk_token"] = "<|endoftext|>";
                         vocab["<unused>"] = vocab["a"];  // keeps the ids contiguous
                         vocab.erase("a");
                       }),
         StatusCode::kUnimplemented, {"unk.json", "unk_token", "byte 97"});
  CHECK(load_modified("unk_ok.json",
                      [](Json& j) { j["model"]["unk_token"] = "<|endoftext|>"; })
            .ok());
  expect(load_modified("id_type.json", [](Json& j) { j["model"]["vocab"]["!"] = "x"; }),
         StatusCode::kInvalidArgument, {"id_type.json"});
  expect(load_modified("bad_merge.json",
                       [](Json& j) { j["model"]["merges"][0] = "no_space_here"; }),
         StatusCode::kInvalidArgument, {"bad_merge.json", "merges[0]"});
}

TEST_CASE("GPT-2, GPT-NeoX and Qwen2 tokenizer.json files encode like Hugging Face",
          "[engine][tokenizer]") {
  const std::pair<const char*, size_t> families[] = {{"gpt2", 1}, {"neox", 25}, {"qwen2", 7}};
  for (const auto& [family, added_tokens] : families) {
    const Json golden = ReadJson(std::string(kFixtureDir) + "tiny_" + family + "_golden.json");
    const std::string file = golden["file"];
    INFO("fixture " << file);
    StatusOr<Tokenizer> tokenizer = Tokenizer::FromTokenizerJson(file);
    INFO(tokenizer.status().ToString());
    REQUIRE(tokenizer.ok());
    CHECK(tokenizer->special_ids().size() == added_tokens);
    REQUIRE(golden["cases"].size() >= 200);
    CheckFamilyCases(*tokenizer, golden["cases"]);
  }
}

TEST_CASE("tokenizer.json features that are not implemented are refused by name",
          "[engine][tokenizer]") {
  const std::string dir = TempDir("refused");
  const Json original = ReadJson(std::string(kFixtureDir) + "tiny_qwen2_tokenizer.json");
  auto expect_refused = [&](const std::function<void(Json&)>& edit,
                            const std::vector<std::string>& words,
                            StatusCode code = StatusCode::kUnimplemented) {
    Json json = original;
    edit(json);
    WriteFile(dir + "tokenizer.json", json.dump());
    StatusOr<Tokenizer> result = Tokenizer::FromTokenizerJson(dir + "tokenizer.json");
    INFO(result.status().ToString());
    CHECK(result.status().code() == code);
    for (const std::string& word : words) {
      CHECK(result.status().message().find(word) != std::string::npos);
    }
  };
  auto pretokenizers = [](Json& j) -> Json& { return j["pre_tokenizer"]["pretokenizers"]; };

  SECTION("normalizers other than NFC") {
    expect_refused([](Json& j) { j["normalizer"] = {{"type", "Lowercase"}}; },
                   {"normalizer", "Lowercase"});
    expect_refused(
        [](Json& j) {
          j["normalizer"] = {{"type", "Sequence"},
                             {"normalizers", {{{"type", "NFC"}}, {{"type", "Prepend"}}}}};
        },
        {"normalizer", "Prepend"});
  }
  SECTION("pre-tokenizers") {
    expect_refused(
        [&](Json& j) {
          std::string& regex = pretokenizers(j)[0]["pattern"]["Regex"].get_ref<std::string&>();
          regex.replace(regex.find("\\p{N}|"), 5, "\\p{N}{1,2}");
        },
        {"pre_tokenizer", "Split", "{1,2}"});
    expect_refused([&](Json& j) { pretokenizers(j)[1]["use_regex"] = true; },
                   {"pre_tokenizer", "use_regex=true"});
    expect_refused([&](Json& j) { pretokenizers(j)[0]["behavior"] = "Removed"; },
                   {"pre_tokenizer", "Split"});
  }
  SECTION("models and their options") {
    expect_refused([](Json& j) { j["model"]["type"] = "Unigram"; }, {"model", "Unigram"});
    expect_refused([](Json& j) { j["model"]["dropout"] = 0.1; }, {"model.dropout"});
    expect_refused([](Json& j) { j["model"]["end_of_word_suffix"] = "</w>"; },
                   {"model.end_of_word_suffix"});
    expect_refused([](Json& j) { j["model"]["byte_fallback"] = true; }, {"model.byte_fallback"});
    expect_refused([](Json& j) { j["model"]["new_option"] = 1; }, {"new_option", "model"});
  }
  SECTION("decoders other than ByteLevel") {
    expect_refused([](Json& j) { j["decoder"] = nullptr; }, {"decoder null"});
    expect_refused([](Json& j) { j["decoder"] = {{"type", "WordPiece"}}; },
                   {"decoder WordPiece"});
  }
  SECTION("post-processors that add tokens") {
    expect_refused([](Json& j) { j["post_processor"] = {{"type", "RobertaProcessing"}}; },
                   {"post_processor RobertaProcessing"});
    expect_refused(
        [](Json& j) {
          j["post_processor"] = {
              {"type", "TemplateProcessing"},
              {"single", {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                          {{"SpecialToken", {{"id", "<|im_end|>"}, {"type_id", 0}}}}}},
              {"special_tokens", Json::object()}};
        },
        {"post_processor TemplateProcessing", "<|im_end|>"});
  }
  SECTION("truncation, padding, unknown keys") {
    expect_refused([](Json& j) { j["truncation"] = {{"max_length", 8}}; }, {"truncation"});
    expect_refused([](Json& j) { j["padding"] = {{"strategy", "BatchLongest"}}; }, {"padding"});
    expect_refused([](Json& j) { j["chat_template"] = "x"; }, {"unknown key", "chat_template"});
  }
  SECTION("added token flags") {
    expect_refused([](Json& j) { j["added_tokens"][3]["rstrip"] = true; },
                   {"<tool_call>", "rstrip"});
    expect_refused([](Json& j) { j["added_tokens"][0]["single_word"] = true; },
                   {"<|endoftext|>", "single_word"});
    expect_refused([](Json& j) { j["added_tokens"][0].erase("normalized"); }, {"normalized"},
                   StatusCode::kInvalidArgument);
  }
}

TEST_CASE("tokenizer_config.json beside tokenizer.json names bos and eos",
          "[engine][tokenizer]") {
  const std::string dir = TempDir("config");
  WriteFile(dir + "tokenizer.json", ReadFile(std::string(kFixtureDir) + "tiny_tokenizer.json"));
  WriteFile(dir + "tokenizer_config.json",
            R"({"eos_token": "<|im_end|>", "bos_token": {"content": "<|im_start|>"}})");
  StatusOr<Tokenizer> tokenizer = Tokenizer::FromTokenizerJson(dir + "tokenizer.json");
  REQUIRE(tokenizer.ok());
  CHECK(tokenizer->TokenText(tokenizer->eos_id()) == "<|im_end|>");
  CHECK(tokenizer->TokenText(tokenizer->bos_id()) == "<|im_start|>");
  CHECK(tokenizer->Encode("hi", true) == tokenizer->Encode("hi", false));  // no post-processor
}

// ---- GGUF ---------------------------------------------------------------------------

TEST_CASE("FromGguf reads a gpt2 tokenizer", "[engine][tokenizer]") {
  const std::string dir = TempDir("gguf");
  const int64_t ab = 256, abc = 257, d12 = 258, bos = 259;
  SECTION("default pre-tokenizer, bos, control tokens") {
    SmallGguf("gpt2", "").Save(dir + "default.gguf");
    StatusOr<Tokenizer> tokenizer = LoadGguf(dir + "default.gguf");
    INFO(tokenizer.status().ToString());
    REQUIRE(tokenizer.ok());
    CHECK(tokenizer->vocab_size() == 260);
    CHECK(tokenizer->bos_id() == bos);
    CHECK(tokenizer->eos_id() == bos);
    CHECK(tokenizer->Encode("abc<s>12", true) ==
          std::vector<int64_t>{bos, ab, 'c', bos, d12});
  }
  SECTION("smollm splits digits") {
    SmallGguf("gpt2", "smollm").Save(dir + "smollm.gguf");
    CHECK(LoadGguf(dir + "smollm.gguf")->Encode("12", false) == std::vector<int64_t>{'1', '2'});
  }
  SECTION("qwen2 splits digits and normalizes to NFC, as its tokenizer.json does") {
    SmallGguf("gpt2", "qwen2").Save(dir + "qwen2.gguf");
    StatusOr<Tokenizer> tokenizer = LoadGguf(dir + "qwen2.gguf");
    REQUIRE(tokenizer.ok());
    CHECK(tokenizer->Encode("12", false) == std::vector<int64_t>{'1', '2'});
    CHECK(tokenizer->Encode("e\u0301", false) == tokenizer->Encode("\u00e9", false));
  }
  SECTION("llama-bpe takes in-vocabulary words whole") {
    SmallGguf("gpt2", "llama-bpe").Save(dir + "llama.gguf");
    CHECK(LoadGguf(dir + "llama.gguf")->Encode("abc 12", false) ==
          std::vector<int64_t>{abc, ' ', d12});
  }
}

TEST_CASE("FromGguf errors name the file and the cause", "[engine][tokenizer]") {
  const std::string dir = TempDir("gguf_errors");
  auto expect = [](const StatusOr<Tokenizer>& result, StatusCode code,
                   const std::vector<std::string>& words) {
    INFO(result.status().ToString());
    CHECK(result.status().code() == code);
    for (const std::string& word : words) {
      CHECK(result.status().message().find(word) != std::string::npos);
    }
  };
  SmallGguf("bert", "").Save(dir + "wordpiece.gguf");
  expect(LoadGguf(dir + "wordpiece.gguf"), StatusCode::kUnimplemented,
         {"wordpiece.gguf", "tokenizer.ggml.model", "bert", "gpt2", "llama"});
  SmallGguf("gpt2", "deepseek-llm").Save(dir + "deepseek.gguf");
  expect(LoadGguf(dir + "deepseek.gguf"), StatusCode::kUnimplemented,
         {"deepseek.gguf", "deepseek-llm"});
  SmallGguf("gpt2", "", {"ab"}).Save(dir + "merge.gguf");
  expect(LoadGguf(dir + "merge.gguf"), StatusCode::kInvalidArgument,
         {"merge.gguf", "tokenizer.ggml.merges[0]"});
  GgufMetadataWriter no_model;
  no_model.Save(dir + "empty.gguf");
  expect(LoadGguf(dir + "empty.gguf"), StatusCode::kNotFound,
         {"empty.gguf", "tokenizer.ggml.model"});
}

// ---- The SmolLM2 GGUF -------------------------------------------------------------------

TEST_CASE("SmolLM2 from GGUF encodes like Hugging Face", "[engine][tokenizer][model]") {
  StatusOr<GgufFile> gguf = GgufFile::Open(kModelPath);
  INFO(gguf.status().ToString());
  REQUIRE(gguf.ok());
  StatusOr<Tokenizer> tokenizer = Tokenizer::FromGguf(*gguf);
  INFO(tokenizer.status().ToString());
  REQUIRE(tokenizer.ok());

  const Json golden = ReadJson(std::string(kFixtureDir) + "smollm2_golden.json");
  CHECK(tokenizer->vocab_size() == golden["vocab_size"].get<int64_t>());
  CHECK(tokenizer->bos_id() == golden["bos_id"].get<int64_t>());
  CHECK(tokenizer->eos_id() == golden["eos_id"].get<int64_t>());
  CHECK(tokenizer->TokenText(1) == "<|im_start|>");
  CheckGoldenCases(*tokenizer, golden["cases"]);

  SECTION("add_bos_token is false in this file") {
    CHECK(tokenizer->Encode("Hello", true) == tokenizer->Encode("Hello", false));
  }
  SECTION("random bytes the vocabulary covers survive a round trip") {
    std::vector<bool> covered(256);
    for (int b = 0; b < 256; ++b) {
      covered[b] = !tokenizer->Encode(std::string(1, static_cast<char>(b)), false).empty();
    }
    std::mt19937 rng(7);
    for (int i = 0; i < 300; ++i) {
      std::string text = RandomBytes(rng, 80);
      text.erase(std::remove_if(text.begin(), text.end(),
                                [&](char c) { return !covered[static_cast<unsigned char>(c)]; }),
                 text.end());
      INFO("sample " << i);
      REQUIRE(tokenizer->Decode(tokenizer->Encode(text, false)).value() == text);
    }
  }
}

// ---- SentencePiece-style BPE (Gemma) -------------------------------------------------

std::string ByteFallbackToken(int b) {
  char name[8];
  std::snprintf(name, sizeof(name), "<0x%02X>", b);
  return name;
}

// <pad> <bos> <eos> <t>, the 256 byte tokens (ids 4..259), then `extra` from id 260.
TokenizerSpec SentencePieceSpec(const std::vector<std::string>& extra) {
  TokenizerSpec spec;
  spec.model = TokenizerModel::kSentencePieceBpe;
  spec.normalizer = Normalizer::kMetaspace;
  spec.tokens = {"<pad>", "<bos>", "<eos>", "<t>"};
  for (int b = 0; b < 256; ++b) spec.tokens.push_back(ByteFallbackToken(b));
  spec.tokens.insert(spec.tokens.end(), extra.begin(), extra.end());
  spec.special_ids = {3};
  spec.bos_id = 1;
  spec.eos_id = 2;
  spec.add_bos = true;
  return spec;
}

TEST_CASE("Merges recovered from a vocabulary follow its order, longer left part first",
          "[engine][tokenizer]") {
  using Merges = std::vector<std::pair<std::string, std::string>>;
  CHECK(sentencepiece::MergesFromVocabularyOrder({"a", "b", "c", "ab", "abc", "bc", "x\u00e9"}) ==
        Merges{{"a", "b"}, {"ab", "c"}, {"a", "bc"}, {"b", "c"}});
  CHECK(sentencepiece::MergesFromVocabularyOrder({"\u00e9", "\u2581", "\u2581\u00e9"}) ==
        Merges{{"\u2581", "\u00e9"}});
}

TEST_CASE("SentencePiece spells spaces, falls back to bytes and merges by rank",
          "[engine][tokenizer]") {
  const int64_t space = 260, a = 261, b = 262, space_a = 263, space_ab = 265, e_acute = 266,
                newline = 267;
  auto byte = [](int value) { return int64_t{4} + value; };
  TokenizerSpec spec =
      SentencePieceSpec({"\u2581", "a", "b", "\u2581a", "ab", "\u2581ab", "\u00e9", "\n"});
  spec.merges = sentencepiece::MergesFromVocabularyOrder(spec.tokens);
  spec.special_ids.push_back(newline);

  SECTION("Replace(\" \", \"\u2581\")") {
    StatusOr<Tokenizer> tokenizer = Tokenizer::FromSpec(spec);
    INFO(tokenizer.status().ToString());
    REQUIRE(tokenizer.ok());
    CHECK(tokenizer->model() == TokenizerModel::kSentencePieceBpe);
    CHECK(tokenizer->Encode("a b", false) == std::vector<int64_t>{a, space, b});
    CHECK(tokenizer->Encode(" ab", false) == std::vector<int64_t>{space_ab});
    CHECK(tokenizer->Encode(" a", true) == std::vector<int64_t>{1, space_a});
    CHECK(tokenizer->Encode("\u00e9\u00fc", false) ==
          std::vector<int64_t>{e_acute, byte(0xC3), byte(0xBC)});
    CHECK(tokenizer->Encode("x<t>\n\xff", false) ==
          std::vector<int64_t>{byte('x'), 3, newline, byte(0xFF)});
    CHECK(tokenizer->Decode({1, space_ab, byte(0xC3), byte(0xBC), 3, byte(0xFF)}).value() ==
          "<bos> ab\u00fc<t>\xff");
  }
  SECTION("Prepend(\"\u2581\") before each stretch, one space stripped when decoding") {
    spec.normalizer = Normalizer::kPrependMetaspace;
    spec.strip_leading_spaces = 1;
    StatusOr<Tokenizer> tokenizer = Tokenizer::FromSpec(spec);
    REQUIRE(tokenizer.ok());
    std::vector<int64_t> ids = tokenizer->Encode("ab<t>ab", false);
    CHECK(ids == std::vector<int64_t>{space_ab, 3, space_ab});
    CHECK(tokenizer->Decode(ids).value() == "ab<t> ab");
    CHECK(tokenizer->Decode({space, space_a}).value() == " a");
  }
  SECTION("inconsistent specs are refused") {
    spec.normalizer = Normalizer::kNone;
    CHECK(Tokenizer::FromSpec(spec).status().code() == StatusCode::kInvalidArgument);
    spec = SentencePieceSpec({"a"});
    spec.tokens[4 + 0x41] = "<0x41x>";
    StatusOr<Tokenizer> missing = Tokenizer::FromSpec(spec);
    CHECK(missing.status().code() == StatusCode::kUnimplemented);
    CHECK(missing.status().message().find("<0x41>") != std::string::npos);
  }
}

TEST_CASE("SentencePiece tokenizer.json files encode and decode like transformers",
          "[engine][tokenizer]") {
  const Json golden = ReadJson(std::string(kFixtureDir) + "tiny_spm_golden.json");
  REQUIRE(golden["tokenizers"].size() == 2);
  for (const Json& entry : golden["tokenizers"]) {
    const std::string file = entry["file"];
    INFO("fixture " << file);
    StatusOr<Tokenizer> tokenizer = Tokenizer::FromTokenizerJson(file);
    INFO(tokenizer.status().ToString());
    REQUIRE(tokenizer.ok());
    CHECK(tokenizer->model() == TokenizerModel::kSentencePieceBpe);
    CHECK(tokenizer->bos_id() == entry["bos_id"].get<int64_t>());
    CHECK(tokenizer->special_ids().size() == ReadJson(file)["added_tokens"].size());
    REQUIRE(entry["cases"].size() >= 200);
    CheckSentencePieceCases(*tokenizer, entry["cases"]);
  }
}

TEST_CASE("SentencePiece tokenizer.json parts that are not implemented are refused by name",
          "[engine][tokenizer]") {
  const std::string dir = TempDir("spm_refused");
  const Json original = ReadJson(std::string(kFixtureDir) + "tiny_gemma_tokenizer.json");
  auto expect_refused = [&](const std::function<void(Json&)>& edit,
                            const std::vector<std::string>& words) {
    Json json = original;
    edit(json);
    WriteFile(dir + "tokenizer.json", json.dump());
    StatusOr<Tokenizer> result = Tokenizer::FromTokenizerJson(dir + "tokenizer.json");
    INFO(result.status().ToString());
    CHECK(result.status().code() == StatusCode::kUnimplemented);
    for (const std::string& word : words) {
      CHECK(result.status().message().find(word) != std::string::npos);
    }
  };
  expect_refused([](Json& j) { j["normalizer"] = {{"type", "NFKC"}}; },
                 {"normalizer", "NFKC", "byte_fallback"});
  expect_refused([](Json& j) { j["normalizer"]["content"] = "_"; }, {"normalizer", "\"_\""});
  expect_refused(
      [](Json& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}}; },
      {"pre_tokenizer", "Metaspace"});
  expect_refused([](Json& j) { j["decoder"]["decoders"].erase(1); }, {"decoder", "Fuse"});
  expect_refused(
      [](Json& j) {
        j["decoder"]["decoders"].push_back(
            {{"type", "Strip"}, {"content", " "}, {"start", 0}, {"stop", 1}});
      },
      {"decoder", "Strip"});
  expect_refused(
      [](Json& j) {
        Json& vocab = j["model"]["vocab"];
        vocab["<0x41x>"] = vocab["<0x41>"];
        vocab.erase("<0x41>");
      },
      {"<0x41>"});
  expect_refused(
      [](Json& j) {
        for (Json& token : j["added_tokens"]) {
          if (token["content"] == "<start_of_turn>") token["normalized"] = true;
        }
      },
      {"<start_of_turn>", "normalized"});
}

// A Gemma-like GGUF: five control tokens, the byte tokens, a few pieces, a run of two real
// spaces (USER_DEFINED, as Gemma stores them) and a user-defined newline.
GgufMetadataWriter SmallGemmaGguf(const std::string& architecture,
                                  const std::vector<std::string>& extra = {},
                                  const std::string& pre = "default",
                                  bool add_space_prefix = false) {
  GgufMetadataWriter writer;
  writer.String("general.architecture", architecture);
  writer.String("tokenizer.ggml.model", "llama");
  writer.String("tokenizer.ggml.pre", pre);
  std::vector<std::string> tokens = {"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>"};
  std::vector<int32_t> types(tokens.size(), 3);
  for (int b = 0; b < 256; ++b) tokens.push_back(ByteFallbackToken(b));
  types.resize(tokens.size(), 6);
  for (const char* piece : {"\u2581", "a", "b", "\u2581a", "ab", "  ", "\n"}) {
    tokens.push_back(piece);
    types.push_back(piece[0] == ' ' || piece[0] == '\n' ? 4 : 1);
  }
  tokens.insert(tokens.end(), extra.begin(), extra.end());
  types.resize(tokens.size(), 1);
  writer.StringArray("tokenizer.ggml.tokens", tokens);
  writer.Int32Array("tokenizer.ggml.token_type", types);
  writer.UInt32("tokenizer.ggml.bos_token_id", 2);
  writer.UInt32("tokenizer.ggml.eos_token_id", 1);
  writer.Bool("tokenizer.ggml.add_space_prefix", add_space_prefix);
  return writer;
}

TEST_CASE("FromGguf reads a Gemma SentencePiece tokenizer as transformers does",
          "[engine][tokenizer]") {
  const std::string dir = TempDir("gemma_gguf");
  const int64_t space = 261, a = 262, b = 263, space_a = 264, spaces = 266, newline = 267;
  SmallGemmaGguf("gemma3").Save(dir + "gemma3.gguf");
  StatusOr<Tokenizer> tokenizer = LoadGguf(dir + "gemma3.gguf");
  INFO(tokenizer.status().ToString());
  REQUIRE(tokenizer.ok());
  CHECK(tokenizer->model() == TokenizerModel::kSentencePieceBpe);
  CHECK(tokenizer->bos_id() == 2);
  CHECK(tokenizer->eos_id() == 1);
  // The run of spaces is respelled and stays an ordinary token; the newline is added.
  CHECK(tokenizer->TokenText(spaces) == "\u2581\u2581");
  CHECK(tokenizer->special_ids() == std::vector<int64_t>{0, 1, 2, 3, 4, newline});
  // add_bos_token is absent: BOS is added. "a▁▁ab": ▁a (rank 0) beats ab and ▁▁.
  CHECK(tokenizer->Encode("a  ab\n<start_of_turn>", true) ==
        std::vector<int64_t>{2, a, space, space_a, b, newline, 4});
  CHECK(tokenizer->Decode({2, a, space, space_a, b, newline}).value() == "<bos>a  ab\n");
}

TEST_CASE("FromGguf refuses SentencePiece files it does not implement, by key and value",
          "[engine][tokenizer]") {
  const std::string dir = TempDir("gemma_gguf_refused");
  auto expect = [&](GgufMetadataWriter writer, const std::vector<std::string>& words) {
    writer.Save(dir + "t.gguf");
    StatusOr<Tokenizer> result = LoadGguf(dir + "t.gguf");
    INFO(result.status().ToString());
    CHECK(result.status().code() == StatusCode::kUnimplemented);
    for (const std::string& word : words) {
      CHECK(result.status().message().find(word) != std::string::npos);
    }
  };
  expect(SmallGemmaGguf("llama"), {"general.architecture", "\"llama\"", "gemma3"});
  expect(SmallGemmaGguf("gemma2", {}, "llama-bpe"), {"tokenizer.ggml.pre", "llama-bpe"});
  expect(SmallGemmaGguf("gemma", {}, "default", true),
         {"tokenizer.ggml.add_space_prefix", "true"});
  GgufMetadataWriter eos = SmallGemmaGguf("gemma2");
  eos.Bool("tokenizer.ggml.add_eos_token", true);
  expect(eos, {"tokenizer.ggml.add_eos_token", "true"});
  GgufMetadataWriter merges = SmallGemmaGguf("gemma3");
  merges.StringArray("tokenizer.ggml.merges", {"a b"});
  expect(merges, {"tokenizer.ggml.merges"});
  GgufMetadataWriter charsmap = SmallGemmaGguf("gemma3");
  charsmap.Int32Array("tokenizer.ggml.precompiled_charsmap", {1, 2});
  expect(charsmap, {"tokenizer.ggml.precompiled_charsmap"});
  expect(SmallGemmaGguf("gemma3", {"\u2581\u2581"}), {"\u2581\u2581", "twice"});
}

// ---- The Gemma 3 270M GGUF -------------------------------------------------------------

void CheckGemmaGolden(const Tokenizer& tokenizer) {
  const Json golden = ReadJson(std::string(kFixtureDir) + "gemma3_golden.json");
  CHECK(tokenizer.model() == TokenizerModel::kSentencePieceBpe);
  CHECK(tokenizer.vocab_size() == golden["vocab_size"].get<int64_t>());
  CHECK(tokenizer.bos_id() == golden["bos_id"].get<int64_t>());
  CHECK(tokenizer.eos_id() == golden["eos_id"].get<int64_t>());
  CHECK(tokenizer.special_ids().size() == golden["added_tokens"].get<size_t>());
  REQUIRE(golden["cases"].size() >= 200);
  CheckSentencePieceCases(tokenizer, golden["cases"]);
}

TEST_CASE("Gemma 3 from GGUF encodes and decodes like transformers",
          "[engine][tokenizer][model]") {
  auto start = std::chrono::steady_clock::now();
  StatusOr<GgufFile> gguf = GgufFile::Open(kGemmaPath);
  INFO(gguf.status().ToString() << " (fetch it with scripts/fetch_model.sh gemma3-270m)");
  REQUIRE(gguf.ok());
  StatusOr<Tokenizer> tokenizer = Tokenizer::FromGguf(*gguf);
  INFO(tokenizer.status().ToString());
  REQUIRE(tokenizer.ok());
  std::chrono::duration<double> load = std::chrono::steady_clock::now() - start;
  WARN("read the 262,144-token tokenizer in " << load.count() << " s");
  CheckGemmaGolden(*tokenizer);

  SECTION("random bytes survive a round trip") {
    std::mt19937 rng(11);
    for (int i = 0; i < 300; ++i) {
      std::string text = RandomBytes(rng, 80);
      if (text.find("\u2581") != std::string::npos) continue;  // decodes as a space
      INFO("sample " << i);
      REQUIRE(tokenizer->Decode(tokenizer->Encode(text, false)).value() == text);
    }
  }
}

// Gemma 3's own tokenizer.json is ~30 MB and not committed; make it with
// scripts/fixtures/make_gemma_tokenizer_fixtures.py --save-tokenizer-json DIR and run this
// hidden test with GLASSBOX_GEMMA_TOKENIZER_JSON=DIR/tokenizer.json.
TEST_CASE("Gemma 3's tokenizer.json encodes and decodes like transformers",
          "[engine][tokenizer][.gemma_json]") {
  const char* path = std::getenv("GLASSBOX_GEMMA_TOKENIZER_JSON");
  INFO("set GLASSBOX_GEMMA_TOKENIZER_JSON to Gemma 3's tokenizer.json");
  REQUIRE(path != nullptr);
  StatusOr<Tokenizer> tokenizer = Tokenizer::FromTokenizerJson(path);
  INFO(tokenizer.status().ToString());
  REQUIRE(tokenizer.ok());
  CheckGemmaGolden(*tokenizer);
}

}  // namespace
}  // namespace glassbox
