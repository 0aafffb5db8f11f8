// SimHypervisor: the hypervisor half of the simulated Xen host -- domains
// with their memory and grant tables, the host-wide event-channel port
// table, and the counters tests assert on. SimHost adds the simulated
// xenstored on top.
//
// Domains: dom0 exists from the start with no memory; create_domain(0, ...)
// gives it memory once (while it still has none). Other ids below
// DOMID_FIRST_RESERVED can be created, destroyed and created again.
// Destroying a domain is what Xen does when a guest dies:
// - its grants can no longer be mapped or copied (GNTST_bad_domain), but
//   mappings already made stay valid and readable until they are unmapped
//   (each mapping holds the pages, as Xen holds a page reference);
// - its event-channel ports close: a backend's bound port reverts to
//   unbound and stays until the backend unbinds it, and the backend's
//   notify() on it is dropped;
// - its guest memory view (SimDomain::page()) goes away, so a simulated
//   frontend must stop touching guest pages before its domain is destroyed.
// The SimDomain object itself stays valid until the SimHypervisor is
// destroyed (its calls then fail with ESRCH), so a stale pointer never
// dangles.
//
// Thread-safety: every method may be called from any thread; internal locks
// are short (this is the hypervisor's side, not the datapath). Handles
// opened here must be destroyed before the SimHypervisor.
//
// Guest-shared memory: owns all of it (one memfd per domain).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/xen/event_channel.h"
#include "common/xen/grant_table.h"
#include "common/xen/types.h"
#include "sim/sim_event_channel.h"
#include "sim/sim_host.h"

namespace xenpath::sim {

class GuestDomain;

class SimHypervisor {
 public:
  // DOMID_FIRST_RESERVED: ids from here on are DOMID_SELF, DOMID_IO...
  static constexpr DomId kFirstReservedDomid = 0x7FF0;

  explicit SimHypervisor(uint32_t grant_entries_per_domain = 65536);
  ~SimHypervisor();
  SimHypervisor(const SimHypervisor&) = delete;
  SimHypervisor& operator=(const SimHypervisor&) = delete;

  // A guest with `mem_pages` of (sparse) memory. EEXIST if the id is taken,
  // EINVAL for a reserved id.
  Result<SimDomain*> create_domain(DomId id, uint32_t mem_pages, const std::string& name) noexcept;
  // ESRCH if unknown, EPERM for dom0.
  Status destroy_domain(DomId id) noexcept;
  // nullptr if unknown or destroyed.
  [[nodiscard]] SimDomain* domain(DomId id) noexcept;

  // Handles acting as domain `self` (ESRCH if it does not exist).
  Result<std::unique_ptr<GrantTable>> open_grant_table(DomId self) noexcept;
  Result<std::unique_ptr<EventChannel>> open_event_channel(DomId self) noexcept;

  [[nodiscard]] SimCounters& counters() noexcept { return counters_; }
  // EVTCHNOP_status for any domain's port (tests, toolstack views).
  [[nodiscard]] EvtchnStatus evtchn_status(DomId dom, EvtchnPort port) const noexcept {
    return ports_.status(dom, port);
  }

  // For SimGrantTable: the live domain `id` or nullptr. The pointer stays
  // valid for the hypervisor's lifetime; check alive() under its lock.
  [[nodiscard]] GuestDomain* live_domain(DomId id) noexcept;

 private:
  const uint32_t grant_entries_per_domain_;
  SimCounters counters_;
  SimPortTable ports_{counters_};
  mutable std::mutex mu_;
  std::map<DomId, std::unique_ptr<GuestDomain>> domains_;  // live, guarded by mu_
  std::vector<std::unique_ptr<GuestDomain>> dead_;         // destroyed, guarded by mu_
};

}  // namespace xenpath::sim
