// SentencePiece-style BPE (Gemma's tokenizer) as Hugging Face runs it: the parts that differ
// from byte-level BPE, used by engine/tokenizer.cc. Not part of the engine's public API; use
// Tokenizer (engine/tokenizer.h).
//
// Hugging Face turns a SentencePiece BPE model into a `tokenizers` BPE with byte_fallback:
// spaces are spelled "▁" (U+2581) by the normalizer, there is no pre-tokenizer (the whole
// text between two added tokens is one word), a character missing from the vocabulary
// becomes the <0xNN> tokens of its UTF-8 bytes, and merges apply by rank. Its decoder turns
// "▁" back into spaces and <0xNN> runs back into bytes.
#ifndef GLASSBOX_ENGINE_SENTENCEPIECE_H_
#define GLASSBOX_ENGINE_SENTENCEPIECE_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "base/status.h"
#include "engine/tokenizer.h"

namespace glassbox {

class GgufFile;

namespace sentencepiece {

// "▁" in UTF-8.
inline constexpr std::string_view kMetaspace = "\xE2\x96\x81";

// Reads a GGUF whose tokenizer.ggml.model is "llama" into `spec` as transformers'
// GemmaTokenizer builds it (integrations/gguf: gemma_tokenizer): tokens made only of
// whitespace that hold a space are respelled as that many "▁"; the file lists no merges, so
// they are recovered from the vocabulary, ranked by the order of the tokens; CONTROL tokens
// and USER_DEFINED ones still in the vocabulary are matched whole in the text. Only Gemma
// files (general.architecture gemma, gemma2, gemma3) are read this way: transformers builds
// other architectures' SentencePiece tokenizers differently. Keys that would change the ids
// and are not implemented (tokenizer.ggml.merges, precompiled_charsmap, add_space_prefix,
// add_eos_token, add_sep_token, a pre-tokenizer other than "default") give kUnimplemented
// naming the key and its value. Does not read bos/eos ids or add_bos_token.
Status ReadGguf(const GgufFile& gguf, TokenizerSpec* spec);

// The merges transformers' generate_merges finds in a vocabulary when a score ranks each
// token by its position (earlier is better): every split of a token into two tokens, the
// token's splits in order of id, and within a token the longer left part first.
std::vector<std::pair<std::string, std::string>> MergesFromVocabularyOrder(
    const std::vector<std::string>& tokens);

// Reads the parts of a byte_fallback tokenizer.json that are particular to it into `spec`:
// the normalizer (Replace(" ", "▁"), optionally after Prepend("▁")), the pre-tokenizer (none,
// or a Split on " " that the normalizer leaves nothing to split) and the decoder
// (Sequence[Replace("▁", " "), ByteFallback, Fuse], optionally then Strip(" ", n, 0)).
// Anything else gives kUnimplemented naming the part and its JSON.
Status ReadJsonParts(const nlohmann::json& root, TokenizerSpec* spec);

// Appends `text` with every " " spelled "▁", after a "▁" if `prepend` and `text` is not
// empty (Hugging Face's Replace and Prepend normalizers).
void AppendNormalized(std::string_view text, bool prepend, std::string* out);

// `token` with every "▁" spelled " " (Hugging Face's Replace("▁", " ") decoder).
std::string SpacesFromMetaspace(std::string_view token);

// The byte a "<0xNN>" byte-fallback token stands for, or -1 for any other token.
int ByteTokenValue(std::string_view token);

}  // namespace sentencepiece
}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_SENTENCEPIECE_H_
