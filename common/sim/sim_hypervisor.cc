#include "common/sim/sim_hypervisor.h"

#include "common/sim/sim_domain.h"
#include "common/sim/sim_event_channel.h"
#include "common/sim/sim_grant_table.h"

namespace xenpath::sim {

SimHypervisor::SimHypervisor(uint32_t grant_entries_per_domain) noexcept
    : grant_entries_(std::max<uint32_t>(grant_entries_per_domain, 64)),
      ports_(make_sim_port_table(&counters_)) {}

SimHypervisor::~SimHypervisor() = default;

Result<SimDomain*> SimHypervisor::create_domain(DomId id, uint32_t mem_pages, const std::string& name) noexcept {
  if (id >= kDomidInvalid) return unexpected(EINVAL);
  std::lock_guard lock(mu_);
  if (domains_.count(id) != 0) return unexpected(EEXIST);
  XP_ASSIGN_OR_RETURN(auto dom, SimDomainImpl::create(id, mem_pages, name, grant_entries_));
  SimDomain* raw = dom.get();
  domains_.emplace(id, std::move(dom));
  return raw;
}

Status SimHypervisor::destroy_domain(DomId id) noexcept {
  std::shared_ptr<SimDomainImpl> dom;
  {
    std::lock_guard lock(mu_);
    auto it = domains_.find(id);
    if (it == domains_.end()) return unexpected(ESRCH);
    dom = std::move(it->second);
    domains_.erase(it);
  }
  // Mappings made before stay valid: they hold the domain (and its memfd)
  // through shared_ptr until the backend unmaps, like a zombie domain on Xen.
  dom->mark_dying();
  sim_close_domain_ports(*ports_, id);
  return ok();
}

SimDomain* SimHypervisor::domain(DomId id) noexcept {
  std::lock_guard lock(mu_);
  auto it = domains_.find(id);
  return it == domains_.end() ? nullptr : it->second.get();
}

std::shared_ptr<SimDomainImpl> SimHypervisor::find_live(DomId id) noexcept {
  std::lock_guard lock(mu_);
  auto it = domains_.find(id);
  return it == domains_.end() ? nullptr : it->second;
}

Result<std::unique_ptr<GrantTable>> SimHypervisor::open_grant_table(DomId self) noexcept {
  return std::unique_ptr<GrantTable>(new SimGrantTable(*this, self));
}

Result<std::unique_ptr<EventChannel>> SimHypervisor::open_event_channel(DomId self) noexcept {
  return SimEventChannel::open(ports_, self);
}

}  // namespace xenpath::sim
