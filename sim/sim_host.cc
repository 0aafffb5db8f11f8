// SimHost: the simulated hypervisor (guest memory, grant tables, event
// channels) plus the simulated xenstored, and what Xen's toolstack does
// around a domain's life (its /local/domain/<id> node, @releaseDomain).
#include "sim/sim_host.h"

#include <fmt/format.h>

#include <array>

#include "sim/sim_hypervisor.h"
#include "sim/sim_xenstored.h"

namespace xenpath::sim {
namespace {

class SimHostImpl final : public SimHost {
 public:
  SimHostImpl(std::unique_ptr<SimHypervisor> hv, std::unique_ptr<SimXenstored> xsd,
              std::unique_ptr<XenStore> dom0_xs) noexcept
      : hv_(std::move(hv)), xsd_(std::move(xsd)), dom0_xs_(std::move(dom0_xs)) {}

  ~SimHostImpl() override {
    // The toolstack connection goes before the daemon it talks to.
    dom0_xs_.reset();
    xsd_.reset();
  }

  Result<SimDomain*> create_domain(DomId id, uint32_t mem_pages, const std::string& name) noexcept override {
    XP_ASSIGN_OR_RETURN(SimDomain * dom, hv_->create_domain(id, mem_pages, name));
    // What libxl writes for a new domain: its home, owned by the domain so the
    // guest can create device/, data/... below it.
    const std::string home = fmt::format("/local/domain/{}", id);
    auto r = run_transaction(*dom0_xs_, [&](XsTxn t) -> Status {
      XP_TRY(dom0_xs_->mkdir(t, home));
      const std::array<XsPerm, 1> perms{XsPerm{id, XsPerm::kNone}};
      XP_TRY(dom0_xs_->set_permissions(t, home, perms));
      XP_TRY(dom0_xs_->write(t, home + "/name", name));
      XP_TRY(dom0_xs_->write(t, home + "/domid", std::to_string(id)));
      XP_TRY(dom0_xs_->mkdir(t, home + "/device"));
      return dom0_xs_->set_permissions(t, home + "/device", perms);
    });
    if (!r) {
      (void)hv_->destroy_domain(id);
      return unexpected(r.error());
    }
    xsd_->introduce_domain(id);
    return dom;
  }

  Status destroy_domain(DomId id) noexcept override {
    if (id == kDom0) return unexpected(EPERM);
    XP_TRY(hv_->destroy_domain(id));
    // Order as on Xen: the hypervisor kills the domain, xenstored tells
    // watchers through @releaseDomain, and the toolstack removes the
    // domain's home (so frontend state nodes vanish).
    xsd_->release_domain(id);
    auto r = dom0_xs_->rm(kXsNoTxn, fmt::format("/local/domain/{}", id));
    if (!r && r.error() != ENOENT) return r;
    return ok();
  }

  SimDomain* domain(DomId id) noexcept override { return hv_->domain(id); }

  Result<std::unique_ptr<GrantTable>> open_grant_table(DomId self) noexcept override {
    return hv_->open_grant_table(self);
  }
  Result<std::unique_ptr<EventChannel>> open_event_channel(DomId self) noexcept override {
    return hv_->open_event_channel(self);
  }
  Result<std::unique_ptr<XenStore>> open_xenstore(DomId self) noexcept override { return xsd_->connect(self); }

  const std::string& xenstored_path() const noexcept override { return xsd_->socket_path(); }
  SimXenstored& xenstored() noexcept override { return *xsd_; }
  SimCounters& counters() noexcept override { return hv_->counters(); }

 private:
  std::unique_ptr<SimHypervisor> hv_;
  std::unique_ptr<SimXenstored> xsd_;
  std::unique_ptr<XenStore> dom0_xs_;  // the toolstack's connection
};

}  // namespace

Result<std::unique_ptr<SimHost>> SimHost::create(const Options& opts) noexcept {
  auto hv = std::make_unique<SimHypervisor>(opts.grant_entries_per_domain);
  XP_ASSIGN_OR_RETURN(auto xsd, SimXenstored::start(opts.xenstored_socket));
  XP_ASSIGN_OR_RETURN(auto dom0_xs, xsd->connect(kDom0));
  // Dom0 exists from boot (SimHypervisor creates it); xenstore gets its home.
  auto r = run_transaction(*dom0_xs, [&](XsTxn t) -> Status {
    XP_TRY(dom0_xs->write(t, "/local/domain/0/name", "Domain-0"));
    XP_TRY(dom0_xs->write(t, "/local/domain/0/domid", "0"));
    return dom0_xs->mkdir(t, "/local/domain/0/backend");
  });
  if (!r) return unexpected(r.error());
  return std::unique_ptr<SimHost>(new SimHostImpl(std::move(hv), std::move(xsd), std::move(dom0_xs)));
}

}  // namespace xenpath::sim
