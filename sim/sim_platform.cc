// SimPlatform: a daemon on the simulated host. Grant tables and event
// channels come from the simulated hypervisor; xenstore goes through the
// production libxenstore adapter on the simulated xenstored's socket, so the
// daemon's whole control plane is the code that runs on a real dom0.
#include <fmt/format.h>

#include "common/libxen/libxen_store.h"
#include "sim/sim_host.h"

namespace xenpath::sim {
namespace {

class SimPlatform final : public XenPlatform {
 public:
  SimPlatform(SimHost& host, DomId self) noexcept : host_(host), self_(self) {}

  Result<std::unique_ptr<GrantTable>> open_grant_table() noexcept override { return host_.open_grant_table(self_); }
  Result<std::unique_ptr<EventChannel>> open_event_channel() noexcept override {
    return host_.open_event_channel(self_);
  }
  Result<std::unique_ptr<XenStore>> open_xenstore() noexcept override {
    // Socket connections are privileged, as xenstored treats them: only a
    // dom0 daemon may use this path.
    if (self_ != kDom0) return host_.open_xenstore(self_);
    return LibxenStore::open(host_.xenstored_path());
  }
  DomId self() const noexcept override { return self_; }
  std::string name() const override { return fmt::format("sim (xenstored {})", host_.xenstored_path()); }

 private:
  SimHost& host_;
  DomId self_;
};

}  // namespace

std::unique_ptr<XenPlatform> make_sim_platform(SimHost& host, DomId self) noexcept {
  return std::make_unique<SimPlatform>(host, self);
}

}  // namespace xenpath::sim
