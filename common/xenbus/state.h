// XenbusState: the handshake states both ends of a split driver publish in
// their xenstore "state" node (values of <xen/io/xenbus.h>).
//
// A frontend's state node is written by the guest, so parse_xenbus_state()
// treats it as hostile input: anything but a plain decimal in range is
// rejected instead of being guessed at. Pure functions; no thread owns them.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace xenpath {

enum class XenbusState : uint8_t {
  kUnknown = 0,
  kInitialising = 1,
  kInitWait = 2,
  kInitialised = 3,
  kConnected = 4,
  kClosing = 5,
  kClosed = 6,
  kReconfiguring = 7,
  kReconfigured = 8,
};

inline constexpr unsigned kXenbusStateMax = 8;

// "Initialising", "InitWait", ... as Linux's xenbus_strstate() names them.
[[nodiscard]] std::string_view to_string(XenbusState s) noexcept;

// The decimal string xenstore holds for `s` ("1".."8").
[[nodiscard]] std::string_view state_value(XenbusState s) noexcept;

// Parses a state node's value. Accepts what xenbus writers produce: an
// optional trailing NUL or newline aside (xenstore-write and some C
// frontends include them), only the digits of a value in 0..8. Leading
// zeros, signs, spaces, hex, overflow and the empty string are rejected
// (nullopt): a frontend can write anything there.
[[nodiscard]] std::optional<XenbusState> parse_xenbus_state(std::string_view value) noexcept;

}  // namespace xenpath
