#include "sim/sim_demo.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fstream>

namespace xenpath::sim {

Result<SimGuestHandles> SimGuestHandles::open(SimHost& host, DomId domid) noexcept {
  SimGuestHandles g;
  g.domain = host.domain(domid);
  if (g.domain == nullptr) return unexpected(ENOENT);
  XP_ASSIGN_OR_RETURN(g.evtchn, host.open_event_channel(domid));
  XP_ASSIGN_OR_RETURN(g.xs, host.open_xenstore(domid));
  return g;
}

Result<std::unique_ptr<SimDemoHost>> SimDemoHost::create(const SimHost::Options& opts) noexcept {
  try {
    std::unique_ptr<SimDemoHost> d(new SimDemoHost());
    auto host = SimHost::create(opts);
    if (!host) {
      spdlog::critical("simulated host: {}", error_string(host.error()));
      return unexpected(host.error());
    }
    d->host_ = std::move(*host);
    d->platform_ = make_sim_platform(*d->host_);
    auto xs = d->host_->open_xenstore(kDom0);
    if (!xs) {
      spdlog::critical("toolstack xenstore: {}", error_string(xs.error()));
      return unexpected(xs.error());
    }
    d->tool_xs_ = std::move(*xs);
    d->tool_ = std::make_unique<SimToolstack>(*d->tool_xs_);
    return d;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Status SimDemoHost::create_guests(unsigned n, uint32_t pages) noexcept {
  for (unsigned g = 0; g < n; ++g) {
    const DomId domid = guest_id(g);
    if (auto dom = host_->create_domain(domid, pages, fmt::format("guest{}", domid)); !dom) {
      spdlog::critical("guest {}: {}", domid, error_string(dom.error()));
      return unexpected(dom.error());
    }
  }
  return ok();
}

void SimDemoHost::destroy_guests(unsigned n) noexcept {
  for (unsigned g = 0; g < n; ++g) (void)host_->destroy_domain(guest_id(g));
}

void add_run_cli(CLI::App& app, SimRunOptions& run, unsigned max_guests, double min_seconds) {
  app.add_option("--guests", run.guests, "simulated guests")->check(CLI::Range(1u, max_guests));
  app.add_option("--seconds", run.seconds,
                 min_seconds > 0 ? "how long the guests run" : "how long the guests run (0: until SIGTERM/SIGINT)")
      ->check(CLI::Range(min_seconds, 86400.0));
  app.add_option("--json", run.json, "write the run's summary as JSON to this file");
}

void write_summary(const std::string& path, const nlohmann::json& summary) {
  if (path.empty()) return;
  std::ofstream out(path);
  out << summary.dump(2) << "\n";
  if (!out) spdlog::error("summary {}: cannot write", path);
}

}  // namespace xenpath::sim
