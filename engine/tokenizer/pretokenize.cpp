#include "engine/tokenizer/pretokenize.hpp"

#include <unicode/uchar.h>

namespace moelab {
namespace {

enum class Kind { Letter, Number, Space, Other };

struct CodePoint {
  Kind kind;
  char32_t value;
  size_t bytes;
};

// Decodes one UTF-8 sequence at the front of `s`; malformed input yields a single byte of kind Other.
CodePoint decode_front(std::string_view s) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char lead = byte(0);
  size_t length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 0;
  if (length == 0 || length > s.size()) return {Kind::Other, lead, 1};
  char32_t value = length == 1 ? lead : lead & (0x7F >> length);
  for (size_t i = 1; i < length; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return {Kind::Other, lead, 1};
    value = (value << 6) | (byte(i) & 0x3F);
  }
  static constexpr char32_t kSmallest[] = {0, 0, 0x80, 0x800, 0x10000};
  if (value < kSmallest[length] || value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF)) return {Kind::Other, lead, 1};
  const auto category = U_GET_GC_MASK(value);
  Kind kind = (category & U_GC_L_MASK)                    ? Kind::Letter
              : (category & U_GC_N_MASK)                  ? Kind::Number
              : u_hasBinaryProperty(value, UCHAR_WHITE_SPACE) ? Kind::Space
                                                          : Kind::Other;
  return {kind, value, length};
}

// Length in bytes of the run of code points of `kind` (or, for Other, not Letter/Number/Space) at `pos`.
size_t run_length(std::string_view text, size_t pos, Kind kind) {
  size_t end = pos;
  while (end < text.size()) {
    auto cp = decode_front(text.substr(end));
    if (cp.kind != kind) break;
    end += cp.bytes;
  }
  return end - pos;
}

// 's 't 're 've 'm 'll 'd: case-sensitive, as in GPT-2's pattern.
size_t contraction_length(std::string_view rest) {
  if (rest.size() < 2 || rest[0] != '\'') return 0;
  for (std::string_view suffix : {"s", "t", "re", "ve", "m", "ll", "d"})
    if (rest.substr(1).starts_with(suffix)) return 1 + suffix.size();
  return 0;
}

// Bytes of the piece starting at `pos`.
size_t piece_length(std::string_view text, size_t pos) {
  std::string_view rest = text.substr(pos);
  if (size_t n = contraction_length(rest)) return n;
  // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional literal space, then a run of one class.
  size_t lead = rest[0] == ' ' && rest.size() > 1 ? 1 : 0;
  auto first = decode_front(rest.substr(lead));
  if (first.kind != Kind::Space) return lead + run_length(text, pos + lead, first.kind);
  // `\s+(?!\S)` then `\s+`: a whitespace run, leaving its last character to the next piece when a
  // non-space follows (so " word" keeps its space), unless the run is a single character.
  size_t run = run_length(text, pos, Kind::Space);
  if (pos + run == text.size()) return run;
  size_t last = run;  // back up by one code point
  do --last;
  while (last > 0 && (static_cast<unsigned char>(rest[last]) & 0xC0) == 0x80);
  return last > 0 ? last : run;
}

}  // namespace

std::vector<std::string_view> gpt2_pieces(std::string_view text) {
  std::vector<std::string_view> pieces;
  for (size_t pos = 0; pos < text.size();) {
    size_t n = piece_length(text, pos);
    pieces.push_back(text.substr(pos, n));
    pos += n;
  }
  return pieces;
}

}  // namespace moelab
