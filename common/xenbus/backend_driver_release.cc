// The @releaseDomain check, apart from the driver's core: when it runs, and
// what it costs (docs/architecture.md, "Shutdown storms"). Owning thread:
// the driver's (its control reactor). Touches no guest memory.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "common/xenbus/backend_driver.h"

namespace xenpath {

void BackendDriver::handle_release_domain(uint64_t firings) noexcept {
  // @releaseDomain does not say which domain died, and the check is a read
  // per frontend domain served: answering every firing makes a shutdown
  // storm of n guests cost O(n^2) reads (seed 004). The toolstack's removal
  // of a dead guest's device directories already reaches each device
  // through its own watches, at once; this check only catches a frontend
  // domain that died without them (a toolstack that crashed), so it can
  // wait, and the firings pay for it: it runs after kReleaseQuiet without
  // another firing (a single death, or the end of a storm), or once as many
  // firings have come as there are domains to read (so a storm costs at
  // most one read per firing), or at the latest kReleaseMaxDelay after the
  // first firing it covers (a safety net for an endless trickle of deaths;
  // a shorter one would read every served domain again every so often
  // while a long storm lasts). A firing during the check schedules
  // another, so no death goes unchecked.
  constexpr auto kReleaseQuiet = std::chrono::milliseconds(500);
  constexpr auto kReleaseMaxDelay = std::chrono::seconds(60);
  release_firings_ += firings;
  stats_.release_firings.add(firings);
  if (!arm_release_ || release_firings_ >= by_frontend_.size()) {
    run_release_check();  // driven by hand (no timers), or paid for
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  if (!release_pending_) {
    release_pending_ = true;
    release_first_ = now;
  }
  if (!arm_release_(std::min(now + kReleaseQuiet, release_first_ + kReleaseMaxDelay))) run_release_check();
}

void BackendDriver::run_release_check() noexcept {
  if (release_pending_ && arm_release_) (void)arm_release_({});  // disarm
  release_pending_ = false;
  release_firings_ = 0;
  if (!started_) return;
  // One read per frontend domain served, not per device.
  std::vector<DomId> doms;
  doms.reserve(by_frontend_.size());
  for (const auto& [fe, devs] : by_frontend_) doms.push_back(fe);
  stats_.release_checks.add();
  stats_.release_reads.add(doms.size());
  for (DomId fe : doms) {
    auto r = xs_->read(kXsNoTxn, fmt::format("/local/domain/{}", fe));
    if (r || r.error() != ENOENT) continue;  // alive, or we may not look (driver domain)
    auto it = by_frontend_.find(fe);
    if (it == by_frontend_.end()) continue;
    std::vector<Device*> devs(it->second.begin(), it->second.end());
    for (Device* d : devs) {
      d->log.info("frontend domain {} is gone", fe);
      frontend_vanished(*d);
    }
  }
}

}  // namespace xenpath
