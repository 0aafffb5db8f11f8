#include "common/xenbus/backend_driver.h"
#include "common/xenbus/keys.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace xenpath {

namespace {

constexpr std::string_view kTypeTokenPrefix = "xenpath-be:";
constexpr std::string_view kFrontendTokenPrefix = "xenpath-fe:";
constexpr std::string_view kFrontendKeyTokenPrefix = "xenpath-fk:";
constexpr std::string_view kReleaseToken = "xenpath-release";
constexpr std::string_view kReleaseDomain = "@releaseDomain";

// What libxl and the hotplug scripts use to say "the backend is set up".
constexpr std::string_view kHotplugConnected = "connected";

// Domain ids a guest can have (DOMID_FIRST_RESERVED and above are special).
constexpr uint32_t kDomidFirstReserved = 0x7FF0;

// A frontend path is toolstack-written, but it ends up in every frontend
// read: refuse anything that could not be a xenstore node.
constexpr size_t kMaxFrontendPath = 256;

std::optional<DomId> parse_domid(std::string_view s) noexcept {
  auto v = parse_decimal<uint32_t>(s);
  if (!v || *v >= kDomidFirstReserved) return std::nullopt;
  return static_cast<DomId>(*v);
}

bool valid_type_name(std::string_view s) noexcept {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

bool valid_frontend_path(std::string_view s) noexcept {
  if (s.size() < 2 || s.size() > kMaxFrontendPath || s[0] != '/' || s.back() == '/') return false;
  for (char c : s) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '/';
    if (!ok) return false;
  }
  return s.find("//") == std::string_view::npos;
}

// The toolstack's "online": a decimal flag, absent meaning offline (as
// Linux's xenbus_dev_is_online()).
bool parse_online(const Result<std::string>& v) noexcept {
  if (!v) return false;
  auto n = parse_decimal<uint32_t>(*v);
  return n.has_value() && *n != 0;
}

bool is_write(FsmActionKind k) noexcept {
  return k == FsmActionKind::kWriteState || k == FsmActionKind::kWriteError || k == FsmActionKind::kClearError;
}

// Store content for a log line: bounded, printable ASCII only.
std::string printable(std::string_view s, size_t max) {
  std::string out;
  const size_t n = std::min(s.size(), max);
  out.reserve(n + 3);
  for (size_t i = 0; i < n; ++i) out.push_back(s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?');
  if (s.size() > n) out += "...";
  return out;
}

// Splits "a/b/c" into "a" and "b/c".
std::pair<std::string_view, std::string_view> split_first(std::string_view s) noexcept {
  const size_t slash = s.find('/');
  if (slash == std::string_view::npos) return {s, {}};
  return {s.substr(0, slash), s.substr(slash + 1)};
}

}  // namespace

BackendDriver::BackendDriver(std::unique_ptr<XenStore> xs, Options opts) noexcept : xs_(std::move(xs)), opts_(opts) {
  if (opts_.event_batch == 0) opts_.event_batch = 1;
}

BackendDriver::~BackendDriver() { stop(); }

Status BackendDriver::add_type(std::unique_ptr<DeviceType> type) noexcept {
  if (started_) return unexpected(EBUSY);
  if (!type) return unexpected(EINVAL);
  std::string name(type->name());
  if (!valid_type_name(name)) return unexpected(EINVAL);
  for (const auto& t : types_) {
    if (t.name == name) return unexpected(EEXIST);
  }
  // The type index lives in the top 16 bits of a device key.
  if (types_.size() >= 0xFFFF) return unexpected(ENOSPC);
  TypeEntry e;
  e.type = std::move(type);
  e.name = std::move(name);
  e.token = fmt::format("{}{}", kTypeTokenPrefix, types_.size());
  types_.push_back(std::move(e));
  return ok();
}

Status BackendDriver::start() noexcept {
  if (started_) return unexpected(EALREADY);
  auto home = xs_->domain_path(opts_.self);
  if (!home) return unexpected(home.error());
  self_path_ = std::move(*home);
  started_ = true;
  for (auto& t : types_) {
    t.root = fmt::format("{}/backend/{}", self_path_, t.name);
    t.enumerated = false;
    if (auto w = xs_->watch(t.root, t.token); !w) {
      log_.error("cannot watch {}: {}", t.root, error_string(w.error()));
      stop();
      return unexpected(w.error());
    }
    t.watching = true;
  }
  // Guest death. Some stores refuse special watches to driver domains: the
  // per-device frontend-state watches still see the toolstack's cleanup.
  if (auto w = xs_->watch(kReleaseDomain, kReleaseToken); w) {
    watching_release_ = true;
  } else {
    log_.warn("cannot watch {}: {}; relying on frontend state nodes", kReleaseDomain, error_string(w.error()));
  }
  log_.info("serving {} device type(s) under {}/backend", types_.size(), self_path_);
  return ok();
}

void BackendDriver::stop() noexcept {
  if (!started_) return;
  detach();
  for (auto& [key, d] : devices_) {
    if (d->fsm.resources_held()) do_disconnect(*d);
    unwatch_frontend_keys(*d);
    if (d->watching) (void)xs_->unwatch(d->frontend_state_path, d->token);
  }
  devices_.clear();
  by_serial_.clear();
  by_frontend_.clear();
  for (auto& t : types_) {
    if (t.watching) (void)xs_->unwatch(t.root, t.token);
    t.watching = false;
  }
  if (watching_release_) (void)xs_->unwatch(kReleaseDomain, kReleaseToken);
  watching_release_ = false;
  stats_.devices.set(0);
  stats_.connected.set(0);
  started_ = false;
}

void BackendDriver::detach() noexcept {
  {
    std::lock_guard lock(post_mu_);
    post_ = nullptr;
  }
  if (!detach_) return;
  auto undo = std::move(detach_);
  detach_ = nullptr;
  arm_release_ = nullptr;
  release_pending_ = false;
  undo();
}

bool BackendDriver::report_device_error(std::string_view type, DomId fe, uint32_t devid, int error) noexcept {
  std::weak_ptr<BackendDriver*> alive = alive_;
  std::lock_guard lock(post_mu_);
  if (!post_) return false;
  return post_([alive, t = std::string(type), fe, devid, error] {
    if (auto self = alive.lock()) (*self)->fail_device(t, fe, devid, error);
  });
}

void BackendDriver::fail_device(std::string_view type, DomId fe, uint32_t devid, int error) noexcept {
  for (uint32_t i = 0; i < types_.size(); ++i) {
    if (types_[i].name != type) continue;
    auto it = devices_.find(make_key(i, fe, devid));
    if (it == devices_.end()) return;
    Device& d = *it->second;
    d.log.warn("device failed: {}", error_string(error));
    (void)apply(d, d.fsm.device_failed(error));
    return;
  }
}

size_t BackendDriver::process_events() noexcept {
  if (!started_) return 0;
  batch_.clear();
  const size_t n = xs_->read_watches(batch_, opts_.event_batch);
  uint64_t releases = 0;
  // Backend-tree events first, then the frontends' and the rest: handlers
  // read the current value, not the event's, so the order inside a batch
  // changes no outcome; but when the toolstack removes a device's two
  // directories at once (xl destroy, forced detach), seeing the backend's
  // removal first releases the device with one read, and its frontend
  // event then finds nothing to do (instead of a read, a state write
  // transaction that finds the node gone, and the removal after it).
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& ev : batch_) {
      const bool backend_tree = std::string_view(ev.token).starts_with(kTypeTokenPrefix);
      if (backend_tree != (pass == 0)) continue;
      stats_.watch_events.add();
      if (ev.token == kReleaseToken) {
        ++releases;  // coalesced: see handle_release_domain
        continue;
      }
      handle_event(ev);
      if (!started_) return n;
    }
  }
  if (releases != 0) handle_release_domain(releases);
  return n;
}

void BackendDriver::handle_event(const XsWatchEvent& ev) noexcept {
  std::string_view token = ev.token;
  if (token.starts_with(kFrontendTokenPrefix)) {
    auto serial = parse_decimal<uint64_t>(token.substr(kFrontendTokenPrefix.size()));
    if (serial) handle_frontend_state(*serial);
    return;
  }
  if (token.starts_with(kFrontendKeyTokenPrefix)) {
    auto serial = parse_decimal<uint64_t>(token.substr(kFrontendKeyTokenPrefix.size()));
    if (serial) handle_frontend_key(*serial, ev.path);
    return;
  }
  if (token.starts_with(kTypeTokenPrefix)) {
    auto index = parse_decimal<uint32_t>(token.substr(kTypeTokenPrefix.size()));
    if (index && *index < types_.size()) handle_backend_event(*index, ev.path);
    return;
  }
  log_.debug("ignoring watch event {} with foreign token {}", ev.path, ev.token);
}

void BackendDriver::handle_backend_event(uint32_t ti, std::string_view path) noexcept {
  const TypeEntry& t = types_[ti];
  if (!path.starts_with(t.root)) return;
  std::string_view rest = path.substr(t.root.size());
  if (rest.empty()) {
    handle_type_root(ti);
    return;
  }
  if (rest[0] != '/') return;  // a sibling sharing our prefix ("vbd3" under "vbd")
  rest.remove_prefix(1);
  auto [fe_str, after_fe] = split_first(rest);
  auto fe = parse_domid(fe_str);
  if (!fe) return;
  if (after_fe.empty()) {
    handle_frontend_dir(ti, *fe);
    return;
  }
  auto [devid_str, sub] = split_first(after_fe);
  auto devid = parse_decimal<uint32_t>(devid_str);
  if (!devid) return;
  handle_device_event(ti, *fe, *devid, sub);
}

void BackendDriver::handle_type_root(uint32_t ti) noexcept {
  TypeEntry& t = types_[ti];
  if (!t.enumerated) {
    // The watch's initial firing: pick up devices created while no daemon
    // served this type. The only directory listing the driver ever does.
    t.enumerated = true;
    enumerate(ti);
    if (on_enumerated_ && enumerated()) std::exchange(on_enumerated_, nullptr)();
    return;
  }
  // The type directory itself changed: only its removal matters.
  auto r = xs_->read(kXsNoTxn, t.root);
  if (r || r.error() != ENOENT) return;
  std::vector<Device*> gone;
  for (auto& [key, d] : devices_) {
    if (d->type_index == ti) gone.push_back(d.get());
  }
  for (Device* d : gone) (void)apply(*d, d->fsm.backend_gone(), /*write=*/false);
}

bool BackendDriver::enumerated() const noexcept {
  if (!started_) return false;
  for (const auto& t : types_) {
    if (!t.enumerated) return false;
  }
  return true;
}

void BackendDriver::handle_frontend_dir(uint32_t ti, DomId fe) noexcept {
  auto it = by_frontend_.find(fe);
  if (it == by_frontend_.end()) return;
  std::vector<Device*> mine;
  for (Device* d : it->second) {
    if (d->type_index == ti) mine.push_back(d);
  }
  if (mine.empty()) return;
  auto r = xs_->read(kXsNoTxn, fmt::format("{}/{}", types_[ti].root, fe));
  if (r || r.error() != ENOENT) return;
  for (Device* d : mine) (void)apply(*d, d->fsm.backend_gone(), /*write=*/false);
}

void BackendDriver::handle_device_event(uint32_t ti, DomId fe, uint32_t devid, std::string_view sub) noexcept {
  auto it = devices_.find(make_key(ti, fe, devid));
  if (it == devices_.end()) {
    probe(ti, fe, devid);
    return;
  }
  Device& d = *it->second;
  if (sub.empty()) {
    // The device directory itself: removed, or removed and created again
    // (a toolstack reusing the devid after a forced removal, before we saw
    // the removal). One read tells both apart.
    auto r = xs_->read(kXsNoTxn, d.addr.backend_path + "/state");
    if (!r && r.error() != ENOENT) {
      stats_.xs_errors.add();
      return;
    }
    if (!r) {
      // Nothing to write into: the read just found the node gone (and a
      // node created again meanwhile is a new device's).
      d.log.info("backend node removed");
      (void)apply(d, d.fsm.backend_gone(), /*write=*/false);
      return;
    }
    if (parse_xenbus_state(*r) == XenbusState::kInitialising) {
      // The node we wrote InitWait (or later) into is a new device now:
      // release the old instance without writing into the new one.
      d.log.info("backend node re-created by the toolstack");
      if (!apply(d, d.fsm.backend_gone(), /*write=*/false)) probe(ti, fe, devid);
    }
    return;
  }
  if (sub == "online") {
    const bool online = parse_online(xs_->read(kXsNoTxn, d.addr.backend_path + "/online"));
    if (online != d.fsm.online()) d.log.info("online = {}", online ? 1 : 0);
    (void)apply(d, d.fsm.online_changed(online));
    return;
  }
  if (d.impl && sub != "state") d.impl->backend_key_changed(*xs_, sub);
  // Everything else under the backend node is ours (state, features,
  // hotplug-status, error) or the toolstack's configuration: Linux backends
  // ignore the toolstack writing Closing into our state node too; the
  // frontend sees it and closes, which is what we act on.
}

void BackendDriver::enumerate(uint32_t ti) noexcept {
  const TypeEntry& t = types_[ti];
  auto fes = xs_->directory(kXsNoTxn, t.root);
  if (!fes) return;  // ENOENT: nothing yet
  for (const auto& fe_str : *fes) {
    auto fe = parse_domid(fe_str);
    if (!fe) continue;
    auto devs = xs_->directory(kXsNoTxn, fmt::format("{}/{}", t.root, *fe));
    if (!devs) continue;
    for (const auto& devid_str : *devs) {
      auto devid = parse_decimal<uint32_t>(devid_str);
      if (devid && !devices_.contains(make_key(ti, *fe, *devid))) probe(ti, *fe, *devid);
    }
  }
}

void BackendDriver::probe(uint32_t ti, DomId fe, uint32_t devid) noexcept {
  TypeEntry& t = types_[ti];
  DeviceAddress addr;
  addr.type = t.name;
  addr.frontend_id = fe;
  addr.devid = devid;
  addr.backend_path = fmt::format("{}/{}/{}", t.root, fe, devid);

  // Most events for an unknown device are a removed one's late ones (its
  // directory went after we released it): one plain read settles them,
  // without the transaction a real probe needs.
  if (auto st = xs_->read(kXsNoTxn, addr.backend_path + "/state"); !st && st.error() == ENOENT) {
    stats_.probes_ignored.add();
    return;
  }
  std::unique_ptr<BackendDevice> impl;
  bool online = false;
  // Ok(false): not ours to take (absent, half-written, or past its
  // Initialising state); ignored until a later event.
  auto probed = run_transaction(*xs_, [&](XsTxn txn) -> Result<bool> {
    impl.reset();
    auto state = xs_->read(txn, addr.backend_path + "/state");
    if (!state) {
      if (state.error() == ENOENT) return false;
      return unexpected(state.error());
    }
    auto s = parse_xenbus_state(*state);
    // Initialising is the toolstack's fresh device; InitWait is one a
    // previous instance of this daemon probed before it stopped.
    if (!s || (*s != XenbusState::kInitialising && *s != XenbusState::kInitWait)) return false;
    auto fe_path = xs_->read(txn, addr.backend_path + "/frontend");
    if (!fe_path) return fe_path.error() == ENOENT ? Result<bool>(false) : unexpected(fe_path.error());
    auto fe_id = xs_->read(txn, addr.backend_path + "/frontend-id");
    if (!fe_id) return fe_id.error() == ENOENT ? Result<bool>(false) : unexpected(fe_id.error());
    auto fe_id_v = parse_domid(*fe_id);
    if (!valid_frontend_path(*fe_path) || !fe_id_v || *fe_id_v != fe) {
      log_.guest("{}: bad frontend '{}' / frontend-id '{}' from the toolstack", addr.backend_path,
                 printable(*fe_path, kMaxFrontendPath), printable(*fe_id, 16));
      return false;
    }
    addr.frontend_path = std::move(*fe_path);
    online = parse_online(xs_->read(txn, addr.backend_path + "/online"));
    XP_ASSIGN_OR_RETURN(impl, t.type->create(addr, *xs_, txn));
    XP_TRY(impl->write_backend_features(*xs_, txn));
    XP_TRY(xs_->write(txn, addr.backend_path + "/hotplug-status", kHotplugConnected));
    if (*s != XenbusState::kInitWait) {
      XP_TRY(xs_->write(txn, addr.backend_path + "/state", state_value(XenbusState::kInitWait)));
    }
    return true;
  });
  if (!probed || !*probed) {
    if (!probed && probed.error() != ENOENT && probed.error() != EAGAIN) {
      fail_probe(addr, probed.error());
      return;
    }
    stats_.probes_ignored.add();
    if (!probed) {
      log_.debug("{}: not ready: {}", addr.backend_path, error_string(probed.error()));
    }
    return;
  }

  const uint64_t key = make_key(ti, fe, devid);
  auto dev = std::make_unique<Device>(BackendFsm(online), DeviceLog(fmt::format("{} {}/{}: ", t.name, fe, devid)));
  Device& d = *dev;
  d.key = key;
  d.serial = next_serial_++;
  d.type_index = ti;
  d.frontend_state_path = addr.frontend_path + "/state";
  d.token = fmt::format("{}{}", kFrontendTokenPrefix, d.serial);
  d.addr = std::move(addr);
  d.impl = std::move(impl);
  d.fsm.probed();
  devices_.emplace(key, std::move(dev));
  by_serial_.emplace(d.serial, &d);
  by_frontend_[fe].insert(&d);
  stats_.probes.add();
  stats_.devices.set(devices_.size());
  d.log.info("probed (frontend {}, online {}), InitWait", d.addr.frontend_path, online ? 1 : 0);

  // Fires once now, so a frontend that is already further along is seen.
  if (auto w = xs_->watch(d.frontend_state_path, d.token); w) {
    d.watching = true;
  } else {
    stats_.xs_errors.add();
    d.log.error("cannot watch {}: {}", d.frontend_state_path, error_string(w.error()));
  }
}

// The device type refused the device (its image cannot be opened, a key
// the toolstack wrote is invalid): what xenbus_dev_fatal() does in a Linux
// backend's probe. The device is not tracked: its state is Closing now, so
// later events on it are ignored until the toolstack removes it or writes a
// fresh one (Initialising) at the same address.
void BackendDriver::fail_probe(const DeviceAddress& addr, int error) noexcept {
  stats_.probe_failures.add();
  log_.warn("{}: cannot create the device: {}", addr.backend_path, error_string(error));
  const std::string state_path = addr.backend_path + "/state";
  // Next to the state node, as the connect-time errors are (see
  // write_checked): the toolstack removes it with the device, where Linux's
  // error/backend/... copies outlive it.
  const std::string error_path = addr.backend_path + "/error";
  auto r = run_transaction(*xs_, [&](XsTxn txn) -> Result<bool> {
    auto cur = xs_->read(txn, state_path);
    if (!cur) return cur.error() == ENOENT ? Result<bool>(false) : unexpected(cur.error());
    auto s = parse_xenbus_state(*cur);
    if (!s || (*s != XenbusState::kInitialising && *s != XenbusState::kInitWait)) return false;
    XP_TRY(xs_->write(txn, error_path, fmt::format("{} creating the device: {}", error, error_string(error))));
    XP_TRY(xs_->write(txn, state_path, state_value(XenbusState::kClosing)));
    return true;
  });
  if (!r) {
    stats_.xs_errors.add();
    log_.error("{}: cannot report the failure: {}", addr.backend_path, error_string(r.error()));
  }
}

void BackendDriver::handle_frontend_state(uint64_t serial) noexcept {
  auto it = by_serial_.find(serial);
  if (it == by_serial_.end()) return;  // a late event of a destroyed device
  Device& d = *it->second;
  auto v = xs_->read(kXsNoTxn, d.frontend_state_path);
  if (!v) {
    if (v.error() == ENOENT) {
      d.log.info("frontend state node gone");
      frontend_vanished(d);
    } else {
      stats_.xs_errors.add();
      d.log.warn("reading {}: {}", d.frontend_state_path, error_string(v.error()));
    }
    return;
  }
  auto s = parse_xenbus_state(*v);
  if (s) d.log.debug("frontend {}", to_string(*s));
  (void)apply(d, d.fsm.frontend_changed(s));
}

void BackendDriver::frontend_vanished(Device& d) noexcept {
  // A dead guest's, or the toolstack removing the device (libxl removes
  // both directories in one transaction, before the domain dies). One plain
  // read of our state node tells them apart: when it is gone too there is
  // nothing to write (no transaction), and the backend's own removal
  // event, which may come in a later batch, finds nothing left to release.
  auto own = xs_->read(kXsNoTxn, d.addr.backend_path + "/state");
  const bool own_gone = !own && own.error() == ENOENT;
  (void)apply(d, d.fsm.frontend_gone(), /*write=*/!own_gone);
}

void BackendDriver::handle_frontend_key(uint64_t serial, std::string_view path) noexcept {
  auto it = by_serial_.find(serial);
  if (it == by_serial_.end()) return;  // a late event of a destroyed device
  Device& d = *it->second;
  // Not connected (any more): a late event of a removed watch.
  if (d.key_watches.empty() || !d.impl) return;
  const std::string& fe = d.addr.frontend_path;
  if (path.size() <= fe.size() + 1 || !path.starts_with(fe) || path[fe.size()] != '/') return;
  d.impl->frontend_key_changed(*xs_, path.substr(fe.size() + 1));
}

void BackendDriver::watch_frontend_keys(Device& d) noexcept {
  if (!d.impl || !d.key_watches.empty()) return;
  const auto keys = d.impl->frontend_watches();
  if (keys.empty()) return;
  try {
    d.frontend_key_token = fmt::format("{}{}", kFrontendKeyTokenPrefix, d.serial);
    for (std::string_view k : keys) {
      if (k.empty()) continue;
      std::string path = fmt::format("{}/{}", d.addr.frontend_path, k);
      if (auto w = xs_->watch(path, d.frontend_key_token); !w) {
        stats_.xs_errors.add();
        d.log.error("cannot watch {}: {}", path, error_string(w.error()));
        continue;
      }
      d.key_watches.push_back(std::move(path));
    }
  } catch (...) {
    stats_.xs_errors.add();
    d.log.error("cannot watch the frontend's keys: out of memory");
  }
}

void BackendDriver::unwatch_frontend_keys(Device& d) noexcept {
  for (const auto& path : d.key_watches) {
    if (auto u = xs_->unwatch(path, d.frontend_key_token); !u && u.error() != ENOENT) stats_.xs_errors.add();
  }
  d.key_watches.clear();
}

bool BackendDriver::apply(Device& d, const FsmActions& actions, bool write) noexcept {
  const FsmAction* a = actions.begin();
  const FsmAction* end = actions.end();
  while (a != end) {
    if (is_write(a->kind)) {
      const FsmAction* last = a;
      while (last != end && is_write(last->kind)) ++last;
      if (!write) {
        a = last;
        continue;
      }
      auto w = write_checked(d, a, last);
      if (!w) {
        stats_.xs_errors.add();
        d.log.warn("writing backend state: {}", error_string(w.error()));
      } else if (!*w) {
        // Removed and created again under us: drop this instance without
        // touching the new node, and probe the new device.
        d.log.info("backend node re-created by the toolstack");
        const uint32_t ti = d.type_index;
        const DomId fe = d.addr.frontend_id;
        const uint32_t devid = d.addr.devid;
        (void)apply(d, d.fsm.backend_gone(), /*write=*/false);
        probe(ti, fe, devid);
        return false;
      }
      a = last;
      continue;
    }
    switch (a->kind) {
      case FsmActionKind::kConnect: {
        const int err = do_connect(d);
        if (err == 0) {
          stats_.connects.add();
          lifecycle_log(d, "connected");
          watch_frontend_keys(d);
        } else {
          stats_.connect_failures.add();
          d.log.guest("connect failed: {}", error_string(err));
        }
        // connect_done never asks for another connect: bounded recursion.
        if (!apply(d, d.fsm.connect_done(err))) return false;
        break;
      }
      case FsmActionKind::kDisconnect:
        do_disconnect(d);
        break;
      case FsmActionKind::kDestroy:
        destroy(d);
        return false;
      default:
        break;
    }
    ++a;
  }
  update_connected(d);
  return true;
}

Result<bool> BackendDriver::write_checked(Device& d, const FsmAction* first, const FsmAction* last) noexcept {
  for (const FsmAction* a = first; a != last; ++a) {
    if (a->kind == FsmActionKind::kWriteError && a->reason == FsmErrorReason::kBadFrontendState) {
      stats_.protocol_errors.add();
      d.log.guest("frontend published an invalid state");
    }
    if (a->kind == FsmActionKind::kWriteState) d.log.debug("-> {}", to_string(a->state));
  }
  const std::string state_path = d.addr.backend_path + "/state";
  // As xenbus_switch_state(): only while the state node exists, so a device
  // the toolstack removed is never resurrected by our write. And only while
  // it is still ours: after the probe we never leave it Initialising, so
  // that value means the toolstack created a new device at this address.
  return run_transaction(*xs_, [&](XsTxn txn) -> Result<bool> {
    auto cur = xs_->read(txn, state_path);
    if (!cur) return cur.error() == ENOENT ? Result<bool>(true) : unexpected(cur.error());
    if (parse_xenbus_state(*cur) == XenbusState::kInitialising) return false;
    for (const FsmAction* a = first; a != last; ++a) {
      switch (a->kind) {
        case FsmActionKind::kWriteState:
          XP_TRY(xs_->write(txn, state_path, state_value(a->state)));
          break;
        case FsmActionKind::kWriteError: {
          // "<errno> <message>", as xenbus_dev_error() words it.
          std::string msg;
          switch (a->reason) {
            case FsmErrorReason::kBadFrontendState:
              msg = fmt::format("{} frontend {} published an invalid state", a->error, d.frontend_state_path);
              break;
            case FsmErrorReason::kDeviceFailed:
              msg = fmt::format("{} device failed: {}", a->error, error_string(a->error));
              break;
            default:
              msg = fmt::format("{} connecting to the frontend failed: {}", a->error, error_string(a->error));
              break;
          }
          XP_TRY(xs_->write(txn, d.addr.backend_path + "/error", msg));
          break;
        }
        case FsmActionKind::kClearError:
          XP_TRY(xs_->rm(txn, d.addr.backend_path + "/error"));
          break;
        default:
          break;
      }
    }
    return true;
  });
}

int BackendDriver::do_connect(Device& d) noexcept {
  auto r = run_transaction(*xs_, [&](XsTxn txn) -> Status { return d.impl->read_frontend(*xs_, txn); });
  if (!r) return r.error();
  auto c = d.impl->connect();
  if (!c) return c.error();
  return 0;
}

void BackendDriver::do_disconnect(Device& d) noexcept {
  unwatch_frontend_keys(d);
  d.impl->disconnect();
  stats_.disconnects.add();
  lifecycle_log(d, "disconnected");
}

void BackendDriver::lifecycle_log(Device& d, std::string_view what) noexcept {
  // A guest can cycle its device through connect/disconnect at will: the
  // first cycles are worth an info line each, the rest would flood dom0's log.
  if (d.lifecycle_logs < kLifecycleLogsAtInfo) {
    ++d.lifecycle_logs;
    d.log.info("{}{}", what, d.lifecycle_logs == kLifecycleLogsAtInfo ? " (further transitions at debug level)" : "");
  } else {
    d.log.debug("{}", what);
  }
}

void BackendDriver::update_connected(Device& d) noexcept {
  const bool now = d.fsm.connected();
  if (now == d.counted_connected) return;
  d.counted_connected = now;
  stats_.connected.set(now ? stats_.connected.get() + 1 : stats_.connected.get() - 1);
}

void BackendDriver::destroy(Device& d) noexcept {
  if (d.counted_connected) {
    d.counted_connected = false;
    stats_.connected.set(stats_.connected.get() - 1);
  }
  unwatch_frontend_keys(d);
  if (d.watching) {
    if (auto u = xs_->unwatch(d.frontend_state_path, d.token); !u && u.error() != ENOENT) {
      stats_.xs_errors.add();
    }
    d.watching = false;
  }
  d.log.info("destroyed");
  stats_.destroys.add();
  by_serial_.erase(d.serial);
  if (auto it = by_frontend_.find(d.addr.frontend_id); it != by_frontend_.end()) {
    it->second.erase(&d);
    if (it->second.empty()) by_frontend_.erase(it);
  }
  devices_.erase(d.key);  // frees d
  stats_.devices.set(devices_.size());
}

std::optional<XenbusState> BackendDriver::device_state(std::string_view type, DomId fe, uint32_t devid) const noexcept {
  for (uint32_t i = 0; i < types_.size(); ++i) {
    if (types_[i].name != type) continue;
    auto it = devices_.find(make_key(i, fe, devid));
    if (it == devices_.end()) return std::nullopt;
    return it->second->fsm.state();
  }
  return std::nullopt;
}

BackendDevice* BackendDriver::device(std::string_view type, DomId fe, uint32_t devid) const noexcept {
  for (uint32_t i = 0; i < types_.size(); ++i) {
    if (types_[i].name != type) continue;
    auto it = devices_.find(make_key(i, fe, devid));
    return it == devices_.end() ? nullptr : it->second->impl.get();
  }
  return nullptr;
}

}  // namespace xenpath

namespace xenpath {

void BackendDriver::for_each_device(
    const std::function<void(const DeviceAddress&, XenbusState, BackendDevice&)>& fn) const {
  for (const auto& [key, d] : devices_) {
    if (d->impl) fn(d->addr, d->fsm.state(), *d->impl);
  }
}

nlohmann::json BackendDriver::describe_devices(std::string_view type) const {
  nlohmann::json out = nlohmann::json::array();
  for_each_device([&](const DeviceAddress& a, XenbusState st, BackendDevice& dev) {
    if (a.type != type) return;
    nlohmann::json e = {
        {"type", a.type}, {"frontend", a.frontend_id}, {"devid", a.devid}, {"state", static_cast<int>(st)}};
    dev.describe(e, false);
    out.push_back(std::move(e));
  });
  return out;
}

}  // namespace xenpath
