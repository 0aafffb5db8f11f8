// SimHypervisor: the hypervisor half of the simulated host — domains with
// guest memory, their grant tables, and the event-channel port table.
// SimHost adds xenstored and the toolstack's part of a domain's life.
//
// Thread-safe: these are the hypervisor's data structures, used by guest
// threads and backend reactors alike; short internal locks, no datapath
// state of ours lives here.
#pragma once

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common/sim/sim_host.h"

namespace xenpath::sim {

class SimDomainImpl;
struct SimPortTable;

class SimHypervisor {
 public:
  explicit SimHypervisor(uint32_t grant_entries_per_domain = 65536) noexcept;
  ~SimHypervisor();
  SimHypervisor(const SimHypervisor&) = delete;
  SimHypervisor& operator=(const SimHypervisor&) = delete;

  Result<SimDomain*> create_domain(DomId id, uint32_t mem_pages, const std::string& name) noexcept;
  // Grants stop being usable for new maps/copies (GNTST_bad_domain), existing
  // mappings stay valid until unmapped (the memory lives while mapped), and
  // the domain's event-channel ports close.
  Status destroy_domain(DomId id) noexcept;
  SimDomain* domain(DomId id) noexcept;

  Result<std::unique_ptr<GrantTable>> open_grant_table(DomId self) noexcept;
  Result<std::unique_ptr<EventChannel>> open_event_channel(DomId self) noexcept;
  SimCounters& counters() noexcept { return counters_; }

  // For SimGrantTable: the live domain (keeps it alive while held), or null.
  std::shared_ptr<SimDomainImpl> find_live(DomId id) noexcept;

 private:
  uint32_t grant_entries_;
  std::mutex mu_;
  std::unordered_map<DomId, std::shared_ptr<SimDomainImpl>> domains_;
  std::shared_ptr<SimPortTable> ports_;
  SimCounters counters_;
};

}  // namespace xenpath::sim
