// SentencePiece-style BPE: reading Gemma's GGUF metadata and the byte_fallback parts of a
// tokenizer.json the way transformers does, and the normalizer and byte tokens the encoder
// and decoder in engine/tokenizer.cc use.
#include "engine/sentencepiece.h"

#include <algorithm>
#include <string_view>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "engine/gguf.h"

namespace glassbox::sentencepiece {
namespace {

using Json = nlohmann::json;
using Merges = std::vector<std::pair<std::string, std::string>>;
using Vocabulary = std::unordered_set<std::string_view>;  // views of a token list

// llama.cpp's token types (llama_token_type).
constexpr int64_t kNormal = 1, kControl = 3, kUserDefined = 4, kByte = 6;

// The length of the UTF-8 sequence a lead byte starts (1 for a stray byte), as Python
// counts characters in the well-formed strings GGUF files hold.
size_t CharLength(unsigned char lead) {
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

// Byte offsets where a character after the first starts.
std::vector<size_t> CharBoundaries(std::string_view text) {
  std::vector<size_t> boundaries;
  for (size_t pos = CharLength(static_cast<unsigned char>(text[0])); pos < text.size();
       pos += CharLength(static_cast<unsigned char>(text[pos]))) {
    boundaries.push_back(pos);
  }
  return boundaries;
}

// Python's str.isspace for the code point at text[pos]; sets *len to its byte length.
bool IsPythonSpace(std::string_view text, size_t pos, size_t* len) {
  static constexpr std::string_view kWideSpaces[] = {"\xC2\x85",     "\xC2\xA0",     "\xE1\x9A\x80",
                                                     "\xE2\x80\xA8", "\xE2\x80\xA9", "\xE2\x80\xAF",
                                                     "\xE2\x81\x9F", "\xE3\x80\x80"};
  unsigned char c = static_cast<unsigned char>(text[pos]);
  *len = CharLength(c);
  if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F)) return true;
  std::string_view cp = text.substr(pos, *len);
  if (cp.size() == 3 && cp[0] == '\xE2' && cp[1] == '\x80' &&
      static_cast<unsigned char>(cp[2]) <= 0x8A) {
    return true;  // U+2000..U+200A
  }
  return std::find(std::begin(kWideSpaces), std::end(kWideSpaces), cp) != std::end(kWideSpaces);
}

// transformers' gemma_tokenizer: a token of whitespace holding a space ("  ") is stored with
// real spaces, but the text it must match has "▁" for them; respell it as "▁" per character.
std::string Respell(const std::string& token) {
  if (token.find(' ') == std::string::npos) return token;
  std::string out;
  for (size_t pos = 0, len = 0; pos < token.size(); pos += len) {
    if (!IsPythonSpace(token, pos, &len)) return token;
    out += kMetaspace;
  }
  return out;
}

Status CheckArchitecture(const GgufFile& gguf) {
  StatusOr<std::string> arch = gguf.GetString("general.architecture");
  if (!arch.ok()) return arch.status();
  if (*arch == "gemma" || *arch == "gemma2" || *arch == "gemma3") return Status::Ok();
  return Unimplemented(
      "tokenizer.ggml.model \"llama\" (SentencePiece) is read for "
      "general.architecture gemma, gemma2 and gemma3 only, not \"" +
      *arch + "\"");
}

// Keys transformers or llama.cpp would act on and this reader does not implement.
Status CheckUnimplementedKeys(const GgufFile& gguf) {
  for (const char* key : {"tokenizer.ggml.merges", "tokenizer.ggml.precompiled_charsmap"}) {
    if (gguf.metadata().count(key) > 0)
      return Unimplemented(std::string(key) + " is not supported");
  }
  for (const char* key : {"tokenizer.ggml.add_space_prefix", "tokenizer.ggml.add_eos_token",
                          "tokenizer.ggml.add_sep_token"}) {
    StatusOr<bool> value = gguf.GetBool(key);
    if (value.ok() && *value) return Unimplemented(std::string(key) + " true is not supported");
    if (!value.ok() && value.status().code() != StatusCode::kNotFound) return value.status();
  }
  StatusOr<std::string> pre = gguf.GetString("tokenizer.ggml.pre");
  if (pre.ok() && *pre != "default") {
    return Unimplemented("tokenizer.ggml.pre \"" + *pre +
                         "\" is not supported with tokenizer.ggml.model \"llama\"");
  }
  if (!pre.ok() && pre.status().code() != StatusCode::kNotFound) return pre.status();
  return Status::Ok();
}

// transformers' add_gguf_special_tokens: CONTROL tokens, and USER_DEFINED ones whose text is
// still in the (respelled) vocabulary, are added tokens.
Status ReadAddedIds(const GgufFile& gguf, const std::vector<std::string>& original,
                    const Vocabulary& vocab, TokenizerSpec* spec) {
  StatusOr<std::vector<int64_t>> types = gguf.GetIntArray("tokenizer.ggml.token_type");
  if (!types.ok()) return types.status();
  if (types->size() != original.size()) {
    return InvalidArgument("tokenizer.ggml.token_type has " + std::to_string(types->size()) +
                           " entries for " + std::to_string(original.size()) + " tokens");
  }
  for (size_t id = 0; id < types->size(); ++id) {
    int64_t type = (*types)[id];
    if (type < kNormal || type > kByte) {
      return Unimplemented("tokenizer.ggml.token_type " + std::to_string(type) + " of token " +
                           std::to_string(id) + " is not a llama.cpp token type");
    }
    if (type == kControl && spec->tokens[id] != original[id]) {
      return Unimplemented("control token " + std::to_string(id) + " \"" + original[id] +
                           "\" made of spaces is not supported");
    }
    if (type == kControl || (type == kUserDefined && vocab.count(original[id]) > 0)) {
      spec->special_ids.push_back(static_cast<int64_t>(id));
    }
  }
  return Status::Ok();
}

// The set of token texts, each of which must appear once, as the dictionaries transformers
// builds assume.
StatusOr<Vocabulary> UniqueVocabulary(const std::vector<std::string>& tokens) {
  Vocabulary vocab;
  vocab.reserve(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (!vocab.insert(tokens[id]).second) {
      return Unimplemented("token \"" + tokens[id] + "\" appears twice (again at id " +
                           std::to_string(id) + ")");
    }
  }
  return vocab;
}

Merges MergesFromVocabulary(const std::vector<std::string>& tokens, const Vocabulary& vocab) {
  Merges merges;
  for (const std::string& token : tokens) {
    if (token.empty()) continue;
    std::vector<size_t> boundaries = CharBoundaries(token);
    for (auto it = boundaries.rbegin(); it != boundaries.rend(); ++it) {
      std::string_view view(token);
      std::string_view left = view.substr(0, *it), right = view.substr(*it);
      if (vocab.count(left) > 0 && vocab.count(right) > 0) {
        merges.emplace_back(std::string(left), std::string(right));
      }
    }
  }
  return merges;
}

std::string Dump(const Json& node) {
  return node.dump(-1, ' ', false, Json::error_handler_t::replace);
}

const Json& Field(const Json& node, const char* key) {
  static const Json null_json;
  if (!node.is_object()) return null_json;
  auto it = node.find(key);
  return it == node.end() ? null_json : *it;
}

Json ReplaceNode(std::string_view from, std::string_view to) {
  return {{"type", "Replace"}, {"pattern", {{"String", from}}}, {"content", to}};
}

Status ReadNormalizer(const Json& root, TokenizerSpec* spec) {
  const Json& node = Field(root, "normalizer");
  const Json replace = ReplaceNode(" ", kMetaspace);
  const Json prepend = {{"type", "Prepend"}, {"prepend", kMetaspace}};
  if (node == replace) {
    spec->normalizer = Normalizer::kMetaspace;
  } else if (node == Json{{"type", "Sequence"}, {"normalizers", {prepend, replace}}}) {
    spec->normalizer = Normalizer::kPrependMetaspace;
  } else {
    return Unimplemented("normalizer " + Dump(node) +
                         " is not supported with model.byte_fallback; expected Replace(\" \", "
                         "\"▁\"), optionally after Prepend(\"▁\")");
  }
  return Status::Ok();
}

// After the normalizer no " " is left, so a Split on " " never splits.
Status CheckPreTokenizer(const Json& root) {
  const Json& node = Field(root, "pre_tokenizer");
  const Json split = {{"type", "Split"},
                      {"pattern", {{"String", " "}}},
                      {"behavior", "MergedWithPrevious"},
                      {"invert", false}};
  if (node.is_null() || node == split) return Status::Ok();
  return Unimplemented("pre_tokenizer " + Dump(node) +
                       " is not supported with model.byte_fallback; expected none or "
                       "Split(\" \", MergedWithPrevious)");
}

Status ReadDecoder(const Json& root, TokenizerSpec* spec) {
  const Json& node = Field(root, "decoder");
  const Json& list = Field(node, "decoders");
  const Json expected = {
      ReplaceNode(kMetaspace, " "), {{"type", "ByteFallback"}}, {{"type", "Fuse"}}};
  auto refuse = [&] {
    return Unimplemented("decoder " + Dump(node) +
                         " is not supported with model.byte_fallback; expected Sequence["
                         "Replace(\"▁\", \" \"), ByteFallback, Fuse] and optionally Strip(\" \", "
                         "n, 0)");
  };
  if (Field(node, "type") != "Sequence" || !list.is_array() || list.size() < 3 || list.size() > 4 ||
      !std::equal(expected.begin(), expected.end(), list.begin())) {
    return refuse();
  }
  if (list.size() == 3) return Status::Ok();
  const Json& strip = list[3];
  if (Field(strip, "type") != "Strip" || Field(strip, "content") != " " ||
      Field(strip, "stop") != 0 || !Field(strip, "start").is_number_unsigned() ||
      strip.size() != 4) {
    return refuse();
  }
  spec->strip_leading_spaces = strip["start"].get<int>();
  return Status::Ok();
}

}  // namespace

Status ReadGguf(const GgufFile& gguf, TokenizerSpec* spec) {
  GLASSBOX_RETURN_IF_ERROR(CheckArchitecture(gguf));
  GLASSBOX_RETURN_IF_ERROR(CheckUnimplementedKeys(gguf));
  StatusOr<std::vector<std::string>> original = gguf.GetStringArray("tokenizer.ggml.tokens");
  if (!original.ok()) return original.status();
  spec->model = TokenizerModel::kSentencePieceBpe;
  spec->normalizer = Normalizer::kMetaspace;
  spec->tokens.clear();
  spec->tokens.reserve(original->size());
  for (const std::string& token : *original) spec->tokens.push_back(Respell(token));
  StatusOr<Vocabulary> vocab = UniqueVocabulary(spec->tokens);
  if (!vocab.ok()) return vocab.status();
  GLASSBOX_RETURN_IF_ERROR(ReadAddedIds(gguf, *original, *vocab, spec));
  spec->merges = MergesFromVocabulary(spec->tokens, *vocab);
  return Status::Ok();
}

Merges MergesFromVocabularyOrder(const std::vector<std::string>& tokens) {
  Vocabulary vocab;
  vocab.reserve(tokens.size());
  vocab.insert(tokens.begin(), tokens.end());
  return MergesFromVocabulary(tokens, vocab);
}

Status ReadJsonParts(const Json& root, TokenizerSpec* spec) {
  spec->model = TokenizerModel::kSentencePieceBpe;
  GLASSBOX_RETURN_IF_ERROR(ReadNormalizer(root, spec));
  GLASSBOX_RETURN_IF_ERROR(CheckPreTokenizer(root));
  return ReadDecoder(root, spec);
}

void AppendNormalized(std::string_view text, bool prepend, std::string* out) {
  if (prepend && !text.empty()) out->append(kMetaspace);
  for (char c : text) {
    if (c == ' ') {
      out->append(kMetaspace);
    } else {
      out->push_back(c);
    }
  }
}

std::string SpacesFromMetaspace(std::string_view token) {
  std::string out;
  for (size_t pos = 0; pos < token.size();) {
    if (token.compare(pos, kMetaspace.size(), kMetaspace) == 0) {
      out.push_back(' ');
      pos += kMetaspace.size();
    } else {
      out.push_back(token[pos++]);
    }
  }
  return out;
}

int ByteTokenValue(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  int high = hex(token[3]), low = hex(token[4]);
  return high < 0 || low < 0 ? -1 : high * 16 + low;
}

}  // namespace glassbox::sentencepiece
