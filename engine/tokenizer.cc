// BPE as Hugging Face `tokenizers` runs it: added tokens are cut out of the raw text first,
// the rest is normalized (NFC or not at all) and cut at the added tokens that match
// normalized text, then split by a pre-tokenizer regex (written out by hand here, over ICU
// character classes); each piece is mapped to GPT-2's byte alphabet and merged by rank.
// SentencePiece-style BPE shares the added tokens and the merging: its words are the
// "▁"-spelled text between added tokens, as characters with byte fallback
// (engine/sentencepiece.h). Also the two loaders: GGUF metadata and a tokenizer.json.
#include "engine/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

#include "engine/gguf.h"
#include "engine/sentencepiece.h"

namespace glassbox {
namespace {

// ---------------------------------------------------------------------------------------
// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
// for U+0100 onwards, so every byte is a visible character ("Ġ" is the space).

constexpr char32_t kNoByte = 0xFFFFFFFF;

struct ByteAlphabet {
  std::array<char32_t, 256> to_char{};
  std::array<int16_t, 0x200> to_byte{};  // -1 where a code point is no byte's stand-in

  ByteAlphabet() {
    to_byte.fill(-1);
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_char[b] = printable ? static_cast<char32_t>(b) : next++;
      to_byte[to_char[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes the well-formed UTF-8 sequence at text[pos] into *cp and returns its length, or
// returns 0 if the bytes there are not one (overlong, surrogate, truncated, > U+10FFFF).
size_t DecodeUtf8(std::string_view text, size_t pos, char32_t* cp) {
  auto byte = [&](size_t i) { return static_cast<uint8_t>(text[pos + i]); };
  uint8_t b0 = byte(0);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t len = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
  if (b0 < 0xC2 || b0 > 0xF4 || pos + len > text.size()) return 0;
  // The second byte's range is narrower after E0, ED, F0 and F4.
  uint8_t lo = b0 == 0xE0 ? 0xA0 : b0 == 0xF0 ? 0x90 : 0x80;
  uint8_t hi = b0 == 0xED ? 0x9F : b0 == 0xF4 ? 0x8F : 0xBF;
  if (byte(1) < lo || byte(1) > hi) return 0;
  char32_t value = b0 & (0x7F >> len);
  for (size_t i = 1; i < len; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return 0;
    value = (value << 6) | (byte(i) & 0x3F);
  }
  *cp = value;
  return len;
}

// ---------------------------------------------------------------------------------------
// Character classes of the pre-tokenizer regexes: \p{L}, \p{N}, \s (Unicode White_Space,
// as in Oniguruma) and everything else, which includes each byte of invalid UTF-8.

enum class CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

// Letters and numbers assigned after Unicode 15.0. Debian 12's ICU 72 reports them as
// unassigned, while the Oniguruma inside `tokenizers` 0.23 (Unicode 16) knows them.
struct NewerRange {
  char32_t first, last;
  CharClass cls;
};
constexpr NewerRange kNewerThanIcu72[] = {
    {0x1C89, 0x1C8A, CharClass::kLetter},   {0xA7CB, 0xA7CD, CharClass::kLetter},
    {0xA7DA, 0xA7DC, CharClass::kLetter},   {0x105C0, 0x105F3, CharClass::kLetter},
    {0x10D40, 0x10D49, CharClass::kNumber}, {0x10D4A, 0x10D65, CharClass::kLetter},
    {0x10D6F, 0x10D85, CharClass::kLetter}, {0x10EC2, 0x10EC4, CharClass::kLetter},
    {0x11380, 0x11389, CharClass::kLetter}, {0x1138B, 0x1138B, CharClass::kLetter},
    {0x1138E, 0x1138E, CharClass::kLetter}, {0x11390, 0x113B5, CharClass::kLetter},
    {0x113B7, 0x113B7, CharClass::kLetter}, {0x113D1, 0x113D1, CharClass::kLetter},
    {0x113D3, 0x113D3, CharClass::kLetter}, {0x116D0, 0x116E3, CharClass::kNumber},
    {0x11BC0, 0x11BE0, CharClass::kLetter}, {0x11BF0, 0x11BF9, CharClass::kNumber},
    {0x13460, 0x143FA, CharClass::kLetter}, {0x16100, 0x1611D, CharClass::kLetter},
    {0x16130, 0x16139, CharClass::kNumber}, {0x16D40, 0x16D6C, CharClass::kLetter},
    {0x16D70, 0x16D79, CharClass::kNumber}, {0x18CFF, 0x18CFF, CharClass::kLetter},
    {0x1CCF0, 0x1CCF9, CharClass::kNumber}, {0x1E5D0, 0x1E5ED, CharClass::kLetter},
    {0x1E5F0, 0x1E5F0, CharClass::kLetter}, {0x1E5F1, 0x1E5FA, CharClass::kNumber},
    {0x2EBF0, 0x2EE5D, CharClass::kLetter},
};

CharClass ClassifyUnassigned(char32_t cp) {
  for (const NewerRange& range : kNewerThanIcu72) {
    if (cp >= range.first && cp <= range.last) return range.cls;
  }
  return CharClass::kOther;
}

CharClass ClassifyWithIcu(char32_t cp) {
  UChar32 c = static_cast<UChar32>(cp);
  if (u_isUWhiteSpace(c)) return CharClass::kSpace;
  switch (u_charType(c)) {
    case U_UPPERCASE_LETTER:
    case U_LOWERCASE_LETTER:
    case U_TITLECASE_LETTER:
    case U_MODIFIER_LETTER:
    case U_OTHER_LETTER:
      return CharClass::kLetter;
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER:
      return CharClass::kNumber;
    case U_UNASSIGNED:
      return ClassifyUnassigned(cp);
    default:
      return CharClass::kOther;
  }
}

CharClass ClassifyAscii(char32_t cp) {
  if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::kLetter;
  if (cp >= '0' && cp <= '9') return CharClass::kNumber;
  if (cp == ' ' || (cp >= '\t' && cp <= '\r')) return CharClass::kSpace;
  return CharClass::kOther;
}

CharClass Classify(char32_t cp) {
  return cp < 0x80 ? ClassifyAscii(cp) : ClassifyWithIcu(cp);
}

// ---------------------------------------------------------------------------------------
// NFC as Hugging Face `tokenizers` 0.23 computes it. Its Unicode tables are Unicode 9's:
// the combining marks below have combining class 0 there, so they never move and block
// composition across them, and U+11930 does not join a preceding U+11935 into U+11938.
// Everything else agrees with ICU 72 (checked code point by code point, with marks on each
// side), so cutting the text before and after these characters and normalizing the pieces
// with ICU gives Hugging Face's result.

struct CodePointRange {
  char32_t first, last;
};
constexpr CodePointRange kNfcBarriers[] = {
    {0x7FD, 0x7FD},     {0x898, 0x89F},     {0x8CA, 0x8D3},     {0x9FE, 0x9FE},
    {0xC3C, 0xC3C},     {0xD3B, 0xD3C},     {0xEBA, 0xEBA},     {0x1715, 0x1715},
    {0x1ABF, 0x1ACE},   {0x1DF6, 0x1DFA},   {0xA82C, 0xA82C},   {0x10D24, 0x10D27},
    {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50}, {0x10F82, 0x10F85},
    {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E}, {0x11839, 0x1183A},
    {0x11930, 0x11930}, {0x1193D, 0x1193E}, {0x11943, 0x11943}, {0x119E0, 0x119E0},
    {0x11A34, 0x11A34}, {0x11A47, 0x11A47}, {0x11A99, 0x11A99}, {0x11D42, 0x11D42},
    {0x11D44, 0x11D45}, {0x11D97, 0x11D97}, {0x11F41, 0x11F42}, {0x16FF0, 0x16FF1},
    {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF},
    {0x1E4EC, 0x1E4EF},
};

bool IsNfcBarrier(char32_t cp) {
  if (cp < kNfcBarriers[0].first) return false;
  for (const CodePointRange& range : kNfcBarriers) {
    if (cp >= range.first && cp <= range.last) return true;
  }
  return false;
}

// ICU's NFC, or nullptr if ICU's data is missing (checked when a tokenizer is built).
const icu::Normalizer2* IcuNfc() {
  static const icu::Normalizer2* const nfc = [] {
    UErrorCode error = U_ZERO_ERROR;
    const icu::Normalizer2* instance = icu::Normalizer2::getNFCInstance(error);
    return U_SUCCESS(error) ? instance : nullptr;
  }();
  return nfc;
}

// Appends the NFC form of well-formed UTF-8, on which ICU fails only when out of memory.
void AppendIcuNfc(std::string_view text, std::string* out) {
  if (text.empty()) return;
  UErrorCode error = U_ZERO_ERROR;
  icu::StringByteSink<std::string> sink(out);
  icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  IcuNfc()->normalizeUTF8(0, piece, sink, nullptr, error);
}

// Hugging Face's NFC of `text`. Bytes of invalid UTF-8 (which Hugging Face, taking Python
// strings, never sees) are kept as they are and, like the barriers, cut the text into
// pieces that ICU normalizes separately.
std::string Nfc(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t piece = 0;  // where the stretch ICU may normalize as a whole starts
  for (size_t pos = 0; pos < text.size();) {
    char32_t cp = 0;
    size_t len = DecodeUtf8(text, pos, &cp);
    if (len > 0 && !IsNfcBarrier(cp)) {
      pos += len;
      continue;
    }
    size_t barrier_len = len > 0 ? len : 1;
    AppendIcuNfc(text.substr(piece, pos - piece), &out);
    out.append(text.substr(pos, barrier_len));
    pos += barrier_len;
    piece = pos;
  }
  AppendIcuNfc(text.substr(piece), &out);
  return out;
}

// ---------------------------------------------------------------------------------------
// Pre-tokenization. A matcher returns where the regex match starting at byte `pos` ends,
// exactly as Oniguruma's leftmost-first alternation would, decoding UTF-8 as it goes. A
// byte that is not part of well-formed UTF-8 is a character of its own, of class kOther.

struct Char {
  char32_t cp;  // kNoByte for a byte of invalid UTF-8
  size_t len;
  CharClass cls;
};

// The text a regex runs over; its end is the end of the string for (?!\S).
class Stretch {
 public:
  explicit Stretch(std::string_view text) : text_(text) {}

  size_t size() const { return text_.size(); }
  // The character at `pos` < size().
  Char At(size_t pos) const {
    char32_t cp = 0;
    size_t len = DecodeUtf8(text_, pos, &cp);
    if (len == 0) return {kNoByte, 1, CharClass::kOther};
    return {cp, len, Classify(cp)};
  }
  bool Is(size_t pos, CharClass cls) const { return pos < size() && At(pos).cls == cls; }
  // ASCII bytes never occur inside a multi-byte character, so a byte compare suffices.
  bool IsAscii(size_t pos, char c) const { return pos < size() && text_[pos] == c; }
  bool IsNewline(size_t pos) const { return IsAscii(pos, '\r') || IsAscii(pos, '\n'); }
  size_t RunEnd(size_t pos, CharClass cls) const {
    for (Char c; pos < size() && (c = At(pos)).cls == cls;) pos += c.len;
    return pos;
  }

 private:
  std::string_view text_;
};

char32_t FoldCase(char32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + ('a' - 'A');
  return cp == 0x17F ? 's' : cp;  // LATIN SMALL LETTER LONG S folds to s
}

// `'s|'t|'re|'ve|'m|'ll|'d` at pos (case-insensitively for Llama-3): the match end, or pos.
size_t MatchContraction(const Stretch& s, size_t pos, bool ignore_case) {
  if (!s.IsAscii(pos, '\'') || pos + 1 >= s.size()) return pos;
  Char a = s.At(pos + 1);
  char32_t first = ignore_case ? FoldCase(a.cp) : a.cp;
  if (first == 's' || first == 't' || first == 'm' || first == 'd') return pos + 1 + a.len;
  size_t second_pos = pos + 1 + a.len;
  if (second_pos >= s.size()) return pos;
  Char b = s.At(second_pos);
  char32_t second = ignore_case ? FoldCase(b.cp) : b.cp;
  if ((first == 'r' || first == 'v') && second == 'e') return second_pos + b.len;
  if (first == 'l' && second == 'l') return second_pos + b.len;
  return pos;
}

// `\s+(?!\S)|\s+` from pos: a run of spaces leaves its last one to the word after it,
// unless the run ends the text or is that one space alone.
size_t MatchSpaces(const Stretch& s, size_t pos) {
  size_t last = pos, end = pos;
  for (Char c; end < s.size() && (c = s.At(end)).cls == CharClass::kSpace; end += c.len) {
    last = end;
  }
  return (end == s.size() || last == pos) ? end : last;
}

// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
size_t MatchGpt2(const Stretch& s, size_t pos) {
  size_t contraction = MatchContraction(s, pos, /*ignore_case=*/false);
  if (contraction > pos) return contraction;
  // The optional space only joins a following letter, number or symbol run.
  bool prefix = s.IsAscii(pos, ' ') && pos + 1 < s.size() && !s.Is(pos + 1, CharClass::kSpace);
  size_t start = prefix ? pos + 1 : pos;
  CharClass cls = s.At(start).cls;
  if (cls != CharClass::kSpace) return s.RunEnd(start, cls);
  return MatchSpaces(s, pos);
}

// Llama-3's `\s*[\r\n]+|\s+(?!\S)|\s+`: a run of spaces holding a newline ends after its
// last newline.
size_t MatchLlama3Spaces(const Stretch& s, size_t pos) {
  size_t newline_end = pos;
  for (size_t at = pos; at < s.size();) {
    Char c = s.At(at);
    if (c.cls != CharClass::kSpace) break;
    at += c.len;
    if (c.cp == '\r' || c.cp == '\n') newline_end = at;
  }
  return newline_end > pos ? newline_end : MatchSpaces(s, pos);
}

// Llama-3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//           ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
// and Qwen2's, the same with `\p{N}` for `\p{N}{1,3}` (max_digits 3 or 1).
size_t MatchLlama3(const Stretch& s, size_t pos, int max_digits) {
  size_t contraction = MatchContraction(s, pos, /*ignore_case=*/true);
  if (contraction > pos) return contraction;
  Char c = s.At(pos);
  if (c.cls == CharClass::kLetter) return s.RunEnd(pos, CharClass::kLetter);
  if (c.cls != CharClass::kNumber && !s.IsNewline(pos) &&
      s.Is(pos + c.len, CharClass::kLetter)) {
    return s.RunEnd(pos + c.len, CharClass::kLetter);
  }
  if (c.cls == CharClass::kNumber) {
    size_t end = pos;
    for (int n = 0; n < max_digits && s.Is(end, CharClass::kNumber); ++n) {
      end += s.At(end).len;
    }
    return end;
  }
  size_t start = (s.IsAscii(pos, ' ') && s.Is(pos + 1, CharClass::kOther)) ? pos + 1 : pos;
  if (!s.Is(start, CharClass::kOther)) return MatchLlama3Spaces(s, pos);
  size_t end = s.RunEnd(start, CharClass::kOther);
  while (s.IsNewline(end)) ++end;
  return end;
}

size_t MatchRegex(const Stretch& s, size_t pos, PreTokenizer pre) {
  switch (pre) {
    case PreTokenizer::kLlama3:
      return MatchLlama3(s, pos, /*max_digits=*/3);
    case PreTokenizer::kQwen2:
      return MatchLlama3(s, pos, /*max_digits=*/1);
    case PreTokenizer::kGpt2:
    case PreTokenizer::kSmolLm:
      break;
  }
  return MatchGpt2(s, pos);
}

// Calls emit(begin, end) with the byte range of each regex match in text[begin, end of
// text).
template <typename Emit>
void SplitWithRegex(std::string_view text, size_t begin, PreTokenizer pre, Emit&& emit) {
  Stretch stretch(text);
  for (size_t pos = begin; pos < text.size();) {
    size_t next = MatchRegex(stretch, pos, pre);
    emit(pos, next);
    pos = next;
  }
}

// SmolLM: HF Digits(individual_digits) isolates every \p{N} character first; the GPT-2
// regex then runs on each stretch between them, which ends as if it were the whole text.
template <typename Emit>
void SplitSmolLm(std::string_view text, Emit&& emit) {
  Stretch stretch(text);
  for (size_t pos = 0; pos < text.size();) {
    Char c = stretch.At(pos);
    if (c.cls == CharClass::kNumber) {
      emit(pos, pos + c.len);
      pos += c.len;
      continue;
    }
    size_t stop = pos;
    while (stop < text.size() && (c = stretch.At(stop)).cls != CharClass::kNumber) stop += c.len;
    SplitWithRegex(text.substr(0, stop), pos, PreTokenizer::kGpt2, emit);
    pos = stop;
  }
}

// Calls emit(begin, end) for each pre-token of `text`, in order.
template <typename Emit>
void PreTokenize(std::string_view text, PreTokenizer pre, Emit&& emit) {
  if (pre == PreTokenizer::kSmolLm) {
    SplitSmolLm(text, emit);
  } else {
    SplitWithRegex(text, 0, pre, emit);
  }
}

// ---------------------------------------------------------------------------------------
// BPE state for one pre-token: symbols in a linked list, candidate merges in a min-heap
// ordered like Hugging Face's (rank, then leftmost), so ties resolve the same way.

struct Symbol {
  int32_t id;  // -1 once merged into its left neighbour
  int32_t prev;
  int32_t next;  // -1 at the ends
};

struct Candidate {
  int32_t rank;
  int32_t left;
  int32_t right;
  int32_t right_id;  // the right symbol's id when queued; stale if it has grown since
  int32_t new_id;
  bool operator>(const Candidate& o) const {
    return rank != o.rank ? rank > o.rank : left > o.left;
  }
};

struct Scratch {
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::string word;        // byte-level form, for ignore_merges
  std::string normalized;  // the NFC form of the stretch being encoded
};

// ---------------------------------------------------------------------------------------
// Added tokens, kept by first byte and then by length, longest first, so that the first
// match at a position is the longest, as in Hugging Face's leftmost-longest matcher. One
// lookup per length: Gemma has thousands of added tokens starting with "<".

class AddedTokenTable {
 public:
  struct Entry {
    size_t length;
    int32_t id;
  };

  // A text added twice keeps its first id.
  void Add(const std::string& text, int32_t id) {
    std::vector<SameLength>& list = by_first_byte_[static_cast<unsigned char>(text[0])];
    auto it = std::find_if(list.begin(), list.end(),
                           [&](const SameLength& l) { return l.length == text.size(); });
    if (it == list.end()) it = list.insert(list.end(), {text.size(), {}});
    it->ids.emplace(text, id);
  }
  void SortLongestFirst() {
    for (auto& list : by_first_byte_) {
      std::sort(list.begin(), list.end(), [](const SameLength& a, const SameLength& b) {
        return a.length > b.length;
      });
    }
  }
  // The longest token starting at text[pos], if any.
  std::optional<Entry> Match(std::string_view text, size_t pos) const {
    for (const SameLength& same : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (pos + same.length > text.size()) continue;
      auto it = same.ids.find(std::string(text.substr(pos, same.length)));
      if (it != same.ids.end()) return Entry{same.length, it->second};
    }
    return std::nullopt;
  }

 private:
  struct SameLength {
    size_t length;
    std::unordered_map<std::string, int32_t> ids;
  };
  std::array<std::vector<SameLength>, 256> by_first_byte_;
};

// Calls on_text(stretch) for each stretch of text between added tokens (possibly empty)
// and on_token(id) for each added token, in order.
template <typename OnText, typename OnToken>
void SplitAtAddedTokens(std::string_view text, const AddedTokenTable& table, OnText&& on_text,
                        OnToken&& on_token) {
  size_t stretch_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    std::optional<AddedTokenTable::Entry> token = table.Match(text, pos);
    if (!token) {
      ++pos;
      continue;
    }
    on_text(text.substr(stretch_start, pos - stretch_start));
    on_token(token->id);
    pos += token->length;
    stretch_start = pos;
  }
  on_text(text.substr(stretch_start));
}

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
         static_cast<uint32_t>(right);
}

const std::string& EmptyString() {
  static const std::string empty;
  return empty;
}

}  // namespace

// ---------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  TokenizerSpec spec;
  std::unordered_map<std::string, int32_t> token_ids;  // first id of each token text
  std::unordered_map<uint64_t, Merge> merges;          // (left id, right id) -> merge
  std::array<int32_t, 256> byte_ids{};                 // -1: byte missing from the vocab
  std::unordered_map<char32_t, int32_t> char_ids;      // SentencePiece: one-character tokens
  AddedTokenTable raw_added;         // spec.special_ids, matched before normalizing
  AddedTokenTable normalized_added;  // spec.normalized_ids, matched after
  std::vector<int64_t> added_ids;    // both, in that order
  std::vector<std::string> decoded;  // id -> the bytes it stands for

  Status Build();
  Status CheckModel() const;
  Status BuildByteIds();
  Status BuildMerges();
  Status BuildAddedTokens();
  Status AddTokens(const std::vector<int64_t>& ids, AddedTokenTable* table);
  void BuildDecoded();

  void EncodeRaw(std::string_view text, Scratch* scratch, std::vector<int64_t>* ids) const;
  void EncodeSegment(std::string_view text, Scratch* scratch, std::vector<int64_t>* ids) const;
  void EncodeWord(std::string_view word, Scratch* scratch, std::vector<int64_t>* ids) const;
  void EncodePieces(std::string_view text, Scratch* scratch, std::vector<int64_t>* ids) const;
  bool EncodeWholeWord(std::string_view word, Scratch* scratch,
                       std::vector<int64_t>* ids) const;
  void QueuePair(Scratch* scratch, int32_t left) const;
  void MergeAll(Scratch* scratch) const;
};

namespace {

std::string ToByteLevel(std::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) AppendUtf8(Alphabet().to_char[b], &out);
  return out;
}

// Undoes the byte-level mapping. As HF's ByteLevel decoder does, a token holding any
// character outside the byte alphabet is taken as its raw UTF-8 text instead.
std::string FromByteLevel(const std::string& token) {
  std::string out;
  for (size_t pos = 0; pos < token.size();) {
    char32_t cp = 0;
    size_t len = DecodeUtf8(token, pos, &cp);
    int byte = (len > 0 && cp < Alphabet().to_byte.size()) ? Alphabet().to_byte[cp] : -1;
    if (byte < 0) return token;
    out.push_back(static_cast<char>(byte));
    pos += len;
  }
  return out;
}

Status CheckId(int64_t id, size_t vocab_size, const char* what) {
  if (id >= -1 && id < static_cast<int64_t>(vocab_size)) return Status::Ok();
  return InvalidArgument(std::string(what) + " " + std::to_string(id) +
                         " is outside the vocabulary of " + std::to_string(vocab_size));
}

}  // namespace

Status Tokenizer::Impl::Build() {
  const size_t n = spec.tokens.size();
  if (n == 0) return InvalidArgument("the vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX)) return InvalidArgument("the vocabulary is too large");
  GLASSBOX_RETURN_IF_ERROR(CheckId(spec.bos_id, n, "bos id"));
  GLASSBOX_RETURN_IF_ERROR(CheckId(spec.eos_id, n, "eos id"));
  if (spec.add_bos && spec.bos_id < 0) return InvalidArgument("add_bos is set without a bos id");
  GLASSBOX_RETURN_IF_ERROR(CheckModel());
  token_ids.reserve(n);
  for (size_t id = 0; id < n; ++id) token_ids.emplace(spec.tokens[id], static_cast<int32_t>(id));
  GLASSBOX_RETURN_IF_ERROR(BuildByteIds());
  GLASSBOX_RETURN_IF_ERROR(BuildMerges());
  GLASSBOX_RETURN_IF_ERROR(BuildAddedTokens());
  BuildDecoded();
  return Status::Ok();
}

// Normalizers and options belong to one model or the other.
Status Tokenizer::Impl::CheckModel() const {
  bool metaspace = spec.normalizer == Normalizer::kMetaspace ||
                   spec.normalizer == Normalizer::kPrependMetaspace;
  if (spec.model == TokenizerModel::kByteLevelBpe) {
    if (metaspace || spec.strip_leading_spaces != 0) {
      return InvalidArgument(
          "a Metaspace normalizer or Strip decoder needs the SentencePiece model");
    }
    if (spec.normalizer == Normalizer::kNfc && IcuNfc() == nullptr) {
      return Internal("ICU's NFC data is missing");
    }
    return Status::Ok();
  }
  if (!metaspace) return InvalidArgument("the SentencePiece model needs a Metaspace normalizer");
  if (!spec.normalized_ids.empty()) {
    return InvalidArgument("the SentencePiece model matches added tokens in the raw text only");
  }
  return Status::Ok();
}

// Byte-level: the byte alphabet's characters. SentencePiece: the <0xNN> tokens, all 256 of
// them (without them Hugging Face would emit the unk token, which is not implemented), and
// the one-character tokens.
Status Tokenizer::Impl::BuildByteIds() {
  byte_ids.fill(-1);
  if (spec.model == TokenizerModel::kByteLevelBpe) {
    for (int b = 0; b < 256; ++b) {
      auto it = token_ids.find(ToByteLevel(std::string(1, static_cast<char>(b))));
      byte_ids[b] = it == token_ids.end() ? -1 : it->second;
    }
    return Status::Ok();
  }
  for (size_t id = 0; id < spec.tokens.size(); ++id) {
    const std::string& token = spec.tokens[id];
    int byte = sentencepiece::ByteTokenValue(token);
    if (byte >= 0 && byte_ids[byte] < 0) byte_ids[byte] = static_cast<int32_t>(id);
    char32_t cp = 0;
    if (!token.empty() && DecodeUtf8(token, 0, &cp) == token.size()) {
      char_ids.emplace(cp, static_cast<int32_t>(id));
    }
  }
  for (int b = 0; b < 256; ++b) {
    if (byte_ids[b] < 0) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      return Unimplemented(std::string("byte fallback without the byte token ") + name +
                           " in the vocabulary is not supported");
    }
  }
  return Status::Ok();
}

Status Tokenizer::Impl::BuildMerges() {
  merges.reserve(spec.merges.size());
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const auto& [left, right] = spec.merges[rank];
    auto l = token_ids.find(left);
    auto r = token_ids.find(right);
    auto merged = token_ids.find(left + right);
    if (l == token_ids.end() || r == token_ids.end() || merged == token_ids.end()) {
      return InvalidArgument("merge " + std::to_string(rank) + " (\"" + left + "\" \"" +
                             right + "\") uses or makes a token missing from the vocabulary");
    }
    // A repeated pair keeps its last rank, as in Hugging Face's merge map.
    merges[PairKey(l->second, r->second)] = {static_cast<int32_t>(rank), merged->second};
  }
  spec.merges = {};  // the map holds them now (Gemma's half a million take ~30 MB as text)
  return Status::Ok();
}

Status Tokenizer::Impl::BuildAddedTokens() {
  GLASSBOX_RETURN_IF_ERROR(AddTokens(spec.special_ids, &raw_added));
  GLASSBOX_RETURN_IF_ERROR(AddTokens(spec.normalized_ids, &normalized_added));
  raw_added.SortLongestFirst();
  normalized_added.SortLongestFirst();
  return Status::Ok();
}

Status Tokenizer::Impl::AddTokens(const std::vector<int64_t>& ids, AddedTokenTable* table) {
  for (int64_t id : ids) {
    if (id < 0 || id >= static_cast<int64_t>(spec.tokens.size())) {
      return InvalidArgument("added token id " + std::to_string(id) +
                             " is outside the vocabulary of " +
                             std::to_string(spec.tokens.size()));
    }
    const std::string& text = spec.tokens[id];
    if (text.empty()) return InvalidArgument("added token " + std::to_string(id) + " is empty");
    table->Add(text, static_cast<int32_t>(id));
    added_ids.push_back(id);
  }
  return Status::Ok();
}

// Added tokens go through the byte-level mapping too, as in Hugging Face: "<|im_end|>" is
// made of characters that stand for themselves, and one holding any character outside the
// byte alphabet (a newline, a space) is taken as its text.
// SentencePiece: "▁" is a space in every token, and <0xNN> is its byte.
void Tokenizer::Impl::BuildDecoded() {
  decoded.resize(spec.tokens.size());
  for (size_t id = 0; id < spec.tokens.size(); ++id) {
    const std::string& token = spec.tokens[id];
    if (spec.model == TokenizerModel::kByteLevelBpe) {
      decoded[id] = FromByteLevel(token);
    } else if (int byte = sentencepiece::ByteTokenValue(token); byte >= 0) {
      decoded[id] = std::string(1, static_cast<char>(byte));
    } else {
      decoded[id] = sentencepiece::SpacesFromMetaspace(token);
    }
  }
}

// A stretch of raw text between the added tokens matched before normalizing.
void Tokenizer::Impl::EncodeRaw(std::string_view text, Scratch* scratch,
                                std::vector<int64_t>* ids) const {
  if (spec.model == TokenizerModel::kSentencePieceBpe) {
    if (text.empty()) return;
    scratch->normalized.clear();
    sentencepiece::AppendNormalized(text, spec.normalizer == Normalizer::kPrependMetaspace,
                                    &scratch->normalized);
    EncodePieces(scratch->normalized, scratch, ids);
    return;
  }
  if (spec.normalizer == Normalizer::kNfc) {
    scratch->normalized = Nfc(text);
    text = scratch->normalized;
  }
  SplitAtAddedTokens(
      text, normalized_added,
      [&](std::string_view stretch) { EncodeSegment(stretch, scratch, ids); },
      [&](int32_t id) { ids->push_back(id); });
}

void Tokenizer::Impl::EncodeSegment(std::string_view text, Scratch* scratch,
                                    std::vector<int64_t>* ids) const {
  PreTokenize(text, spec.pre_tokenizer, [&](size_t begin, size_t end) {
    EncodeWord(text.substr(begin, end - begin), scratch, ids);
  });
}

bool Tokenizer::Impl::EncodeWholeWord(std::string_view word, Scratch* scratch,
                                      std::vector<int64_t>* ids) const {
  scratch->word.clear();
  for (unsigned char b : word) AppendUtf8(Alphabet().to_char[b], &scratch->word);
  auto it = token_ids.find(scratch->word);
  if (it == token_ids.end()) return false;
  ids->push_back(it->second);
  return true;
}

void Tokenizer::Impl::EncodeWord(std::string_view word, Scratch* scratch,
                                 std::vector<int64_t>* ids) const {
  if (spec.ignore_merges && EncodeWholeWord(word, scratch, ids)) return;
  std::vector<Symbol>& symbols = scratch->symbols;
  symbols.clear();
  for (unsigned char b : word) {
    if (byte_ids[b] < 0) continue;  // dropped, as HF does without an unk token
    int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({byte_ids[b], index - 1, -1});
    if (index > 0) symbols[index - 1].next = index;
  }
  if (symbols.size() > 1) MergeAll(scratch);
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    ids->push_back(symbols[i].id);
  }
}

// SentencePiece: one word of characters, each its own token or the tokens of its bytes (a
// byte of invalid UTF-8, which Hugging Face never sees, is one character here).
void Tokenizer::Impl::EncodePieces(std::string_view word, Scratch* scratch,
                                   std::vector<int64_t>* ids) const {
  if (spec.ignore_merges) {
    auto it = token_ids.find(std::string(word));
    if (it != token_ids.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  std::vector<Symbol>& symbols = scratch->symbols;
  symbols.clear();
  auto add = [&](int32_t id) {
    int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, -1});
    if (index > 0) symbols[index - 1].next = index;
  };
  for (size_t pos = 0; pos < word.size();) {
    char32_t cp = 0;
    size_t len = DecodeUtf8(word, pos, &cp);
    auto it = len > 0 ? char_ids.find(cp) : char_ids.end();
    if (it != char_ids.end()) {
      add(it->second);
    } else {
      for (size_t i = 0; i < std::max<size_t>(len, 1); ++i) {
        add(byte_ids[static_cast<unsigned char>(word[pos + i])]);
      }
    }
    pos += std::max<size_t>(len, 1);
  }
  if (symbols.size() > 1) MergeAll(scratch);
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    ids->push_back(symbols[i].id);
  }
}

void Tokenizer::Impl::QueuePair(Scratch* scratch, int32_t left) const {
  if (left < 0) return;
  const Symbol& l = scratch->symbols[left];
  if (l.next < 0) return;
  int32_t right_id = scratch->symbols[l.next].id;
  auto it = merges.find(PairKey(l.id, right_id));
  if (it == merges.end()) return;
  scratch->heap.push_back({it->second.rank, left, l.next, right_id, it->second.id});
  std::push_heap(scratch->heap.begin(), scratch->heap.end(), std::greater<Candidate>());
}

void Tokenizer::Impl::MergeAll(Scratch* scratch) const {
  std::vector<Symbol>& symbols = scratch->symbols;
  std::vector<Candidate>& heap = scratch->heap;
  heap.clear();
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) QueuePair(scratch, i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<Candidate>());
    Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.left];
    if (left.id < 0 || left.next != top.right || symbols[top.right].id != top.right_id) {
      continue;  // one side has been merged since this pair was queued
    }
    Symbol& right = symbols[top.right];
    left.id = top.new_id;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.id = -1;
    if (left.prev >= 0) QueuePair(scratch, left.prev);
    QueuePair(scratch, top.left);
  }
}

// ---------------------------------------------------------------------------------------

StatusOr<Tokenizer> Tokenizer::FromSpec(TokenizerSpec spec) {
  auto impl = std::make_shared<Impl>();
  impl->spec = std::move(spec);
  GLASSBOX_RETURN_IF_ERROR(impl->Build());
  Tokenizer tokenizer;
  tokenizer.impl_ = std::move(impl);
  return tokenizer;
}

std::vector<int64_t> Tokenizer::Encode(const std::string& text, bool add_special_tokens) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_special_tokens && impl_->spec.add_bos) ids.push_back(impl_->spec.bos_id);
  Scratch scratch;
  SplitAtAddedTokens(
      text, impl_->raw_added,
      [&](std::string_view stretch) { impl_->EncodeRaw(stretch, &scratch, &ids); },
      [&](int32_t id) { ids.push_back(id); });
  return ids;
}

StatusOr<std::string> Tokenizer::Decode(const std::vector<int64_t>& ids) const {
  std::string text;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      return InvalidArgument("cannot decode token id " + std::to_string(id) +
                             ": the vocabulary has " + std::to_string(vocab_size()) + " tokens");
    }
    text += impl_->decoded[id];
  }
  size_t strip = 0;
  while (strip < text.size() && strip < static_cast<size_t>(impl_->spec.strip_leading_spaces) &&
         text[strip] == ' ') {
    ++strip;
  }
  return text.substr(strip);
}

const std::string& Tokenizer::TokenText(int64_t id) const {
  if (id < 0 || id >= vocab_size()) return EmptyString();
  return impl_->spec.tokens[id];
}

const std::vector<int64_t>& Tokenizer::special_ids() const { return impl_->added_ids; }

TokenizerModel Tokenizer::model() const { return impl_->spec.model; }
int Tokenizer::strip_leading_spaces() const { return impl_->spec.strip_leading_spaces; }
int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->spec.tokens.size()); }
int64_t Tokenizer::bos_id() const { return impl_->spec.bos_id; }
int64_t Tokenizer::eos_id() const { return impl_->spec.eos_id; }

// ---------------------------------------------------------------------------------------
// GGUF: tokenizer.ggml.* as written by llama.cpp's converter.

namespace {

StatusOr<PreTokenizer> GgufPreTokenizer(const GgufFile& gguf) {
  StatusOr<std::string> pre = gguf.GetString("tokenizer.ggml.pre");
  if (!pre.ok() && pre.status().code() == StatusCode::kNotFound) return PreTokenizer::kGpt2;
  if (!pre.ok()) return pre.status();
  if (*pre == "smollm") return PreTokenizer::kSmolLm;
  if (*pre == "llama-bpe" || *pre == "llama3") return PreTokenizer::kLlama3;
  if (*pre == "qwen2") return PreTokenizer::kQwen2;
  if (*pre == "gpt-2" || *pre == "default") return PreTokenizer::kGpt2;
  return Unimplemented("tokenizer.ggml.pre \"" + *pre +
                       "\" is not supported (known: smollm, llama-bpe, llama3, qwen2, gpt-2, "
                       "default)");
}

StatusOr<std::vector<std::pair<std::string, std::string>>> GgufMerges(const GgufFile& gguf) {
  GLASSBOX_ASSIGN_OR_RETURN(std::vector<std::string> lines,
                            gguf.GetStringArray("tokenizer.ggml.merges"));
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    size_t space = lines[i].find(' ');
    if (space == std::string::npos || lines[i].find(' ', space + 1) != std::string::npos) {
      return InvalidArgument("tokenizer.ggml.merges[" + std::to_string(i) + "] \"" + lines[i] +
                             "\" is not two tokens separated by one space");
    }
    merges.emplace_back(lines[i].substr(0, space), lines[i].substr(space + 1));
  }
  return merges;
}

// CONTROL (3) and USER_DEFINED (4) tokens are matched verbatim in text.
StatusOr<std::vector<int64_t>> GgufSpecialIds(const GgufFile& gguf, size_t vocab_size) {
  StatusOr<std::vector<int64_t>> types = gguf.GetIntArray("tokenizer.ggml.token_type");
  if (!types.ok() && types.status().code() == StatusCode::kNotFound) {
    return std::vector<int64_t>();
  }
  if (!types.ok()) return types.status();
  if (types->size() != vocab_size) {
    return InvalidArgument("tokenizer.ggml.token_type has " + std::to_string(types->size()) +
                           " entries for " + std::to_string(vocab_size) + " tokens");
  }
  std::vector<int64_t> ids;
  for (size_t id = 0; id < types->size(); ++id) {
    if ((*types)[id] == 3 || (*types)[id] == 4) ids.push_back(static_cast<int64_t>(id));
  }
  return ids;
}

StatusOr<int64_t> GgufOptionalInt(const GgufFile& gguf, const std::string& key,
                                  int64_t fallback) {
  StatusOr<int64_t> value = gguf.GetInt(key);
  if (!value.ok() && value.status().code() == StatusCode::kNotFound) return fallback;
  return value;
}

StatusOr<bool> GgufOptionalBool(const GgufFile& gguf, const std::string& key, bool fallback) {
  StatusOr<bool> value = gguf.GetBool(key);
  if (!value.ok() && value.status().code() == StatusCode::kNotFound) return fallback;
  return value;
}

Status ReadByteLevelGguf(const GgufFile& gguf, TokenizerSpec* spec) {
  GLASSBOX_ASSIGN_OR_RETURN(spec->pre_tokenizer, GgufPreTokenizer(gguf));
  // llama.cpp and Llama-3's tokenizer.json both skip the merges for in-vocabulary words.
  spec->ignore_merges = spec->pre_tokenizer == PreTokenizer::kLlama3;
  // Qwen2's tokenizer.json normalizes to NFC; its GGUF does not say so.
  if (spec->pre_tokenizer == PreTokenizer::kQwen2) spec->normalizer = Normalizer::kNfc;
  GLASSBOX_ASSIGN_OR_RETURN(spec->tokens, gguf.GetStringArray("tokenizer.ggml.tokens"));
  GLASSBOX_ASSIGN_OR_RETURN(spec->merges, GgufMerges(gguf));
  GLASSBOX_ASSIGN_OR_RETURN(spec->special_ids, GgufSpecialIds(gguf, spec->tokens.size()));
  return Status::Ok();
}

StatusOr<TokenizerSpec> GgufSpec(const GgufFile& gguf) {
  GLASSBOX_ASSIGN_OR_RETURN(std::string model, gguf.GetString("tokenizer.ggml.model"));
  TokenizerSpec spec;
  if (model == "gpt2") {
    GLASSBOX_RETURN_IF_ERROR(ReadByteLevelGguf(gguf, &spec));
  } else if (model == "llama") {
    GLASSBOX_RETURN_IF_ERROR(sentencepiece::ReadGguf(gguf, &spec));
  } else {
    return Unimplemented("tokenizer.ggml.model \"" + model +
                         "\" is not supported; only gpt2 (byte-level BPE) and llama "
                         "(SentencePiece) are");
  }
  GLASSBOX_ASSIGN_OR_RETURN(spec.bos_id, GgufOptionalInt(gguf, "tokenizer.ggml.bos_token_id", -1));
  GLASSBOX_ASSIGN_OR_RETURN(spec.eos_id, GgufOptionalInt(gguf, "tokenizer.ggml.eos_token_id", -1));
  // transformers, like llama.cpp, adds BOS to a SentencePiece vocabulary that does not say.
  GLASSBOX_ASSIGN_OR_RETURN(
      spec.add_bos, GgufOptionalBool(gguf, "tokenizer.ggml.add_bos_token", model == "llama"));
  return spec;
}

// The GGUF reader's own errors already start with the path; ours get it prepended.
Status WithPath(const Status& status, const std::string& path) {
  if (status.message().compare(0, path.size(), path) == 0) return status;
  return status.WithContext(path);
}

}  // namespace

StatusOr<Tokenizer> Tokenizer::FromGguf(const GgufFile& gguf) {
  StatusOr<TokenizerSpec> spec = GgufSpec(gguf);
  if (!spec.ok()) return WithPath(spec.status(), gguf.path());
  StatusOr<Tokenizer> tokenizer = FromSpec(std::move(spec).value());
  if (!tokenizer.ok()) return WithPath(tokenizer.status(), gguf.path());
  return tokenizer;
}

// ---------------------------------------------------------------------------------------
// Hugging Face tokenizer.json (plus eos/bos names from a tokenizer_config.json beside it).

namespace {

using Json = nlohmann::json;

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|)"
    R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// transformers' Qwen2Tokenizer PRETOKENIZE_REGEX (Qwen2, Qwen2.5, Qwen3).
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|)"
    R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// node[key], or null when node is not an object or lacks the key.
const Json& Field(const Json& node, const char* key) {
  static const Json null_json;
  if (!node.is_object()) return null_json;
  auto it = node.find(key);
  return it == node.end() ? null_json : *it;
}

std::string TypeOf(const Json& node) {
  return node.is_object() ? node.value("type", std::string("?")) : std::string("?");
}

// A short description of a pre-tokenizer for error messages.
std::string Describe(const Json& node) {
  std::string type = TypeOf(node);
  if (type == "Sequence" && node.contains("pretokenizers")) {
    std::string out = "Sequence[";
    for (const Json& child : node["pretokenizers"]) {
      out += (out.back() == '[' ? "" : ", ") + Describe(child);
    }
    return out + "]";
  }
  if (type == "ByteLevel") {
    return std::string("ByteLevel(add_prefix_space=") +
           (node.value("add_prefix_space", false) ? "true" : "false") +
           ", use_regex=" + (node.value("use_regex", true) ? "true" : "false") + ")";
  }
  if (type == "Split" && node.contains("pattern")) return "Split(" + node["pattern"].dump() + ")";
  if (type == "Digits") {
    return std::string("Digits(individual_digits=") +
           (node.value("individual_digits", false) ? "true" : "false") + ")";
  }
  return type;
}

bool IsByteLevel(const Json& node, bool use_regex) {
  return TypeOf(node) == "ByteLevel" && !node.value("add_prefix_space", false) &&
         node.value("use_regex", true) == use_regex;
}

// The regex of an isolating Split, or "" for anything else.
std::string SplitRegex(const Json& node) {
  if (TypeOf(node) != "Split" || node.value("invert", false) ||
      node.value("behavior", std::string()) != "Isolated" || !node.contains("pattern") ||
      !node["pattern"].contains("Regex")) {
    return "";
  }
  return node["pattern"]["Regex"].get<std::string>();
}

std::optional<PreTokenizer> MatchPreTokenizer(const Json& node) {
  if (IsByteLevel(node, /*use_regex=*/true)) return PreTokenizer::kGpt2;
  if (TypeOf(node) != "Sequence" || !node.contains("pretokenizers")) return std::nullopt;
  const Json& list = node["pretokenizers"];
  if (list.size() == 1) return MatchPreTokenizer(list[0]);
  if (list.size() != 2) return std::nullopt;
  if (TypeOf(list[0]) == "Digits" && list[0].value("individual_digits", false) &&
      IsByteLevel(list[1], /*use_regex=*/true)) {
    return PreTokenizer::kSmolLm;
  }
  if (!IsByteLevel(list[1], /*use_regex=*/false)) return std::nullopt;
  std::string regex = SplitRegex(list[0]);
  if (regex == kLlama3Pattern) return PreTokenizer::kLlama3;
  if (regex == kQwen2Pattern) return PreTokenizer::kQwen2;
  if (regex == kGpt2Pattern) return PreTokenizer::kGpt2;
  return std::nullopt;
}

Status ReadPreTokenizer(const Json& root, TokenizerSpec* spec) {
  const Json& node = Field(root, "pre_tokenizer");
  std::optional<PreTokenizer> pre = MatchPreTokenizer(node);
  if (!pre) {
    return Unimplemented("pre_tokenizer " + Describe(node) +
                         " is not supported; expected ByteLevel, Sequence[Digits(individual_"
                         "digits=true), ByteLevel] or Sequence[Split(GPT-2, Llama-3 or Qwen2 "
                         "regex), ByteLevel(use_regex=false)]");
  }
  spec->pre_tokenizer = *pre;
  return Status::Ok();
}

// A key this loader does not know might change the ids (a newer `tokenizers` adding an
// option), so it is refused rather than ignored.
Status CheckKnownKeys(const Json& node, std::initializer_list<const char*> known,
                      const std::string& where) {
  for (const auto& item : node.items()) {
    auto is_key = [&](const char* key) { return item.key() == key; };
    if (std::none_of(known.begin(), known.end(), is_key)) {
      return Unimplemented("unknown key \"" + item.key() + "\" in " + where);
    }
  }
  return Status::Ok();
}

// Truncation and padding would cut or extend every encoding.
Status CheckTopLevel(const Json& root) {
  GLASSBOX_RETURN_IF_ERROR(
      CheckKnownKeys(root,
                     {"version", "truncation", "padding", "added_tokens", "normalizer",
                      "pre_tokenizer", "model", "post_processor", "decoder"},
                     "the top level"));
  for (const char* key : {"truncation", "padding"}) {
    const Json& value = Field(root, key);
    if (!value.is_null()) {
      return Unimplemented(std::string(key) + " " + value.dump() + " is not supported");
    }
  }
  return Status::Ok();
}

// Options of HF's BPE model that would change the ids of a byte-level vocabulary.
Status CheckBpeOptions(const Json& model) {
  std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE") return Unimplemented("model type \"" + type + "\"; only BPE is supported");
  GLASSBOX_RETURN_IF_ERROR(CheckKnownKeys(
      model,
      {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
       "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges"},
      "model"));
  auto set = [&](const char* key) { return model.contains(key) && !model[key].is_null(); };
  if (set("dropout") && model["dropout"].get<double>() != 0.0) {
    return Unimplemented("model.dropout (BPE dropout) is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (set(key) && !model[key].get<std::string>().empty()) {
      return Unimplemented(std::string("model.") + key + " is not supported");
    }
  }
  return Status::Ok();
}

// Places `text` at `id`, which must be free or already hold the same text.
Status PlaceToken(const std::string& text, int64_t id, size_t limit,
                  std::vector<std::string>* tokens, std::vector<bool>* placed) {
  if (id < 0 || static_cast<size_t>(id) >= limit) {
    return InvalidArgument("token \"" + text + "\" has id " + std::to_string(id) +
                           ", which leaves a gap in the ids");
  }
  if ((*placed)[id] && (*tokens)[id] != text) {
    return InvalidArgument("id " + std::to_string(id) + " is given to both \"" +
                           (*tokens)[id] + "\" and \"" + text + "\"");
  }
  (*tokens)[id] = text;
  (*placed)[id] = true;
  return Status::Ok();
}

// model.vocab and added_tokens together must number the ids 0..n-1.
Status ReadVocab(const Json& root, TokenizerSpec* spec) {
  const Json& vocab = Field(Field(root, "model"), "vocab");
  const Json& added = Field(root, "added_tokens");
  if (!vocab.is_object()) return InvalidArgument("model.vocab is not an object");
  if (!added.is_null() && !added.is_array()) {
    return InvalidArgument("added_tokens is not an array");
  }
  size_t limit = vocab.size() + added.size();
  std::vector<std::string> tokens(limit);
  std::vector<bool> placed(limit, false);
  for (const auto& [text, id] : vocab.items()) {
    GLASSBOX_RETURN_IF_ERROR(PlaceToken(text, id.get<int64_t>(), limit, &tokens, &placed));
  }
  for (const Json& token : added) {
    std::string text = token.at("content").get<std::string>();
    GLASSBOX_RETURN_IF_ERROR(
        PlaceToken(text, token.at("id").get<int64_t>(), limit, &tokens, &placed));
  }
  size_t count = std::find(placed.begin(), placed.end(), false) - placed.begin();
  if (std::find(placed.begin() + count, placed.end(), true) != placed.end()) {
    return InvalidArgument("no token has id " + std::to_string(count) + ", but later ids exist");
  }
  tokens.resize(count);
  spec->tokens = std::move(tokens);
  return Status::Ok();
}

// Added tokens are matched whole; the flags that would strip or bound them are not
// supported. A `normalized` one is matched in the normalized text, and Hugging Face keeps
// (and decodes) it in its normalized form. Needs the vocabulary and the normalizer read.
Status ReadAddedTokens(const Json& root, TokenizerSpec* spec) {
  for (const Json& token : Field(root, "added_tokens")) {
    std::string text = token.at("content").get<std::string>();
    for (const char* flag : {"lstrip", "rstrip", "single_word"}) {
      if (token.value(flag, false)) {
        return Unimplemented("added token \"" + text + "\" sets " + flag);
      }
    }
    int64_t id = token.at("id").get<int64_t>();
    bool normalized = token.at("normalized").get<bool>();
    if (normalized && spec->model == TokenizerModel::kSentencePieceBpe) {
      return Unimplemented("added token \"" + text + "\" sets normalized with model.byte_fallback");
    }
    if (!normalized) {
      spec->special_ids.push_back(id);
      continue;
    }
    if (spec->normalizer == Normalizer::kNfc) spec->tokens[id] = Nfc(text);
    spec->normalized_ids.push_back(id);
  }
  return Status::Ok();
}

// Merges as "a b" strings (older files) or [a, b] pairs (tokenizers >= 0.20).
Status ReadMerges(const Json& model, TokenizerSpec* spec) {
  const Json& merges = Field(model, "merges");
  if (!merges.is_array()) return InvalidArgument("model.merges is not an array");
  for (size_t i = 0; i < merges.size(); ++i) {
    const Json& merge = merges[i];
    if (merge.is_array() && merge.size() == 2) {
      spec->merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
      continue;
    }
    std::string line = merge.is_string() ? merge.get<std::string>() : merge.dump();
    size_t space = line.find(' ');
    if (!merge.is_string() || space == std::string::npos ||
        line.find(' ', space + 1) != std::string::npos) {
      return InvalidArgument("model.merges[" + std::to_string(i) + "] " + line +
                             " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    spec->merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  return Status::Ok();
}

// None, NFC, or a Sequence of NFCs (possibly empty).
Status ReadNormalizer(const Json& root, TokenizerSpec* spec) {
  const Json& normalizer = Field(root, "normalizer");
  if (normalizer.is_null()) return Status::Ok();
  bool sequence = TypeOf(normalizer) == "Sequence";
  const Json& list = sequence ? normalizer.at("normalizers") : Json::array({normalizer});
  for (const Json& child : list) {
    if (TypeOf(child) != "NFC") {
      return Unimplemented("normalizer " + TypeOf(child) + " is not supported; only NFC is");
    }
    spec->normalizer = Normalizer::kNfc;
  }
  return Status::Ok();
}

// Without a decoder Hugging Face would join the token texts with spaces.
Status CheckDecoder(const Json& root) {
  const Json& decoder = Field(root, "decoder");
  if (TypeOf(decoder) == "ByteLevel") return Status::Ok();
  std::string name = decoder.is_null() ? "null" : TypeOf(decoder);
  return Unimplemented("decoder " + name + " is not supported; expected ByteLevel");
}

// TemplateProcessing `single` as [SpecialToken X, Sequence A] means "prepend X".
Status ReadTemplate(const Json& processor, TokenizerSpec* spec) {
  const Json& single = processor.at("single");
  bool just_a = single.size() == 1 && single[0].contains("Sequence");
  if (just_a) return Status::Ok();
  if (single.size() != 2 || !single[0].contains("SpecialToken") ||
      !single[1].contains("Sequence")) {
    return Unimplemented("post_processor TemplateProcessing " + single.dump() +
                         " is not supported; only an optional leading special token is");
  }
  std::string name = single[0]["SpecialToken"].at("id").get<std::string>();
  const Json& ids = processor.at("special_tokens").at(name).at("ids");
  if (ids.size() != 1) return Unimplemented("post_processor special token " + name);
  spec->bos_id = ids[0].get<int64_t>();
  spec->add_bos = true;
  return Status::Ok();
}

Status ReadPostProcessor(const Json& processor, TokenizerSpec* spec) {
  std::string type = TypeOf(processor);
  if (processor.is_null() || type == "ByteLevel") return Status::Ok();
  if (type == "TemplateProcessing") return ReadTemplate(processor, spec);
  if (type == "Sequence") {
    for (const Json& child : processor.at("processors")) {
      GLASSBOX_RETURN_IF_ERROR(ReadPostProcessor(child, spec));
    }
    return Status::Ok();
  }
  return Unimplemented("post_processor " + type + " is not supported");
}

// With an unk token, HF emits it for a byte missing from the vocabulary where we (and HF
// without one) drop the byte; refuse the one case where that would change the ids.
Status CheckUnkToken(const Json& model, const TokenizerSpec& spec) {
  const Json& unk = Field(model, "unk_token");
  if (unk.is_null()) return Status::Ok();
  for (int b = 0; b < 256; ++b) {
    std::string token = ToByteLevel(std::string(1, static_cast<char>(b)));
    if (std::find(spec.tokens.begin(), spec.tokens.end(), token) == spec.tokens.end()) {
      return Unimplemented("model.unk_token with byte " + std::to_string(b) +
                           " missing from the vocabulary is not supported");
    }
  }
  return Status::Ok();
}

StatusOr<TokenizerSpec> SpecFromJson(const Json& root) {
  TokenizerSpec spec;
  const Json& model = Field(root, "model");
  if (!model.is_object()) return InvalidArgument("no \"model\" object");
  GLASSBOX_RETURN_IF_ERROR(CheckTopLevel(root));
  GLASSBOX_RETURN_IF_ERROR(CheckBpeOptions(model));
  // byte_fallback: SentencePiece-style (Gemma), whose own normalizer, pre-tokenizer and
  // decoder are read there; its unk token would only stand for a missing byte token, which
  // building refuses.
  bool byte_fallback = model.value("byte_fallback", false);
  if (byte_fallback) {
    GLASSBOX_RETURN_IF_ERROR(sentencepiece::ReadJsonParts(root, &spec));
  } else {
    GLASSBOX_RETURN_IF_ERROR(ReadNormalizer(root, &spec));
    GLASSBOX_RETURN_IF_ERROR(CheckDecoder(root));
    GLASSBOX_RETURN_IF_ERROR(ReadPreTokenizer(root, &spec));
  }
  GLASSBOX_RETURN_IF_ERROR(ReadVocab(root, &spec));
  if (!byte_fallback) GLASSBOX_RETURN_IF_ERROR(CheckUnkToken(model, spec));
  GLASSBOX_RETURN_IF_ERROR(ReadAddedTokens(root, &spec));
  GLASSBOX_RETURN_IF_ERROR(ReadMerges(model, &spec));
  GLASSBOX_RETURN_IF_ERROR(ReadPostProcessor(Field(root, "post_processor"), &spec));
  spec.ignore_merges = model.value("ignore_merges", false);
  return spec;
}

// SpecFromJson with nlohmann's exceptions (a field missing or of the wrong type) as statuses.
StatusOr<TokenizerSpec> SpecFromJsonOrError(const Json& root) {
  try {
    return SpecFromJson(root);
  } catch (const Json::exception& e) {
    return InvalidArgument(e.what());
  }
}

StatusOr<Json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open the file");
  Json json = Json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return InvalidArgument("not a JSON object");
  return json;
}

// The id of a tokenizer_config.json token entry: a string or {"content": ...}; -1 if none.
StatusOr<int64_t> ConfigTokenId(const Json& config, const char* key, const TokenizerSpec& spec) {
  if (!config.contains(key) || config[key].is_null()) return -1;
  const Json& entry = config[key];
  std::string text = entry.is_object() ? entry.at("content").get<std::string>()
                                       : entry.get<std::string>();
  auto it = std::find(spec.tokens.begin(), spec.tokens.end(), text);
  if (it == spec.tokens.end()) {
    return InvalidArgument(std::string(key) + " \"" + text + "\" is not in the vocabulary");
  }
  return static_cast<int64_t>(it - spec.tokens.begin());
}

// tokenizer.json does not say which token ends a sequence; tokenizer_config.json does.
Status ReadSiblingConfig(const std::string& json_path, TokenizerSpec* spec) {
  size_t slash = json_path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "" : json_path.substr(0, slash + 1);
  std::string path = dir + "tokenizer_config.json";
  if (!std::ifstream(path)) return Status::Ok();
  StatusOr<Json> config = ReadJsonFile(path);
  if (!config.ok()) return config.status().WithContext(path);
  try {
    StatusOr<int64_t> eos = ConfigTokenId(*config, "eos_token", *spec);
    StatusOr<int64_t> bos = ConfigTokenId(*config, "bos_token", *spec);
    if (!eos.ok()) return eos.status().WithContext(path);
    if (!bos.ok()) return bos.status().WithContext(path);
    spec->eos_id = *eos;
    if (spec->bos_id < 0) spec->bos_id = *bos;
  } catch (const Json::exception& e) {
    return InvalidArgument(path + ": " + e.what());
  }
  return Status::Ok();
}

}  // namespace

StatusOr<Tokenizer> Tokenizer::FromTokenizerJson(const std::string& path) {
  StatusOr<Json> root = ReadJsonFile(path);
  if (!root.ok()) return root.status().WithContext(path);
  StatusOr<TokenizerSpec> spec = SpecFromJsonOrError(*root);
  if (!spec.ok()) return spec.status().WithContext(path);
  GLASSBOX_RETURN_IF_ERROR(ReadSiblingConfig(path, &spec.value()));
  StatusOr<Tokenizer> tokenizer = FromSpec(std::move(spec).value());
  if (!tokenizer.ok()) return tokenizer.status().WithContext(path);
  return tokenizer;
}

}  // namespace glassbox
