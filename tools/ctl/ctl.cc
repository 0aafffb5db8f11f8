#include "tools/ctl/ctl.h"

#include <fmt/format.h>
#include <fmt/ostream.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <ostream>
#include <thread>

#include "common/daemon_main.h"

namespace xenpath::ctl {

CtlClient::~CtlClient() {
  if (fd_ >= 0) ::close(fd_);
}

Result<CtlClient> CtlClient::connect(const std::string& path) noexcept {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(a.sun_path)) return unexpected(ENAMETOOLONG);
  std::memcpy(a.sun_path, path.data(), path.size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return unexpected(errno);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0) {
    const int e = errno;
    ::close(fd);
    return unexpected(e);
  }
  return CtlClient(fd);
}

Result<RpcReply> CtlClient::call(const std::string& method, const nlohmann::json& params,
                                 std::chrono::milliseconds timeout) noexcept {
  try {
    const int64_t id = next_id_++;
    const std::string line =
        nlohmann::json{{"jsonrpc", "2.0"}, {"method", method}, {"params", params}, {"id", id}}.dump() + "\n";
    for (size_t off = 0; off < line.size();) {
      const ssize_t n = ::send(fd_, line.data() + off, line.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        // The daemon may have refused us at accept: its error line is waiting.
        if (buf_.find('\n') == std::string::npos) {
          char tmp[4096];
          const ssize_t r = ::recv(fd_, tmp, sizeof(tmp), MSG_DONTWAIT);
          if (r > 0) buf_.append(tmp, static_cast<size_t>(r));
        }
        if (buf_.find('\n') != std::string::npos) break;
        return unexpected(n < 0 ? errno : ECONNRESET);
      }
      off += static_cast<size_t>(n);
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        const std::string reply = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        auto j = nlohmann::json::parse(reply, nullptr, false);
        if (j.is_discarded() || !j.is_object() || j.value("jsonrpc", "") != "2.0") return unexpected(EPROTO);
        RpcReply r;
        if (auto e = j.find("error"); e != j.end()) {
          if (!e->is_object()) return unexpected(EPROTO);
          r.error_code = e->value("code", -32603);
          if (r.error_code == 0) r.error_code = -32603;
          r.error_message = e->value("message", std::string("(no message)"));
          // A refusal at accept has id null; another request's reply cannot be.
          return r;
        }
        if (!j.contains("id") || j["id"] != id) continue;  // not ours (never happens: one call at a time)
        r.result = j.contains("result") ? j["result"] : nlohmann::json();
        return r;
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return unexpected(ETIMEDOUT);
      pollfd p{fd_, POLLIN, 0};
      const int pr = ::poll(&p, 1, static_cast<int>(left.count()));
      if (pr < 0 && errno == EINTR) continue;
      if (pr <= 0) return unexpected(pr < 0 ? errno : ETIMEDOUT);
      char tmp[65536];
      const ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return unexpected(n < 0 ? errno : ECONNRESET);
      buf_.append(tmp, static_cast<size_t>(n));
      if (buf_.size() > (64u << 20)) return unexpected(EPROTO);
    }
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Result<std::string> resolve_socket(const std::string& socket, const std::string& daemon, const std::string& dir,
                                   std::string& why) {
  if (!socket.empty()) return socket;
  if (!daemon.empty()) return dir + "/xenpath-" + daemon + ".sock";
  std::vector<std::string> found;
  for (const char* d : {"blkback", "netback"}) {
    const std::string p = dir + "/xenpath-" + d + ".sock";
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) found.push_back(p);
  }
  if (found.size() == 1) return found.front();
  why = found.empty()
            ? fmt::format("no daemon socket in {} (is xenpath-blkback or -netback running? --socket PATH)", dir)
            : std::string("both daemons run: choose one with --daemon blkback|netback");
  return unexpected(found.empty() ? ENOENT : EINVAL);
}

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", b) : fmt::format("{:.1f} {}", b, units[u]);
}

double num(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

std::string dev_name(const nlohmann::json& e) {
  if (e.contains("device") && e["device"].is_string()) return e["device"].get<std::string>();
  return fmt::format("{}/{}/{}", e.value("type", std::string("?")), e.value("frontend", 0), e.value("devid", 0));
}

// The worker names of a device's queues, deduplicated in order.
std::string workers_of(const nlohmann::json& e) {
  std::vector<std::string> out;
  for (const char* k : {"per_queue", "queues"}) {
    auto it = e.find(k);
    if (it == e.end() || !it->is_array()) continue;
    for (const auto& q : *it) {
      const std::string w = q.value("worker", std::string());
      if (!w.empty() && std::find(out.begin(), out.end(), w) == out.end()) out.push_back(w);
    }
  }
  return out.empty() ? "-" : fmt::format("{}", fmt::join(out, ","));
}

size_t queue_count(const nlohmann::json& e) {
  auto it = e.find("queues");
  if (it == e.end()) return 0;
  if (it->is_array()) return it->size();
  return it->is_number() ? it->get<size_t>() : 0;
}

// One device's figures as the tables show them, whatever its kind.
struct Sample {
  std::string name;
  bool block = true;
  double ops_a = 0, ops_b = 0, bytes_a = 0, bytes_b = 0, in_flight = 0, errors = 0, flushes = 0;
};

std::vector<Sample> samples(const nlohmann::json& stats) {
  std::vector<Sample> out;
  if (auto d = stats.find("devices"); d != stats.end() && d->is_array()) {
    for (const auto& e : *d) {
      out.push_back({dev_name(e), true, num(e, "reads"), num(e, "writes"), num(e, "read_bytes"), num(e, "write_bytes"),
                     num(e, "in_flight"), num(e, "errors"), num(e, "flushes")});
    }
  }
  if (auto v = stats.find("vifs"); v != stats.end() && v->is_array()) {
    for (const auto& e : *v) {
      Sample s{dev_name(e), false};
      if (auto qs = e.find("queues"); qs != e.end() && qs->is_array()) {
        for (const auto& q : *qs) {
          s.ops_a += num(q, "rx_packets");
          s.ops_b += num(q, "tx_packets");
          s.bytes_a += num(q, "rx_bytes");
          s.bytes_b += num(q, "tx_bytes");
          s.errors += num(q, "rx_dropped") + num(q, "rx_expired") + num(q, "rx_stall_dropped") + num(q, "tx_dropped") +
                      num(q, "tx_port_dropped");
        }
      }
      out.push_back(std::move(s));
    }
  }
  return out;
}

void print_kv_object(const nlohmann::json& o, std::ostream& out, const char* indent) {
  for (const auto& [k, v] : o.items()) {
    if (v.is_object() || v.is_array()) continue;
    fmt::print(out, "{}{:<22} {}\n", indent, k, v.is_string() ? v.get<std::string>() : v.dump());
  }
}

int report_transport(const std::string& path, int e, std::ostream& err) {
  if (e == ETIMEDOUT || e == EPROTO) {
    fmt::print(err, "xenpath-ctl: {}: {}\n", path,
               e == ETIMEDOUT ? "no reply from the daemon" : "the reply is not JSON-RPC 2.0");
    return kExitProtocol;
  }
  fmt::print(err, "xenpath-ctl: {}: {}{}\n", path, error_string(e),
             e == EACCES ? " (the socket is root's: run as root)" : "");
  return kExitUnreachable;
}

}  // namespace

void print_list(const nlohmann::json& list, std::ostream& out) {
  fmt::print(out, "{:<20} {:<12} {:>6} {:<18} {}\n", "DEVICE", "STATE", "QUEUES", "WORKERS", "BACKEND");
  for (const auto& e : list.value("devices", nlohmann::json::array())) {
    std::string backend = e.value("image", std::string());
    if (backend.empty()) backend = e.value("port", std::string());
    if (e.contains("mac")) backend += (backend.empty() ? "" : " ") + std::string("mac ") + e.value("mac", "");
    fmt::print(out, "{:<20} {:<12} {:>6} {:<18} {}\n", dev_name(e), e.value("state", std::string("?")), queue_count(e),
               workers_of(e), backend.empty() ? "-" : backend);
  }
}

void print_show(const nlohmann::json& dev, std::ostream& out) {
  print_kv_object(dev, out, "");
  if (auto r = dev.find("rate"); r != dev.end() && r->is_object()) {
    fmt::print(out, "{:<22} {} bytes / {} us\n", "rate", num(*r, "bytes"), num(*r, "usec"));
  }
  for (const char* section : {"features", "ctrl", "qos"}) {
    if (auto f = dev.find(section); f != dev.end() && f->is_object()) {
      fmt::print(out, "{}:\n", section);
      print_kv_object(*f, out, "  ");
    }
  }
  if (auto s = dev.find("settings"); s != dev.end() && s->is_array() && !s->empty()) {
    std::string keys;
    for (const auto& k : *s) keys += (keys.empty() ? "" : ", ") + k.get<std::string>();
    fmt::print(out, "{:<22} {}\n", "settings", keys);
  }
  for (const char* section : {"rings", "per_queue", "queues"}) {
    auto qs = dev.find(section);
    if (qs == dev.end() || !qs->is_array()) continue;
    for (size_t i = 0; i < qs->size(); ++i) {
      const auto& q = (*qs)[i];
      fmt::print(out, "{} {}:\n", section, q.value("queue", static_cast<int>(i)));
      print_kv_object(q, out, "  ");
      for (const char* sub : {"persistent_grants", "errors_by_reason"}) {
        if (auto p = q.find(sub); p != q.end() && p->is_object() && !p->empty()) {
          fmt::print(out, "  {}:\n", sub);
          print_kv_object(*p, out, "    ");
        }
      }
    }
  }
}

namespace {

// The VBD and VIF tables share one listing: each header goes out before the
// first row of its kind.
class TableHeaders {
 public:
  TableHeaders(std::string block, std::string net) : block_(std::move(block)), net_(std::move(net)) {}
  void before(std::ostream& out, bool block) {
    bool& done = block ? block_done_ : net_done_;
    if (!done) out << (block ? block_ : net_);
    done = true;
  }

 private:
  std::string block_, net_;
  bool block_done_ = false, net_done_ = false;
};

}  // namespace

void print_stats(const nlohmann::json& stats, std::ostream& out) {
  const auto s = samples(stats);
  TableHeaders headers(fmt::format("{:<20} {:>12} {:>12} {:>12} {:>12} {:>8} {:>6} {:>7}\n", "VBD", "reads", "writes",
                                   "read", "written", "flushes", "inflt", "errors"),
                       fmt::format("{:<20} {:>12} {:>12} {:>12} {:>12} {:>8}\n", "VIF", "rx_packets", "tx_packets",
                                   "rx", "tx", "drops"));
  for (const auto& d : s) {
    headers.before(out, d.block);
    if (d.block) {
      fmt::print(out, "{:<20} {:>12.0f} {:>12.0f} {:>12} {:>12} {:>8.0f} {:>6.0f} {:>7.0f}\n", d.name, d.ops_a, d.ops_b,
                 human_bytes(d.bytes_a), human_bytes(d.bytes_b), d.flushes, d.in_flight, d.errors);
    } else {
      fmt::print(out, "{:<20} {:>12.0f} {:>12.0f} {:>12} {:>12} {:>8.0f}\n", d.name, d.ops_a, d.ops_b,
                 human_bytes(d.bytes_a), human_bytes(d.bytes_b), d.errors);
    }
  }
  if (s.empty()) fmt::print(out, "no devices\n");
}

void print_rates(const nlohmann::json& before, const nlohmann::json& after, double seconds, std::ostream& out) {
  std::map<std::string, Sample> prev;
  for (auto& d : samples(before)) prev[d.name] = d;
  const double dt = seconds > 0 ? seconds : 1;
  TableHeaders headers(
      fmt::format("{:<20} {:>9} {:>9} {:>9} {:>9} {:>6} {:>7}\n", "VBD", "r/s", "w/s", "rMB/s", "wMB/s", "inflt",
                  "err/s"),
      fmt::format("{:<20} {:>9} {:>9} {:>9} {:>9} {:>7}\n", "VIF", "rxpck/s", "txpck/s", "rxMB/s", "txMB/s", "drop/s"));
  for (const auto& d : samples(after)) {
    Sample p = prev.contains(d.name) ? prev[d.name] : Sample{d.name, d.block};
    // A device that reconnected starts its counters again.
    auto rate = [&](double now, double then) { return now >= then ? (now - then) / dt : now / dt; };
    headers.before(out, d.block);
    if (d.block) {
      fmt::print(out, "{:<20} {:>9.0f} {:>9.0f} {:>9.2f} {:>9.2f} {:>6.0f} {:>7.1f}\n", d.name, rate(d.ops_a, p.ops_a),
                 rate(d.ops_b, p.ops_b), rate(d.bytes_a, p.bytes_a) / 1e6, rate(d.bytes_b, p.bytes_b) / 1e6,
                 d.in_flight, rate(d.errors, p.errors));
    } else {
      fmt::print(out, "{:<20} {:>9.0f} {:>9.0f} {:>9.2f} {:>9.2f} {:>7.1f}\n", d.name, rate(d.ops_a, p.ops_a),
                 rate(d.ops_b, p.ops_b), rate(d.bytes_a, p.bytes_a) / 1e6, rate(d.bytes_b, p.bytes_b) / 1e6,
                 rate(d.errors, p.errors));
    }
  }
}

void print_cache(const nlohmann::json& c, std::ostream& out) {
  if (!c.value("enabled", false)) {
    fmt::print(out, "cache: off (the daemon runs with --cache-mib 0)\n");
  } else {
    fmt::print(out, "cache: {} MiB in {} KiB blocks, {} shards; blocks free {} small {} main {} filling {} doomed {}\n",
               c.value("budget_bytes", uint64_t{0}) >> 20, c.value("block_size", uint64_t{0}) >> 10,
               c.value("shards", 0), c.value("free", uint64_t{0}), c.value("small", uint64_t{0}),
               c.value("main", uint64_t{0}), c.value("filling", uint64_t{0}), c.value("doomed", uint64_t{0}));
  }
  auto row = [&](const std::string& name, const nlohmann::json& e) {
    fmt::print(out, "{:<34} {:>10} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}\n", name, e.value("hits", uint64_t{0}),
               e.value("misses", uint64_t{0}), e.value("joins", uint64_t{0}), e.value("bypasses", uint64_t{0}),
               e.value("fills", uint64_t{0}), e.value("bytes_from_memory", uint64_t{0}) >> 20,
               e.value("bytes_from_disk", uint64_t{0}) >> 20);
  };
  fmt::print(out, "{:<34} {:>10} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}\n", "", "HITS", "MISSES", "JOINS", "BYPASS",
             "FILLS", "MEM MiB", "DISK MiB");
  if (c.value("enabled", false)) row("all", c);
  for (const auto& i : c.value("images", nlohmann::json::array())) {
    row(fmt::format("image {} (dev {} ino {}){}", i.value("id", 0), i.value("dev", uint64_t{0}),
                    i.value("ino", uint64_t{0}), i.value("retired", false) ? " retired" : ""),
        i);
  }
  for (const auto& v : c.value("vbds", nlohmann::json::array())) {
    row(fmt::format("{}{}", v.value("device", std::string()), v.value("enabled", false) ? "" : " (off)"), v);
  }
}

int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CLI::App app{"xenpath-ctl: inspect and tune a running xenpath daemon (docs/ops.md)", "xenpath-ctl"};
  app.require_subcommand(1);
  std::string socket, daemon, dir = kCtlSocketDir;
  bool json = false;
  app.add_option("--socket", socket, "the daemon's control socket");
  app.add_option("--daemon", daemon, "blkback or netback: its socket under /run/xenpath")
      ->check(CLI::IsMember({"blkback", "netback"}));
  app.add_flag("--json", json, "print the daemon's JSON answer instead of a table");
  auto* list = app.add_subcommand("list", "devices: state, queues, workers, image or port");
  std::string show_dev;
  auto* show = app.add_subcommand("show", "one device: features, rings, persistent grants, per-queue counters");
  show->add_option("device", show_dev, "[TYPE/]DOMID/DEVID, as list prints it")->required();
  bool watch = false;
  double interval = 1.0;
  unsigned count = 0;
  auto* stats = app.add_subcommand("stats", "counters per device; --watch: rates every interval");
  stats->add_flag("-w,--watch", watch, "print rates every --interval seconds (until interrupted or --count)");
  stats->add_option("-i,--interval", interval, "seconds between samples")->check(CLI::Range(0.05, 3600.0));
  stats->add_option("-c,--count", count, "with --watch: stop after this many reports");
  std::vector<std::string> set_args;
  auto* set = app.add_subcommand("set", "runtime tuning: set [DEVICE] key=value (e.g. vif/1/0 rate=1000000,20000)");
  set->add_option("args", set_args, "[DEVICE] key=value")->required()->expected(1, 2);
  auto* version = app.add_subcommand("version", "the daemon's and this tool's version");
  std::vector<std::string> cache_args;
  auto* cache = app.add_subcommand("cache", "blkback's shared read cache: cache stats | cache drop [IMAGE]");
  cache->add_option("args", cache_args, "stats, or drop and optionally an image (its id in stats, or its path)")
      ->required()
      ->expected(1, 2);

  std::vector<std::string> rev(args.rbegin(), args.rend());
  try {
    app.parse(rev);
  } catch (const CLI::CallForHelp& e) {
    out << app.help();
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    fmt::print(err, "xenpath-ctl: {}\n{}", e.what(), app.help());
    return kExitUsage;
  }

  std::string why;
  auto path = resolve_socket(socket, daemon, dir, why);
  if (!path) {
    fmt::print(err, "xenpath-ctl: {}\n", why);
    return kExitUnreachable;
  }
  auto client = CtlClient::connect(*path);
  if (!client) return report_transport(*path, client.error(), err);

  // One call; prints the error and returns its exit code, or nullopt.
  auto call = [&](const std::string& method, const nlohmann::json& params) -> std::pair<int, nlohmann::json> {
    auto r = client->call(method, params);
    if (!r) return {report_transport(*path, r.error(), err), {}};
    if (!r->ok()) {
      fmt::print(err, "xenpath-ctl: {}: {} (error {})\n", method, r->error_message, r->error_code);
      return {r->error_code == -32001 || r->error_code == -32002 ? kExitUnreachable : kExitRpcError, {}};
    }
    return {kExitOk, r->result};
  };

  if (*list) {
    auto [rc, res] = call("list", nlohmann::json::object());
    if (rc != kExitOk) return rc;
    if (json) out << res.dump(2) << "\n";
    else print_list(res, out);
    return kExitOk;
  }
  if (*show) {
    auto [rc, res] = call("show", {{"device", show_dev}});
    if (rc != kExitOk) return rc;
    if (json) out << res.dump(2) << "\n";
    else print_show(res, out);
    return kExitOk;
  }
  if (*stats) {
    auto [rc, first] = call("stats", nlohmann::json::object());
    if (rc != kExitOk) return rc;
    if (!watch) {
      if (json) out << first.dump(2) << "\n";
      else print_stats(first, out);
      return kExitOk;
    }
    auto t0 = std::chrono::steady_clock::now();
    for (unsigned n = 0; count == 0 || n < count; ++n) {
      std::this_thread::sleep_for(std::chrono::duration<double>(interval));
      auto [rc2, next] = call("stats", nlohmann::json::object());
      if (rc2 != kExitOk) return rc2;
      const auto t1 = std::chrono::steady_clock::now();
      if (json) {
        out << next.dump() << "\n";
      } else {
        fmt::print(out, "\n");
        print_rates(first, next, std::chrono::duration<double>(t1 - t0).count(), out);
      }
      out.flush();
      first = std::move(next);
      t0 = t1;
    }
    return kExitOk;
  }
  if (*set) {
    const std::string& kv = set_args.back();
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      fmt::print(err, "xenpath-ctl: set: want key=value, got '{}'\n", kv);
      return kExitUsage;
    }
    nlohmann::json params = {{"key", kv.substr(0, eq)}, {"value", kv.substr(eq + 1)}};
    if (set_args.size() == 2) params["device"] = set_args.front();
    auto [rc, res] = call("set", params);
    if (rc != kExitOk) return rc;
    if (json) out << res.dump(2) << "\n";
    else fmt::print(out, "{}\n", res.value("applied", std::string("done")));
    return kExitOk;
  }
  if (*cache) {
    const std::string& op = cache_args.front();
    if ((op != "stats" && op != "drop") || (op == "stats" && cache_args.size() != 1)) {
      fmt::print(err, "xenpath-ctl: cache: want 'stats' or 'drop [IMAGE]'\n");
      return kExitUsage;
    }
    nlohmann::json params = {{"op", op}};
    if (cache_args.size() == 2) params["image"] = cache_args.back();
    auto [rc, res] = call("cache", params);
    if (rc != kExitOk) return rc;
    if (json) out << res.dump(2) << "\n";
    else if (op == "stats") print_cache(res, out);
    else fmt::print(out, "dropped {} entries\n", res.value("dropped", uint64_t{0}));
    return kExitOk;
  }
  if (*version) {
    auto [rc, res] = call("version", nlohmann::json::object());
    if (rc != kExitOk) return rc;
    if (json) {
      out << res.dump(2) << "\n";
    } else {
      fmt::print(out, "xenpath-ctl {}\n", XENPATH_VERSION);
      print_kv_object(res, out, "");
    }
    return kExitOk;
  }
  return kExitUsage;
}

}  // namespace xenpath::ctl
