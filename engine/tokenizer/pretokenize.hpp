// GPT-2's pre-tokenizer, the pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// written out as a scanner over UTF-8 code points (categories from ICU) instead of a regex engine.
// Bytes that are not valid UTF-8 count as code points of no category, so any byte string splits.
#pragma once

#include <string_view>
#include <vector>

namespace moelab {

std::vector<std::string_view> gpt2_pieces(std::string_view text);

}  // namespace moelab
