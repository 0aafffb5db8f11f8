#include "common/xenbus/state.h"

#include <array>

#include "common/enum_names.h"

namespace xenpath {

std::string_view to_string(XenbusState s) noexcept {
  static constexpr auto kNames =
      std::to_array<std::string_view>({"Unknown", "Initialising", "InitWait", "Initialised", "Connected", "Closing",
                                       "Closed", "Reconfiguring", "Reconfigured"});
  static_assert(kNames.size() == kXenbusStateMax + 1, "a name for every state");
  return enum_name(s, kNames, std::string_view("Invalid"));
}

std::string_view state_value(XenbusState s) noexcept {
  static constexpr std::string_view kValues[] = {"0", "1", "2", "3", "4", "5", "6", "7", "8"};
  const auto i = static_cast<unsigned>(s);
  return i <= kXenbusStateMax ? kValues[i] : std::string_view{};
}

std::optional<XenbusState> parse_xenbus_state(std::string_view value) noexcept {
  // One trailing terminator is tolerated; more is not a value a writer
  // produces by accident.
  if (!value.empty() && (value.back() == '\0' || value.back() == '\n')) value.remove_suffix(1);
  // Every valid state is a single digit, so the length check also rules out
  // leading zeros and anything that could overflow.
  if (value.size() != 1) return std::nullopt;
  const char c = value[0];
  if (c < '0' || c > static_cast<char>('0' + kXenbusStateMax)) return std::nullopt;
  return static_cast<XenbusState>(c - '0');
}

}  // namespace xenpath
