// SimDemoHost: what every xenpath-sim run (blkback, netback, the echo demo)
// starts from: a simulated host, the platform a daemon on it uses, and a
// libxl-like toolstack in dom0 that creates guests and plugs their devices.
//
// Threads: the owning (main) thread; guests' own threads use host().
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"
#include "common/xen/platform.h"
#include "sim/sim_host.h"
#include "sim/sim_toolstack.h"

namespace xenpath::sim {

// What a simulated guest's kernel holds on its own thread: its domain, an
// event-channel handle and a xenstore connection acting as that domain.
struct SimGuestHandles {
  SimDomain* domain = nullptr;
  std::unique_ptr<EventChannel> evtchn;
  std::unique_ptr<XenStore> xs;

  static Result<SimGuestHandles> open(SimHost& host, DomId domid) noexcept;
};

// What every simulated-host run takes: its guests, how long they run, and
// where its JSON summary goes.
struct SimRunOptions {
  unsigned guests = 4;
  double seconds = 10;  // 0 (where allowed): until SIGTERM/SIGINT
  std::string json;
};

// --guests (1..max_guests), --seconds (min_seconds..1 day), --json.
void add_run_cli(CLI::App& app, SimRunOptions& run, unsigned max_guests, double min_seconds);

class SimDemoHost {
 public:
  // Logs what failed (the runs' callers just exit 2).
  static Result<std::unique_ptr<SimDemoHost>> create(const SimHost::Options& opts = {}) noexcept;

  [[nodiscard]] SimHost& host() noexcept { return *host_; }
  [[nodiscard]] XenPlatform& platform() noexcept { return *platform_; }
  [[nodiscard]] SimToolstack& tool() noexcept { return *tool_; }

  // Guests 1..n, named guest<domid>, `pages` of memory each.
  Status create_guests(unsigned n, uint32_t pages) noexcept;
  // The toolstack's last step: guests 1..n go (their xenstore nodes too).
  void destroy_guests(unsigned n) noexcept;
  static DomId guest_id(unsigned i) noexcept { return static_cast<DomId>(i + 1); }

 private:
  SimDemoHost() noexcept = default;
  std::unique_ptr<SimHost> host_;
  std::unique_ptr<XenPlatform> platform_;
  std::unique_ptr<XenStore> tool_xs_;
  std::unique_ptr<SimToolstack> tool_;
};

// A run's summary as JSON at `path` (nothing when empty), for scripts and CI.
void write_summary(const std::string& path, const nlohmann::json& summary);

}  // namespace xenpath::sim
