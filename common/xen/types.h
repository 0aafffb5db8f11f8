// Basic Xen vocabulary shared by every module. Protocol headers from
// libxen-dev (<xen/...>) are fine everywhere; only the adapters in
// common/libxen/ include the libxen library headers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace xenpath {

using DomId = uint16_t;
using GrantRef = uint32_t;
using EvtchnPort = uint32_t;

inline constexpr size_t kPageSize = 4096;
inline constexpr size_t kPageShift = 12;
inline constexpr DomId kDom0 = 0;
inline constexpr DomId kDomidInvalid = 0x7FF4;  // DOMID_INVALID

// Base of the handle interfaces (EventChannel, GrantTable): a handle on an
// open device has one owner and is never copied.
class XenHandle {
 public:
  XenHandle(const XenHandle&) = delete;
  XenHandle& operator=(const XenHandle&) = delete;

 protected:
  XenHandle() = default;
  ~XenHandle() = default;
};

}  // namespace xenpath
