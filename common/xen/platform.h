// XenPlatform: where a daemon gets its Xen handles. One per process; the
// reactors each open their own grant-table and event-channel handles.
//
// LibxenPlatform talks to the real hypervisor (chosen when /dev/xen exists);
// SimPlatform (common/sim/) talks to an in-process simulated host.
#pragma once

#include <memory>
#include <string>

#include "common/result.h"
#include "common/xen/event_channel.h"
#include "common/xen/grant_table.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"

namespace xenpath {

class XenPlatform {
 public:
  virtual ~XenPlatform() = default;
  virtual Result<std::unique_ptr<GrantTable>> open_grant_table() noexcept = 0;
  virtual Result<std::unique_ptr<EventChannel>> open_event_channel() noexcept = 0;
  virtual Result<std::unique_ptr<XenStore>> open_xenstore() noexcept = 0;
  // The domain the backends run in (0 for dom0, a driver domain's id otherwise).
  [[nodiscard]] virtual DomId self() const noexcept = 0;
  [[nodiscard]] virtual std::string name() const = 0;
};

// True when this machine runs on Xen with the devices a backend needs.
bool xen_available() noexcept;

// The real platform over libxengnttab/libxenevtchn/libxenstore.
// `xenstored_path`: connect to a xenstored unix socket instead of the default
// (empty = libxenstore's default choice).
Result<std::unique_ptr<XenPlatform>> open_libxen_platform(const std::string& xenstored_path = {}) noexcept;

}  // namespace xenpath
