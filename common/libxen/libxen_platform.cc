// The real platform: a dom0 (or driver domain) with /dev/xen.
#include <unistd.h>

#include <cstdlib>

#include "common/libxen/libxen_evtchn.h"
#include "common/libxen/libxen_gnttab.h"
#include "common/libxen/libxen_store.h"
#include "common/xen/platform.h"

namespace xenpath {
namespace {

class LibxenPlatform final : public XenPlatform {
 public:
  LibxenPlatform(std::string xenstored_path, DomId self) noexcept
      : xenstored_path_(std::move(xenstored_path)), self_(self) {}

  Result<std::unique_ptr<GrantTable>> open_grant_table() noexcept override { return LibxenGrantTable::open(); }
  Result<std::unique_ptr<EventChannel>> open_event_channel() noexcept override { return LibxenEventChannel::open(); }
  Result<std::unique_ptr<XenStore>> open_xenstore() noexcept override { return LibxenStore::open(xenstored_path_); }
  DomId self() const noexcept override { return self_; }
  std::string name() const override { return "xen"; }

 private:
  std::string xenstored_path_;
  DomId self_;
};

}  // namespace

bool xen_available() noexcept {
  return access("/dev/xen/gntdev", R_OK | W_OK) == 0 && access("/dev/xen/evtchn", R_OK | W_OK) == 0;
}

Result<std::unique_ptr<XenPlatform>> open_libxen_platform(const std::string& xenstored_path) noexcept {
  if (!xen_available()) return unexpected(ENODEV);
  // Our own domid: "domid" under our home, which xenstore resolves for a
  // relative path. A driver domain serves backends as itself.
  XP_ASSIGN_OR_RETURN(auto xs, LibxenStore::open(xenstored_path));
  DomId self = kDom0;
  if (auto id = xs->read(kXsNoTxn, "domid"); id) {
    self = static_cast<DomId>(std::strtoul(id->c_str(), nullptr, 10));
  }
  return std::unique_ptr<XenPlatform>(new LibxenPlatform(xenstored_path, self));
}

}  // namespace xenpath
