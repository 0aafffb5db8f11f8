// LibxenEventChannel: EventChannel over libxenevtchn (/dev/xen/evtchn).
// Owned by one thread; its fd is made non-blocking so pending() never blocks.
#pragma once

#include <memory>

#include "common/xen/event_channel.h"

namespace xenpath {

class LibxenEventChannel {
 public:
  static Result<std::unique_ptr<EventChannel>> open() noexcept;
};

}  // namespace xenpath
