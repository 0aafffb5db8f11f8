// SimDomainImpl: one simulated guest's memory (a memfd, sparse) and the
// grant table it offers other domains. Internal to the simulated host.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "common/sim/sim_host.h"

namespace xenpath::sim {

class SimDomainImpl final : public SimDomain {
 public:
  struct GrantEntry {
    bool in_use = false;
    bool readonly = false;
    DomId to = 0;
    uint32_t pfn = 0;
    uint32_t maps = 0;  // live mappings by the grantee
  };

  static Result<std::shared_ptr<SimDomainImpl>> create(DomId id, uint32_t pages, std::string name,
                                                       uint32_t grant_entries) noexcept;
  ~SimDomainImpl() override;

  DomId id() const noexcept override { return id_; }
  uint32_t total_pages() const noexcept override { return pages_; }
  std::byte* page(uint32_t pfn) const noexcept override;
  Result<uint32_t> alloc_pages(uint32_t count) noexcept override;
  void free_pages(uint32_t pfn, uint32_t count) noexcept override;
  Result<GrantRef> grant_access(DomId to, uint32_t pfn, bool readonly) noexcept override;
  Status end_access(GrantRef ref) noexcept override;
  uint32_t active_maps(GrantRef ref) const noexcept override;
  uint32_t grants_in_use() const noexcept override;

  [[nodiscard]] int memfd() const noexcept { return memfd_; }
  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  // Hypervisor side (SimGrantTable). The lock guards entries_ and dying_.
  std::mutex& grant_lock() const noexcept { return mu_; }
  [[nodiscard]] bool dying() const noexcept { return dying_; }
  void mark_dying() noexcept;
  std::vector<GrantEntry>& entries() noexcept { return entries_; }

 private:
  SimDomainImpl(DomId id, uint32_t pages, std::string name) noexcept
      : id_(id), pages_(pages), name_(std::move(name)) {}

  DomId id_;
  uint32_t pages_;
  std::string name_;
  int memfd_ = -1;
  std::byte* view_ = nullptr;  // the guest's own RW view of all its memory

  mutable std::mutex mu_;
  std::vector<GrantEntry> entries_;
  std::vector<GrantRef> free_refs_;
  std::vector<bool> page_used_;
  uint32_t alloc_hint_ = 0;
  bool dying_ = false;
};

}  // namespace xenpath::sim
