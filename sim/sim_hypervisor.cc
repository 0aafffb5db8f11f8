#include "sim/sim_hypervisor.h"

#include <cstdlib>
#include <new>

#include <spdlog/spdlog.h>

#include "sim/sim_domain.h"
#include "sim/sim_grant_table.h"

namespace xenpath::sim {

SimHypervisor::SimHypervisor(uint32_t grant_entries_per_domain) : grant_entries_per_domain_(grant_entries_per_domain) {
  // Dom0 always exists on Xen. Without memory it needs no memfd, so this
  // can only fail for lack of a few hundred bytes.
  auto dom0 = GuestDomain::create(kDom0, 0, "Domain-0", grant_entries_per_domain_);
  if (!dom0) {
    spdlog::critical("sim: cannot create dom0: {}", error_string(dom0.error()));
    std::abort();
  }
  domains_.emplace(kDom0, std::move(*dom0));
  ports_.domain_created(kDom0);
}

SimHypervisor::~SimHypervisor() = default;

Result<SimDomain*> SimHypervisor::create_domain(DomId id, uint32_t mem_pages, const std::string& name) noexcept {
  if (id >= kFirstReservedDomid) return unexpected(EINVAL);
  std::lock_guard lk(mu_);
  auto it = domains_.find(id);
  // Dom0 is there from the start; giving it memory once is allowed.
  const bool give_dom0_memory = id == kDom0 && it != domains_.end() && it->second->total_pages() == 0 &&
                                it->second->grants_in_use() == 0 && mem_pages > 0;
  if (it != domains_.end() && !give_dom0_memory) return unexpected(EEXIST);
  XP_ASSIGN_OR_RETURN(auto d, GuestDomain::create(id, mem_pages, name, grant_entries_per_domain_));
  SimDomain* raw = d.get();
  try {
    if (give_dom0_memory) {
      // The memoryless dom0 object stays valid (dead) for anyone holding it;
      // its event channels are keyed by domid and carry over.
      dead_.reserve(dead_.size() + domains_.size() + 1);
      it->second->kill();
      dead_.push_back(std::move(it->second));
      it->second = std::move(d);
      return raw;
    }
    // Room to retire every live domain, so destroy_domain() cannot fail.
    dead_.reserve(dead_.size() + domains_.size() + 1);
    domains_.emplace(id, std::move(d));
  } catch (const std::bad_alloc&) {
    return unexpected(ENOMEM);
  }
  ports_.domain_created(id);
  return raw;
}

Status SimHypervisor::destroy_domain(DomId id) noexcept {
  if (id == kDom0) return unexpected(EPERM);
  {
    std::lock_guard lk(mu_);
    auto it = domains_.find(id);
    if (it == domains_.end()) return unexpected(ESRCH);
    it->second->kill();
    dead_.push_back(std::move(it->second));  // capacity reserved at creation
    domains_.erase(it);
  }
  ports_.domain_destroyed(id);
  return ok();
}

SimDomain* SimHypervisor::domain(DomId id) noexcept { return live_domain(id); }

GuestDomain* SimHypervisor::live_domain(DomId id) noexcept {
  std::lock_guard lk(mu_);
  auto it = domains_.find(id);
  return it == domains_.end() ? nullptr : it->second.get();
}

Result<std::unique_ptr<GrantTable>> SimHypervisor::open_grant_table(DomId self) noexcept {
  if (live_domain(self) == nullptr) return unexpected(ESRCH);
  auto* gt = new (std::nothrow) SimGrantTable(*this, self);
  if (gt == nullptr) return unexpected(ENOMEM);
  return std::unique_ptr<GrantTable>(gt);
}

Result<std::unique_ptr<EventChannel>> SimHypervisor::open_event_channel(DomId self) noexcept {
  XP_ASSIGN_OR_RETURN(auto h, SimEventChannel::open(ports_, self));
  return std::unique_ptr<EventChannel>(std::move(h));
}

}  // namespace xenpath::sim
