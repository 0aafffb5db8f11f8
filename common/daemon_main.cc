#include "common/daemon_main.h"

namespace xenpath {

void add_daemon_cli(CLI::App& app, DaemonCli& cli) {
  app.add_option("--workers", cli.daemon.workers, "worker reactors (datapath threads); 0: one per CPU");
  app.add_option("--first-cpu", cli.daemon.first_cpu, "pin worker i to CPU first-cpu + i");
  app.add_option("--stats-file", cli.daemon.stats_file, "JSON stats document, rewritten every interval");
  app.add_option("--stats-interval-ms", cli.stats_interval_ms, "stats file interval")->check(CLI::Range(50, 3600000));
  app.add_option("--log-level", cli.log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.add_flag("-v,--verbose", cli.verbose, "debug logging");
}

void finish_daemon_cli(DaemonCli& cli) {
  cli.daemon.stats_interval = std::chrono::milliseconds(cli.stats_interval_ms);
  log_init(cli.verbose ? "debug" : cli.log_level);
}

}  // namespace xenpath
