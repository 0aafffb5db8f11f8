// BackendDaemon's control socket and metrics: the JSON-RPC methods every
// daemon serves (docs/ops.md), whatever its device types, and the scrape.
//
// Every method runs on the control reactor: it reads the driver's devices
// where they live and the queues' single-writer counters as the stats file
// does, so no worker is ever stopped or waited for.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <charconv>
#include <optional>

#include "common/ctl_server.h"
#include "common/daemon.h"
#include "common/xenbus/state.h"

namespace xenpath {
namespace {

// "<type>/<domid>/<devid>" or "<domid>/<devid>".
struct DeviceRef {
  std::string type;  // empty: any
  DomId domid = 0;
  uint32_t devid = 0;
};

template <class T>
bool parse_uint(std::string_view s, T& out) {
  if (s.empty() || s.size() > 10) return false;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

std::optional<DeviceRef> parse_device_ref(std::string_view s) {
  DeviceRef r;
  const size_t last = s.rfind('/');
  if (last == std::string_view::npos) return std::nullopt;
  if (!parse_uint(s.substr(last + 1), r.devid)) return std::nullopt;
  std::string_view head = s.substr(0, last);
  const size_t mid = head.rfind('/');
  if (mid != std::string_view::npos) {
    r.type = std::string(head.substr(0, mid));
    head = head.substr(mid + 1);
    if (r.type.empty() || r.type.find('/') != std::string::npos) return std::nullopt;
  }
  if (!parse_uint(head, r.domid)) return std::nullopt;
  return r;
}

nlohmann::json device_entry(const DeviceAddress& a, XenbusState st, const BackendDevice& dev, bool detail) {
  nlohmann::json e = {{"device", fmt::format("{}/{}/{}", a.type, a.frontend_id, a.devid)},
                      {"type", a.type},
                      {"domid", a.frontend_id},
                      {"devid", a.devid},
                      {"state", std::string(to_string(st))}};
  if (detail) {
    e["backend_path"] = a.backend_path;
    e["frontend_path"] = a.frontend_path;
    nlohmann::json keys = nlohmann::json::array();
    for (std::string_view k : dev.param_keys()) keys.push_back(std::string(k));
    e["settings"] = std::move(keys);
  }
  dev.describe(e, detail);
  return e;
}

std::string param_string(const nlohmann::json& params, const char* key) {
  auto it = params.find(key);
  if (it == params.end()) return {};
  if (!it->is_string()) throw std::invalid_argument(fmt::format("'{}' must be a string", key));
  return it->get<std::string>();
}

}  // namespace

Status BackendDaemon::start_control() noexcept {
  if (opts_.ctl_socket.empty()) return ok();
  Status st = ok();
  control_->call([&] {
    ControlServer::Options o;
    o.path = opts_.ctl_socket;
    auto s = ControlServer::create(*control_, o);
    if (!s) {
      st = unexpected(s.error());
      return;
    }
    ctl_ = std::move(*s);
    try {
      add_control_methods();
    } catch (...) {
      ctl_.reset();
      st = unexpected(ENOMEM);
    }
  });
  if (!st) {
    if (opts_.ctl_socket_optional) {
      spdlog::warn("{}: no control socket at {}: {} (--ctl-socket PATH to choose another)", opts_.name,
                   opts_.ctl_socket, error_string(st.error()));
      return ok();
    }
    spdlog::critical("--ctl-socket {}: {}", opts_.ctl_socket, error_string(st.error()));
    return st;
  }
  spdlog::info("{}: control socket {}", opts_.name, opts_.ctl_socket);
  return ok();
}

std::string BackendDaemon::ctl_socket_path() const { return ctl_ ? opts_.ctl_socket : std::string(); }

std::string BackendDaemon::metrics_address() const { return metrics_ ? metrics_->address() : std::string(); }

void BackendDaemon::add_control_methods() {
  using Reply = ControlServer::Responder;
  if (!settings_.contains("log_level")) {
    add_setting("log_level", {"trace, debug, info, warn, error or off: the daemon's log level, at once",
                              [](std::string_view v) -> Result<std::string> {
                                const std::string s(v);
                                const auto lvl = spdlog::level::from_str(s);
                                // from_str maps anything unknown to off: only real names pass.
                                if (lvl == spdlog::level::off && s != "off") return unexpected(EINVAL);
                                spdlog::set_level(lvl);
                                return fmt::format("log level {}", s);
                              }});
  }

  if (!settings_.contains("latency_histograms")) {
    add_setting("latency_histograms",
                {"on or off: time every request for the latency histograms (one fine clock read per busy worker "
                 "iteration), at the next iteration",
                 [this](std::string_view v) -> Result<std::string> {
                   if (v != "on" && v != "off") return unexpected(EINVAL);
                   set_latency_timing(v == "on");
                   return fmt::format("latency histograms {}", v);
                 }});
  }

  ctl_->add_method("version", [this](const nlohmann::json&, const Reply& r) {
    nlohmann::json methods = {"version", "list", "show", "stats", "set"};
    for (const auto& m : methods_) methods.push_back(m.first);
    nlohmann::json settings = nlohmann::json::object();
    for (const auto& [k, s] : settings_) settings[k] = s.help;
    r.result({{"daemon", opts_.name},
              {"version", XENPATH_VERSION},
              {"build_type", XENPATH_BUILD_TYPE},
              {"platform", platform_.name()},
              {"domain", platform_.self()},
              {"pid", ::getpid()},
              {"uptime_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - started_at_).count()},
              {"workers", workers_.size()},
              {"ctl_socket", opts_.ctl_socket},
              {"metrics", metrics_address()},
              {"methods", std::move(methods)},
              {"settings", std::move(settings)}});
  });

  ctl_->add_method("list", [this](const nlohmann::json&, const Reply& r) {
    nlohmann::json devs = nlohmann::json::array();
    driver_->for_each_device([&](const DeviceAddress& a, XenbusState st, BackendDevice& d) {
      devs.push_back(device_entry(a, st, d, false));
    });
    r.result({{"daemon", opts_.name}, {"devices", std::move(devs)}});
  });

  // The device a request names: its entry's address, or an error reply.
  auto find = [this](const nlohmann::json& params, const Reply& r) -> std::optional<DeviceAddress> {
    const std::string name = param_string(params, "device");
    const auto ref = parse_device_ref(name);
    if (!ref) {
      r.error(rpc_error::kInvalidParams, fmt::format("device '{}': want [TYPE/]DOMID/DEVID", name));
      return std::nullopt;
    }
    std::optional<DeviceAddress> found;
    unsigned matches = 0;
    driver_->for_each_device([&](const DeviceAddress& a, XenbusState, BackendDevice&) {
      if (a.frontend_id == ref->domid && a.devid == ref->devid && (ref->type.empty() || a.type == ref->type)) {
        ++matches;
        found = a;
      }
    });
    if (matches == 0) {
      r.error(rpc_error::kNoDevice, fmt::format("no device {}", name));
      return std::nullopt;
    }
    if (matches > 1) {
      r.error(rpc_error::kInvalidParams, fmt::format("device {} is ambiguous: give its type (TYPE/DOMID/DEVID)", name));
      return std::nullopt;
    }
    return found;
  };

  ctl_->add_method("show", [this, find](const nlohmann::json& params, const Reply& r) {
    const auto a = find(params, r);
    if (!a) return;
    BackendDevice* d = driver_->device(a->type, a->frontend_id, a->devid);
    const auto st = driver_->device_state(a->type, a->frontend_id, a->devid);
    if (d == nullptr || !st) {
      r.error(rpc_error::kNoDevice, "device went away");
      return;
    }
    r.result(device_entry(*a, *st, *d, true));
  });

  ctl_->add_method("stats", [this](const nlohmann::json&, const Reply& r) { r.result(collect()); });

  ctl_->add_method("set", [this, find](const nlohmann::json& params, const Reply& r) {
    const std::string key = param_string(params, "key");
    const std::string value = param_string(params, "value");
    if (key.empty()) {
      r.error(rpc_error::kInvalidParams, "set: want {\"key\":..., \"value\":...} and, for a device, \"device\"");
      return;
    }
    if (!params.contains("device")) {
      auto it = settings_.find(key);
      if (it == settings_.end()) {
        std::string known;
        for (const auto& [k, s] : settings_) known += (known.empty() ? "" : ", ") + k;
        r.error(rpc_error::kNotSupported, fmt::format("no daemon setting '{}' (there are: {})", key, known));
        return;
      }
      auto done = it->second.apply(value);
      if (!done) {
        r.error(done.error() == EINVAL ? rpc_error::kInvalidParams : rpc_error::kFailed,
                fmt::format("{}={}: {}", key, value, error_string(done.error())));
        return;
      }
      spdlog::info("control socket: {}", *done);
      r.result({{"applied", *done}});
      return;
    }
    const auto a = find(params, r);
    if (!a) return;
    BackendDevice* d = driver_->device(a->type, a->frontend_id, a->devid);
    if (d == nullptr) {
      r.error(rpc_error::kNoDevice, "device went away");
      return;
    }
    auto done = d->set_param(driver_->xenstore(), key, value);
    if (!done) {
      if (done.error() == ENOENT) {
        std::string known;
        for (std::string_view k : d->param_keys()) known += (known.empty() ? "" : ", ") + std::string(k);
        r.error(rpc_error::kNotSupported, fmt::format("{} has no setting '{}' (it has: {})", a->type, key,
                                                      known.empty() ? std::string("none") : known));
      } else {
        r.error(done.error() == EINVAL ? rpc_error::kInvalidParams : rpc_error::kFailed,
                fmt::format("{}={}: {}", key, value, error_string(done.error())));
      }
      return;
    }
    spdlog::info("control socket: {}/{}/{}: {}", a->type, a->frontend_id, a->devid, *done);
    r.result({{"applied", *done}});
  });

  for (const auto& [name, fn] : methods_) ctl_->add_method(name, fn);
}

std::vector<prometheus::MetricFamily> BackendDaemon::metrics_of(const nlohmann::json& snapshot) {
  MetricSet set;
  add_daemon_metrics(snapshot, set);
  for (auto& fn : metrics_fns_) fn(snapshot, set);
  return set.take();
}

std::vector<prometheus::MetricFamily> BackendDaemon::metrics() { return metrics_of(stats()); }

}  // namespace xenpath
