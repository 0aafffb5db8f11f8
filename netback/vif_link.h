// dom0's side of a VIF: the kernel interface of its port (the tap that
// net_tap or virtio_user/vhost-net creates, vif<domid>.<devid>) attached to
// the bridge the toolstack named, with its MTU, and up -- what kernel
// netback leaves to the vif-bridge hotplug script. VifDevice calls a VifLink
// right after it opened the port (connect) and before it closes it
// (disconnect); two implementations: rtnetlink to a Linux bridge
// (link_netlink.h, the default) and an operator's executable for anything
// else, e.g. Open vSwitch (VifLinkHook, below).
//
// Toolstack keys (backend directory, as libxl writes them; read with mac
// and rate in the probe transaction):
//   bridge  always written by libxl (default "xenbr0"); absent: no attach
//   mtu     written by libxl only when not 1500; absent: the bridge's MTU,
//           1500 without a bridge (the vif-bridge script's rule)
//   ip      optional, space-separated addresses for vif-route/vif-nat and
//           vif-bridge's iptables rules: only handed to the hook
// The backend directory is dom0's, but the values are still validated
// (interface-name rules, bounded lengths): they end up in argv and netlink
// attributes.
//
// Threads: a VifLink belongs to the driver's control thread (connect and
// disconnect run there); it never runs on a worker. A hook blocks that
// thread for at most its timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"

namespace xenpath {

// What the toolstack asked for, after validation.
struct VifLinkKeys {
  std::string bridge;  // empty: none
  uint32_t mtu = 0;    // 0: absent
  std::string ip;      // empty: absent
};

// Reads bridge, mtu and ip under `backend_path`. A malformed value is
// dropped with a warning in `warn` (the VIF still connects, as kernel
// netback's connect does not depend on the hotplug script's keys); only a
// failing store is an error.
Result<VifLinkKeys> read_vif_link_keys(XenStore& xs, XsTxn t, const std::string& backend_path,
                                       std::string* warn) noexcept;
// Linux's dev_valid_name(): 1..15 bytes, not "." or "..", no '/', ':' or
// whitespace.
bool valid_ifname(std::string_view name) noexcept;

struct VifLinkRequest {
  std::string ifname;  // dom0's interface of the port
  VifLinkKeys keys;
  DomId domid = 0;
  uint32_t devid = 0;
  std::string backend_path;
};

// Counters of one VifLink (control thread writes, stats read there too).
struct VifLinkStats {
  uint64_t attached = 0;    // enslaved to the bridge (or the hook said yes)
  uint64_t unattached = 0;  // up, but no bridge to join (absent, missing, not a Linux bridge)
  uint64_t failures = 0;    // netlink refused or the hook failed
  uint64_t requests = 0;    // netlink requests sent, or hook runs
};

class VifLink {
 public:
  virtual ~VifLink() = default;
  // The port's interface exists: join the bridge, MTU, up. An error is
  // logged by the caller; the VIF stays connected (its rings work; only
  // dom0's plumbing is missing, which an operator can fix live).
  virtual Status attach(const VifLinkRequest& req) noexcept = 0;
  // The port is about to be closed. The kernel removes a destroyed
  // interface from a Linux bridge by itself; a hook is told ("remove").
  virtual void detach(const VifLinkRequest& req) noexcept = 0;
  [[nodiscard]] virtual const char* mode() const noexcept = 0;
  [[nodiscard]] virtual const VifLinkStats& stats() const noexcept = 0;
};

// Runs `path add|remove <ifname> <bridge>` (posix_spawn, no shell) with
// XENPATH_DOMID, XENPATH_DEVID, XENPATH_MTU, XENPATH_IP, XENBUS_PATH and
// vif=<ifname> added to the daemon's environment (vif and XENBUS_PATH as
// Xen's hotplug scripts have them). Waits at most `timeout`, then kills it.
class VifLinkHook final : public VifLink {
 public:
  VifLinkHook(std::string path, std::chrono::milliseconds timeout) : path_(std::move(path)), timeout_(timeout) {}
  Status attach(const VifLinkRequest& req) noexcept override;
  void detach(const VifLinkRequest& req) noexcept override;
  [[nodiscard]] const char* mode() const noexcept override { return "hook"; }
  [[nodiscard]] const VifLinkStats& stats() const noexcept override { return stats_; }

 private:
  Status run(const char* action, const VifLinkRequest& req) noexcept;

  std::string path_;
  std::chrono::milliseconds timeout_;
  VifLinkStats stats_;
};

}  // namespace xenpath
