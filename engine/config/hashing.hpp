// SHA-256 of strings and files: job identities, token-file and checkpoint checksums.
#pragma once

#include <string>

namespace moelab {

std::string sha256_hex(const std::string& bytes);
std::string file_sha256(const std::string& path);  // throws std::runtime_error naming an unreadable file

}  // namespace moelab
