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
  app.add_option("--ctl-socket", cli.ctl_socket,
                 std::string("control socket for xenpath-ctl (JSON-RPC, mode 0600); default ") + kCtlSocketDir +
                     "/<daemon>.sock, none: no socket");
  app.add_option("--metrics-listen", cli.daemon.metrics_listen,
                 "serve Prometheus metrics on ADDR:PORT/metrics (e.g. 127.0.0.1:9581); default: off");
  app.add_option("--latency-histograms", cli.daemon.latency_histograms,
                 "time requests for the latency histograms: auto (with --metrics-listen), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
}

void finish_daemon_cli(DaemonCli& cli) {
  cli.daemon.stats_interval = std::chrono::milliseconds(cli.stats_interval_ms);
  if (cli.ctl_socket == "none") {
    cli.daemon.ctl_socket.clear();
  } else if (cli.ctl_socket.empty()) {
    // The default: a daemon that cannot create it (not root) still serves.
    cli.daemon.ctl_socket = std::string(kCtlSocketDir) + "/" + cli.daemon.name + ".sock";
    cli.daemon.ctl_socket_optional = true;
  } else {
    cli.daemon.ctl_socket = cli.ctl_socket;
    cli.daemon.ctl_socket_optional = false;
  }
  log_init(cli.verbose ? "debug" : cli.log_level);
}

}  // namespace xenpath
