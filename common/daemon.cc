#include "common/daemon.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <thread>

#include "common/ctl_server.h"
#include "common/daemon_systemd.h"
#include "common/latency_histogram.h"
#include "common/systemd_notify.h"

namespace xenpath {

Result<std::unique_ptr<BackendDaemon>> BackendDaemon::create(XenPlatform& platform,
                                                             const DaemonOptions& opts) noexcept {
  try {
    std::unique_ptr<BackendDaemon> d(new BackendDaemon(platform, opts));
    unsigned n = opts.workers;
    if (n == 0) n = std::max(1u, std::thread::hardware_concurrency());
    n = std::min(n, 64u);

    Reactor::Options co;
    co.name = opts.name.substr(0, 8) + "-ctl";
    co.uring_entries = 0;
    // The control plane has nothing to spin for: watch events are rare.
    co.poll_window = std::chrono::microseconds(0);
    XP_ASSIGN_OR_RETURN(d->control_, Reactor::create(co));
    for (unsigned i = 0; i < n; ++i) {
      Reactor::Options wo;
      wo.name = fmt::format("{}-w{}", opts.name.substr(0, 8), i);
      wo.uring_entries = opts.uring_entries;
      wo.poll_window = opts.poll_window;
      wo.cpu = opts.first_cpu >= 0 ? opts.first_cpu + static_cast<int>(i) : -1;
      XP_ASSIGN_OR_RETURN(auto r, Reactor::create(wo));
      d->workers_.push_back(std::move(r));
    }
    XP_ASSIGN_OR_RETURN(auto xs, platform.open_xenstore());
    BackendDriver::Options dopt = opts.driver;
    dopt.self = platform.self();
    d->driver_ = std::make_unique<BackendDriver>(std::move(xs), dopt);
    XP_TRY(d->control_->start());
    if (opts.latency_histograms != "auto" && opts.latency_histograms != "on" && opts.latency_histograms != "off") {
      return unexpected(EINVAL);
    }
    d->set_latency_timing(opts.latency_histograms == "on" ||
                          (opts.latency_histograms == "auto" && !opts.metrics_listen.empty()));
    for (auto& w : d->workers_) XP_TRY(w->start());
    return d;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

BackendDaemon::~BackendDaemon() { stop(); }

std::vector<Reactor*> BackendDaemon::workers() const {
  std::vector<Reactor*> out;
  for (const auto& w : workers_) out.push_back(w.get());
  return out;
}

Status BackendDaemon::add_type(std::unique_ptr<DeviceType> type) noexcept {
  if (started_) return unexpected(EBUSY);
  return driver_->add_type(std::move(type));
}

void BackendDaemon::add_stats(StatsFn fn) { stats_fns_.push_back(std::move(fn)); }

void BackendDaemon::add_metrics(MetricsFn fn) { metrics_fns_.push_back(std::move(fn)); }

void BackendDaemon::add_setting(const std::string& key, DaemonSetting setting) { settings_[key] = std::move(setting); }

void BackendDaemon::set_latency_timing(bool on) noexcept {
  for (auto& w : workers_) w->set_fine_clock(on);
}

bool BackendDaemon::latency_timing() const noexcept { return !workers_.empty() && workers_.front()->fine_clock(); }

void BackendDaemon::add_method(const std::string& name, ControlServer::Method fn) { methods_[name] = std::move(fn); }

void BackendDaemon::add_stop_hook(std::function<void()> fn) { stop_hooks_.push_back(std::move(fn)); }

Status BackendDaemon::start() noexcept {
  if (started_ || stopped_) return unexpected(EALREADY);
  Status st = ok();
  std::shared_ptr<SystemdLink> sd;
  try {
    sd = std::make_shared<SystemdLink>(*this);
    driver_->on_enumerated([sd] { sd->enumerated(); });
  } catch (...) {
    return unexpected(ENOMEM);
  }
  control_->call([&] {
    st = driver_->start();
    if (st) st = driver_->attach(*control_);
  });
  if (!st) return st;
  started_ = true;
  started_at_ = std::chrono::steady_clock::now();
  XP_TRY(start_control());
  if (!opts_.metrics_listen.empty()) {
    auto m = MetricsEndpoint::create(opts_.metrics_listen, [this] { return metrics(); });
    if (!m) {
      spdlog::critical("--metrics-listen {}: {}", opts_.metrics_listen, error_string(m.error()));
      return unexpected(m.error());
    }
    metrics_ = std::move(*m);
    spdlog::info("{}: Prometheus metrics on http://{}/metrics", opts_.name, metrics_->address());
  }
  if (!opts_.stats_file.empty()) {
    // On the control reactor: the driver's state is read where it lives,
    // and a slow disk delays only the control plane, never a datapath.
    Result<Reactor::TimerId> timer = unexpected(EIO);
    control_->call([&] {
      timer = control_->add_timer(opts_.stats_interval, [this] {
        if (auto w = write_file(collect()); !w) {
          spdlog::warn("stats file {}: {}", opts_.stats_file, error_string(w.error()));
        }
      });
    });
    if (!timer) return unexpected(timer.error());
    control_->call([&] { (void)write_file(collect()); });
  }
  spdlog::info("{}: serving backend devices of domain {} on {} worker(s) ({})", opts_.name, platform_.self(),
               workers_.size(), platform_.name());
  std::string tail;
  try {
    if (const std::string c = ctl_socket_path(); !c.empty()) tail += "; control " + c;
    if (metrics_) tail += fmt::format("; metrics http://{}/metrics", metrics_->address());
  } catch (...) {
    // Out of memory: the STATUS= lines go without the addresses.
  }
  return sd->started(std::move(tail));
}

void BackendDaemon::stop() noexcept {
  if (stopped_) return;
  stopped_ = true;
  if (started_) systemd_notify_stopping("disconnecting every device");
  // No scrape may wait for a control reactor that is going away.
  metrics_.reset();
  if (control_ && driver_) {
    control_->call([&] {
      ctl_.reset();
      driver_->stop();
      if (!opts_.stats_file.empty()) (void)write_file(collect());
    });
  }
  for (auto& hook : stop_hooks_) hook();
  if (control_) control_->stop();
  for (auto& w : workers_) w->stop();
}

nlohmann::json BackendDaemon::collect() {
  nlohmann::json j;
  j["daemon"] = opts_.name;
  j["version"] = XENPATH_VERSION;
  j["platform"] = platform_.name();
  j["pid"] = ::getpid();
  j["time"] = static_cast<int64_t>(std::time(nullptr));
  j["uptime_s"] =
      started_ ? std::chrono::duration<double>(std::chrono::steady_clock::now() - started_at_).count() : 0.0;
  j["running"] = started_ && !stopped_;
  const BackendDriverStats& s = driver_->stats();
  j["xenbus"] = {
      {"devices", s.devices.get()},
      {"connected", s.connected.get()},
      {"probes", s.probes.get()},
      {"probe_failures", s.probe_failures.get()},
      {"connects", s.connects.get()},
      {"connect_failures", s.connect_failures.get()},
      {"disconnects", s.disconnects.get()},
      {"destroys", s.destroys.get()},
      {"protocol_errors", s.protocol_errors.get()},
      {"watch_events", s.watch_events.get()},
      {"xs_errors", s.xs_errors.get()},
      {"release_firings", s.release_firings.get()},
      {"release_checks", s.release_checks.get()},
      {"release_reads", s.release_reads.get()},
  };
  nlohmann::json workers = nlohmann::json::array();
  for (const auto& w : workers_) {
    const ReactorStats& r = w->stats();
    workers.push_back({{"name", w->name()},
                       {"iterations", r.iterations},
                       {"busy_iterations", r.busy_iterations},
                       {"busy_ns", r.busy_ns},
                       {"epoll_waits", r.epoll_waits},
                       {"clock_reads", r.clock_reads},
                       {"fine_clock_reads", r.fine_clock_reads},
                       {"sleeps", r.sleeps},
                       {"wakeups_by_arm", r.wakeups_by_arm},
                       {"mailbox_tasks", r.mailbox_tasks},
                       {"uring_submits", r.uring_submits},
                       {"uring_sqes", r.uring_sqes},
                       {"uring_cqes", r.uring_cqes}});
  }
  j["workers"] = std::move(workers);
  // Whether requests are being timed now, and the latency histograms' bucket
  // bounds (the queues' histograms give counts only).
  j["latency_timing"] = latency_timing();
  j["latency_bounds_ns"] = latency_bounds_json();
  for (auto& fn : stats_fns_) fn(j);
  return j;
}

nlohmann::json BackendDaemon::stats() {
  nlohmann::json j;
  control_->call([&] { j = collect(); });
  return j;
}

Status BackendDaemon::write_stats_file() {
  if (opts_.stats_file.empty()) return unexpected(EINVAL);
  Status st = ok();
  control_->call([&] { st = write_file(collect()); });
  return st;
}

Status BackendDaemon::write_file(const nlohmann::json& j) noexcept {
  try {
    const std::string tmp = opts_.stats_file + ".tmp";
    const std::string text = j.dump(2) + "\n";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return unexpected(errno);
    size_t off = 0;
    while (off < text.size()) {
      const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int e = n < 0 ? errno : EIO;
        ::close(fd);
        return unexpected(e);
      }
      off += static_cast<size_t>(n);
    }
    ::close(fd);
    // Readers (the lab, monitoring) never see a half-written document.
    if (::rename(tmp.c_str(), opts_.stats_file.c_str()) != 0) return unexpected(errno);
    return ok();
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

void block_termination_signals() noexcept {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // A stats reader or log consumer that goes away must not kill the daemon.
  signal(SIGPIPE, SIG_IGN);
}

int wait_for_termination(std::chrono::milliseconds period, const std::function<bool()>& tick) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(period).count();
  const timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  for (;;) {
    const int sig = sigtimedwait(&set, nullptr, &ts);
    if (sig > 0) return sig;
    if (tick && !tick()) return 0;
  }
}

}  // namespace xenpath
