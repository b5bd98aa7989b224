// Tokenizers read from GGUF metadata or a Hugging Face tokenizer.json: byte-level BPE
// (GPT-2, GPT-NeoX, Llama-3, Qwen2, SmolLM2) and SentencePiece-style BPE with byte fallback
// (Gemma). Token ids equal those of Hugging Face `tokenizers` (as transformers configures
// it) for the same vocabulary, merges, normalizer and pre-tokenizer. Immutable after
// construction; thread-safe.
#ifndef GLASSBOX_ENGINE_TOKENIZER_H_
#define GLASSBOX_ENGINE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/status.h"

namespace glassbox {

class GgufFile;

// How text is split before BPE. kGpt2 is the GPT-2 regex; kSmolLm splits every digit on
// its own first (HF `Digits(individual_digits=True)`) and then applies the GPT-2 regex;
// kLlama3 is the Llama-3 regex (numbers in runs of up to three digits); kQwen2 is the same
// regex with every digit on its own.
enum class PreTokenizer { kGpt2, kSmolLm, kLlama3, kQwen2 };

// What happens to text before it is split. kNfc is Unicode NFC as Hugging Face computes it
// (GPT-NeoX, Qwen2). kMetaspace spells every " " as "▁" (Hugging Face's Replace, Gemma 3);
// kPrependMetaspace also puts a "▁" before each non-empty stretch of text between added
// tokens (Prepend, Gemma 1/2 and Llama 2 files). The last two are SentencePiece's only.
enum class Normalizer { kNone, kNfc, kMetaspace, kPrependMetaspace };

// How words become ids. kByteLevelBpe maps bytes to GPT-2's byte alphabet and merges them.
// kSentencePieceBpe merges characters, a character missing from the vocabulary becoming the
// "<0xNN>" tokens of its bytes (Hugging Face's BPE with byte_fallback); it has no
// pre-tokenizer: the text between two added tokens is one word.
enum class TokenizerModel { kByteLevelBpe, kSentencePieceBpe };

struct TokenizerSpec {
  TokenizerModel model = TokenizerModel::kByteLevelBpe;
  std::vector<std::string> tokens;  // id -> token (byte-level form, or "▁" for a space)
  std::vector<std::pair<std::string, std::string>> merges; // in priority order
  // Added tokens, which are matched whole in the text and never split. special_ids are
  // matched in the raw text first (e.g. <|im_start|>); normalized_ids then in the normalized
  // text between them (Hugging Face's `normalized: true`, e.g. GPT-NeoX's runs of spaces).
  std::vector<int64_t> special_ids;
  std::vector<int64_t> normalized_ids;
  Normalizer normalizer = Normalizer::kNone;
  PreTokenizer pre_tokenizer = PreTokenizer::kGpt2;
  int64_t bos_id = -1;  // -1: none
  int64_t eos_id = -1;
  bool add_bos = false;  // prepend bos_id when encoding with add_special_tokens
  // Hugging Face BPE `ignore_merges` (set by Llama-3): a pre-token that is itself in the
  // vocabulary becomes that token without running the merges.
  bool ignore_merges = false;
  // SentencePiece: how many leading spaces decoding removes (Hugging Face's Strip decoder,
  // which undoes kPrependMetaspace).
  int strip_leading_spaces = 0;
};

class Tokenizer {
 public:
  static StatusOr<Tokenizer> FromSpec(TokenizerSpec spec);
  // Reads tokenizer.ggml.{model,pre,tokens,merges,token_type,bos_token_id,eos_token_id,
  // add_bos_token}. Model "gpt2" is byte-level BPE; "llama" is SentencePiece-style BPE, read
  // for Gemma files as transformers reads them (see engine/sentencepiece.h), adding BOS
  // unless add_bos_token is false. kUnimplemented for other models and for keys this reader
  // does not implement, naming the key and its value.
  static StatusOr<Tokenizer> FromGguf(const GgufFile& gguf);
  // Reads a Hugging Face tokenizer.json whose model is BPE with a ByteLevel pre-tokenizer
  // (optionally preceded by Digits, or a Split with the Llama-3 or Qwen2 regex), no
  // normalizer or NFC, and a ByteLevel decoder. A TemplateProcessing post-processor may
  // prepend a BOS. bos/eos names come from a tokenizer_config.json in the same directory, if
  // there is one. Anything else that would change ids or text (another normalizer, model,
  // decoder or post-processor, truncation, padding, unknown keys) is refused: errors name
  // the file and the unsupported part (kUnimplemented) or the malformed one
  // (kInvalidArgument). A BPE model with byte_fallback is SentencePiece-style, laid out as
  // Gemma's files are: normalizer Replace(" ", "▁") (after Prepend("▁") in older files),
  // pre-tokenizer none or Split(" "), decoder Sequence[Replace("▁", " "), ByteFallback, Fuse]
  // (then Strip(" ", n, 0) in older files), the 256 <0xNN> tokens in the vocabulary, added
  // tokens not `normalized`.
  static StatusOr<Tokenizer> FromTokenizerJson(const std::string& path);

  // Encodes any UTF-8 (invalid bytes are encoded byte by byte, so Decode(Encode(s)) == s,
  // or NFC(s) under kNfc). Added tokens written in the text become their ids. As in Hugging
  // Face, a byte whose byte-level token is missing from the vocabulary is dropped (SmolLM2
  // lacks e.g. 0xF1), so the round trip holds only for bytes the vocabulary covers.
  // SentencePiece: every byte is covered, but "▁" in the text decodes as " ", and under
  // kPrependMetaspace the "▁" put after an added token decodes as a space, as in Hugging Face.
  std::vector<int64_t> Encode(const std::string& text, bool add_special_tokens = true) const;
  // Concatenates tokens (added tokens too) and undoes the byte-level mapping, as Hugging
  // Face's ByteLevel decoder does, but returns the bytes as they are where Hugging Face
  // would replace invalid UTF-8 by U+FFFD. Unknown ids give kInvalidArgument. SentencePiece:
  // "▁" becomes " " and <0xNN> tokens their bytes (again as they are, where Hugging Face's
  // ByteFallback gives U+FFFD per byte of a run that is not UTF-8), as its decoder does.
  StatusOr<std::string> Decode(const std::vector<int64_t>& ids) const;
  // The token's text in byte-level form ("Ġthe"), or SentencePiece's ("▁the"); "" for an id
  // out of range.
  const std::string& TokenText(int64_t id) const;

  // Ids of the added tokens: the spec's special_ids, then its normalized_ids.
  const std::vector<int64_t>& special_ids() const;

  TokenizerModel model() const;
  // SentencePiece: how many leading spaces decoding strips (0 for byte-level BPE).
  int strip_leading_spaces() const;
  int64_t vocab_size() const;
  int64_t bos_id() const;
  int64_t eos_id() const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_TOKENIZER_H_
