// The error convention of every C function in difforge's native layer: return 0 on success and
// -1 on failure, keeping the message for `dfn_last_error` (C++ exceptions never cross into Rust).
// Shared by the native layer's source files.

#pragma once

#include <exception>
#include <string>

namespace difforge_native {

// The message of the last failure on this thread ("" when none).
inline thread_local std::string last_error;

// Runs `body`, turning an exception into -1 and a message.
template <typename F>
int guarded(F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return -1;
}

inline int fail(const char* message) {
  last_error = message;
  return -1;
}

}  // namespace difforge_native
