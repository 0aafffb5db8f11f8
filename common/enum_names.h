// Names of an enum's values from one table indexed by value, instead of a
// switch per enum: the table's length is checked against the enum's last
// value where it is declared (static_assert), so a value added without a
// name fails to compile, as -Wswitch would have warned.
#pragma once

#include <array>
#include <cstddef>

namespace xenpath {

// names[value], or `fallback` for a value past the table (a corrupted or
// hostile value cast to the enum).
template <typename E, typename T, size_t N>
constexpr T enum_name(E value, const std::array<T, N>& names, T fallback) noexcept {
  const auto i = static_cast<size_t>(value);
  return i < N ? names[i] : fallback;
}

}  // namespace xenpath
