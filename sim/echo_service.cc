#include "sim/echo_service.h"

namespace xenpath::sim {

DaemonCli EchoService::cli_defaults() {
  DaemonCli c;
  c.daemon.name = "xenpath-echo";
  c.daemon.workers = 2;
  c.daemon.uring_entries = 0;  // echo queues do no I/O
  c.log_level = "warn";
  return c;
}

void EchoService::add_cli(CLI::App& app, Options& opts) {
  app.add_option("--type", opts.type_name, "xenstore device type to serve");
}

Result<std::unique_ptr<EchoService>> EchoService::create(BackendDaemon& daemon, const Options& opts) noexcept {
  try {
    std::unique_ptr<EchoService> s(new EchoService());
    s->type_name_ = opts.type_name;
    XP_TRY(s->workers_.open(daemon.workers(), daemon.platform()));
    XP_TRY(daemon.add_type(std::make_unique<EchoDeviceType>(s->workers(), opts.type_name, daemon.device_error_sink())));
    const EchoService* self = s.get();
    daemon.add_stats([self](nlohmann::json& j) { j["mapped_grant_pages"] = self->mapped_pages(); });
    return s;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

}  // namespace xenpath::sim
