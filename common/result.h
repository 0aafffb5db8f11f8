// Result<T>: the one error vocabulary of xenpath. Shaped like std::expected
// (C++23, not in GCC 12's C++20 library) and carrying a positive errno code.
// Datapath code returns Result or plain counts and never throws.
#pragma once

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace xenpath {

// The error side: always a positive errno value (EINVAL, ENOENT, EAGAIN...).
struct Unexpected {
  int code;
};

[[nodiscard]] constexpr Unexpected unexpected(int code) noexcept { return Unexpected{code}; }

// errno at the point of a failed libc/libxen call, never 0.
[[nodiscard]] inline Unexpected unexpected_errno() noexcept { return Unexpected{errno != 0 ? errno : EIO}; }

inline std::string error_string(int code) { return std::strerror(code); }

template <typename T>
class [[nodiscard]] Result {
 public:
  using value_type = T;

  Result(T value) noexcept(std::is_nothrow_move_constructible_v<T>)  // NOLINT: implicit by design
      : value_(std::move(value)) {}
  Result(Unexpected e) noexcept : error_(e.code) {}  // NOLINT: implicit by design

  [[nodiscard]] bool has_value() const noexcept { return value_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & noexcept { return *value_; }
  const T& value() const& noexcept { return *value_; }
  T&& value() && noexcept { return std::move(*value_); }
  T& operator*() & noexcept { return *value_; }
  const T& operator*() const& noexcept { return *value_; }
  T&& operator*() && noexcept { return std::move(*value_); }
  T* operator->() noexcept { return &*value_; }
  const T* operator->() const noexcept { return &*value_; }

  template <typename U>
  T value_or(U&& fallback) const& {
    return has_value() ? *value_ : static_cast<T>(std::forward<U>(fallback));
  }

  // errno code; 0 when there is a value.
  [[nodiscard]] int error() const noexcept { return has_value() ? 0 : error_; }

 private:
  std::optional<T> value_;
  int error_ = 0;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  using value_type = void;
  Result() noexcept = default;
  Result(Unexpected e) noexcept : error_(e.code) {}  // NOLINT: implicit by design

  [[nodiscard]] bool has_value() const noexcept { return error_ == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  [[nodiscard]] int error() const noexcept { return error_; }

 private:
  int error_ = 0;
};

using Status = Result<void>;

[[nodiscard]] inline Status ok() noexcept { return {}; }

}  // namespace xenpath

// Propagates an error from an expression yielding Result<...>.
#define XP_TRY(expr)                                                                                      \
  do {                                                                                                    \
    if (auto xp_try_r_ = (expr); !xp_try_r_.has_value()) return ::xenpath::unexpected(xp_try_r_.error()); \
  } while (0)

#define XP_CONCAT_INNER_(a, b) a##b
#define XP_CONCAT_(a, b) XP_CONCAT_INNER_(a, b)
// XP_ASSIGN_OR_RETURN(auto x, expr): binds the value or returns the error.
#define XP_ASSIGN_OR_RETURN(decl, expr) XP_ASSIGN_OR_RETURN_IMPL_(XP_CONCAT_(xp_aor_, __LINE__), decl, expr)
#define XP_ASSIGN_OR_RETURN_IMPL_(tmp, decl, expr)                 \
  auto tmp = (expr);                                               \
  if (!tmp.has_value()) return ::xenpath::unexpected(tmp.error()); \
  decl = std::move(*tmp)
